"""ToMe and ToFu inside a vision encoder (paper Appendix A.2, C), independent of any model family.

    ToMe     every block: attention, merge (bipartite matching, size-weighted average), MLP
    ToFu     the same; blocks < prune_layers prune instead of merging, later ones merge with MLERP

:func:`run_merging` talks to the model only through the per-call ops object of an adapter (``full``,
``keys``, ``attention_part``, ``mlp_part``). By default (``scope="segment"``) every image / video frame ends
with ``keep_count(n, keep_ratio)`` of its ``n`` unprotected tokens and matching never crosses segments;
``scope="global"`` (the IPCV authors' runs) gives the call one budget and merges across segments. Protected
tokens (CLS) are never merged nor counted. The output is full length, in original order: every merged
position gets a copy of the token that stands for it. :func:`count_merging` gives the analytic count from
the same schedule functions, so what is counted is what runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..budgets import keep_count, release_share
from ..methods.packed import protected_counts
from ..methods.tome import (
    merge_average,
    merge_mean,
    merge_mlerp,
    merge_prune,
    merge_rounds,
    merge_schedule,
    release_matching,
    release_schedule,
    tome_matching,
)
from ..settings import ToFu, ToMe
from . import BlockCount, BlockOps, sources, taps


def merge_plan(
    seg_lengths: Sequence[int], n_protected: Sequence[int], settings: ToMe | ToFu | float, depth: int
) -> list[list[int]]:
    """``r[layer][segment]``: unprotected tokens each block removes from each segment:
    :func:`ipcv.methods.tome.merge_schedule` per segment, to ``keep_count(n - p, keep_ratio)``
    (``schedule="even"``, or a bare keep ratio), or :func:`ipcv.methods.tome.release_schedule` per
    segment (``schedule="release"``, target ``1 - reduction``)."""
    if isinstance(settings, (ToMe, ToFu)) and settings.schedule == "release":
        target = release_share(settings.keep_ratio)
        per_segment = [
            release_schedule(n - p, target, depth, settings.start_layer) for n, p in zip(seg_lengths, n_protected)
        ]
    else:
        keep_ratio = settings if isinstance(settings, float) else settings.keep_ratio
        per_segment = [
            merge_schedule(n - p, keep_count(n - p, keep_ratio), depth) for n, p in zip(seg_lengths, n_protected)
        ]
    return [[r[layer] for r in per_segment] for layer in range(depth)]


def global_plan(free: int, settings: ToMe | ToFu, depth: int) -> list[int]:
    """``r[layer]``: unprotected tokens each block removes from the whole call under ``scope="global"``
    (``free`` unprotected tokens in all): :func:`ipcv.methods.tome.release_schedule` of the total
    (``schedule="release"``, as the IPCV authors' ports compute it from the packed length), or
    :func:`ipcv.methods.tome.merge_schedule` down to ``keep_count(free, keep_ratio)`` (``"even"``)."""
    if settings.schedule == "release":
        return release_schedule(free, release_share(settings.keep_ratio), depth, settings.start_layer)
    return merge_schedule(free, keep_count(free, settings.keep_ratio), depth)


_MERGES: dict[str, Callable] = {"average": merge_average, "mean": merge_mean, "mlerp": merge_mlerp}


def _merge_fn(settings: ToMe | ToFu, layer: int, depth: int) -> Callable:
    if isinstance(settings, ToFu) and layer < settings.pruning_blocks(depth):
        return merge_prune
    return _MERGES[settings.merge]


@dataclass
class _Merged:
    """The token set of one call under merging.

    h: ``[M, D]`` current tokens, grouped by segment, each segment in original order.
    rows: ``[M]`` packed position of each token (the original token it was merged into survives
        there; its rotary angles are used). size: ``[M]`` float32 source positions per token.
    protected: ``[M]`` bool. counts: tokens per segment (protected included).
    assign: ``[L]`` current row of each original token (the unmerge map).
    order: per segment, the rows of its unprotected tokens in official ToMe's own order (the order its merge
        hands on: unmerged A tokens, then B; see :func:`ipcv.methods.tome.tome_matching`), which decides the
        next block's A / B split; None for a segment never merged (packed order).
    """

    h: torch.Tensor
    rows: torch.Tensor
    size: torch.Tensor
    protected: torch.Tensor
    counts: list[int]
    assign: torch.Tensor
    merged: bool = False
    order: list[torch.Tensor | None] | None = None

    def free_rows(self, segment: int, start: int) -> torch.Tensor:
        """Rows of the segment's unprotected tokens, increasing."""
        c = self.counts[segment]
        return (~self.protected[start : start + c]).nonzero().flatten() + start

    def reduce(self, h: torch.Tensor, metric: torch.Tensor, r: Sequence[int], merge: Callable) -> _Merged:
        """Remove ``r[s]`` unprotected tokens of every segment s of ``h`` (the residual stream after
        attention) by official ToMe's bipartite matching on ``metric`` ``[M, C]`` over the segment's tokens in
        ToMe's own order (:attr:`order`; the segment's protected tokens in front,
        :func:`ipcv.methods.tome.tome_matching`), combining them with ``merge``. Segments with the same
        (free tokens, r, protected parity) are matched as one batch. The tokens stay stored in packed order;
        the new state carries ToMe's order for the next block."""
        M = h.shape[0]
        starts = [0]
        for c in self.counts[:-1]:
            starts.append(starts[-1] + c)
        orders = list(self.order) if self.order is not None else [None] * len(self.counts)
        groups: dict[tuple[int, int, int], list[tuple[int, torch.Tensor]]] = {}
        for s, (start, rs) in enumerate(zip(starts, r)):
            if rs:
                free = orders[s] if orders[s] is not None else self.free_rows(s, start)
                p = self.counts[s] - free.numel()
                groups.setdefault((free.numel(), rs, p), []).append((s, free))
        into = torch.arange(M, device=h.device)
        new_h, new_size = h.clone(), self.size.clone()
        for (n_free, rs, p), members in groups.items():
            idx = torch.stack([free for _, free in members])  # [G, n_free] packed rows, in ToMe's order
            x, size, met = h[idx], self.size[idx], metric[idx]
            for step in merge_rounds(n_free, rs, p):
                m, nxt = tome_matching(met, step, p)
                met, _ = merge_average(met, size, m)
                x, size = merge(x, size, m)  # rows in m.keep order
                remap = torch.arange(M, device=h.device)
                remap[idx.flatten()] = idx.gather(1, m.keep.gather(1, m.out_index)).flatten()
                into = remap[into]
                perm = m.out_index.gather(1, nxt)  # rows of x in ToMe's next order
                x = x.gather(1, perm.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                met = met.gather(1, perm.unsqueeze(-1).expand(-1, -1, met.shape[-1]))
                size, idx = size.gather(1, perm), idx.gather(1, nxt)
            new_h[idx.flatten()] = x.flatten(0, 1)
            new_size[idx.flatten()] = size.flatten()
            for g, (s, _) in enumerate(members):
                orders[s] = idx[g]
        survive = into == torch.arange(M, device=h.device)
        new_row = survive.long().cumsum(0) - 1
        return _Merged(
            h=new_h[survive],
            rows=self.rows[survive],
            size=new_size[survive],
            protected=self.protected[survive],
            counts=[c - rs for c, rs in zip(self.counts, r)],
            assign=new_row[into[self.assign]],
            merged=True,
            order=[None if o is None else new_row[o] for o in orders],
        )

    def reduce_global(
        self, h: torch.Tensor, metric: torch.Tensor, r: int, merge: Callable, order: torch.Tensor, bounds: torch.Tensor
    ) -> tuple[_Merged, torch.Tensor, torch.Tensor]:
        """``scope="global"``: remove ``r`` unprotected tokens of the whole call in one matching round
        over all of them, in the release's order ``order`` (``[n]`` rows of ``h``), across segments
        (:func:`ipcv.methods.tome.release_matching`). A token merged into another segment's token
        leaves its segment. ``bounds``: ``[S]`` end row of each segment in the packed sequence.
        Returns the new state, the metric of its tokens (merged as ToMe merges it, for a further
        round) and the release's order of its unprotected tokens."""
        M, device = h.shape[0], h.device
        x, size, met = h[order][None], self.size[order][None], metric[order][None]
        m, out_order = release_matching(met, r)
        met, _ = merge_average(met, size, m)
        x, size = merge(x, size, m)
        survivors = order[m.keep[0]]  # rows of h
        into = torch.arange(M, device=device)
        into[order] = survivors[m.out_index[0]]
        new_h, new_size, new_met = h.clone(), self.size.clone(), metric.clone()
        new_h[survivors], new_size[survivors], new_met[survivors] = x[0], size[0], met[0]
        survive = into == torch.arange(M, device=device)
        new_row = survive.long().cumsum(0) - 1
        rows = self.rows[survive]
        counts = torch.bincount(torch.bucketize(rows, bounds, right=True), minlength=len(self.counts)).tolist()
        state = _Merged(
            h=new_h[survive],
            rows=rows,
            size=new_size[survive],
            protected=self.protected[survive],
            counts=counts,
            assign=new_row[into[self.assign]],
            merged=True,
        )
        return state, new_met[survive], new_row[order[out_order[0]]]


def _metric_kw(settings: ToMe | ToFu) -> dict:
    return {"rotated": True} if settings.metric == "rotated_keys" else {}


def run_merging(
    ops: BlockOps,
    depth: int,
    h: torch.Tensor,
    seg_lengths: Sequence[int],
    settings: ToMe | ToFu,
    protected: torch.Tensor | None = None,
    expendable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run all ``depth`` blocks of one call under ToMe or ToFu.

    A block in which nothing has been merged yet and nothing is merged runs unmodified
    (``ops.full``); so does every block at ``keep_ratio`` 1.0. Otherwise: ``ops.attention_part``
    (with ``log(size)`` logit bias once tokens have merged, if ``proportional_attention``), the
    merge of this block, ``ops.mlp_part``.

    Args: as :func:`ipcv.vision.ipcv.run_ipcv`; ``expendable`` (tokens the caller discards) does not change the
    matching: ToMe / ToFu merge by their official rule, the trimmed tokens competing as any other (see the
    book's differences page). Returns: ``[L, D]`` full length, original order.
    """
    seg = [int(n) for n in seg_lengths]
    L = h.shape[0]
    prot = torch.zeros(L, dtype=torch.bool, device=h.device) if protected is None else protected
    rows = torch.arange(L, device=h.device)
    state = _Merged(h, rows, torch.ones(L, device=h.device), prot, list(seg), rows)
    if settings.scope == "global":
        return _run_merging_global(ops, depth, state, seg, settings)
    plan = merge_plan(seg, protected_counts(seg, protected), settings, depth)
    tokens_per_block = []
    for layer in range(depth):
        r = plan[layer]
        tokens_per_block.append(list(state.counts))
        if not state.merged and not any(r):
            state.h = ops.full(layer, state.h)
            taps.offer(layer, lambda s=state: s.h)
            continue
        bias = state.size.log() if settings.proportional_attention and state.merged else None
        h_mid, metric = ops.attention_part(layer, state.h, state.rows, state.counts, bias, **_metric_kw(settings))
        if any(r):
            state = state.reduce(h_mid, metric, r, _merge_fn(settings, layer, depth))
            h_mid = state.h
        state.h = ops.mlp_part(layer, h_mid)
        taps.offer(layer, lambda s=state: s.h[s.assign])  # a tap: every merged position unmerged
    sources.record(type(settings).__name__, seg, state.counts, tokens_per_block, state.rows[state.assign])
    return state.h[state.assign]


def _run_merging_global(ops: BlockOps, depth: int, state: _Merged, seg: list[int], settings: ToMe | ToFu):
    """:func:`run_merging` with ``scope="global"``: one budget and one matching over all unprotected
    tokens of the call per block (:meth:`_Merged.reduce_global`); the tokens stay stored in packed
    order, grouped by segment, and attention stays inside each segment's tokens (a segment left
    with no token is skipped); the release's order only decides the A / B split of each matching."""
    order = (~state.protected).nonzero().flatten()  # the release's order: packed order at first
    plan = global_plan(order.numel(), settings, depth)
    bounds = torch.tensor(seg, device=state.h.device).cumsum(0)
    tokens_per_block = []
    for layer in range(depth):
        r = plan[layer]
        tokens_per_block.append(list(state.counts))
        if not state.merged and not r:
            state.h = ops.full(layer, state.h)
            taps.offer(layer, lambda s=state: s.h)
            continue
        bias = state.size.log() if settings.proportional_attention and state.merged else None
        lengths = [c for c in state.counts if c]
        h_mid, metric = ops.attention_part(layer, state.h, state.rows, lengths, bias, **_metric_kw(settings))
        merge = _merge_fn(settings, layer, depth)
        for step in merge_rounds(order.numel(), r):
            state, metric, order = state.reduce_global(h_mid, metric, step, merge, order, bounds)
            h_mid = state.h
        state.h = ops.mlp_part(layer, h_mid)
        taps.offer(layer, lambda s=state: s.h[s.assign])
    sources.record(type(settings).__name__, seg, state.counts, tokens_per_block, state.rows[state.assign])
    return state.h[state.assign]


def count_merging(
    settings: ToMe | ToFu, seg_lengths: Sequence[int], prefix: int, depth: int, dim: int, heads: int, tap_layers=()
):
    """Per-block token counts and method overhead (FLOPs) of ToMe / ToFu.

    Overhead per matching round on ``n`` free tokens: the similarity matrix ``2 d |A| |B|``
    (``d = dim / heads``, keys averaged over heads), plus ``2 D n`` for a merge (average or MLERP);
    pruning rounds copy. Not counted: key averaging, norms, argmax/sort, index copies (so the unmerged copies
    at ``tap_layers``, the blocks the model also reads, cost nothing here).
    """
    seg = [int(n) for n in seg_lengths]
    if settings.scope == "global":
        return _count_merging_global(settings, seg, prefix, depth, dim, heads)
    plan = merge_plan(seg, [prefix] * len(seg), settings, depth)
    d = dim // heads
    counts, blocks, overhead = list(seg), [], 0
    for layer in range(depth):
        r = plan[layer]
        after = [c - rs for c, rs in zip(counts, r)]
        blocks.append(BlockCount(list(counts), list(counts), after))
        prunes = isinstance(settings, ToFu) and layer < settings.pruning_blocks(depth)
        for c, rs in zip(counts, r):
            n = c - prefix
            for step in merge_rounds(n, rs, prefix):
                overhead += 2 * d * ((n + 1) // 2) * (n // 2) + (0 if prunes else 2 * dim * n)
                n -= step
        counts = after
    return blocks, overhead


def _count_merging_global(settings: ToMe | ToFu, seg: list[int], prefix: int, depth: int, dim: int, heads: int):
    """:func:`count_merging` with ``scope="global"``: each block removes :func:`global_plan`'s count
    from the call, matched over all its unprotected tokens at once (``2 d |A| |B|`` on the call's
    total); where the merges fall is data-dependent, so the tokens left are counted as if they fell
    evenly over the segments (in proportion to their unprotected tokens, as DART-ViT's global scope)."""
    free = [n - prefix for n in seg]
    total = sum(free)
    plan = global_plan(total, settings, depth)
    d = dim // heads

    def spread(left: int) -> list[int]:
        shares = [left * f // total for f in free] if total else [0] * len(free)
        shares[-1] += left - sum(shares)
        return [s + prefix for s in shares]

    counts, cur, blocks, overhead = list(seg), total, [], 0
    for layer in range(depth):
        r = plan[layer]
        prunes = isinstance(settings, ToFu) and layer < settings.pruning_blocks(depth)
        n = cur
        for step in merge_rounds(n, r):
            overhead += 2 * d * ((n + 1) // 2) * (n // 2) + (0 if prunes else 2 * dim * n)
            n -= step
        after = spread(n) if n != cur else list(counts)
        blocks.append(BlockCount(list(counts), list(counts), after))
        counts, cur = after, n
    return blocks, overhead
