"""The IPCV block schedule and its analytic count, independent of any model family.

An adapter (``ipcv/models/*``) hands :func:`run_ipcv` a per-call :class:`~ipcv.vision.BlockOps` that knows
how to run one block of its encoder in three ways; this module decides which way, block by block:

    blocks 0 .. lp-1            full sequence                    (ops.full)
    at lp                       score (eq. 1), select (eq. 2), neighbours (eq. 3)
    blocks lp .. lp+AS-1        kept queries, full keys/values    (ops.stabilized, eq. 6-9)
    blocks lp+AS .. depth-1     kept tokens only                  (ops.kept)
    after the last block        reintegration (eq. 10)

All state of the call lives in local variables and in the :class:`Plan` passed to the ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import trace as _trace
from ..budgets import floor_count, keep_count
from ..methods.ipcv import (
    farthest_point_flops,
    farthest_point_select,
    feature_difference_scores,
    find_neighbors,
    ngr,
    random_scores,
    select_tokens,
)
from ..methods.packed import complement, scatter_tokens
from ..settings import IPCV
from . import BlockCount, BlockOps, Plan, taps


def run_ipcv(
    ops: BlockOps,
    depth: int,
    h: torch.Tensor,
    seg_lengths: Sequence[int],
    settings: IPCV,
    protected: torch.Tensor | None = None,
    expendable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run all ``depth`` blocks of one call under IPCV.

    Args:
        h: ``[L, D]`` packed input of block 0. seg_lengths: attention segments (sum L).
        protected: ``[L]`` bool, tokens never pruned nor counted (CLS), or None.
        expendable: ``[L]`` bool, tokens the caller discards after the encoder, or None: ranked below every
            other token of their segment (eq. 2 keeps them last; same budget), then reconstructed like any
            removed token.
    Returns: ``[L, D]`` output of the last block, full length, original order.
    """
    lp, n_as = settings.prune_layer, settings.stabilize_layers
    seg_lengths = [int(n) for n in seg_lengths]
    for layer in range(lp - 1):
        h = ops.full(layer, h)
        taps.offer(layer, lambda h=h: h)
    h_prev, h = h, ops.full(lp - 1, h)  # inputs of blocks lp-1 and lp
    taps.offer(lp - 1, lambda: h)

    record = _trace.active()
    device = h.device
    with _trace.section("score", device):
        keep, keep_counts, scores = _select(settings, h, h_prev, seg_lengths, protected, record is not None, expendable)
    if keep.numel() == h.shape[0]:  # nothing removed: IPCV is the identity here, run the plain blocks
        for layer in range(lp, depth):
            h = ops.full(layer, h)
            taps.offer(layer, lambda h=h: h)
        return h
    with _trace.section("knn", device):
        rem = complement(keep, h.shape[0])
        nb = find_neighbors(h, keep, rem, seg_lengths, keep_counts, settings.neighbors, settings.scope)
    plan = Plan(keep, rem, seg_lengths, keep_counts, nb)
    if record is not None:
        record.calls.append(_trace.IPCVCall(seg_lengths, list(keep_counts), keep, rem, nb.index, scores))

    h_keep_lp, h_rem_lp = h[keep], h[rem]  # eq. 2
    h_keep = h_keep_lp

    def tap() -> torch.Tensor:  # the full sequence at a tap: NGR (eq. 6 at that block's output) or frozen
        with _trace.section("ngr", device):
            h_rem = ngr(h_rem_lp, h_keep, h_keep_lp, nb) if settings.taps == "ngr" else h_rem_lp
            return scatter_tokens(h_keep, h_rem, keep, rem)

    for layer in range(lp, lp + n_as):
        with _trace.section("ngr", device):
            h_rem = ngr(h_rem_lp, h_keep, h_keep_lp, nb)  # eq. 6 (at l = lp this is h_rem_lp)
            h_full = scatter_tokens(h_keep, h_rem, keep, rem)  # eq. 7
        h_keep = ops.stabilized(layer, h_keep, h_full, plan)  # eq. 8-9
        _record_state(record, layer, h_keep)
        taps.offer(layer, tap)
    for layer in range(lp + n_as, depth):
        h_keep = ops.kept(layer, h_keep, plan)
        _record_state(record, layer, h_keep)
        taps.offer(layer, tap)

    with _trace.section("ngr", device):
        h_rem = ngr(h_rem_lp, h_keep, h_keep_lp, nb) if settings.reintegrate else h_rem_lp
        return scatter_tokens(h_keep, h_rem, keep, rem)  # eq. 10


def _select(settings: IPCV, h, h_prev, seg_lengths: list[int], protected, traced: bool, expendable=None):
    """Eq. 2 under ``settings.selection``: kept rows, kept count per segment, and eq. 1's scores (computed for
    the other rules only when a trace records them; None otherwise). ``expendable`` tokens are ranked last
    (:func:`demote`) by the score and random rules; the diversity rule does not take them."""
    scores = feature_difference_scores(h, h_prev) if settings.selection == "difference" or traced else None  # eq. 1
    if settings.selection == "diversity":
        keep, counts = farthest_point_select(h, seg_lengths, settings.keep_ratio, settings.scope, protected)
        return keep, counts, scores
    rank = scores if settings.selection == "difference" else random_scores(h.shape[0], settings.seed, h.device)
    if expendable is not None:
        rank = demote(rank, expendable)
    keep, counts = select_tokens(rank, seg_lengths, settings.keep_ratio, settings.scope, protected)
    return keep, counts, scores


def demote(scores: torch.Tensor, expendable: torch.Tensor) -> torch.Tensor:
    """``scores`` ``[L]`` with the ``expendable`` tokens below every other token (non-negative scores, eq. 1),
    in their own order among themselves."""
    scores = scores.float()
    return torch.where(expendable, scores - (scores.max() + 1), scores)


def _record_state(record: _trace.Trace | None, layer: int, h_keep: torch.Tensor) -> None:
    if record is not None and record.states:
        record.calls[-1].states[layer] = h_keep.detach().clone()


def count_ipcv(
    settings: IPCV, seg_lengths: Sequence[int], prefix: int, depth: int, dim: int, heads: int, tap_layers=()
):
    """Per-block token counts and IPCV's own work (FLOPs) for one call, as :func:`run_ipcv` runs it: blocks
    ``< lp`` on all tokens, AS blocks with kept queries over all keys / values, later blocks on the kept tokens
    only; each segment keeps :func:`ipcv.keep_count` of its unprotected tokens (``scope="global"`` is counted as
    if its budget fell evenly). Overhead: eq. 1's score (``3 L D``), the kNN distances (``2 D R K`` per
    segment) and NGR (``2 D R k + D K`` per use: every AS block, the reintegration, and with ``taps="ngr"`` every
    tap block at or after ``prune_layer``: ``tap_layers``, the blocks the model also reads, Qwen3-VL's DeepStack).
    The selection rule's own work replaces eq. 1's score: none for ``selection="random"`` (draws, no FLOPs), the
    farthest-point passes for ``"diversity"`` (:func:`ipcv.methods.ipcv.farthest_point_flops`, per segment, or
    once over the call's unprotected tokens with ``scope="global"``)."""
    seg = [int(n) for n in seg_lengths]
    L, D = sum(seg), dim
    kept = [keep_count(n - prefix, settings.keep_ratio) + prefix for n in seg]
    removed = [n - k for n, k in zip(seg, kept)]
    lp, n_as = settings.prune_layer, settings.stabilize_layers
    blocks = []
    for i in range(depth):  # full, stabilized (kept queries, all keys), kept only
        q, kv = (seg, seg) if i < lp else (kept, seg) if i < lp + n_as else (kept, kept)
        blocks.append(BlockCount(list(q), list(kv), list(q)))
    k = [min(settings.neighbors, c) for c in kept]
    if settings.selection == "difference":
        score = 3 * L * D
    elif settings.selection == "random":
        score = 0
    elif settings.scope == "global":
        free = L - prefix * len(seg)
        score = farthest_point_flops(free, floor_count(free, settings.keep_ratio), D)
    else:
        score = sum(farthest_point_flops(n - prefix, c - prefix, D) for n, c in zip(seg, kept))
    knn = sum(2 * D * r * c for r, c in zip(removed, kept))
    ngr_uses = n_as + (1 if settings.reintegrate else 0)
    if settings.taps == "ngr" and any(removed):
        ngr_uses += sum(1 for t in tap_layers if lp <= t < depth)
    ngr_flops = ngr_uses * (sum(2 * D * r * kk for r, kk in zip(removed, k)) + D * sum(kept))
    return blocks, score + knn + ngr_flops
