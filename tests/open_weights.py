"""Open weights files the way a user's command would, each in a forked child: ``python tests/open_weights.py F...``.

The reader is imported straight from ``models/torch_weights.py`` (NumPy only, no JAX), then each
file is opened in its own ``os.fork()`` child under an address-space limit, so that a crash, a
hang or a large allocation fails that file instead of the caller. One JSON line per file:
``{"file", "outcome": "ok" | "WeightsFileError" | "exception" | "crash" | "timeout", "detail"}``.
"""

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

from forked import in_forked_child  # tests/forked.py: a script's own folder is on its sys.path

MEMORY_LIMIT = 3 << 30  # address space of each child: a bounded reader stays far below it
TIMEOUT_S = 20


def _load_reader():
    path = Path(__file__).resolve().parents[1] / "models" / "torch_weights.py"
    spec = importlib.util.spec_from_file_location("torch_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def open_in_child(reader, path: str) -> dict:
    def body(write_fd: int) -> None:
        signal.alarm(TIMEOUT_S)
        try:
            state = reader.load_state_dict(path)
            result = {"outcome": "ok", "detail": {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}}
        except reader.WeightsFileError as exc:
            result = {"outcome": "WeightsFileError", "detail": str(exc)}
        except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
            result = {"outcome": "exception", "detail": f"{type(exc).__name__}: {exc}"[:1000]}
        os.write(write_fd, json.dumps(result).encode())

    written, status = in_forked_child(body, MEMORY_LIMIT)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"outcome": "timeout" if sig == signal.SIGALRM else "crash", "detail": f"signal {sig}"}
    if not written:
        return {"outcome": "crash", "detail": f"exit status {os.WEXITSTATUS(status)}, no result"}
    return json.loads(written)


def main(paths: list[str]) -> None:
    reader = _load_reader()
    for path in paths:
        print(json.dumps({"file": path, **open_in_child(reader, path)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
