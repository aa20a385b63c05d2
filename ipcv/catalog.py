"""The one table of compression methods. Each row says, for one settings class, its side, the runner that
applies it and its analytic count; every other list of methods is derived from :data:`METHODS`:
``ipcv.__all__``, the method-string grammar (:mod:`ipcv.method_strings`, read by ``python -m ipcv.eval`` and
the benches), the FLOP counts (:mod:`ipcv.flops`), what :func:`ipcv.compress` accepts on each side.

A vision-side runner has :func:`ipcv.vision.ipcv.run_ipcv`'s signature, ``(ops, depth, h, seg_lengths,
settings, protected, expendable=None) -> h``, and its count ``(settings, seg_lengths, prefix, depth, dim,
heads, tap_layers=()) -> (blocks, overhead)``; after every block the runner offers its full-length state to
:mod:`ipcv.vision.taps` (the blocks a model reads besides the last, Qwen3-VL's DeepStack), and the count includes
rebuilding them.
A language-side runner selects the tokens of one pruning stage (``select_<method>`` in :mod:`ipcv.language`)
and its count is the method's own work at one stage (``<method>_overhead``).
A row without a count is refused here, at import: no method is ever counted as free.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Literal

import torch

from . import language
from .settings import (
    DART,
    IPCV,
    CDPruner,
    DARTViT,
    DivPrune,
    FastV,
    LanguageMethod,
    Pool,
    RandomKeep,
    SparseVLM,
    ToFu,
    ToMe,
    V2Drop,
    VisionMethod,
    VisionZip,
)  # fmt: skip
from .vision import BlockOps, dart_vit, merging
from .vision import ipcv as ipcv_schedule

Side = Literal["vision", "language"]


@dataclass(frozen=True)
class Method:
    """One compression method: its settings class, side, runner and analytic count."""

    settings: type
    side: Side
    run: Callable
    count: Callable

    def __post_init__(self) -> None:
        if not (isinstance(self.settings, type) and is_dataclass(self.settings)):
            raise TypeError(f"Method: settings must be a settings dataclass, got {self.settings!r}")
        if self.side not in typing.get_args(Side):
            raise ValueError(
                f"Method {self.name}: side={self.side!r} is not allowed: use one of {typing.get_args(Side)}"
            )
        if not callable(self.run):
            raise TypeError(f"Method {self.name}: run must be callable, got {self.run!r}")
        if not callable(self.count):
            raise TypeError(
                f"Method {self.name}: count must be callable (no method is counted as free), got {self.count!r}"
            )
        if "keep_ratio" not in {f.name for f in fields(self.settings)}:
            raise TypeError(f"Method {self.name}: its settings have no keep_ratio")

    @property
    def name(self) -> str:
        """The settings class's name: ``"IPCV"``, ``"ToMe"``, ... (the method string's first field)."""
        return self.settings.__name__


METHODS: tuple[Method, ...] = (
    Method(IPCV, "vision", ipcv_schedule.run_ipcv, ipcv_schedule.count_ipcv),
    Method(ToMe, "vision", merging.run_merging, merging.count_merging),
    Method(ToFu, "vision", merging.run_merging, merging.count_merging),
    Method(DARTViT, "vision", dart_vit.run_dart_vit, dart_vit.count_dart_vit),
    Method(DART, "language", language.select_dart, language.dart_overhead),
    Method(FastV, "language", language.select_fastv, language.fastv_overhead),
    Method(V2Drop, "language", language.select_v2drop, language.v2drop_overhead),
    Method(SparseVLM, "language", language.select_sparsevlm, language.sparsevlm_overhead),
    # pre-LLM: one stage at decoder layer 0's input (the vision tower's output)
    Method(VisionZip, "language", language.select_visionzip, language.visionzip_overhead),
    Method(DivPrune, "language", language.select_divprune, language.divprune_overhead),
    Method(CDPruner, "language", language.select_cdpruner, language.cdpruner_overhead),
    Method(RandomKeep, "language", language.select_random, language.random_overhead),
    Method(Pool, "language", language.select_pool, language.pool_overhead),
)

BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}
BY_SETTINGS: dict[type, Method] = {m.settings: m for m in METHODS}
VISION: tuple[type, ...] = tuple(m.settings for m in METHODS if m.side == "vision")
LANGUAGE: tuple[type, ...] = tuple(m.settings for m in METHODS if m.side == "language")

# the public types name the same classes as the table (checked here, at import)
if (
    len(BY_NAME) != len(METHODS)
    or set(typing.get_args(VisionMethod)) != set(VISION)
    or set(typing.get_args(LanguageMethod)) != set(LANGUAGE)
):
    raise ImportError("ipcv.catalog: METHODS and the VisionMethod / LanguageMethod types disagree")


def method_of(settings: object, side: Side | None = None) -> Method:
    """The row of ``settings``'s class; TypeError naming the methods of ``side`` (or all) if it has none."""
    row = BY_SETTINGS.get(type(settings))
    if row is None or (side is not None and row.side != side):
        allowed = [m.name for m in METHODS if side is None or m.side == side]
        what = f"a {side}-side method" if side else "a compression method"
        raise TypeError(f"{settings!r} is not {what}; use one of {', '.join(allowed)}")
    return row


def run_vision(
    ops: BlockOps,
    depth: int,
    h: torch.Tensor,
    seg_lengths: Sequence[int],
    settings: VisionMethod,
    protected: torch.Tensor | None = None,
    expendable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run all ``depth`` blocks of one encoder call under the vision-side method ``settings``. Adapters call
    this and never name a method.

    ``protected``: ``[L]`` bool, tokens never pruned nor counted (CLS). ``expendable``: ``[L]`` bool, tokens
    the caller discards after the encoder (AnyRes padding that ``unpad_image`` trims): IPCV (its score and random
    rules) and DART-ViT remove them before any other token of their segment, within the same budget; ToMe / ToFu
    keep their official matching (see each runner)."""
    row = method_of(settings, "vision")
    if expendable is None:
        return row.run(ops, depth, h, seg_lengths, settings, protected)
    return row.run(ops, depth, h, seg_lengths, settings, protected, expendable=expendable)


def run_language(ops: language.DecoderOps, h: torch.Tensor, slots: language.Slots, settings: LanguageMethod):
    """Run all decoder layers of one prefill call under the LLM-side method ``settings``
    (:func:`ipcv.language.run_language` with the method's selection)."""
    return language.run_language(ops, h, slots, settings, method_of(settings, "language").run)
