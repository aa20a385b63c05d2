"""Settings of the LLM-side methods: DART, FastV, V2Drop and SparseVLM, which prune visual tokens inside the
language decoder at prefill. Typed, validated, immutable; :meth:`counts` gives the tokens a visual span keeps
after each stage (budget arithmetic in :mod:`ipcv.budgets`)."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Literal

from ..budgets import average_counts, dart_per_pivot, progressive_counts, rounded_count, stage_counts
from ._checks import check_bool, check_int, check_keep_ratio, check_layers, check_literals

Spans = Literal["each", "first", "all"]
Rounding = Literal["nearest", "floor"]

Budget = Literal["last", "average", "progressive"]


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
    object.__setattr__(settings, "keep_ratio", check_keep_ratio(name, settings.keep_ratio))
    check_literals(name, settings, "spans", "rounding")
    if hasattr(settings, "budget"):
        check_literals(name, settings, "budget")
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
        object.__setattr__(self, "keep_ratio", check_keep_ratio(name, self.keep_ratio))
        check_literals(name, self, "spans", "rounding")
        check_int(name, "layer", self.layer)
        check_int(name, "pivots", self.pivots)
        check_int(name, "text_pivots", self.text_pivots)
        check_bool(name, "normalize", self.normalize)
        check_literals(name, self, "key_layer", "text_from", "pivot_order", "budget")
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
        per = dart_per_pivot(n, self.keep_ratio, self.pivots)
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
        check_int("FastV", "layer", self.layer)
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
        object.__setattr__(self, "layers", check_layers("V2Drop", self.layers))
        _check_language_common("V2Drop", self)
        check_literals("V2Drop", self, "score")


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
        object.__setattr__(self, "layers", check_layers(name, self.layers))
        _check_language_common(name, self)
        if isinstance(self.recycle, bool) or not isinstance(self.recycle, Real):
            raise TypeError(
                f"{name}: recycle must be a real number, got {type(self.recycle).__name__} {self.recycle!r}"
            )
        if not 0.0 <= float(self.recycle) < 1.0:
            raise ValueError(f"{name}: recycle={self.recycle!r} is outside the allowed range [0, 1)")
        object.__setattr__(self, "recycle", float(self.recycle))
        check_bool(name, "recycle_in_budget", self.recycle_in_budget)
        check_literals(name, self, "raters", "recycle_rule")
        if self.cluster_neighbors is not None and check_int(name, "cluster_neighbors", self.cluster_neighbors) < 1:
            raise ValueError(f"{name}: cluster_neighbors={self.cluster_neighbors} is not allowed: it must be >= 1")


# --- pre-LLM methods: one pruning stage at the decoder's input (layer 0), on the vision tower's output --------


class _PreLLMMethod(_LanguageMethod):
    """Shared behaviour of the pre-LLM methods (VisionZip, DivPrune, CDPruner, RandomKeep, Pool): they prune
    the visual tokens once, at the *input* of decoder layer 0 (the vision tower's merged output, before any
    decoder layer), so every decoder layer and the KV cache see only the kept tokens, and the vision tower
    runs in full (or under a vision-side method, with which they compose). Each visual span (``spans``)
    keeps ``keep_count(n, keep_ratio)`` of its ``n`` tokens (``rounding="floor"``: ``int(n * keep)``)."""

    __slots__ = ()
    pre_llm = True

    def stage_layers(self) -> tuple[int, ...]:
        return (0,)

    def counts(self, n: int, num_layers: int | None = None) -> list[int]:
        return [rounded_count(n, self.keep_ratio, self.rounding)]

    def check_depth(self, num_decoder_layers: int) -> None:
        """Any decoder depth: the stage is at layer 0's input."""


@dataclass(frozen=True, slots=True)
class RandomKeep(_PreLLMMethod):
    """Random selection of visual tokens at the LLM's input (the "random" control).

    Each visual span keeps ``keep_count(n)`` tokens drawn uniformly without replacement from a CPU
    generator seeded with ``seed`` and the span's number in its sample
    (:func:`ipcv.methods.random_keep.random_keep`): reproducible across calls, devices and batch
    positions.

    Args:
        keep_ratio: share of each visual span kept, in (0, 1].
        seed: the seed, an int ``>= 0``.
        spans, rounding: see :class:`_LanguageMethod`.
    """

    keep_ratio: float
    seed: int = 0
    spans: Spans = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        _check_language_common("RandomKeep", self)
        if check_int("RandomKeep", "seed", self.seed) < 0:
            raise ValueError(f"RandomKeep: seed={self.seed} is not allowed: it must be >= 0")


@dataclass(frozen=True, slots=True)
class Pool(_PreLLMMethod):
    """Spatial average pooling of each image / frame's visual tokens at the LLM's input (the
    "pooling / downsampling" control).

    The ``h x w`` grid of a span's LLM tokens (after the tower's 2x2 merger) is averaged over the cells of
    an ``h' x w'`` grid, ``h' = round(h * sqrt(keep_ratio))`` (:mod:`ipcv.methods.pool`): at
    ``keep_ratio=0.25`` on an even grid, the plain 2x2 average with stride 2; other ratios use the cells
    of ``adaptive_avg_pool2d``, so the kept count is ``h' * w'``, close to but not always
    ``keep_count(n)``. A pooled token sits at the position (mRoPE ``(t, h, w)``, or the 1D position) of
    its cell's top-left token. The grid comes from the tokens' 3D mRoPE positions (Qwen2-VL, Qwen2.5-VL)
    or, for 1D positions, from a square span (LLaVA's 24 x 24, an InternVL tile's 16 x 16); a span that
    is neither is refused.

    Args:
        keep_ratio: the target share of each span's tokens, in (0, 1].
    """

    keep_ratio: float
    spans: Literal["each"] = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        _check_language_common("Pool", self)


@dataclass(frozen=True, slots=True)
class DivPrune(_PreLLMMethod):
    """DivPrune (Alvar et al., CVPR 2025) at the LLM's input.

    Each visual span keeps the greedy solution of the Max-Min Diversity Problem over its tokens (the
    projector's / merger's output) with the cosine distance: the token farthest from its nearest
    neighbour first, then each time the token farthest from the kept ones
    (:func:`ipcv.methods.divprune.divprune_keep`). Implemented from the paper only.

    Args:
        keep_ratio: share of each visual span kept, in (0, 1].
        spans, rounding: see :class:`_LanguageMethod`.
    """

    keep_ratio: float
    spans: Spans = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        _check_language_common("DivPrune", self)


@dataclass(frozen=True, slots=True)
class CDPruner(_PreLLMMethod):
    """CDPruner (Zhang et al., NeurIPS 2025) at the LLM's input.

    Each visual span keeps the greedy MAP of a DPP whose kernel is the cosine similarity of its tokens
    (the merger's / projector's output), conditioned on the instruction: ``L = diag(q) S diag(q)`` with
    ``q`` the min-max normalised *negated* mean cosine similarity of each visual token to the prompt's
    text embeddings (the official code's relevance) (:func:`ipcv.methods.cdpruner.cdpruner_keep`).

    The official LLaVA code takes the relevance in CLIP's joint space (CLIP's image and text towers);
    Qwen2-VL and the other families here have no text tower, so both sides are the decoder's input
    embeddings (the visual tokens and the prompt's text token embeddings), as OpenVINO GenAI's Qwen2-VL
    port does.

    Args:
        keep_ratio: share of each visual span kept, in (0, 1].
        theta: None (the official code: ``q = relevance``) or the paper's trade-off in [0, 1)
            (``q = exp(theta / (2 (1 - theta)) * relevance)``).
        text_from: the instruction's tokens: ``"after_image"`` (text after the first visual block: the
            question and the template after it) or ``"all"`` (every text token of the sample, as OpenVINO's
            port does).
        spans, rounding: see :class:`_LanguageMethod`.
    """

    keep_ratio: float
    theta: float | None = None
    text_from: Literal["after_image", "all"] = "after_image"
    spans: Spans = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        _check_language_common("CDPruner", self)
        check_literals("CDPruner", self, "text_from")
        if self.theta is not None:
            if isinstance(self.theta, bool) or not isinstance(self.theta, Real):
                raise TypeError(f"CDPruner: theta must be a real number or None, got {self.theta!r}")
            if not 0.0 <= float(self.theta) < 1.0:
                raise ValueError(f"CDPruner: theta={self.theta!r} is outside the allowed range [0, 1)")
            object.__setattr__(self, "theta", float(self.theta))


@dataclass(frozen=True, slots=True)
class VisionZip(_PreLLMMethod):
    """VisionZip (Yang et al., CVPR 2025) at the LLM's input.

    Each visual span keeps ``dominant`` tokens with the largest attention score in the vision tower and
    ``contextual`` tokens made by merging the rest (:func:`ipcv.methods.visionzip.visionzip_merge`):
    ``contextual = round(k * contextual_share)`` of the span's budget ``k``.

    The score needs the tower's attention. Towers with a [CLS] token (official LLaVA: the [CLS] row)
    are not wired here; on the Qwen2-VL / Qwen2.5-VL towers (no [CLS]) the score is the attention each
    patch *receives*, averaged over the patches of its image / frame and summed over heads, in tower
    block ``layer`` (the "column mean" surrogate for the [CLS] row; the authors' own Qwen2.5-VL release
    could not be read here, see ``book/implementation.md``), summed over the 4 patches of each merge unit;
    the merging metric is that block's keys (before the 2D rotary, averaged over heads and over the 4
    patches). The tower recomputes that block's queries and keys once, with explicit softmax weights per
    image / frame: ``~4 L D^2 + 2 sum(n^2) D`` extra FLOPs for ``L`` patches (counted by
    :func:`ipcv.costs`), and the ``n x n`` weights of the largest image in memory.

    Args:
        keep_ratio: share of each visual span kept, in (0, 1].
        contextual_share: share of the budget made of contextual tokens, in [0, 1) (official: 10 / 64).
        layer: the tower block whose attention scores the patches, negative from the end (official: the
            block whose output the projector reads, the last one: -1). Must be a full-attention block,
            and with a vision-side method one that still sees every patch.
        spans, rounding: see :class:`_LanguageMethod`.
    """

    keep_ratio: float
    contextual_share: float = 10 / 64
    layer: int = -1
    spans: Spans = "each"
    rounding: Rounding = "nearest"

    def __post_init__(self) -> None:
        _check_language_common("VisionZip", self)
        share = self.contextual_share
        if isinstance(share, bool) or not isinstance(share, Real) or not 0.0 <= float(share) < 1.0:
            raise ValueError(f"VisionZip: contextual_share={share!r} is outside the allowed range [0, 1)")
        object.__setattr__(self, "contextual_share", float(share))
        check_int("VisionZip", "layer", self.layer)

    @property
    def tower_layer(self) -> int:
        """The tower block whose attention the compressed model computes for VisionZip (``layer``)."""
        return self.layer
