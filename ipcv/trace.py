"""Opt-in observation of compressed forward passes, per thread / per context.

``with ipcv.trace() as t: model(...)`` records, for every compressed encoder call made inside the
block (in this thread or asyncio context only), what was pruned and, if asked, how long the
IPCV-specific work took. Nothing is stored on modules: the recorder lives in a ContextVar.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

from .clock import Clock, sync


@dataclass
class IPCVCall:
    """What one encoder call compressed by IPCV did.

    keep / rem: ``[K]`` / ``[R]`` indices into the packed token sequence of the call.
    neighbors: ``[R, k]`` rows of the kept sequence used by NGR. seg_lengths / keep_counts: per
    segment (image or frame), protected tokens included. scores: ``[L]`` eq. 1 scores (float32), whatever
    ``IPCV.selection`` ranked by.
    states: per block index, that block's kept-token output (only with ``trace(states=True)``).
    """

    seg_lengths: list[int]
    keep_counts: list[int]
    keep: torch.Tensor
    rem: torch.Tensor
    neighbors: torch.Tensor
    scores: torch.Tensor
    states: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class ReductionRecord:
    """What one encoder call did under a baseline (``ToMe``, ``ToFu``, ``DARTViT``).

    method: the settings class name. seg_lengths / keep_counts: tokens per segment before the first
    block / after the last one (protected tokens included). tokens_per_block: per block, the
    tokens per segment that entered it. source: ``[L]`` for each position of the full-length
    output, the packed position of the token whose final state it holds (itself if it survived).
    """

    method: str
    seg_lengths: list[int]
    keep_counts: list[int]
    tokens_per_block: list[list[int]]
    source: torch.Tensor


@dataclass
class VisionCall:
    """One vision-encoder call seen by :func:`ipcv.stats`: tokens per segment (image / frame) entering
    block 0, and the vision-side settings it ran under (None: uncompressed)."""

    seg_lengths: list[int]
    settings: object = None
    scored: bool = False  # the tower also computed one block's attention scores (a language-side VisionZip)


@dataclass
class DecoderRecord:
    """What one call of a language decoder processed (recorded by LLM-side methods, and by
    :func:`ipcv.stats` for an uncompressed decoder).

    method: the settings class name, or "vanilla". tokens: ``[layer][sample]`` tokens entering each
    layer (its queries; padding and filler slots excluded). visual: ``[layer][sample]`` visual
    tokens among them. cache: ``[layer][sample]`` tokens in that layer's KV cache after the call
    (the keys the call's last query attends to), padding and filler slots excluded. kept:
    ``[stage][sample][span]`` tokens of each visual span after each pruning stage. stages: the
    pruning layers (0-based; their inputs were pruned). settings: the LLM-side settings it ran under
    (None: vanilla), from which :func:`ipcv.costs` counts the method's own work. prompt: ``(tokens,
    visual)`` per sample of the prompt before any pruning (what a pre-LLM method's stage at layer 0 sees).
    """

    method: str
    tokens: list[list[int]]
    visual: list[list[int]]
    cache: list[list[int]]
    kept: list[list[list[int]]] = field(default_factory=list)
    stages: list[int] = field(default_factory=list)
    settings: object = None
    prompt: tuple[list[int], list[int]] | None = None


@dataclass
class Trace:
    """Records of the compressed calls made inside ``ipcv.trace()``.

    vision / decoder: token counts per encoder call / decoder call; ``vision`` is filled by
    :func:`ipcv.stats` only, ``decoder`` by LLM-side methods and by :func:`ipcv.stats`.
    sections: seconds spent per IPCV-specific step ("score", "knn", "ngr", ...), summed over
    calls; filled only with ``trace(timing=True)`` (it synchronises the device around each step).
    """

    timing: bool = False
    states: bool = False
    calls: list[IPCVCall | ReductionRecord] = field(default_factory=list)
    # "stats" when made by ipcv.stats (every encoder and decoder call counted), else "trace"
    # (compressed calls only); ipcv.costs accepts "stats" only
    made_by: str = "trace"
    sections: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    vision: list[VisionCall] = field(default_factory=list)
    decoder: list[DecoderRecord] = field(default_factory=list)


_current: ContextVar[Trace | None] = ContextVar("ipcv_trace", default=None)


@contextmanager
def trace(*, timing: bool = False, states: bool = False) -> Iterator[Trace]:
    """Record compressed encoder calls made in this context; see :class:`Trace`."""
    t = Trace(timing=timing, states=states)
    token = _current.set(t)
    try:
        yield t
    finally:
        _current.reset(token)


def active() -> Trace | None:
    return _current.get()


@contextmanager
def section(name: str, device: torch.device) -> Iterator[None]:
    """Time a step into the active trace's ``sections`` (no-op unless ``trace(timing=True)``)."""
    t = _current.get()
    if t is None or not t.timing:
        yield
        return
    sync(device)  # the section's own time only, not what was queued before it
    clock = Clock(device)
    start = clock.mark()
    try:
        yield
    finally:
        t.sections[name] += clock.seconds(start, clock.mark())
