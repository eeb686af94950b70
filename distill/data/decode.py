"""Decoding a folder of image files once, on every core, with progress.

Small JPEGs (CIFAR's are 32x32, about 1 kB) decode in tens of microseconds, so the time goes to
Python around the decoder (open, convert, copy) and holds the GIL: threads barely help, worker
processes do. Workers are forked (no re-import of torch per worker); each decodes a contiguous
chunk of the file list and sends back its [n, 3, size, size] uint8 block, which lands at the
chunk's own place in the result, so the array is the same byte for byte for any number of
workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

import numpy as np
import torch

from distill.data.images import read_image_noting

CHUNK = 500  # images per task: ~1.5 MB back through the pipe at 32x32, many progress updates
# ...and at most this much per task: 500 images at 4096x4096 would be a 25 GB block held beside
# the result it is copied into (a chunk is one image there, a hundred at 224x224).
CHUNK_BYTES = 16 << 20
SERIAL_BELOW = 2 * CHUNK  # fewer files decode faster than workers start


def chunk_for(size: int) -> int:
    """Images per task at `size`x`size`: CHUNK, fewer where the block would pass CHUNK_BYTES."""
    return max(1, min(CHUNK, CHUNK_BYTES // (3 * size * size)))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (macOS, Windows)
        return os.cpu_count() or 1


def _decode_chunk(paths: Sequence[str], size: int) -> tuple[np.ndarray, Counter[str], list]:
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    notes: Counter[str] = Counter()
    seen: list[tuple[int, int]] = []
    for i, path in enumerate(paths):
        image, done = read_image_noting(path, (size, size), seen)
        out[i] = image.transpose(2, 0, 1)
        notes.update(done)
    return out, notes, seen


def decode_files(
    paths: Sequence[str],
    size: int,
    *,
    workers: int | None = None,
    on_progress: Callable[[int], None] = lambda done: None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, Counter[str], list[tuple[int, int]]]:
    """uint8 [N, 3, size, size] of `paths` (RGB, at `size` where they differ), decoded by
    `workers` processes (default: every usable core); how many files had each thing done to
    them on the way (`read_image_noting`: for the data summary); each file's own (width,
    height). `on_progress(images done)` runs in
    this process after each chunk. A file that is not a readable image raises its UserError
    here, and the chunks not yet started are dropped."""
    chunk = chunk or chunk_for(size)
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    notes: Counter[str] = Counter()
    sizes: list[tuple[int, int]] = []
    workers = workers or usable_cores()
    if workers == 1 or len(paths) < SERIAL_BELOW:
        for start in range(0, len(paths), chunk):
            block, done, seen = _decode_chunk(paths[start : start + chunk], size)
            out[start : start + chunk] = torch.from_numpy(block)
            notes += done
            sizes += seen
            on_progress(min(start + chunk, len(paths)))
        return out, notes, sizes
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    done = 0
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending = {
            pool.submit(_decode_chunk, paths[start : start + chunk], size): start
            for start in range(0, len(paths), chunk)
        }
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    start = pending.pop(future)
                    block, said, seen = future.result()  # re-raises a worker's UserError
                    out[start : start + len(block)] = torch.from_numpy(block)
                    notes += said
                    sizes += seen
                    done += len(block)
                on_progress(done)
        finally:
            # On a bad file, stop at once rather than decode the rest of the folder first.
            pool.shutdown(wait=True, cancel_futures=True)
    return out, notes, sizes
