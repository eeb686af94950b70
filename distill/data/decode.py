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
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

import numpy as np
import torch

from distill.data.images import read_image

CHUNK = 500  # images per task: ~1.5 MB back through the pipe, many progress updates
SERIAL_BELOW = 2 * CHUNK  # fewer files decode faster than workers start


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (macOS, Windows)
        return os.cpu_count() or 1


def _decode_chunk(paths: Sequence[str], size: int) -> np.ndarray:
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = read_image(path, (size, size)).transpose(2, 0, 1)
    return out


def decode_files(
    paths: Sequence[str],
    size: int,
    *,
    workers: int | None = None,
    on_progress: Callable[[int], None] = lambda done: None,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """uint8 [N, 3, size, size] of `paths` (RGB, resized where they differ), decoded by `workers`
    processes (default: every usable core). `on_progress(images done)` runs in this process
    after each chunk. A file that is not a readable image raises its UserError here, and the
    chunks not yet started are dropped."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    workers = workers or usable_cores()
    if workers == 1 or len(paths) < SERIAL_BELOW:
        for start in range(0, len(paths), chunk):
            out[start : start + chunk] = torch.from_numpy(
                _decode_chunk(paths[start : start + chunk], size)
            )
            on_progress(min(start + chunk, len(paths)))
        return out
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
                    block = future.result()  # re-raises a worker's UserError
                    out[start : start + len(block)] = torch.from_numpy(block)
                    done += len(block)
                on_progress(done)
        finally:
            # On a bad file, stop at once rather than decode the rest of the folder first.
            pool.shutdown(wait=True, cancel_futures=True)
    return out
