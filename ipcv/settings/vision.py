"""Settings of the vision-side methods: IPCV (the paper's method) and the ViT-side baselines ToMe, ToFu and
DART (ViT). Typed, validated, immutable; a settings object says *what* to do and holds no tensors and no model.
Checks that need the model (its depth) run when the settings are applied (:meth:`check_depth`, called by
:func:`ipcv.compress`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._checks import check_bool, check_int, check_keep_ratio, check_literals

Scope = Literal["segment", "global"]
Output = Literal["full", "reduced"]
Schedule = Literal["even", "release"]
Metric = Literal["keys", "rotated_keys"]
Selection = Literal["difference", "random", "diversity"]
FrameBounds = Literal["exact", "release"]


@dataclass(frozen=True, slots=True)
class IPCV:
    """Settings of IPCV (paper section 3) for a vision encoder.

    Args:
        keep_ratio: share of each segment's patches kept after ``prune_layer``, in (0, 1]: each image /
            frame keeps ``keep_count(n, keep_ratio)`` (round half up); with ``scope="global"`` the call keeps
            ``int(L * (1 - r))`` of its ``L`` unprotected patches, ``r = 1 - keep_ratio``.
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
        scope: ``"segment"`` keeps ``keep_count(n)`` patches of every image / video frame (round half
            up, :func:`ipcv.keep_count`) and looks for neighbours inside it; ``"global"`` is the
            authors' release: one top-K over all patches of the call, ``int(L * (1 - r))`` of the
            call's ``L`` unprotected patches with ``r = 1 - keep_ratio`` (rounded down,
            :func:`ipcv.budgets.floor_count`), neighbours across segments.
        selection: which patches eq. 2 keeps, an ablation switch (the rest of IPCV is unchanged):
            ``"difference"`` (the paper: top-K by eq. 1's feature difference), ``"random"`` (K
            patches drawn uniformly, reproducibly from ``seed``: the control the score must beat) or
            ``"diversity"`` (greedy max-min / farthest-point selection on the states at ``l_p``:
            Euclidean, starting from the patch farthest from the segment's mean;
            :func:`ipcv.methods.ipcv.farthest_point_select`). Same counts in every case.
        seed: seed of ``selection="random"`` (``>= 0``); the same seed and the same segment lengths
            draw the same patches on every call and device. Ignored by the other rules.
        taps: how the full sequence is rebuilt at a block the model reads besides the last one (a *tap*:
            Qwen3-VL's DeepStack mergers; other encoders have none and ignore it). ``"ngr"``: the removed
            tokens brought up to date from their kept neighbours at that block (eq. 6 at its output, as
            eq. 10 does after the last block), so every tap has the vanilla row count and order;
            ``"frozen"``: the removed tokens' states at ``prune_layer`` (no work; they are stale).
    """

    keep_ratio: float
    prune_layer: int = 3
    stabilize_layers: int = 7
    neighbors: int = 10
    reintegrate: bool = True
    scope: Scope = "segment"
    taps: Literal["ngr", "frozen"] = "ngr"
    selection: Selection = "difference"
    seed: int = 0

    def __post_init__(self) -> None:
        name = "IPCV"
        object.__setattr__(self, "keep_ratio", check_keep_ratio(name, self.keep_ratio))
        check_int(name, "prune_layer", self.prune_layer)
        check_int(name, "stabilize_layers", self.stabilize_layers)
        check_int(name, "neighbors", self.neighbors)
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
        check_literals(name, self, "scope", "taps", "selection")
        check_int(name, "seed", self.seed)
        if self.seed < 0:
            raise ValueError(f"{name}: seed={self.seed} is not allowed: it must be >= 0")

    @property
    def reduces_output(self) -> bool:
        """IPCV always hands on every token (eq. 10)."""
        return False

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


def _check_vit_protocol(owner: str, settings) -> None:
    check_literals(owner, settings, "output", "scope", "schedule", "metric")
    check_int(owner, "start_layer", settings.start_layer)
    if settings.start_layer < 0:
        raise ValueError(f"{owner}: start_layer={settings.start_layer} is not allowed: it must be >= 0")


def _check_start_layer(name: str, start_layer: int, schedule: str, depth: int) -> None:
    if schedule == "release" and not start_layer < depth:
        raise ValueError(
            f"{name}: start_layer={start_layer} is outside the allowed range [0, {depth - 1}] "
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
    schedule: Schedule = "even"
    start_layer: int = 3
    merge: Literal["average", "mean"] = "average"
    metric: Metric = "keys"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", check_keep_ratio("ToMe", self.keep_ratio))
        check_bool("ToMe", "proportional_attention", self.proportional_attention)
        check_literals("ToMe", self, "merge")
        _check_vit_protocol("ToMe", self)

    @property
    def reduces_output(self) -> bool:
        """The encoder hands on only the kept / merged tokens (``output="reduced"``)."""
        return self.output == "reduced"

    def check_depth(self, depth: int) -> None:
        """Raise ValueError for a ``start_layer`` outside the encoder (``schedule="release"``)."""
        _check_start_layer("ToMe", self.start_layer, self.schedule, depth)


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
    schedule: Schedule = "even"
    start_layer: int = 3
    metric: Metric = "keys"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", check_keep_ratio("ToFu", self.keep_ratio))
        if self.prune_layers is not None:
            check_int("ToFu", "prune_layers", self.prune_layers)
            if self.prune_layers < 0:
                raise ValueError(f"ToFu: prune_layers={self.prune_layers} is not allowed: it must be >= 0")
        check_bool("ToFu", "proportional_attention", self.proportional_attention)
        check_literals("ToFu", self, "merge")
        _check_vit_protocol("ToFu", self)

    def pruning_blocks(self, depth: int) -> int:
        """Number of leading blocks that prune in an encoder of ``depth`` blocks."""
        return depth // 3 if self.prune_layers is None else self.prune_layers

    @property
    def reduces_output(self) -> bool:
        """The encoder hands on only the kept / merged tokens (``output="reduced"``)."""
        return self.output == "reduced"

    def check_depth(self, depth: int) -> None:
        """Raise ValueError if ``prune_layers`` exceeds the encoder depth (and as :meth:`ToMe.check_depth`)."""
        _check_start_layer("ToFu", self.start_layer, self.schedule, depth)
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
        metric: the keys whose L1 norm picks the pivots: ``"keys"`` (ours: before Qwen2-VL's 2D rotary
            embedding) or ``"rotated_keys"`` (the authors' DART(ViT): after it, the keys their attention
            returns). The same in encoders without rotary embedding.
        frame_bounds: how the blocks after the pruning block cut the kept sequence into attention segments
            (images / frames): ``"exact"`` (ours: every kept patch attends inside its own image / frame) or
            ``"release"`` (the authors' DART(ViT) and IPCV code: each kept patch's frame is found with
            ``searchsorted(cu_seqlens, index, right=False) - 1``, so a kept patch that is the *first* patch
            of image / frame ``j >= 1`` is counted in frame ``j - 1`` and attends with it; one image is
            unaffected). Only the attention segments change: the kept set, the copies and the records are
            the same.
    """

    keep_ratio: float
    prune_layer: int = 3
    pivots: int = 8
    key_layer: Literal["current", "previous"] = "current"
    budget: Literal["exact", "per_pivot4"] = "exact"
    output: Output = "full"
    scope: Scope = "segment"
    metric: Metric = "keys"
    frame_bounds: FrameBounds = "exact"

    def __post_init__(self) -> None:
        name = "DARTViT"
        object.__setattr__(self, "keep_ratio", check_keep_ratio(name, self.keep_ratio))
        check_int(name, "prune_layer", self.prune_layer)
        check_int(name, "pivots", self.pivots)
        if self.prune_layer < 0:
            raise ValueError(f"{name}: prune_layer={self.prune_layer} is not allowed: it must be >= 0")
        if self.pivots < 1:
            raise ValueError(f"{name}: pivots={self.pivots} is not allowed: it must be >= 1")
        check_literals(name, self, "key_layer", "budget", "output", "scope", "metric", "frame_bounds")
        if self.key_layer == "previous" and self.prune_layer < 1:
            raise ValueError(f"{name}: key_layer='previous' needs prune_layer >= 1, got prune_layer={self.prune_layer}")

    @property
    def reduces_output(self) -> bool:
        """The encoder hands on only the kept / merged tokens (``output="reduced"``)."""
        return self.output == "reduced"

    def check_depth(self, depth: int) -> None:
        """Raise ValueError if ``prune_layer`` is not a block of an encoder of ``depth`` blocks;
        ``output="reduced"`` is checked by
        :func:`ipcv.compress` (Qwen2-VL and Qwen2.5-VL only)."""
        if not 0 <= self.prune_layer < depth:
            raise ValueError(
                f"DARTViT: prune_layer={self.prune_layer} is outside the allowed range [0, {depth - 1}] "
                f"for this encoder (depth {depth})"
            )
