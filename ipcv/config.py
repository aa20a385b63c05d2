"""Typed, validated, immutable settings objects for the compression methods.

A settings object says *what* to do; it holds no tensors and no model. Checks that need the
model (its depth) run when the settings are applied, in :func:`ipcv.compress`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Literal

Scope = Literal["segment", "global"]
SCOPES: tuple[str, ...] = ("segment", "global")


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


def keep_count(n: int, keep_ratio: float) -> int:
    """Tokens kept out of ``n``: ``max(1, min(n, floor(keep_ratio * n + 0.5)))`` (round half up)."""
    return max(1, min(n, math.floor(keep_ratio * n + 0.5)))


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
    """

    keep_ratio: float
    proportional_attention: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", _check_keep_ratio("ToMe", self.keep_ratio))
        _check_bool("ToMe", "proportional_attention", self.proportional_attention)

    def check_depth(self, depth: int) -> None:
        """Any depth fits (the schedule spreads the reduction over all blocks)."""


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
    """

    keep_ratio: float
    prune_layers: int | None = None
    proportional_attention: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", _check_keep_ratio("ToFu", self.keep_ratio))
        if self.prune_layers is not None:
            _check_int("ToFu", "prune_layers", self.prune_layers)
            if self.prune_layers < 0:
                raise ValueError(f"ToFu: prune_layers={self.prune_layers} is not allowed: it must be >= 0")
        _check_bool("ToFu", "proportional_attention", self.proportional_attention)

    def pruning_blocks(self, depth: int) -> int:
        """Number of leading blocks that prune in an encoder of ``depth`` blocks."""
        return depth // 3 if self.prune_layers is None else self.prune_layers

    def check_depth(self, depth: int) -> None:
        """Raise ValueError if ``prune_layers`` exceeds the encoder depth."""
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
            no text, so all 8 are image tokens).
    """

    keep_ratio: float
    prune_layer: int = 3
    pivots: int = 8

    def __post_init__(self) -> None:
        name = "DARTViT"
        object.__setattr__(self, "keep_ratio", _check_keep_ratio(name, self.keep_ratio))
        _check_int(name, "prune_layer", self.prune_layer)
        _check_int(name, "pivots", self.pivots)
        if self.prune_layer < 0:
            raise ValueError(f"{name}: prune_layer={self.prune_layer} is not allowed: it must be >= 0")
        if self.pivots < 1:
            raise ValueError(f"{name}: pivots={self.pivots} is not allowed: it must be >= 1")

    def check_depth(self, depth: int) -> None:
        """Raise ValueError if ``prune_layer`` is not a block of an encoder of ``depth`` blocks."""
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


class _LanguageMethod:
    """Shared behaviour of the LLM-side settings: pruning stages and their per-span budgets."""

    __slots__ = ()

    def stage_layers(self) -> tuple[int, ...]:
        """0-based decoder layers whose *input* is pruned, in order."""
        return tuple(self.layers) if hasattr(self, "layers") else (self.layer,)

    def counts(self, n: int) -> list[int]:
        """Tokens a visual span of ``n`` keeps after each stage (:func:`stage_counts`)."""
        return stage_counts(n, self.keep_ratio, len(self.stage_layers()))

    def check_depth(self, num_decoder_layers: int) -> None:
        """Raise ValueError if a pruning layer is not a layer of a decoder of that depth."""
        name = type(self).__name__
        for layer in self.stage_layers():
            if not 1 <= layer < num_decoder_layers:
                what = "layers" if hasattr(self, "layers") else "layer"
                raise ValueError(
                    f"{name}: {what}={getattr(self, what)!r} is outside the allowed range "
                    f"[1, {num_decoder_layers - 1}] for this decoder ({num_decoder_layers} layers)"
                )


@dataclass(frozen=True, slots=True)
class DART(_LanguageMethod):
    """DART (duplication-aware token reduction, Wen et al. 2025) in the language decoder.

    At the input of decoder layer ``layer``, during prefill, every visual span (one image, or one
    video frame) keeps ``keep_count(n, keep_ratio)`` of its ``n`` tokens: ``pivots - text_pivots``
    image pivots (largest L1 norm of that layer's keys, after mRoPE) and, split evenly over all
    pivots, the span tokens least cosine-similar to each pivot (:func:`ipcv.methods.dart.dart_keep`).
    The ``text_pivots`` text tokens of the sample with the largest key norm act as extra pivots:
    they steer the choice (tokens duplicating the question are dropped) but are not themselves
    pruned. Differences from the release: budgets are exact per span (the release keeps
    ``pivots + 8 * int(n * keep / 8)`` and prunes only the first image).

    Args:
        keep_ratio: share of each visual span kept, in (0, 1].
        layer: 0-based decoder layer whose input is pruned, ``1 <= layer < depth`` (release: 2).
        pivots: pivots per span, image and text together, ``>= 1`` (release: 8).
        text_pivots: how many of them are text tokens, ``0 <= text_pivots < pivots`` (release: 4).
        normalize: apply the decoder's final RMSNorm before the cosine similarity (the official
            DART does; the IPCV authors' copy does not).
    """

    keep_ratio: float
    layer: int = 2
    pivots: int = 8
    text_pivots: int = 4
    normalize: bool = True

    def __post_init__(self) -> None:
        name = "DART"
        object.__setattr__(self, "keep_ratio", _check_keep_ratio(name, self.keep_ratio))
        _check_int(name, "layer", self.layer)
        _check_int(name, "pivots", self.pivots)
        _check_int(name, "text_pivots", self.text_pivots)
        _check_bool(name, "normalize", self.normalize)
        if self.layer < 1:
            raise ValueError(f"{name}: layer={self.layer} is not allowed: it must be >= 1 and < the decoder depth")
        if self.pivots < 1:
            raise ValueError(f"{name}: pivots={self.pivots} is not allowed: it must be >= 1")
        if not 0 <= self.text_pivots < self.pivots:
            raise ValueError(
                f"{name}: text_pivots={self.text_pivots} is outside the allowed range [0, {self.pivots - 1}] "
                f"(pivots={self.pivots})"
            )


@dataclass(frozen=True, slots=True)
class FastV(_LanguageMethod):
    """FastV (Chen et al. 2024) in the language decoder.

    At the input of decoder layer ``layer``, during prefill, every visual span keeps the
    ``keep_count(n, keep_ratio)`` tokens that the last prompt token attends to most in layer
    ``layer - 1`` (softmax attention averaged over heads). Those attention weights are computed
    explicitly for that one row and layer from the layer's own queries and keys; every layer keeps
    the model's attention backend.

    Args:
        keep_ratio: share of each visual span kept, in (0, 1] (FastV's R is ``1 - keep_ratio``).
        layer: K, the 0-based decoder layer whose input is pruned, ``1 <= layer < depth`` (paper: 2).
    """

    keep_ratio: float
    layer: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", _check_keep_ratio("FastV", self.keep_ratio))
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
    tokens whose state changed most in layer ``l - 1`` (``||h_l - h_{l-1}||_2``, the score IPCV uses
    in the ViT, eq. 1). The counts follow :func:`stage_counts`: after the last stage a span of ``n``
    holds ``keep_count(n, keep_ratio)`` tokens, earlier stages an even geometric share in between.
    No attention weights are needed.

    Args:
        keep_ratio: share of each visual span left after the last stage, in (0, 1].
        layers: increasing 0-based decoder layers whose inputs are pruned, each ``>= 1``
            (default: the release's Qwen2-VL layers 3, 16, 22).
    """

    keep_ratio: float
    layers: tuple[int, ...] = (3, 16, 22)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", _check_keep_ratio("V2Drop", self.keep_ratio))
        object.__setattr__(self, "layers", _check_layers("V2Drop", self.layers))


@dataclass(frozen=True, slots=True)
class SparseVLM(_LanguageMethod):
    """SparseVLM (text-guided visual token sparsification, Zhang et al. 2025), ported to Qwen2-VL.

    At the input of each layer ``l`` in ``layers``, during prefill: the attention of layer ``l - 1``
    (computed explicitly for the text rows only) from each text token to the visual tokens is
    averaged over heads; *raters* are the text tokens whose mean attention to the visual tokens is
    at least the mean over text tokens; a visual token's score is its attention from the raters
    (raters and heads averaged). Every visual span keeps its top tokens; of the tokens it deletes,
    the top ``recycle`` share by score is clustered (DPC-kNN, ``m // 10 + 1`` clusters for ``m``
    recycled tokens) and each cluster comes back as one token: the mean of the cluster's states, at
    the position of its density peak. Counts per stage follow :func:`stage_counts`; recycled
    tokens count against the budget.

    What differs from the LLaVA release: fixed budgets per span instead of the
    rank-adaptive deletion count; scores from layer ``l - 1``'s attention (computed from its
    queries and keys) rather than from maps returned by the layer itself; cluster tokens keep the
    3D mRoPE position of their density peak and stay in sequence order (LLaVA's 1D positions let
    the release append them); every image / frame is a span.

    Args:
        keep_ratio: share of each visual span left after the last stage, in (0, 1].
        layers: increasing 0-based decoder layers whose inputs are pruned, each ``>= 1``
            (release, LLaVA: 2, 6, 15).
        recycle: share of the deleted tokens that is clustered and recycled, in [0, 1).
    """

    keep_ratio: float
    layers: tuple[int, ...] = (2, 6, 15)
    recycle: float = 0.3

    def __post_init__(self) -> None:
        name = "SparseVLM"
        object.__setattr__(self, "keep_ratio", _check_keep_ratio(name, self.keep_ratio))
        object.__setattr__(self, "layers", _check_layers(name, self.layers))
        if isinstance(self.recycle, bool) or not isinstance(self.recycle, Real):
            raise TypeError(
                f"{name}: recycle must be a real number, got {type(self.recycle).__name__} {self.recycle!r}"
            )
        if not 0.0 <= float(self.recycle) < 1.0:
            raise ValueError(f"{name}: recycle={self.recycle!r} is outside the allowed range [0, 1)")
        object.__setattr__(self, "recycle", float(self.recycle))


LANGUAGE_METHODS: tuple[type, ...] = (DART, FastV, V2Drop, SparseVLM)
