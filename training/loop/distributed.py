"""Several processes as one job: joining it (``jax.distributed``), sharding work by process, gathering results.

Every heavy command joins a job the same way (:func:`job_from`, then :func:`join`):

- flags: ``--coordinator HOST:PORT --num-processes N --process-id I``;
- or the environment: ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``;
- or a scheduler: Slurm (``SLURM_NTASKS`` > 1 and the variables of a job step) or Open MPI
  (``OMPI_COMM_WORLD_SIZE`` > 1 and ``OMPI_MCA_orte_hnp_uri``), read the way JAX reads them.

The flags and environment are hostile input like any file: :func:`job_from` parses them once into a
:class:`Job` and checks every part (host name or address, ``[IPv6]:PORT``, a port in 1 … 65535, at most
:data:`MAX_PROCESSES` processes, a join timeout up to :data:`MAX_JOIN_TIMEOUT_S`), or raises one
``ValueError`` naming the flag or variable, before the runtime starts. Process 0 checks that the
coordinator's port is free on its machine before starting the coordinator on it.

Nothing is home-made in the data path: after :func:`join`, ``jax.devices()`` lists every process's devices
and JAX's own collectives (gloo on CPU, NCCL or ICI on accelerators) carry the data. What this module adds:

- a bounded wait: a process that cannot join within ``timeout_s`` seconds (coordinator unreachable, a peer
  never started) prints one line and exits 1, instead of JAX's abort with a C++ stack trace after 5 minutes;
- a watch over the joined job (:class:`_Watch`). JAX's default reaction to a lost process is to abort every
  other one from C++ (SIGABRT and a stack trace), which Python cannot catch, and its handler cannot be
  replaced from Python (jaxlib 0.10: ``std::bad_cast``). So the job runs in JAX's *recoverable* mode, where
  the runtime keeps going, process 0 runs the coordinator in a helper process that outlives it
  (:class:`_ServiceInAHelper`), and the processes keep their own heartbeats in the job's key-value store.
  When one stops (silent for ``timeout_s``, or failed and said so), every other process ends with one
  ``error:`` line and exit 1. At the end, :func:`finish` is the exit barrier.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

MAX_PROCESSES = 1 << 16  # the coordinator keeps state per process: bounded memory and start-up time
MAX_JOIN_TIMEOUT_S = 86_400.0  # a day
_DIGITS = re.compile(r"[0-9]{1,10}")  # ASCII digits only (int() also takes ' 2', '2_0', '٢')
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")


@dataclass(frozen=True)
class Job:
    """A job to join, checked: process ``process_id`` of ``num_processes`` (2 … :data:`MAX_PROCESSES`), whose
    process 0 runs the coordinator at ``coordinator`` (``HOST:PORT`` or ``[IPv6]:PORT``). ``timeout_s``: the
    longest wait to join, and to notice a process that stopped. ``source``: where the job was described
    (flags, the ``JAX_*`` variables, Slurm or Open MPI), for messages."""

    coordinator: str
    num_processes: int
    process_id: int
    timeout_s: float = 120.0
    source: str = "flags"

    @property
    def host(self) -> str:
        return self.coordinator.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.coordinator.rpartition(":")[2])

    def describe(self) -> str:
        return f"the job at {self.coordinator} as process {self.process_id} of {self.num_processes}"


def address(text: str, what: str) -> str:
    """``HOST:PORT`` checked: a host name (letters, digits, ``-``, ``_``, dots; at most 253 characters), an
    IPv4 address, or an IPv6 address in brackets (``[::1]:12355``); a port in 1 … 65535."""
    hint = "expected HOST:PORT (e.g. 10.0.0.1:12355, or [::1]:12355 for IPv6)"
    if not isinstance(text, str) or not text.isascii() or len(text) > 300:
        raise ValueError(f"{what}: {hint}, got {str(text)[:80]!r}")
    host, sep, port = text.rpartition(":")
    if not sep or not _DIGITS.fullmatch(port) or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: {hint} with a port in 1 … 65535, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{what}: {host} is not an IPv6 address, in {text!r}") from None
    elif ":" in host:
        raise ValueError(f"{what}: an IPv6 address goes in brackets, e.g. [::1]:12355; got {text!r}")
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{what}: {host!r} is not a host name or address (letters, digits, '-', '.'), "
                         f"in {text!r}")
    return f"{host}:{int(port)}"


def _count(text: object, what: str, low: int, high: int) -> int:
    """An integer in ``low … high`` from a flag's value (an ``int``) or an environment variable (ASCII digits)."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ValueError(f"{what}: expected an integer, got {text!r}")
    if isinstance(text, str):
        if not _DIGITS.fullmatch(text):
            raise ValueError(f"{what}: expected an integer in {low} … {high}, got {text[:40]!r}")
        text = int(text)
    if not low <= text <= high:
        raise ValueError(f"{what}: expected an integer in {low} … {high}, got {text}")
    return text


def _first_slurm_host(node_list: str) -> str:
    """The first host of a Slurm node list (``node001``, ``node[001-015],gpu2``, …), as JAX reads it."""
    head, bracket, rest = node_list.partition("[")
    head = head.split(",")[0]
    if bracket and "," not in node_list[: node_list.index("[")]:
        return head + re.split(r"[,\-\]]", rest, maxsplit=1)[0]
    return head


def _from_scheduler(env: Mapping[str, str]) -> tuple[str, str, str, str] | None:
    """(coordinator, count, id, source) from Slurm's or Open MPI's variables (JAX's own rules for the
    coordinator's host and port); ``None`` when no scheduler started several processes. A scheduler that
    did but left out a variable JAX needs is named."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    if env.get("SLURM_NTASKS", "1").strip() not in ("1", ""):
        missing = [v for v in slurm if not env.get(v)]
        if missing:
            raise ValueError(f"{', '.join(missing)}: not set, but SLURM_NTASKS is "
                             f"({env['SLURM_NTASKS'][:40]!r}); start each process with srun, or describe the "
                             "job with --coordinator, --num-processes and --process-id")
        job_id = _count(env["SLURM_JOB_ID"], "SLURM_JOB_ID", 0, 10**10 - 1)
        _count(env["SLURM_LOCALID"], "SLURM_LOCALID", 0, MAX_PROCESSES - 1)
        host = _first_slurm_host(env["SLURM_STEP_NODELIST"])
        port = job_id % 2**12 + 65535 - 2**12 + 1
        return (address(f"{host}:{port}", "SLURM_STEP_NODELIST"), env["SLURM_NTASKS"], env["SLURM_PROCID"],
                "Slurm")
    if env.get("OMPI_COMM_WORLD_SIZE", "1").strip() not in ("1", ""):
        ompi = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")
        missing = [v for v in ompi if not env.get(v)]
        if missing:
            raise ValueError(f"{', '.join(missing)}: not set, but OMPI_COMM_WORLD_SIZE is "
                             f"({env['OMPI_COMM_WORLD_SIZE'][:40]!r}); JAX finds the job from them (Open MPI 4's "
                             "mpirun sets them), or describe the job with --coordinator, --num-processes and "
                             "--process-id")
        uri = env["OMPI_MCA_orte_hnp_uri"]
        job_id, _, _ = uri.partition(".")
        found = re.search(r"tcp://(.+?)[,:]|tcp6://\[(.+?)[,\]]", uri)
        if not _DIGITS.fullmatch(job_id) or found is None:
            raise ValueError(f"OMPI_MCA_orte_hnp_uri: expected JOBID.VPID;tcp://ADDRESS:PORT, got {uri[:80]!r}")
        _count(env["OMPI_COMM_WORLD_LOCAL_RANK"], "OMPI_COMM_WORLD_LOCAL_RANK", 0, MAX_PROCESSES - 1)
        host = found.group(1) or f"[{found.group(2)}]"
        port = int(job_id) // 2**12 % 2**12 + 65535 - 2**12 + 1
        return (address(f"{host}:{port}", "OMPI_MCA_orte_hnp_uri"), env["OMPI_COMM_WORLD_SIZE"],
                env["OMPI_COMM_WORLD_RANK"], "Open MPI")
    for size in ("PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        if env.get(size, "1").strip() not in ("1", ""):
            raise ValueError(f"{size}: this process was started by an MPI launcher JAX does not read (only Slurm's "
                             "srun and Open MPI 4's mpirun are); describe the job with --coordinator, "
                             "--num-processes and --process-id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                             "JAX_PROCESS_ID)")
    return None


def job_from(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, *,
             timeout_s: float = 120.0, environ: Mapping[str, str] | None = None) -> Job | None:
    """The job these flags (or else this environment) describe, checked; ``None`` for a single process.

    Flags win over the environment, and ``JAX_*`` variables over a scheduler's. Anything partial, out of
    range or malformed raises one ``ValueError`` naming the flag or variable; nothing is started.
    """
    env = os.environ if environ is None else environ
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s) \
            or not 0 < timeout_s <= MAX_JOIN_TIMEOUT_S:
        raise ValueError(f"--join-timeout: expected seconds in (0, {MAX_JOIN_TIMEOUT_S:g}], got {timeout_s!r}")
    flags = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in flags.values()):
        missing = [k for k, v in flags.items() if v is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: needed with {', '.join(k for k in flags if k not in missing)} "
                             "(a job is described by all three)")
        where, given, names, source = address(coordinator, "--coordinator"), (num_processes, process_id), \
            ("--num-processes", "--process-id"), "flags"
    elif env.get("JAX_COORDINATOR_ADDRESS"):
        where = address(env["JAX_COORDINATOR_ADDRESS"], "JAX_COORDINATOR_ADDRESS")
        names, source = ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"), "JAX_COORDINATOR_ADDRESS"
        for name in names:
            if not env.get(name):
                raise ValueError(f"{name}: not set, but JAX_COORDINATOR_ADDRESS is (a job is described by "
                                 "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
        given = (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"])
    else:
        found = _from_scheduler(env)
        if found is None:
            return None
        where, *given, source = found
        names = {"Slurm": ("SLURM_NTASKS", "SLURM_PROCID"),
                 "Open MPI": ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")}[source]
    n = _count(given[0], names[0], 1, MAX_PROCESSES)
    i = _count(given[1], names[1], 0, MAX_PROCESSES - 1)
    if not i < n:
        raise ValueError(f"{names[1]}: expected 0 ≤ id < {n} (the number of processes), got {i}")
    return None if n == 1 else Job(where, n, i, float(timeout_s), source)


def check_coordinator_port(job: Job) -> None:
    """On process 0: the coordinator's address is one of this machine's and its port is free, or one
    ``ValueError`` saying which (JAX's own failure to listen there is a segmentation fault)."""
    what = "--coordinator" if job.source == "flags" else job.source
    try:
        infos = socket.getaddrinfo(job.host, job.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"{what}: cannot resolve {job.host!r} on process 0 ({exc})") from None
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a closed socket's TIME_WAIT is no conflict
        try:
            s.bind(where)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ValueError(f"{what}: port {job.port} of {job.host} is in use on this machine (process 0 "
                                 "runs the coordinator there): choose a free port") from None
            raise ValueError(f"{what}: process 0 cannot listen on {job.coordinator} ({exc.strerror}): it runs "
                             "the coordinator, so the address must be one of its machine's") from None


def join(job: Job | None) -> None:
    """Join ``job`` (nothing for ``None``, or when this process has joined already), within ``job.timeout_s``.

    A process that has not joined in time prints ``error: …`` (one line, naming the job) and exits 1.
    On CPU the processes exchange data with gloo. Process 0's coordinator listens on the given
    address only, not on every interface: the job has no authentication, so it belongs on a private
    network, and ``127.0.0.1:PORT`` keeps a one-machine job on loopback. Once joined, :class:`_Watch`
    ends every process with one line when one of them stops.
    """
    if job is None or jax.distributed.is_initialized():
        return
    if job.process_id == 0:
        check_coordinator_port(job)

    def give_up() -> None:
        print(f"error: could not join {job.describe()} within {job.timeout_s:g} s: is every process started, "
              "and the coordinator reachable from here? (--join-timeout sets the wait)", file=sys.stderr, flush=True)
        _free_the_coordinator()
        os._exit(1)  # the main thread is inside JAX's C++ connect: it cannot be interrupted

    timer = threading.Timer(job.timeout_s, give_up)
    timer.daemon = True
    timer.start()
    from jax._src import distributed as runtime  # JAX's own state of the job

    lib = getattr(runtime, "_jax", None)
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
        with contextlib.suppress(AttributeError, KeyError):  # JAX < 0.7 has no recoverable mode
            jax.config.update("jax_enable_recoverability", True)  # a lost process: no abort from C++ (_Watch)
        if lib is not None and hasattr(lib, "get_distributed_runtime_service"):
            runtime._jax = _ServiceInAHelper(lib, job)  # process 0 starts the coordinator in a helper process
        seconds = max(int(job.timeout_s), 1)
        jax.distributed.initialize(
            coordinator_address=job.coordinator, num_processes=job.num_processes, process_id=job.process_id,
            coordinator_bind_address=job.coordinator, initialization_timeout=seconds + 60,  # ours fires first
            # a process is lost when its heartbeats are missing this long; the exit barrier is :func:`finish`
            heartbeat_timeout_seconds=max(seconds, 10), shutdown_timeout_seconds=60)
    finally:
        timer.cancel()
        if lib is not None:
            runtime._jax = lib
    client = getattr(getattr(runtime, "global_state", None), "client", None)
    if client is not None:
        _Watch.start_for(job, client)


_SERVICE = """
import os, sys, time
from jaxlib import _jax  # jaxlib alone: 0.3 s, not the 3 s of all of jax
address, n, heartbeat, linger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
service = _jax.get_distributed_runtime_service(address, n, heartbeat_timeout=heartbeat, shutdown_timeout=60,
                                               recoverable=True)
print("listening", flush=True)
if sys.stdin.readline().strip() == "done":  # process 0's normal exit: the others are leaving too
    time.sleep(2)
    service.shutdown()
else:  # end of file: process 0 is gone
    time.sleep(linger)  # the others learn it (process 0's heartbeat stops) and leave with their line
os._exit(0)
"""


class _ServiceInAHelper:
    """jaxlib as ``jax.distributed.initialize`` sees it while process 0 joins, except that the coordinator
    service runs in a helper process (:data:`_SERVICE`), not in process 0 itself.

    JAX's client aborts its process from C++ (SIGABRT, a stack trace) the moment the service it talks to
    disappears, and that handler cannot be replaced from Python. In a helper, the service outlives a
    process 0 that is killed: the helper reads its standard input until process 0 writes ``done`` (JAX's
    own shutdown at a normal exit) or is gone; then it stays ``timeout_s`` + a few seconds more, long
    enough for the other processes to notice that process 0 stopped and to leave with one line.
    """

    def __init__(self, lib, job: Job) -> None:
        self._lib, self._job = lib, job

    def __getattr__(self, name: str):
        return getattr(self._lib, name)

    def get_distributed_runtime_service(self, address: str, num_nodes: int, *, heartbeat_timeout: int = 100,
                                        **_) -> _HelperService:
        linger = self._job.timeout_s + 5 * _Watch.interval_for(self._job) + 5
        isolated = ["-P"] if sys.version_info >= (3, 11) else []  # not the current folder's modules
        process = subprocess.Popen(  # noqa: S603 (this interpreter and the module's own code; no shell)
            [sys.executable, *isolated, "-c", _SERVICE, address, str(num_nodes), str(heartbeat_timeout),
             f"{linger:.3f}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, start_new_session=True)  # not stopped with process 0 by Ctrl-C: it lingers on its own
        process.stdout.readline()  # "listening" (or nothing: the clients cannot join, and say so in time)
        return _HelperService(process)


class _HelperService:
    """The coordinator service in its helper process, as JAX holds it."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process

    def shutdown(self) -> None:
        """Process 0's normal end: the helper stops the service 2 s later, once the others have left too."""
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.write("done\n")
            self.process.stdin.close()


def _free_the_coordinator() -> None:
    """Process 0 leaving when no other process needs the coordinator: its helper stops in 2 s, not later."""
    from jax._src import distributed as runtime

    service = getattr(getattr(runtime, "global_state", None), "service", None)
    if isinstance(service, _HelperService):
        service.shutdown()


class _Watch(threading.Thread):
    """Ends this process with one line when a process of its job stopped.

    Every ``interval_s`` each process writes ``alive/K`` (a counter) in the job's key-value store and reads
    ``failed/``. Process 0 also reads every ``alive/``: a process whose counter has not moved for
    ``timeout_s``, and that has not finished, stopped (killed, out of memory, its machine down); process 0
    records it in ``failed/K``. A process that fails by itself records ``failed/K`` too (:func:`abandon`).
    On the first ``failed/`` entry every process prints its line and exits 1, a process other than 0
    after writing ``left/K``; process 0, which hosts the coordinator that the others need to learn all
    this, leaves last: when every other process has left, or after ``linger_s``. A process that cannot
    reach the coordinator any more (process 0 gone) leaves with its line.
    """

    current: _Watch | None = None
    PREFIX = "tree-risk-jax/"

    def __init__(self, job: Job, client) -> None:
        super().__init__(name="job-watch", daemon=True)
        self.job, self.client = job, client
        self.interval_s = self.interval_for(job)
        self.linger_s = min(job.timeout_s, 10.0) + 3 * self.interval_s
        self.quiet = threading.Event()  # this process is finishing or failing by itself: say nothing

    @staticmethod
    def interval_for(job: Job) -> float:
        """Seconds between rounds: process 0 reads every ``alive/`` key each round, so larger jobs take
        slower rounds, within a quarter of the timeout."""
        return max(0.25, min(job.timeout_s / 4, max(1.0, job.num_processes / 2000)))

    @classmethod
    def start_for(cls, job: Job, client) -> None:
        cls.current = cls(job, client)
        cls.current.start()

    def run(self) -> None:
        me, beat, seen = self.job.process_id, 0, {}  # seen: K → (its last counter, when it last moved)
        while not self.quiet.wait(self.interval_s):
            beat += 1
            try:
                self.client.key_value_set(f"{self.PREFIX}alive/{me}", str(beat), allow_overwrite=True)
                failed = [int(k.rpartition("/")[2]) for k, _ in
                          self.client.key_value_dir_get(self.PREFIX + "failed/")]
                lost = self._lost(seen)
            except Exception:  # noqa: BLE001 (the coordinator is gone: any error of the RPC says so)
                if me != 0 and not self.quiet.is_set():
                    self._stop("lost the job's coordinator (process 0 stopped, or the network failed); "
                               "this process stops too")
                continue
            if self.quiet.is_set():
                return
            if others := sorted(k for k in failed if k != me):
                self._stop(f"process {others[0]} of the job failed (its error is in its own output); "
                           "the job cannot go on, so this process stops too")
            elif lost:
                with contextlib.suppress(Exception):
                    self.client.key_value_set(f"{self.PREFIX}failed/{lost[0]}", "lost", allow_overwrite=True)
                self._stop(f"process {lost[0]} of the job stopped answering for {self.job.timeout_s:g} s "
                           "(killed, out of memory, or its machine is down?); the job cannot go on, so this "
                           "process stops too")

    def _lost(self, seen: dict[int, tuple[str, float]]) -> list[int]:
        """The processes whose ``alive/`` counter has not moved for ``timeout_s`` and that have not finished:
        process 0 watches every other one, the others watch process 0 (from the start of the watch on: one
        that never wrote its counter counts from there)."""
        now, me = time.monotonic(), self.job.process_id
        if me == 0:
            beats = dict(self.client.key_value_dir_get(self.PREFIX + "alive/"))
            watched = range(1, self.job.num_processes)
        else:
            try:
                beats = {f"{self.PREFIX}alive/0": self.client.key_value_try_get(f"{self.PREFIX}alive/0")}
            except Exception as exc:  # noqa: BLE001 (not written yet: NOT_FOUND; anything else is the caller's)
                if "NOT_FOUND" not in str(exc):
                    raise
                beats = {}
            watched = [0]
        lost = []
        for k in watched:
            value = beats.get(f"{self.PREFIX}alive/{k}", "")
            last, since = seen.get(k, (None, now))
            if value != last:
                seen[k] = (value, now)
            elif now - since > self.job.timeout_s:
                lost.append(k)
        if lost:  # a process that finished (the exit barrier) is not lost
            done = {int(k.rpartition("/")[2]) for k, _ in self.client.key_value_dir_get(self.PREFIX + "done/")}
            lost = [k for k in lost if k not in done]
        return lost

    def _stop(self, message: str) -> None:
        self.quiet.set()
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.leave(1)

    def leave(self, code: int) -> None:
        """Exit with ``code`` now; process 0 first waits (at most ``linger_s``) for the others to leave, as
        they need its coordinator to learn that the job has ended."""
        sys.stdout.flush()
        sys.stderr.flush()
        me = self.job.process_id
        with contextlib.suppress(Exception):
            if me != 0:
                self.client.key_value_set(f"{self.PREFIX}left/{me}", "1", allow_overwrite=True)
            else:
                deadline = time.monotonic() + self.linger_s
                while time.monotonic() < deadline:
                    gone = {k for k, _ in self.client.key_value_dir_get(self.PREFIX + "left/")} | \
                        {k for k, _ in self.client.key_value_dir_get(self.PREFIX + "failed/")}
                    gone = {int(k.rpartition("/")[2]) for k in gone}
                    if gone >= set(range(1, self.job.num_processes)):
                        break
                    time.sleep(0.1)
                _free_the_coordinator()  # the others know
        os._exit(code)


def finish() -> None:
    """The exit barrier of a job's process whose work succeeded: it waits (up to a day: process 0 may
    join outputs while the others wait) until every process has finished. Nothing for one process."""
    watch = _Watch.current
    if watch is None:
        return
    watch.client.key_value_set(f"{watch.PREFIX}done/{watch.job.process_id}", "1", allow_overwrite=True)
    try:
        watch.client.wait_at_barrier(watch.PREFIX + "end", int(MAX_JOIN_TIMEOUT_S * 1000))
    except Exception as exc:  # noqa: BLE001 (a peer stopped during the wait: the watch says so, or this)
        if not watch.quiet.is_set():
            watch._stop(f"the job ended without every process finishing ({' '.join(str(exc).split())[:200]})")
    watch.quiet.set()


def abandon(code: int) -> None:
    """Leave the job at once after this process's own failure (its one line, or a bug's traceback, is out):
    the others are told through ``failed/K`` and stop with their one line. Exits with ``code``."""
    watch = _Watch.current
    if watch is None:
        os._exit(code)
    watch.quiet.set()
    with contextlib.suppress(Exception):
        watch.client.key_value_set(f"{watch.PREFIX}failed/{watch.job.process_id}", "error", allow_overwrite=True)
    watch.leave(code)


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def shard(n: int, *, block: int = 1, index: int | None = None, count: int | None = None) -> slice:
    """This process's contiguous part of ``n`` ordered items, in whole blocks of ``block`` items.

    The ``⌈n / block⌉`` blocks are dealt in order, as evenly as possible: process ``i`` of ``P`` gets
    ``⌊B/P⌋`` blocks, one more if ``i < B mod P``. Concatenating the parts of processes 0 … P−1 gives
    the items in their order, and a block of this run is a block of the one-process run.
    """
    i = process_index() if index is None else index
    p = process_count() if count is None else count
    blocks = -(-n // block)
    first = i * (blocks // p) + min(i, blocks % p)
    last = first + blocks // p + (1 if i < blocks % p else 0)
    return slice(min(first * block, n), min(last * block, n))


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """A collective between the job's processes: when a process of the job is gone (its connection closed),
    one ``ValueError`` saying so instead of the transport's message; other errors unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (only a peer's closed connection is rewritten)
        text = " ".join(str(exc).split())
        if "Connection closed by peer" not in text and "Connection reset by peer" not in text:
            raise
        raise ValueError(f"a process of the job stopped during {what} (its connection closed); the job "
                         "cannot go on, so this process stops too") from None


def barrier(name: str) -> None:
    """Wait until every process of the job reaches ``barrier(name)`` (nothing for one process)."""
    if process_count() > 1:
        with _collective(f"the barrier {name!r}"):
            multihost_utils.sync_global_devices(name)


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's ``local`` rows (any count per process, the same trailing shape and dtype),
    concatenated in process order, in every process. One process: ``local`` itself."""
    if process_count() == 1:
        return local
    with _collective("a gather of rows"):
        counts = np.asarray(multihost_utils.process_allgather(np.array([len(local)], np.int64))).reshape(-1)
        padded = np.zeros((int(counts.max()), *local.shape[1:]), local.dtype)
        padded[: len(local)] = local
        every = np.asarray(multihost_utils.process_allgather(padded))
    return np.concatenate([every[k, : int(c)] for k, c in enumerate(counts)])


def any_process(flags: np.ndarray) -> np.ndarray:
    """Elementwise OR of a boolean vector over every process (the same length in each)."""
    if process_count() == 1:
        return flags
    with _collective("a gather of flags"):
        every = np.asarray(multihost_utils.process_allgather(flags.astype(np.int32)))
    return every.reshape(process_count(), -1).any(axis=0)


def from_process_0(flag: bool) -> bool:
    """Process 0's ``flag`` in every process (for choices that must be the same everywhere)."""
    if process_count() == 1:
        return flag
    with _collective("a broadcast from process 0"):
        return bool(multihost_utils.broadcast_one_to_all(np.array(flag, np.int32)))


def to_host(a) -> np.ndarray:
    """A JAX array as NumPy, whole: gathered from every process when it spans devices of other processes."""
    if getattr(a, "is_fully_addressable", True):
        return np.asarray(a)
    with _collective("a gather of an array"):
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))


@contextlib.contextmanager
def outputs_of_this_process(out: str | Path) -> Iterator[Path]:
    """Where this process writes a command's outputs: ``out`` for process 0; for the others a folder of
    the same name in a temporary directory, removed afterwards (they compute the same, write nothing kept)."""
    if process_index() == 0:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix=f"process-{process_index()}-") as tmp:
        yield Path(tmp) / Path(out).name
