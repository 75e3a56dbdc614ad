"""Timing that is correct on CUDA without forcing a synchronisation on the hot path."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import torch


class Stopwatch:
    """Accumulates the time spent inside `with stopwatch(device):` blocks.

    On CUDA it records events and resolves them only when `pop_seconds()` is read (after the iteration
    has synchronised anyway for logging); on CPU it uses the wall clock.
    """

    def __init__(self) -> None:
        self._cpu_seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def __call__(self, device: torch.device):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._cpu_seconds += time.perf_counter() - t0

    def pop_seconds(self) -> float:
        """Seconds accumulated since the last call, then reset."""
        total = self._cpu_seconds
        if self._events:
            self._events[-1][1].synchronize()
            total += sum(s.elapsed_time(e) for s, e in self._events) / 1000.0
        self._cpu_seconds, self._events = 0.0, []
        return total


def call_seconds(fn: Callable[[], object], repeats: int, device: torch.device | str = "cpu") -> list[float]:
    """Wall seconds of each of `repeats` calls of `fn`, synchronising CUDA before the clock is read (on the CPU the
    calls are timed as they are). Warm-up calls are the caller's: the first call of a shape allocates."""
    device = torch.device(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times
