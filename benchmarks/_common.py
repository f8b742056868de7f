"""What the benchmark scripts share (imported as `_common`, like `_audio`)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timer:
    """Wall and CPU seconds of the `with` blocks it times, summed over its uses."""

    wall: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def in_fresh_process(target: Callable[..., None], *args: object) -> object:
    """What `target(queue, *args)` puts on its queue, run in a new spawned process: each measured
    variant gets its own interpreter, so its peak memory and warm caches are its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    return result
