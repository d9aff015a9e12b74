"""Decoding photos ahead of the consumer: a thread pool keeps a bounded number of chunks in flight."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from training.data.decoding import BadImageError, Preprocess, load_image


def decode_chunks(files: Sequence[Path], pre: Preprocess, *, chunk_size: int, workers: int | None = None,
                  prefetch: int = 2) -> Iterator[list[tuple[Path, np.ndarray | str]]]:
    """Yield ``[(path, array or error message), …]`` per chunk of ``chunk_size`` files, in order.

    While the consumer works on one chunk the pool decodes the next ``prefetch`` chunks; nothing
    else is kept, so memory does not grow with the number of files.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")

    def decode(path: Path) -> np.ndarray | str:
        try:
            return load_image(path, pre)
        except BadImageError as exc:
            return str(exc)

    chunks = (files[i:i + chunk_size] for i in range(0, len(files), chunk_size))
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        pending: collections.deque = collections.deque()

        def submit_next() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                pending.append((chunk, [pool.submit(decode, f) for f in chunk]))

        for _ in range(prefetch + 1):
            submit_next()
        while pending:
            chunk, futures = pending.popleft()
            yield [(f, fut.result()) for f, fut in zip(chunk, futures)]
            submit_next()  # only once the consumer is done with this chunk
