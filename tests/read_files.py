"""Read files with the project's readers, each in a forked child: ``python tests/read_files.py < cases.jsonl``.

Each input line is ``{"id", "reader", "path"}`` (``reader``: a key of ``_readers()``). The readers are imported
once, then the files of each reader are read in an ``os.fork()`` child under an address-space limit (1 GiB above
what the parent maps) and a time limit per file, so that a crash, a hang (a FIFO opened) or a runaway allocation
(a header that claims terabytes) fails that case instead of the caller. One JSON line per case:
``{"id", "outcome": "ok" | "FileFormatError" | "FileNotFoundError" | "exception" | "crash" | "timeout",
"detail"}`` (for ``ok``, a short description of what was read: ``None`` for a cache entry dropped).
"""

import json
import os
import resource
import signal
import sys
from pathlib import Path

from forked import in_forked_child  # tests/forked.py: a script's own folder is on its sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADROOM = 1 << 30  # address space each child may add: a bounded reader stays far below it
TIMEOUT_S = 20


def _readers() -> dict:
    from common.files import parse_document, read_json, read_npz_checked
    from models.pretrained import read_cached_backbone
    from training.data.arrays import load_mnist_npz
    from training.data.cache import ImageCache
    from training.data.decoding import Preprocess
    from training.data.discovery import discover
    from training.data.labels import load_grouping
    from training.runs.agreement import read_rows
    from training.runs.folder import read_run
    from training.runs.results import read_result_row
    from training.runs.saved import read_saved_run
    from training.transfer.features import _load_cached

    def image_cache(p):
        pre = Preprocess(8, "center", True)
        cache = ImageCache(Path(p).parent / "image-cache")
        cache.path("ab", pre).parent.mkdir(parents=True, exist_ok=True)
        cache.path("ab", pre).unlink(missing_ok=True)
        os.symlink(os.path.abspath(p), cache.path("ab", pre))
        return cache.get("ab", pre)

    return {
        "saved_run": read_saved_run,
        "run_record": read_run,
        "grouping": load_grouping,
        "manifest": discover,
        "ratings": read_rows,
        "result_row": lambda p: read_result_row(p, "k"),
        "json": lambda p: read_json(p, "a JSON file"),
        "toml": lambda p: parse_document(p, "a TOML file", fmt="toml"),
        "npz": lambda p: read_npz_checked(p, "an .npz", max_bytes=1 << 26),
        "mnist": load_mnist_npz,
        "feature_cache": lambda p: _load_cached(Path(p), (2, 8)),
        "image_cache": image_cache,
        "weights_cache": lambda p: read_cached_backbone(Path(p), "efficientnet_lite0"),
    }


def _describe(value) -> str:
    if value is None:
        return "None"
    if hasattr(value, "shape"):
        return f"array {value.shape} {value.dtype}"
    return type(value).__name__


def _outcome(read, path: str) -> dict:
    from common.files import FileFormatError

    try:
        return {"outcome": "ok", "detail": _describe(read(path))}
    except FileFormatError as exc:
        return {"outcome": "FileFormatError", "detail": str(exc)}
    except FileNotFoundError as exc:
        return {"outcome": "FileNotFoundError", "detail": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        return {"outcome": "exception", "detail": f"{type(exc).__name__}: {exc}"[:1000]}


def read_in_child(read, cases: list[dict]) -> list[dict]:
    """Each case read in turn in one forked child (a fork costs tens of milliseconds with JAX imported), its result
    written as soon as it is known: a case that crashes or hangs the child is reported, and so are those after it."""
    vm = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()

    def body(write_fd: int) -> None:
        for case in cases:
            signal.alarm(TIMEOUT_S)
            line = json.dumps({"id": case["id"], **_outcome(read, case["path"])}) + "\n"
            signal.alarm(0)
            os.write(write_fd, line.encode())

    written, status = in_forked_child(body, vm + HEADROOM)
    results = [json.loads(line) for line in written.decode().splitlines()]
    if len(results) < len(cases):
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        outcome = "timeout" if sig == signal.SIGALRM else "crash"
        detail = f"signal {sig}" if sig else f"exit status {os.WEXITSTATUS(status)}"
        results += [{"id": c["id"], "outcome": outcome, "detail": detail} for c in cases[len(results):]]
    return results


def main() -> None:
    readers = _readers()
    by_reader: dict[str, list[dict]] = {}
    for line in sys.stdin:
        case = json.loads(line)
        by_reader.setdefault(case["reader"], []).append(case)
    for reader, cases in by_reader.items():
        for result in read_in_child(readers[reader], cases):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
