"""DART's duplication-aware selection inside a vision encoder (DART (ViT), the IPCV paper's ViT baseline),
independent of any model family.

    blocks < lp full; at lp DART's selection; blocks lp.. kept tokens only; every pruned token a copy of its
    closest kept token at the end

:func:`run_dart_vit` has :func:`ipcv.vision.ipcv.run_ipcv`'s signature; :func:`count_dart_vit` is its
analytic count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..budgets import keep_count, per_pivot4
from ..methods.dart import dart_keep, pivot_scores
from ..methods.ipcv import find_neighbors
from ..methods.packed import complement, protected_counts, scatter_tokens
from ..settings import DARTViT
from . import BlockCount, BlockOps, Plan, sources, taps


def dart_vit_counts(settings: DARTViT, free: int) -> int:
    """Unprotected tokens DART-ViT keeps out of ``free`` (one segment, or the call with ``scope="global"``)."""
    if settings.budget == "exact" or settings.keep_ratio >= 1.0:
        return keep_count(free, settings.keep_ratio)
    return min(
        free, min(settings.pivots, free) + settings.pivots * per_pivot4(free, settings.keep_ratio, settings.pivots)
    )


def release_frame_counts(keep: torch.Tensor, seg_lengths: Sequence[int]) -> list[int]:
    """Kept patches per image / frame as the authors' DART(ViT) and IPCV code count them for the pruned
    sequence's ``cu_seqlens``: ``searchsorted(cu_seqlens, keep, right=False) - 1`` (clamped to the frames), so a
    kept patch that is the first patch of frame ``j >= 1`` counts in frame ``j - 1``. keep: ``[K]`` sorted."""
    bounds = torch.tensor(list(seg_lengths), device=keep.device).cumsum(0)
    frame = torch.bucketize(keep, bounds, right=False).clamp(max=len(seg_lengths) - 1)
    return torch.bincount(frame, minlength=len(seg_lengths)).tolist()


def dart_select(
    h: torch.Tensor,
    scores: torch.Tensor,
    seg_lengths: Sequence[int],
    protected: torch.Tensor | None,
    settings: DARTViT,
    expendable: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Kept rows (sorted) and kept count per segment (protected included) of DART-ViT: protected tokens
    always, and of the others :func:`dart_vit_counts` by :func:`dart_keep`, per segment
    (``scope="segment"``) or over the whole call (``"global"``). With ``budget="per_pivot4"`` the
    pivots are visited in the official order (:func:`ipcv.methods.dart.official_order`) of their
    packed positions.

    Args: h ``[L, D]`` states at the pruning block; scores ``[L]`` pivot scores; expendable ``[L]`` bool or
    None: tokens the caller discards, removed first (same budget): DART's choice runs over the others when
    they fill the budget, else they are all kept and DART chooses the rest among the expendable ones.
    """
    L = h.shape[0]
    prot = torch.zeros(L, dtype=torch.bool, device=h.device) if protected is None else protected
    groups = [(0, L)] if settings.scope == "global" else []
    if not groups:
        start = 0
        for n in seg_lengths:
            groups.append((start, start + n))
            start += n
    official = settings.budget == "per_pivot4"
    keeps = []
    for a, b in groups:
        free = (~prot[a:b]).nonzero().flatten() + a
        k = dart_vit_counts(settings, free.numel())
        per = per_pivot4(free.numel(), settings.keep_ratio, settings.pivots) if official and k < free.numel() else None
        if expendable is not None and bool(expendable[free].any()):
            chosen = _keep_real_first(h, scores, free, expendable[free], k, settings, official, per)
        else:
            positions = free if official else None
            chosen = free[dart_keep(h[free], scores[free], k, settings.pivots, positions=positions, per_pivot=per)]
        keeps.append(torch.cat([prot[a:b].nonzero().flatten() + a, chosen]).sort().values)
    keep = torch.cat(keeps).sort().values
    bounds = torch.tensor(list(seg_lengths), device=h.device).cumsum(0)
    counts = torch.bincount(torch.bucketize(keep, bounds, right=True), minlength=len(seg_lengths)).tolist()
    return keep, counts


def _keep_real_first(h, scores, free, trimmed, k: int, settings: DARTViT, official: bool, per) -> torch.Tensor:
    """``k`` rows of ``free`` (a segment's unprotected rows), the ``trimmed`` ones last (see :func:`dart_select`)."""
    real, spare = free[~trimmed], free[trimmed]
    if real.numel() >= k:
        positions = real if official else None
        local = dart_keep(h[real], scores[real], k, settings.pivots, positions=positions, per_pivot=per)
        return real[local]
    rest = dart_keep(h[spare], scores[spare], k - real.numel(), settings.pivots) if k > real.numel() else spare[:0]
    return torch.cat([real, spare[rest] if rest.numel() else spare[:0]])


def run_dart_vit(
    ops: BlockOps,
    depth: int,
    h: torch.Tensor,
    seg_lengths: Sequence[int],
    settings: DARTViT,
    protected: torch.Tensor | None = None,
    expendable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run all ``depth`` blocks of one call under DART-ViT.

    Blocks ``0 .. lp-1`` full; at the input of block lp: pivots = largest L1 norm of the attention
    keys (before rotary in Qwen2-VL; ``metric="rotated_keys"``: after it) of block lp
    (``key_layer="current"``) or of block lp - 1 for its own input (``"previous"``), selection by
    :func:`dart_select`; blocks ``lp ..`` on the kept tokens (``ops.kept``, attention inside each image /
    frame, or cut as the authors' code cuts it with ``frame_bounds="release"``: :func:`release_frame_counts`);
    finally every pruned token gets a copy of its closest kept token (same
    segment; any segment with ``scope="global"``), Euclidean on the states at lp.

    Args: as :func:`ipcv.vision.ipcv.run_ipcv` (``expendable``: see :func:`dart_select`). Returns: ``[L, D]``
    full length, original order.
    """
    seg = [int(n) for n in seg_lengths]
    lp = settings.prune_layer
    n_prot = protected_counts(seg, protected)
    units = [sum(seg) - sum(n_prot)] if settings.scope == "global" else [n - p for n, p in zip(seg, n_prot)]
    if all(dart_vit_counts(settings, n) == n for n in units):
        for layer in range(depth):  # nothing pruned: the plain blocks
            h = ops.full(layer, h)
            taps.offer(layer, lambda h=h: h)
        return h
    h_prev = h
    for layer in range(lp):
        h_prev, h = h, ops.full(layer, h)
        taps.offer(layer, lambda h=h: h)
    rotated = {"rotated": True} if settings.metric == "rotated_keys" else {}
    keys = ops.keys(lp - 1, h_prev, **rotated) if settings.key_layer == "previous" else ops.keys(lp, h, **rotated)
    keep, counts = dart_select(h, pivot_scores(keys), seg, protected, settings, expendable)
    rem = complement(keep, h.shape[0])
    nearest = find_neighbors(h, keep, rem, seg, counts, neighbors=1, scope=settings.scope)
    # the blocks' attention segments: exact, or as the authors' code cuts them (frame_bounds="release")
    attention_counts = counts if settings.frame_bounds == "exact" else release_frame_counts(keep, seg)
    plan = Plan(keep, rem, seg, attention_counts, nearest)
    h_keep = h[keep]
    copy_of = nearest.index[:, 0]  # [R] rows of the kept sequence
    for layer in range(lp, depth):
        h_keep = ops.kept(layer, h_keep, plan)
        taps.offer(layer, lambda x=h_keep: scatter_tokens(x, x[copy_of], keep, rem))  # as the final output
    source = torch.arange(h.shape[0], device=h.device)
    source[rem] = keep[copy_of]
    sources.record("DARTViT", seg, counts, [seg] * lp + [counts] * (depth - lp), source)
    return scatter_tokens(h_keep, h_keep[copy_of], keep, rem)


def count_dart_vit(
    settings: DARTViT, seg_lengths: Sequence[int], prefix: int, depth: int, dim: int, heads: int, tap_layers=()
):
    """Per-block token counts and overhead of DART-ViT (``scope="global"``: its budget counted as if it
    fell evenly over the segments): the keys of block lp (``2 D^2 L``), the
    pivot/candidate cosine similarities (``2 D P n`` per segment) and the closest-kept search
    (``2 D R K`` per segment, as IPCV's kNN). The copies at ``tap_layers`` (blocks the model also reads) are
    index copies, not counted."""
    seg = [int(n) for n in seg_lengths]
    lp = settings.prune_layer
    if settings.scope == "global":  # counted as if the call's budget fell evenly (as IPCV's global scope)
        free = [n - prefix for n in seg]
        total = dart_vit_counts(settings, sum(free))
        shares = [total * f // sum(free) for f in free]
        shares[-1] += total - sum(shares)
        kept = [k + prefix for k in shares]
    else:
        kept = [dart_vit_counts(settings, n - prefix) + prefix for n in seg]
    blocks = [BlockCount(seg, seg, seg)] * lp + [BlockCount(kept, kept, kept)] * (depth - lp)
    overhead = 2 * dim * dim * sum(seg)
    for n, k in zip(seg, kept):
        free, pivots = n - prefix, min(settings.pivots, k - prefix)
        overhead += 2 * dim * pivots * free + 2 * dim * (n - k) * k
    return blocks, overhead
