"""What every benchmark shares: where it ran, timing, its progress display and argument checks."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# --- command-line arguments ------------------------------------------------------------------------


class UsageError(ValueError):
    """A bad argument: ``python -m ipcv.bench`` prints the command's usage line and this message, and exits 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (allowed: an integer >= {least})") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: it must be an integer >= {least}")
    return value


def ratio(text: str) -> float:
    """argparse type: a keep ratio, a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (allowed: a keep ratio in (0, 1])") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"{text} is outside the allowed range (0, 1] of a keep ratio")
    return value


def check_device(device: str, option: str = "--device") -> None:
    """UsageError unless ``device`` names a device torch knows and this machine has (a CUDA device needs CUDA)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} {device!r}: not a device name (use cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"{option} {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {device!r}: no CUDA device here (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")


# --- progress ---------------------------------------------------------------------------------------

PROGRESS_ENV = "IPCV_PROGRESS"  # "bar", "lines" or "off"; unset: bar on a terminal, lines elsewhere, off in Jupyter


def progress_mode() -> str:
    """How benchmarks show their progress on stderr: ``IPCV_PROGRESS`` if set; else a tqdm bar when stderr
    is a terminal, one line per step when it is a file or a pipe (a log stays readable), nothing inside a
    Jupyter kernel (the notebook's cell shows that it runs; its output stays the results)."""
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if mode in ("bar", "lines", "off"):
        return mode
    if type(sys.stderr).__module__.startswith("ipykernel"):
        return "off"
    return "bar" if sys.stderr.isatty() else "lines"


def note(message: str) -> None:
    """One line on stderr saying what the benchmark does now (not inside a Jupyter kernel)."""
    if progress_mode() != "off":
        print(message, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """``total`` steps of a benchmark on stderr (see :func:`progress_mode`). ``step(label)`` starts the
    next step, ``label`` saying what runs; the step before counts as done. A context manager::

        with Progress(len(runs), "prefill: timing") as p:
            for name in runs:
                p.step(name)
                ...

    On a terminal a tqdm bar (steps done, elapsed, time left); in a log one line per step:
    ``prefill: timing [3/40] IPCV | ViT 35% / LLM 35% (12s elapsed, ~2m40s left)``.
    """

    def __init__(self, total: int, desc: str, unit: str = "run"):
        self.total, self.desc, self.mode = total, desc, progress_mode()
        self.started, self.start_s, self.bar = 0, time.perf_counter(), None
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def step(self, label: str) -> None:
        if self.bar is not None:
            if self.started:
                self.bar.update(1)
            self.bar.set_postfix_str(label)
        elif self.mode == "lines":
            elapsed = time.perf_counter() - self.start_s
            left = f", ~{_duration(elapsed / self.started * (self.total - self.started))} left" if self.started else ""
            print(f"{self.desc} [{self.started + 1}/{self.total}] {label} ({_duration(elapsed)} elapsed{left})",
                  file=sys.stderr, flush=True)  # fmt: skip
        self.started += 1

    def write(self, line: str) -> None:
        """Print ``line`` on stdout (a result) without breaking the bar."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self, failed: bool = False) -> None:
        elapsed = _duration(time.perf_counter() - self.start_s)
        if self.bar is not None:
            if self.started and not failed:
                self.bar.update(1)
            self.bar.close()
        elif self.mode == "lines":
            end = f"stopped at step {self.started}" if failed else f"{self.started} step(s) done"
            print(f"{self.desc}: {end} in {elapsed}", file=sys.stderr, flush=True)
        self.bar, self.mode = None, "closed"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.mode != "closed":
            self.close(failed=exc_type is not None)
