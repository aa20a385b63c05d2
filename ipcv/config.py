"""Typed, validated, immutable settings objects for the compression methods.

A settings object says *what* to do; it holds no tensors and no model. Checks that need the
model (its depth) run when the settings are applied, in :func:`ipcv.compress`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from numbers import Real
from typing import Literal

Scope = Literal["segment", "global"]
SCOPES: tuple[str, ...] = ("segment", "global")
Output = Literal["full", "reduced"]
OUTPUTS: tuple[str, ...] = ("full", "reduced")
Spans = Literal["each", "first", "all"]
SPANS: tuple[str, ...] = ("each", "first", "all")
Rounding = Literal["nearest", "floor"]
ROUNDINGS: tuple[str, ...] = ("nearest", "floor")


def _check_int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


def _check_keep_ratio(owner: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}: keep_ratio must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"{owner}: keep_ratio={value!r} is outside the allowed range (0, 1]")
    return value


def _check_count(owner: str, n: object, keep_ratio: object) -> tuple[int, float]:
    """``(n, keep_ratio)`` of a budget function, or ValueError naming the argument and what is allowed."""
    try:
        count = None if isinstance(n, bool) else operator.index(n)
    except TypeError:
        count = None
    if count is None or count < 0:
        raise ValueError(f"{owner}: n={n!r} is not allowed: it must be an integer >= 0 (tokens in the segment)")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, Real):
        raise ValueError(f"{owner}: keep_ratio={keep_ratio!r} is not a number in the allowed range (0, 1]")
    if not 0.0 < keep_ratio <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{owner}: keep_ratio={keep_ratio!r} is outside the allowed range (0, 1]")
    return count, float(keep_ratio)


def keep_count(n: int, keep_ratio: float) -> int:
    """Tokens kept out of ``n``: ``max(1, min(n, floor(keep_ratio * n + 0.5)))`` (round half up, never
    empty, never more than ``n``) for ``n >= 1``; 0 for an empty segment (``n = 0``).

    Raises ValueError if ``n`` is not an integer >= 0 or ``keep_ratio`` is outside (0, 1] (NaN included).
    """
    n, keep_ratio = _check_count("keep_count", n, keep_ratio)
    return min(n, max(1, math.floor(keep_ratio * n + 0.5)))


def reduction_of(keep_ratio: float) -> float:
    """The reduction ratio a script of the published code would have been given for ``keep_ratio``:
    ``1 - keep_ratio`` rounded to 12 decimals, so ``keep_ratio`` 0.35 gives the float ``0.65`` exactly
    as ``float("0.65")`` (not ``0.6499999999999999``)."""
    return round(1.0 - keep_ratio, 12)


def floor_count(n: int, keep_ratio: float) -> int:
    """The published code's count: ``int(n * (1 - reduction))`` with ``reduction = reduction_of(keep_ratio)``,
    at least 1 (their ``max(1, ...)``) and at most ``n`` (0 for ``n = 0``); ValueError as :func:`keep_count`."""
    n, keep_ratio = _check_count("floor_count", n, keep_ratio)
    return min(n, max(1, int(n * (1.0 - reduction_of(keep_ratio)))))


def rounded_count(n: int, keep_ratio: float, rounding: str) -> int:
    """``keep_count`` (``rounding="nearest"``) or :func:`floor_count` (``"floor"``)."""
    return keep_count(n, keep_ratio) if rounding == "nearest" else floor_count(n, keep_ratio)


def _check_choice(owner: str, name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}: {name}={value!r} is not allowed: use one of {allowed}")


@dataclass(frozen=True, slots=True)
class IPCV:
    """Settings of IPCV (paper section 3) for a vision encoder.

    Args:
        keep_ratio: share of each segment's patches kept after ``prune_layer``, in (0, 1].
        prune_layer: l_p, the 0-based block whose *input* is pruned; the score is the change made by
            block l_p - 1 (eq. 1), so ``1 <= prune_layer < depth``.
        stabilize_layers: Attention Stabilization depth; blocks l_p .. l_p + stabilize_layers - 1
            let the removed tokens (reconstructed by NGR) act as keys/values. ``0`` is the
            paper's "w/o AS" ablation. ``prune_layer + stabilize_layers <= depth``.
        neighbors: k of Neighbor-Guided Reconstruction (eq. 3-5), ``>= 1``; a segment with fewer
            kept tokens uses all of them.
        reintegrate: rebuild the removed tokens with NGR after the last block (eq. 10). ``False``
            is the paper's "w/o Reint." ablation: removed tokens come back as their frozen states
            at l_p.
        scope: ``"segment"`` keeps ``keep_count(n)`` patches of every image / video frame and looks
            for neighbours inside it; ``"global"`` is the authors' release: one top-K over all
            patches of the call, neighbours across segments.
    """

    keep_ratio: float
    prune_layer: int = 3
    stabilize_layers: int = 7
    neighbors: int = 10
    reintegrate: bool = True
    scope: Scope = "segment"

    def __post_init__(self) -> None:
        name = "IPCV"
        object.__setattr__(self, "keep_ratio", _check_keep_ratio(name, self.keep_ratio))
        _check_int(name, "prune_layer", self.prune_layer)
        _check_int(name, "stabilize_layers", self.stabilize_layers)
        _check_int(name, "neighbors", self.neighbors)
        if self.prune_layer < 1:
            raise ValueError(
                f"{name}: prune_layer={self.prune_layer} is not allowed: it must be >= 1 (the score of eq. 1 "
                "needs the input of block prune_layer - 1) and < the encoder depth"
            )
        if self.stabilize_layers < 0:
            raise ValueError(f"{name}: stabilize_layers={self.stabilize_layers} is not allowed: it must be >= 0")
        if self.neighbors < 1:
            raise ValueError(f"{name}: neighbors={self.neighbors} is not allowed: it must be >= 1")
        if not isinstance(self.reintegrate, bool):
            raise TypeError(f"{name}: reintegrate must be a bool, got {self.reintegrate!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"{name}: scope={self.scope!r} is not allowed: use one of {SCOPES}")

    def check_depth(self, depth: int) -> None:
        """Raise ValueError if these settings do not fit an encoder of ``depth`` blocks."""
        if not 1 <= self.prune_layer < depth:
            raise ValueError(
                f"IPCV: prune_layer={self.prune_layer} is outside the allowed range [1, {depth - 1}] "
                f"for this encoder (depth {depth}); use a smaller value, e.g. "
                f"ipcv.IPCV({self.keep_ratio}, prune_layer={max(1, depth // 3)}, "
                f"stabilize_layers={min(self.stabilize_layers, depth - max(1, depth // 3))})"
            )
        if self.prune_layer + self.stabilize_layers > depth:
            fits = depth - self.prune_layer
            raise ValueError(
                f"IPCV: stabilize_layers={self.stabilize_layers} is outside the allowed range "
                f"[0, {fits}] for prune_layer={self.prune_layer} and depth {depth} "
                f"(prune_layer + stabilize_layers must be <= depth); use stabilize_layers={fits} or smaller, "
                f"e.g. ipcv.IPCV({self.keep_ratio}, prune_layer={self.prune_layer}, stabilize_layers={fits})"
            )


def _check_bool(owner: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _check_vit_protocol(owner: str, settings) -> None:
    _check_choice(owner, "output", settings.output, OUTPUTS)
    _check_choice(owner, "scope", settings.scope, SCOPES)
    _check_choice(owner, "schedule", settings.schedule, ("even", "release"))
    _check_choice(owner, "metric", settings.metric, ("keys", "rotated_keys"))
    _check_int(owner, "start_layer", settings.start_layer)
    if settings.start_layer < 0:
        raise ValueError(f"{owner}: start_layer={settings.start_layer} is not allowed: it must be >= 0")


def _check_vit_depth(name: str, self, depth: int) -> None:
    if self.schedule == "release" and not self.start_layer < depth:
        raise ValueError(
            f"{name}: start_layer={self.start_layer} is outside the allowed range [0, {depth - 1}] "
            f"for this encoder (depth {depth})"
        )


@dataclass(frozen=True, slots=True)
class ToMe:
    """Settings of ToMe (token merging, Bolya et al. 2023) inside a vision encoder, the IPCV paper's
    ViT baseline (Appendix A.2, C).

    In every block, between attention and MLP, bipartite soft matching on the attention keys
    (averaged over heads) merges tokens of the same image / frame by size-weighted average; the
    number merged per block is spread evenly so each segment ends with ``keep_count(n, keep_ratio)``
    tokens after the last block (:func:`ipcv.methods.tome.merge_schedule`). The output is full
    length: each merged token is copied back to all of its source positions.

    Args:
        keep_ratio: share of each segment's patches left after the last block, in (0, 1].
        proportional_attention: add ``log(size)`` of each key to the attention logits (ToMe's
            proportional attention), so a merged token weighs as much as the tokens it stands for.
        output: what the encoder hands on. ``"full"`` (ours): full length, each merged / pruned token
            a copy of the token that stands for it. ``"reduced"`` (the IPCV paper's runs of this
            baseline, Table 4's KV column): only the kept / merged tokens, so the LLM receives a
            shorter sequence (Qwen2-VL and Qwen2.5-VL only, whole model, no LLM-side method; the rule that turns
            kept patches into whole 2x2 merge units is :func:`ipcv.models.qwen2_vl.reduced_units`).
        scope: ``"segment"`` (ours): every image / frame gets its own budget and merges stay inside
            it. ``"global"`` (the IPCV authors' runs): one matching over all unprotected patches of
            the call, across images and frames, in the order the authors' port keeps them
            (:func:`ipcv.methods.tome.release_matching`); the per-block count comes from the call's
            total (``schedule="release"``: :func:`ipcv.methods.tome.release_schedule` of the total;
            ``"even"``: down to ``keep_count(total, keep_ratio)``), so images end with unequal counts.
        schedule: ``"even"`` (ToMe's constant r per block, spread over all blocks to reach the
            target) or ``"release"`` (the IPCV authors' runs: from block ``start_layer`` on, each
            block keeps ``max(target / current, 0.8)`` of the current tokens, the merged count
            rounded down to a multiple of 4, until the target is reached).
        start_layer: first block that merges with ``schedule="release"`` (authors: 3).
        merge: ``"average"`` (ToMe: size-weighted average) or ``"mean"`` (the IPCV authors' port: the
            unweighted mean of the tokens merged, whatever each stands for).
        metric: the similarity features: ``"keys"`` (ToMe: the attention keys averaged over heads;
            in Qwen2-VL before the 2D rotary embedding) or ``"rotated_keys"`` (the IPCV authors'
            Qwen2-VL port: after it). The same in encoders without rotary embedding.
    """

    keep_ratio: float
    proportional_attention: bool = True
    output: Output = "full"
    scope: Scope = "segment"
    schedule: Literal["even", "release"] = "even"
    start_layer: int = 3
    merge: Literal["average", "mean"] = "average"
    metric: Literal["keys", "rotated_keys"] = "keys"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", _check_keep_ratio("ToMe", self.keep_ratio))
        _check_bool("ToMe", "proportional_attention", self.proportional_attention)
        _check_choice("ToMe", "merge", self.merge, ("average", "mean"))
        _check_vit_protocol("ToMe", self)

    def check_depth(self, depth: int) -> None:
        """Raise ValueError for a ``start_layer`` outside the encoder (``schedule="release"``)."""
        _check_vit_depth("ToMe", self, depth)


@dataclass(frozen=True, slots=True)
class ToFu:
    """Settings of ToFu (Token Fusion, Kim et al. 2024) inside a vision encoder (paper Appendix A.2, C).

    Same matching and per-block schedule as :class:`ToMe`; blocks ``0 .. prune_layers - 1`` *prune*
    (the matched token is dropped, its match is kept unchanged) and later blocks merge with MLERP
    (mean direction rescaled to the largest norm). No official code exists; the split is ours.
    ToFu's argument is that early blocks react non-linearly to interpolated (averaged) inputs, so
    merging there shifts the features, while later blocks are close to linear; the paper gives no
    block number for the switch. The default ``prune_layers = depth // 3`` (Qwen2-VL: 10 of 32,
    CLIP ViT-L: 8 of 24) is our choice: the early third, where a ViT's tokens change most per
    block, prunes. ``prune_layers=0`` is ToMe with MLERP merging; ``prune_layers=depth`` prunes
    everywhere.

    Args:
        keep_ratio: share of each segment's patches left after the last block, in (0, 1].
        prune_layers: number of leading blocks that prune, ``0 <= prune_layers <= depth``;
            None: ``depth // 3``.
        proportional_attention: as in :class:`ToMe`.
        merge: how the merging blocks combine tokens: ``"mlerp"`` (ToFu's MLERP), ``"average"``
            (size-weighted average) or ``"mean"`` (unweighted mean, as the IPCV authors' ToFu port
            averages).
        output, scope, schedule, start_layer, metric: as in :class:`ToMe`. With ``schedule="release"`` the
            authors' runs prune in the first half of the merging blocks and merge after; set
            ``prune_layers`` to match (see :func:`ipcv.presets.paper_settings`).
    """

    keep_ratio: float
    prune_layers: int | None = None
    proportional_attention: bool = True
    merge: Literal["mlerp", "average", "mean"] = "mlerp"
    output: Output = "full"
    scope: Scope = "segment"
    schedule: Literal["even", "release"] = "even"
    start_layer: int = 3
    metric: Literal["keys", "rotated_keys"] = "keys"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", _check_keep_ratio("ToFu", self.keep_ratio))
        if self.prune_layers is not None:
            _check_int("ToFu", "prune_layers", self.prune_layers)
            if self.prune_layers < 0:
                raise ValueError(f"ToFu: prune_layers={self.prune_layers} is not allowed: it must be >= 0")
        _check_bool("ToFu", "proportional_attention", self.proportional_attention)
        _check_choice("ToFu", "merge", self.merge, ("mlerp", "average", "mean"))
        _check_vit_protocol("ToFu", self)

    def pruning_blocks(self, depth: int) -> int:
        """Number of leading blocks that prune in an encoder of ``depth`` blocks."""
        return depth // 3 if self.prune_layers is None else self.prune_layers

    def check_depth(self, depth: int) -> None:
        """Raise ValueError if ``prune_layers`` exceeds the encoder depth (and as :meth:`ToMe.check_depth`)."""
        _check_vit_depth("ToFu", self, depth)
        if self.pruning_blocks(depth) > depth:
            raise ValueError(
                f"ToFu: prune_layers={self.prune_layers} is outside the allowed range [0, {depth}] "
                f"for this encoder (depth {depth})"
            )


@dataclass(frozen=True, slots=True)
class DARTViT:
    """Settings of DART's duplication-aware selection applied inside a vision encoder.

    At the input of block ``prune_layer`` each image / frame keeps ``keep_count(n, keep_ratio)``
    patches: ``pivots`` pivots (largest L1 norm of that block's attention keys) and, for each
    pivot, the patches least cosine-similar to it (:func:`ipcv.methods.dart.dart_keep`). Blocks
    ``prune_layer ..`` run on the kept patches only; after the last block each pruned patch gets a
    copy of its closest kept patch (Euclidean, on the states at ``prune_layer``).

    Args:
        keep_ratio: share of each segment's patches kept, in (0, 1].
        prune_layer: 0-based block whose input is pruned, ``0 <= prune_layer < depth``.
        pivots: pivots per segment, ``>= 1`` (DART: 8 = 4 image + 4 text; a vision tower has
            no text, so all 8 are image tokens; the IPCV authors' DART(ViT) used 4).
        key_layer: whose keys score the pivots: ``"current"`` (block ``prune_layer``'s keys of its
            input) or ``"previous"`` (block ``prune_layer - 1``'s keys, as DART and the authors'
            DART(ViT) do; needs ``prune_layer >= 1``).
        budget: ``"exact"`` (ours: ``keep_count(n)`` per segment, split as evenly as possible over
            the pivots) or ``"per_pivot4"`` (the authors' DART(ViT): each pivot takes
            ``n * keep / pivots`` rounded to the nearest multiple of 4, so the kept count is
            ``pivots + pivots * that``).
        output: what the encoder hands on. ``"full"`` (ours): full length, each merged / pruned token
            a copy of the token that stands for it. ``"reduced"`` (the IPCV paper's runs of this
            baseline, Table 4's KV column): only the kept / merged tokens, so the LLM receives a
            shorter sequence (Qwen2-VL and Qwen2.5-VL only, whole model, no LLM-side method; the rule that turns
            kept patches into whole 2x2 merge units is :func:`ipcv.models.qwen2_vl.reduced_units`).
        scope: ``"segment"`` (ours): every image / frame gets its own budget; ``"global"`` (the IPCV
            authors' runs): one budget over all patches of the call.
    """

    keep_ratio: float
    prune_layer: int = 3
    pivots: int = 8
    key_layer: Literal["current", "previous"] = "current"
    budget: Literal["exact", "per_pivot4"] = "exact"
    output: Output = "full"
    scope: Scope = "segment"

    def __post_init__(self) -> None:
        name = "DARTViT"
        object.__setattr__(self, "keep_ratio", _check_keep_ratio(name, self.keep_ratio))
        _check_int(name, "prune_layer", self.prune_layer)
        _check_int(name, "pivots", self.pivots)
        if self.prune_layer < 0:
            raise ValueError(f"{name}: prune_layer={self.prune_layer} is not allowed: it must be >= 0")
        if self.pivots < 1:
            raise ValueError(f"{name}: pivots={self.pivots} is not allowed: it must be >= 1")
        _check_choice(name, "key_layer", self.key_layer, ("current", "previous"))
        _check_choice(name, "budget", self.budget, ("exact", "per_pivot4"))
        _check_choice(name, "output", self.output, OUTPUTS)
        _check_choice(name, "scope", self.scope, SCOPES)
        if self.key_layer == "previous" and self.prune_layer < 1:
            raise ValueError(f"{name}: key_layer='previous' needs prune_layer >= 1, got prune_layer={self.prune_layer}")

    def check_depth(self, depth: int) -> None:
        """Raise ValueError if ``prune_layer`` is not a block of an encoder of ``depth`` blocks;
        ``output="reduced"`` is checked by
        :func:`ipcv.compress` (Qwen2-VL and Qwen2.5-VL only)."""
        if not 0 <= self.prune_layer < depth:
            raise ValueError(
                f"DARTViT: prune_layer={self.prune_layer} is outside the allowed range [0, {depth - 1}] "
                f"for this encoder (depth {depth})"
            )


# --- LLM-side methods (prune visual tokens inside the language decoder, at prefill) ---------------


def _check_layers(owner: str, layers: object) -> tuple[int, ...]:
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = (layers,)
    if not isinstance(layers, (tuple, list)) or not layers:
        raise TypeError(f"{owner}: layers must be a non-empty tuple of ints, got {layers!r}")
    out = tuple(_check_int(owner, "layers", x) for x in layers)
    if out[0] < 1 or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{owner}: layers={out} is not allowed: they must be increasing and >= 1")
    return out


def stage_counts(n: int, keep_ratio: float, stages: int) -> list[int]:
    """Tokens one visual span of ``n`` keeps after each of ``stages`` pruning stages: an even geometric
    schedule ``keep_count(n, keep_ratio ** (s / stages))`` for ``s = 1 .. stages``, so the last
    stage ends at ``keep_count(n, keep_ratio)`` and ``keep_ratio`` 1.0 prunes nothing."""
    counts, prev = [], n
    for s in range(1, stages + 1):
        prev = min(prev, keep_count(n, keep_ratio ** (s / stages)))
        counts.append(prev)
    return counts


def progressive_counts(n: int, ratios: tuple[float, ...], rounding: str = "nearest") -> list[int]:
    """V2Drop's official rule: stage ``s`` keeps ``max(1, int(current * ratios[s]))`` of the tokens
    left by the previous stage (``ratios`` relative to the current count; 0 keeps one token).
    ``rounding="floor"`` multiplies by ``1 - reduction_of(r)`` instead of ``r``, as the IPCV
    authors' ports do (they are given the reduction ratio), which differs from ``r`` in the last bit
    and so changes ``int()`` where ``current * r`` is a whole number."""
    counts, cur = [], n
    for r in ratios:
        share = 1.0 - reduction_of(r) if rounding == "floor" else r
        cur = min(cur, max(1, int(cur * share)))
        counts.append(cur)
    return counts


def layer_average(n: int, counts: list[int], layers: tuple[int, ...], num_layers: int) -> float:
    """Visual tokens per decoder layer, averaged over all ``num_layers`` layers, when a span of ``n``
    holds ``counts[s]`` tokens from the input of ``layers[s]`` on (SparseVLM's "equivalent" count)."""
    total, prev_layer, cur = 0, 0, n
    for layer, c in zip(layers, counts):
        total += (layer - prev_layer) * cur
        prev_layer, cur = layer, c
    return (total + (num_layers - prev_layer) * cur) / num_layers


def average_counts(n: int, keep_ratio: float, layers: tuple[int, ...], num_layers: int) -> list[int]:
    """Stage counts whose layer average (:func:`layer_average`) is ``keep_ratio * n``: every stage keeps
    the same share ``x`` of the previous one (counts ``round(n * x ** s)``, at least 1), ``x`` the
    largest share whose average does not exceed the target (found by bisection). SparseVLM's official
    code defines its budget as this average but hard-codes the per-stage counts for LLaVA's 576
    tokens; the geometric shape is ours. ``keep_ratio`` 1.0 keeps everything. Raises ValueError if even
    one token per stage averages above the target."""
    if keep_ratio >= 1.0:
        return [n] * len(layers)

    def counts(x: float) -> list[int]:
        out, prev = [], n
        for s in range(1, len(layers) + 1):
            prev = min(prev, max(1, math.floor(n * x**s + 0.5)))
            out.append(prev)
        return out

    target = keep_ratio * n
    least = layer_average(n, counts(0.0), layers, num_layers)
    if least > target:
        raise ValueError(
            f"keep_ratio={keep_ratio!r} cannot be reached with budget='average' for a span of {n} tokens: keeping "
            f"one token from layer {layers[0]} on already averages {least:.2f} tokens per layer, above {target:.2f}"
        )
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if layer_average(n, counts(mid), layers, num_layers) <= target:
            lo = mid
        else:
            hi = mid
    return counts(lo)


Budget = Literal["last", "average", "progressive"]
BUDGETS: tuple[str, ...] = ("last", "average", "progressive")


class _LanguageMethod:
    """Shared behaviour of the LLM-side settings: pruning stages and their per-span budgets.

    Every LLM-side settings class has the fields ``keep_ratio``, ``spans`` and ``rounding`` (and the
    multi-stage ones ``budget`` / ``stage_ratios``):

    - ``spans``: which visual tokens get a budget. ``"each"`` (ours, the default): every image and
      every video frame of every sample. ``"first"`` (the official LLM-side code of DART, FastV,
      V2Drop, SparseVLM and the IPCV authors' runs): only the first visual block of the sample (the
      first image, or a whole video as one span) is pruned; later images are kept whole. ``"all"``:
      one budget over all visual tokens of the sample.
    - ``rounding``: ``"nearest"`` (:func:`keep_count`) or ``"floor"`` (:func:`floor_count`, the
      published code's ``int(n * (1 - reduction))``).
    """

    __slots__ = ()

    def stage_layers(self) -> tuple[int, ...]:
        """0-based decoder layers whose *input* is pruned, in order."""
        return tuple(self.layers) if hasattr(self, "layers") else (self.layer,)

    def counts(self, n: int, num_layers: int | None = None) -> list[int]:
        """Tokens a visual span of ``n`` keeps after each stage.

        ``budget="last"``: :func:`stage_counts` (``keep_ratio`` is the share after the last stage);
        ``"average"``: :func:`average_counts` (the layer-averaged share; needs ``num_layers``);
        ``"progressive"``: :func:`progressive_counts` with ``stage_ratios``. A single-stage method
        keeps ``keep_count(n)`` (``rounding="floor"``: :func:`floor_count`)."""
        layers = self.stage_layers()
        budget = getattr(self, "budget", "last")
        if budget == "progressive":
            return progressive_counts(n, self.ratios(), self.rounding)
        if budget == "average":
            if num_layers is None:
                raise ValueError(f"{type(self).__name__}: budget='average' needs the decoder depth (num_layers)")
            return average_counts(n, self.keep_ratio, layers, num_layers)
        if len(layers) == 1 or self.keep_ratio >= 1.0:
            return [rounded_count(n, self.keep_ratio, self.rounding)] * len(layers)
        return stage_counts(n, self.keep_ratio, len(layers))

    def ratios(self) -> tuple[float, ...]:
        """Per-stage shares of ``budget="progressive"``: ``stage_ratios``, or ``keep_ratio`` at every stage."""
        given = getattr(self, "stage_ratios", None)
        return tuple(given) if given is not None else (self.keep_ratio,) * len(self.stage_layers())

    def check_depth(self, num_decoder_layers: int) -> None:
        """Raise ValueError if a pruning layer is not a layer of a decoder of that depth, or if a
        layer-averaged budget cannot be reached (the layers before the first stage alone exceed it)."""
        name = type(self).__name__
        for layer in self.stage_layers():
            if not 1 <= layer < num_decoder_layers:
                what = "layers" if hasattr(self, "layers") else "layer"
                raise ValueError(
                    f"{name}: {what}={getattr(self, what)!r} is outside the allowed range "
                    f"[1, {num_decoder_layers - 1}] for this decoder ({num_decoder_layers} layers)"
                )
        if getattr(self, "budget", "last") == "average" and self.keep_ratio < 1.0:
            first = self.stage_layers()[0]
            floor = first / num_decoder_layers
            if self.keep_ratio <= floor:
                raise ValueError(
                    f"{name}: keep_ratio={self.keep_ratio!r} cannot be reached with budget='average': layers 0 .. "
                    f"{first - 1} of {num_decoder_layers} keep every token, so the layer average is above "
                    f"{floor:.3f}; use a larger keep_ratio, an earlier first layer or budget='last'/'progressive'"
                )


def _check_language_common(name: str, settings) -> None:
    object.__setattr__(settings, "keep_ratio", _check_keep_ratio(name, settings.keep_ratio))
    _check_choice(name, "spans", settings.spans, SPANS)
    _check_choice(name, "rounding", settings.rounding, ROUNDINGS)
    if hasattr(settings, "budget"):
        _check_choice(name, "budget", settings.budget, BUDGETS)
        ratios = settings.stage_ratios
        if ratios is not None:
            if not isinstance(ratios, (tuple, list)):
                raise TypeError(f"{name}: stage_ratios must be a tuple of real numbers or None, got {ratios!r}")
            ratios = tuple(ratios)
            for r in ratios:
                if isinstance(r, bool) or not isinstance(r, Real) or not 0.0 <= float(r) <= 1.0:
                    raise ValueError(f"{name}: stage_ratios={ratios!r} is not allowed: each must be in [0, 1]")
            if len(ratios) != len(settings.layers):
                raise ValueError(
                    f"{name}: stage_ratios={ratios!r} has {len(ratios)} entries but layers={settings.layers!r} "
                    f"has {len(settings.layers)}"
                )
            if settings.budget != "progressive":
                raise ValueError(
                    f"{name}: stage_ratios is only used with budget='progressive', got budget={settings.budget!r}"
                )
            object.__setattr__(settings, "stage_ratios", tuple(float(r) for r in ratios))


@dataclass(frozen=True, slots=True)
class DART(_LanguageMethod):
    """DART (duplication-aware token reduction, Wen et al. 2025) in the language decoder.

    At the input of decoder layer ``layer``, during prefill, every visual span (see ``spans``) keeps
    ``keep_count(n, keep_ratio)`` of its ``n`` tokens: ``pivots - text_pivots`` image pivots (largest
    L1 norm of the keys, after mRoPE) and, per pivot, the span tokens least cosine-similar to it
    (:func:`ipcv.methods.dart.dart_keep`). ``text_pivots`` text tokens with the largest key norm act
    as extra pivots: they steer the choice (tokens duplicating the question are dropped) but are not
    themselves pruned.

    Defaults follow the official DART: layer 2, keys of layer ``layer - 1`` (the keys that layer
    computed from its own input), text pivots from the text *after* the first visual block, pivots
    visited in the official order, states normed by the final RMSNorm. Ours: every image / frame is a
    span with an exact budget (``spans="each"``, ``budget="exact"``).

    Args:
        keep_ratio: share of each visual span kept, in (0, 1].
        layer: 0-based decoder layer whose input is pruned, ``1 <= layer < depth`` (official: 2; the
            IPCV authors' runs: 3).
        pivots: pivots per span, image and text together, ``>= 1`` (official: 8).
        text_pivots: how many of them are text tokens, ``0 <= text_pivots < pivots`` (official: 4).
        normalize: apply the decoder's final RMSNorm before the cosine similarity (official: yes).
        key_layer: ``"previous"`` (official: layer ``layer - 1``'s keys of its input) or ``"current"``
            (layer ``layer``'s keys of its input).
        text_from: ``"after_image"`` (official: text after the first visual block) or ``"all"`` (every
            text token of the sample, the system prompt included).
        pivot_order: ``"official"`` (pivots visited in the iteration order of a Python ``set`` of their
            prompt positions, image pivots inserted first, as the official code does) or ``"score"``
            (image pivots by score, then text pivots).
        budget: ``"exact"`` (ours: ``keep_count(n)`` kept, spread over the pivots as evenly as
            possible) or ``"per_pivot"`` (official: every pivot takes ``int(n * keep / pivots)``
            tokens, so ``image pivots + pivots * int(n * keep / pivots)`` are kept; ``keep`` as the
            published code computes it from the reduction ratio).
        spans, rounding: see :class:`_LanguageMethod` (``rounding`` applies to ``budget="exact"``).
    """

    keep_ratio: float
    layer: int = 2
    pivots: int = 8
    text_pivots: int = 4
    normalize: bool = True
    key_layer: Literal["previous", "current"] = "previous"
    text_from: Literal["after_image", "all"] = "after_image"
    pivot_order: Literal["official", "score"] = "official"
    budget: Literal["exact", "per_pivot"] = "exact"
    spans: Spans = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        name = "DART"
        object.__setattr__(self, "keep_ratio", _check_keep_ratio(name, self.keep_ratio))
        _check_choice(name, "spans", self.spans, SPANS)
        _check_choice(name, "rounding", self.rounding, ROUNDINGS)
        _check_int(name, "layer", self.layer)
        _check_int(name, "pivots", self.pivots)
        _check_int(name, "text_pivots", self.text_pivots)
        _check_bool(name, "normalize", self.normalize)
        _check_choice(name, "key_layer", self.key_layer, ("previous", "current"))
        _check_choice(name, "text_from", self.text_from, ("after_image", "all"))
        _check_choice(name, "pivot_order", self.pivot_order, ("official", "score"))
        _check_choice(name, "budget", self.budget, ("exact", "per_pivot"))
        if self.layer < 1:
            raise ValueError(f"{name}: layer={self.layer} is not allowed: it must be >= 1 and < the decoder depth")
        if self.pivots < 1:
            raise ValueError(f"{name}: pivots={self.pivots} is not allowed: it must be >= 1")
        if not 0 <= self.text_pivots < self.pivots:
            raise ValueError(
                f"{name}: text_pivots={self.text_pivots} is outside the allowed range [0, {self.pivots - 1}] "
                f"(pivots={self.pivots})"
            )

    def counts(self, n: int, num_layers: int | None = None) -> list[int]:
        """Tokens a span of ``n`` keeps: ``keep_count(n)`` (``budget="exact"``) or the official
        ``image pivots + pivots * int(n * keep / pivots)`` (``"per_pivot"``), at most ``n``."""
        if self.budget == "exact" or self.keep_ratio >= 1.0:
            return [rounded_count(n, self.keep_ratio, self.rounding)]
        per = int(n * (1.0 - reduction_of(self.keep_ratio)) / self.pivots)
        return [min(n, self.pivots - self.text_pivots + self.pivots * per)]


@dataclass(frozen=True, slots=True)
class FastV(_LanguageMethod):
    """FastV (Chen et al. 2024) in the language decoder.

    At the input of decoder layer ``layer``, during prefill, every visual span keeps the tokens that
    the last prompt token attends to most in layer ``layer - 1`` (softmax attention averaged over
    heads). Those attention weights are computed explicitly for that one row and layer from the
    layer's own queries and keys; every layer keeps the model's attention backend.

    Args:
        keep_ratio: share of each visual span kept, in (0, 1] (FastV's R is ``1 - keep_ratio``).
        layer: K, the 0-based decoder layer whose input is pruned, ``1 <= layer < depth`` (official:
            2; the IPCV authors' port reads their script's 3, but Table 4's KV cache fits 2).
        spans, rounding: see :class:`_LanguageMethod` (the authors' port: ``"first"``, ``"floor"``).
    """

    keep_ratio: float
    layer: int = 2
    spans: Spans = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        _check_language_common("FastV", self)
        _check_int("FastV", "layer", self.layer)
        if self.layer < 1:
            raise ValueError(
                f"FastV: layer={self.layer} is not allowed: it must be >= 1 (the score is layer - 1's attention) "
                "and < the decoder depth"
            )


@dataclass(frozen=True, slots=True)
class V2Drop(_LanguageMethod):
    """V2Drop (variation-aware vision token dropping, Chen et al. 2025) in the language decoder.

    At the input of each layer ``l`` in ``layers``, during prefill, every visual span keeps the
    tokens whose state changed most in layer ``l - 1`` (``score="l2"``: ``||h_l - h_{l-1}||_2``, the
    score IPCV uses in the ViT, eq. 1). No attention weights are needed.

    Args:
        keep_ratio: the budget, read as ``budget`` says, in (0, 1].
        layers: increasing 0-based decoder layers whose inputs are pruned, each ``>= 1`` (official
            Qwen2-VL code: 3, 16, 22; LLaVA and the IPCV authors' port: 3, 17, 22).
        budget: ``"average"`` (default: ``keep_ratio`` is the layer-averaged share of visual tokens,
            the "equivalent" count V2Drop and SparseVLM report; :func:`average_counts`),
            ``"progressive"`` (the official rule: stage ``s`` keeps ``max(1, int(current *
            stage_ratios[s]))``; the official Qwen2-VL code hard-codes ``(0.25, 0.05, 0)``) or
            ``"last"`` (``keep_ratio`` is the share after the last stage, :func:`stage_counts`).
        stage_ratios: per-stage shares for ``budget="progressive"``; None: ``keep_ratio`` at every stage.
        score: ``"l2"`` (official) or ``"cosine"`` (the IPCV authors' port: lowest cosine similarity
            between ``h_l`` and ``h_{l-1}`` kept).
        spans, rounding: see :class:`_LanguageMethod`.
    """

    keep_ratio: float
    layers: tuple[int, ...] = (3, 16, 22)
    budget: Budget = "average"
    stage_ratios: tuple[float, ...] | None = None
    score: Literal["l2", "cosine"] = "l2"
    spans: Spans = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _check_layers("V2Drop", self.layers))
        _check_language_common("V2Drop", self)
        _check_choice("V2Drop", "score", self.score, ("l2", "cosine"))


@dataclass(frozen=True, slots=True)
class SparseVLM(_LanguageMethod):
    """SparseVLM (text-guided visual token sparsification, Zhang et al. 2025), ported to Qwen2-VL.

    At the input of each layer ``l`` in ``layers``, during prefill: the attention of layer ``l - 1``
    (computed explicitly for the text rows only) from each text token to the visual tokens is
    averaged over heads; a visual token's score is the attention it receives from the *raters*
    (raters and heads averaged). Raters (``raters="embeddings"``, official) are chosen once, from
    the prompt's input embeddings: the text tokens after the first visual block whose softmax
    relevance to its visual tokens (visual-text dot products, softmax over the text, averaged over
    the visual tokens) is above the mean. Every visual span keeps its top tokens; of
    the tokens it deletes, the top ``recycle`` share by score is clustered (DPC-kNN with
    ``cluster_neighbors`` neighbours, ``m // 10 + 1`` clusters for ``m`` recycled tokens) and each
    cluster comes back as one token: the mean of the cluster's states, at the position of its
    density peak.

    The official code prunes *inside* layers 2, 6 and 15 with their own attention maps, so the
    inputs of layers 3, 7 and 16 are the first reduced ones: ``layers=(3, 7, 16)`` scored with
    layers 2, 6, 15 is the same thing. Its budget is the layer-averaged count (``budget="average"``)
    and the recycled cluster tokens come on top of it (``recycle_in_budget=False``).

    What still differs from the LLaVA release: the per-stage counts follow :func:`average_counts`
    (geometric) instead of the hard-coded tables for 576 tokens, and instead of the rank-adaptive
    deletion count; cluster tokens keep the 3D mRoPE position of their density peak and stay in
    sequence order.

    Args:
        keep_ratio: the budget, read as ``budget`` says (see :class:`V2Drop`), in (0, 1].
        layers: increasing 0-based decoder layers whose inputs are pruned (official: 3, 7, 16).
        budget, stage_ratios: as in :class:`V2Drop` (the IPCV authors' port: ``"progressive"`` with
            ``(keep_ratio, 0.5, 0.5)``).
        recycle: share of the deleted tokens that is clustered and recycled, in [0, 1) (official:
            0.3; the authors' port: 0.05).
        recycle_in_budget: the cluster tokens count against the span's budget (True) or come on top
            of it (False, official).
        recycle_rule: how many of ``d`` deleted tokens are recycled: ``"plus_one"`` (official:
            ``int(recycle * d) + 1``) or ``"at_least_one"`` (the authors' port:
            ``max(1, int(recycle * d))``, only when ``d > 1``).
        raters: ``"embeddings"`` (official, above), ``"attention"`` (per stage, the text tokens whose
            mean attention to the visual tokens is at least the mean over text tokens) or ``"all"``
            (every text token after the first visual block rates: the authors' port).
        cluster_neighbors: k of the DPC-kNN density (distances to the k nearest, the token itself
            included), ``>= 1``; None (official): as many as there are clusters.
        spans, rounding: see :class:`_LanguageMethod`.
    """

    keep_ratio: float
    layers: tuple[int, ...] = (3, 7, 16)
    budget: Budget = "average"
    stage_ratios: tuple[float, ...] | None = None
    recycle: float = 0.3
    recycle_in_budget: bool = False
    recycle_rule: Literal["plus_one", "at_least_one"] = "plus_one"
    raters: Literal["embeddings", "attention", "all"] = "embeddings"
    cluster_neighbors: int | None = None
    spans: Spans = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        name = "SparseVLM"
        object.__setattr__(self, "layers", _check_layers(name, self.layers))
        _check_language_common(name, self)
        if isinstance(self.recycle, bool) or not isinstance(self.recycle, Real):
            raise TypeError(
                f"{name}: recycle must be a real number, got {type(self.recycle).__name__} {self.recycle!r}"
            )
        if not 0.0 <= float(self.recycle) < 1.0:
            raise ValueError(f"{name}: recycle={self.recycle!r} is outside the allowed range [0, 1)")
        object.__setattr__(self, "recycle", float(self.recycle))
        _check_bool(name, "recycle_in_budget", self.recycle_in_budget)
        _check_choice(name, "raters", self.raters, ("embeddings", "attention", "all"))
        _check_choice(name, "recycle_rule", self.recycle_rule, ("plus_one", "at_least_one"))
        if self.cluster_neighbors is not None and _check_int(name, "cluster_neighbors", self.cluster_neighbors) < 1:
            raise ValueError(f"{name}: cluster_neighbors={self.cluster_neighbors} is not allowed: it must be >= 1")


LANGUAGE_METHODS: tuple[type, ...] = (DART, FastV, V2Drop, SparseVLM)
