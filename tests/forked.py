"""One forked child under an address-space limit, for the scripts that open hostile files (``read_files.py``,
``open_weights.py``): a crash, hang or runaway allocation in the child fails its cases, never the caller."""

import os
import resource
from collections.abc import Callable


def in_forked_child(body: Callable[[int], None], memory_limit: int) -> tuple[bytes, int]:
    """Run ``body(write_fd)`` in a forked child whose address space is limited to ``memory_limit`` bytes; return
    ``(all it wrote to write_fd, its wait status)``. The child exits when ``body`` returns or raises (status 0:
    the caller finds the results it did not write missing)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
            body(write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks), status
