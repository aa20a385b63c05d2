"""The one clock every measurement uses: CUDA events on a GPU (recorded on the stream, read after a
synchronize), ``time.perf_counter`` on the CPU. :func:`ipcv.trace` times its sections with it, the
benchmarks their runs (:func:`timed`), :func:`ipcv.measure.measured_generate` its ``generate`` calls."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Points in time on one device: :meth:`mark` records one (a CUDA event, or perf_counter), :meth:`seconds`
    reads the span between two (waiting for the later event on a GPU)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return end - start


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device`` (the device synchronised before)."""
    sync(device)
    clock = Clock(device)
    start = clock.mark()
    fn()
    return clock.seconds(start, clock.mark())
