"""A job of several processes (training.loop.distributed): the job from flags or a scheduler's environment,
checked; shards; the coordinator's port; the GPU check script's dry run. Real two-process jobs, started through
the command lines a user types, are in tests/experiments/test_jobs.py."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import free_port as _free_port
from tests.helpers import job_env

REPO = Path(__file__).resolve().parents[3]
ENV = job_env()  # one CPU device per process


SLURM = {"SLURM_NTASKS": "8", "SLURM_JOB_ID": "4097", "SLURM_STEP_NODELIST": "gpu[007-015],cpu1", "SLURM_PROCID": "3",
         "SLURM_LOCALID": "1"}
OMPI = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"}


@pytest.mark.parametrize("argv, env, expected", [
    ([], {}, None),
    ([], {"SLURM_NTASKS": "1"}, None),
    (["127.0.0.1:9", 1, 0], {}, None),  # a job of one process: nothing to join
    (["10.0.0.1:12355", 4, 3], {}, ("10.0.0.1:12355", 4, 3)),
    (["[::1]:12355", 2, 0], {}, ("[::1]:12355", 2, 0)),
    (["node-7.cluster.example:80", 65536, 65535], {}, ("node-7.cluster.example:80", 65536, 65535)),
    ([], {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, ("h:1", 2, 1)),
    (["a:2", 3, 0], {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"},
     ("a:2", 3, 0)),  # flags win
    ([], SLURM, ("gpu007:61441", 8, 3)),  # JAX's rule: the first node, port 61440 + job id mod 4096
    ([], OMPI, ("10.96.0.1:62624", 2, 1)),  # the launcher's address, port 61440 + ⌊job id / 4096⌋ mod 4096
], ids=["none", "slurm-one-task", "one-process", "flags", "ipv6", "largest", "environment",
        "flags-over-environment", "slurm", "open-mpi"])
def test_the_job_comes_from_the_flags_or_the_environment(argv, env, expected):
    from training.loop.distributed import job_from

    job = job_from(*argv, environ=env)
    assert (job if job is None else (job.coordinator, job.num_processes, job.process_id)) == expected


@pytest.mark.parametrize("env", [SLURM, {**SLURM, "SLURM_STEP_NODELIST": "a1,b2"}, OMPI,
                                 {**OMPI, "OMPI_MCA_orte_hnp_uri": "4096.0;tcp6://[fe80::b9b,2620::3]:43370"}],
                         ids=["slurm", "slurm-list", "open-mpi", "open-mpi-ipv6"])
def test_a_scheduler_job_is_the_one_jax_reads(monkeypatch, env):
    """Our reading of Slurm's and Open MPI's variables gives JAX's own coordinator, count and id."""
    from jax._src import clusters

    from training.loop.distributed import job_from

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cluster = clusters.SlurmCluster if "SLURM_NTASKS" in env else clusters.OmpiCluster
    host, _, port = cluster.get_coordinator_address(None, None).rpartition(":")
    job = job_from(environ=env)
    assert (job.host, job.port, job.num_processes, job.process_id) == \
        (host, int(port), cluster.get_process_count(), cluster.get_process_id())


@pytest.mark.parametrize("argv, env, message", [
    (["127.0.0.1:9", None, None], {}, "--num-processes, --process-id: needed with --coordinator"),
    ([None, 2, 0], {}, "--coordinator: needed"),
    (["127.0.0.1", 2, 0], {}, "--coordinator: expected HOST:PORT"),
    (["127.0.0.1:99999", 2, 0], {}, "expected HOST:PORT"),
    (["127.0.0.1:٣٣", 2, 0], {}, "expected HOST:PORT"),
    (["my host:12355", 2, 0], {}, "--coordinator: 'my host' is not a host name or address"),
    (["::1:12355", 2, 0], {}, "--coordinator: an IPv6 address goes in brackets"),
    (["[::g]:12355", 2, 0], {}, r"--coordinator: \[::g\] is not an IPv6 address"),
    (["127.0.0.1:9", 2, 2], {}, "--process-id: expected 0 ≤ id < 2"),
    (["127.0.0.1:9", 2147483648, 0], {}, "--num-processes: expected an integer in 1 … 65536, got 2147483648"),
    (["127.0.0.1:9", 100000000, 0], {}, "--num-processes: expected an integer in 1 … 65536"),
    ([], {"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_NUM_PROCESSES: not set"),
    ([], {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES: expected an integer in 1 … 65536, got 'two'"),
    ([], {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": " 2", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES: expected an integer"),
    ([], {"SLURM_NTASKS": "2"}, "SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_PROCID, SLURM_LOCALID: not set, but "
                                "SLURM_NTASKS is"),
    ([], {**SLURM, "SLURM_PROCID": "8"}, "SLURM_PROCID: expected 0 ≤ id < 8"),
    ([], {**SLURM, "SLURM_STEP_NODELIST": "bad host"}, "SLURM_STEP_NODELIST: 'bad host' is not a host name"),
    ([], {"OMPI_COMM_WORLD_SIZE": "4"}, "OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_LOCAL_RANK: "
                                        "not set, but OMPI_COMM_WORLD_SIZE is"),
    ([], {**OMPI, "OMPI_MCA_orte_hnp_uri": "garbage"}, "OMPI_MCA_orte_hnp_uri: expected JOBID.VPID;tcp://"),
    ([], {"PMI_SIZE": "4", "PMI_RANK": "0"}, "PMI_SIZE: this process was started by an MPI launcher JAX does not"),
], ids=["coordinator-alone", "no-coordinator", "no-port", "port-range", "port-not-ascii", "host-with-space",
        "bare-ipv6", "bad-ipv6", "id-range", "count-2-31", "count-1e8", "env-partial", "env-not-int",
        "env-int-with-space", "slurm-ntasks-alone", "slurm-id-range", "slurm-bad-node", "open-mpi-partial",
        "open-mpi-bad-uri", "mpich"])
def test_a_partial_or_wrong_job_is_named(argv, env, message):
    from training.loop.distributed import job_from

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        job_from(*argv, environ=env)


@pytest.mark.parametrize("timeout", [3e9, float("inf"), float("nan"), 0.0, -1.0])
def test_the_join_timeout_is_bounded(timeout):
    from training.loop.distributed import job_from

    with pytest.raises(ValueError, match=r"--join-timeout: expected seconds in \(0, 86400\]"):
        job_from("127.0.0.1:9", 2, 0, timeout_s=timeout)


_TEXT = st.text(st.sampled_from("0123456789:[].-_ aZ٣\n\x00f"), max_size=24)


@settings(max_examples=300, deadline=None)
@given(coordinator=st.none() | _TEXT, n=st.none() | st.integers(-2, 2**40), i=st.none() | st.integers(-2, 2**40),
       timeout=st.floats(allow_nan=True, allow_infinity=True),
       env=st.dictionaries(st.sampled_from(["JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                                            "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
                                            "SLURM_LOCALID", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                                            "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_MCA_orte_hnp_uri", "PMI_SIZE"]),
                           _TEXT | st.sampled_from(["2", "0", "1", "65537", "h:1", "n[1-2]", "1.0;tcp://h:1"])))
def test_any_job_flags_and_environment_give_a_checked_job_or_one_line(coordinator, n, i, timeout, env):
    """Fuzzed flags and environment: ``job_from`` returns ``None``, a job whose every field is in range, or
    raises one ValueError whose message is one line naming a flag or variable; nothing else escapes."""
    from training.loop.distributed import MAX_PROCESSES, Job, address, job_from

    try:
        job = job_from(coordinator, n, i, timeout_s=timeout, environ=env)
    except ValueError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(("--", "JAX_", "SLURM_", "OMPI_", "PMI_"))
        return
    if job is not None:
        assert isinstance(job, Job) and 2 <= job.num_processes <= MAX_PROCESSES
        assert 0 <= job.process_id < job.num_processes and 0 < job.timeout_s <= 86_400
        assert address(job.coordinator, "x") == job.coordinator and 0 < job.port < 65536


def test_process_0_refuses_a_port_in_use_or_an_address_not_its_own():
    """JAX's coordinator on a taken port is a segmentation fault: process 0 checks the port first."""
    from training.loop.distributed import Job, check_coordinator_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"--coordinator: port {port} of 127.0.0.1 is in use on this machine"):
            check_coordinator_port(Job(f"127.0.0.1:{port}", 2, 0))
    with pytest.raises(ValueError, match="--coordinator: process 0 cannot listen on 192.0.2.1:9"):
        check_coordinator_port(Job("192.0.2.1:9", 2, 0))  # TEST-NET-1: no machine's address
    check_coordinator_port(Job(f"[::1]:{_free_port()}", 2, 0))  # free, and IPv6 in brackets


def test_shards_are_contiguous_whole_chunks_that_cover_every_file_once():
    from training.loop.distributed import shard

    for n in (0, 1, 7, 18, 100):
        for count in (1, 2, 3, 8):
            parts = [shard(n, block=4, index=i, count=count) for i in range(count)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert all(p.start % 4 == 0 or p.start == p.stop == n for p in parts)  # on a chunk boundary
            sizes = [-(-(p.stop - p.start) // 4) for p in parts]
            assert max(sizes) - min(sizes) <= 1


def test_the_gpu_check_script_starts_on_a_cpu(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: the device is described and every benchmark it runs imports and
    parses its arguments (the full script is run where a GPU is lent: benchmarks/RESULTS.md)."""
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],  # noqa: S603, S607 (bash and the project's script; no user input)
                          cwd=REPO, env={**ENV, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cpu" in (tmp_path / "device.txt").read_text()
    assert done.stdout.count("would run") == 5
