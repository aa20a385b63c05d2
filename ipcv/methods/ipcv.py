"""The mathematics of IPCV (paper section 3) as pure functions on tensors.

Layout: a call's tokens are *packed*, ``[L, D]``, cut into segments (one per image or video frame,
the attention segments of the encoder) by their lengths. Nothing here knows transformers.

On a GPU nothing here waits for the device: segment lengths and budgets are Python integers known
before any kernel runs, segments of one size are processed as one batch (a Python loop runs over
the distinct sizes, never over segments), and the few index tensors built from those integers are
copied to the device asynchronously (:func:`device_index`). Only ``scope="global"`` (and protected
tokens) read counts back from the device once per call, to learn how many tokens each segment kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..budgets import floor_count, keep_count
from .packed import offsets, rows_of, segment_groups

# Largest distance block computed at once by the kNN search (elements of a float32 matrix):
# 2**24 elements = 64 MiB, so 16,384 patches never need their full R x K matrix.
KNN_BLOCK_ELEMENTS = 1 << 24


def feature_difference_scores(h_lp: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``s_i = ||h_{i,lp} - h_{i,lp-1}||_2``.

    Args:
        h_lp: ``[L, D]`` input of block l_p.  h_prev: ``[L, D]`` input of block l_p - 1.
    Returns: ``[L]`` float32 scores.
    """
    return (h_lp.float() - h_prev.float()).norm(dim=-1)


def select_tokens(
    scores: torch.Tensor,
    seg_lengths: Sequence[int],
    keep_ratio: float,
    scope: str = "segment",
    protected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Eq. 2: indices of the kept tokens, in original order, and the kept count of each segment.

    ``scope="segment"``: each segment keeps ``keep_count(n)`` of its ``n`` unprotected tokens, by
    top score. ``scope="global"``: the authors' release: one top-K over all unprotected tokens of
    the call, with the release's count ``K = int(total * (1 - reduction))``
    (:func:`ipcv.budgets.floor_count`, ``reduction`` the decimal ``1 - keep_ratio``): 0.5 of 1,023
    patches keeps 511 and 0.35 of 1,316 keeps 460, where ``keep_count`` gives 512 and 461. Protected tokens (a CLS
    token) are always kept and never counted. Scores are compared in float32 (see
    :func:`feature_difference_scores`); the release compares them in the model dtype, so in bf16 /
    fp16 near-ties may be broken differently.

    Args:
        scores: ``[L]``. seg_lengths: lengths summing to L. protected: ``[L]`` bool or None.
    Returns: ``keep`` ``[K]`` long (sorted), ``counts`` kept tokens per segment (protected included).
    """
    L = scores.shape[0]
    if sum(seg_lengths) != L:
        raise ValueError(f"segment lengths sum to {sum(seg_lengths)}, but there are {L} scores")
    scores = scores.float()
    n_protected = [0] * len(seg_lengths)
    if protected is not None:
        scores = scores.masked_fill(protected, float("inf"))
        n_protected = [int(p.sum()) for p in protected.split(list(seg_lengths))]
    if scope == "global":
        budget = floor_count(L - sum(n_protected), keep_ratio) + sum(n_protected)
        keep = scores.topk(budget).indices.sort().values
        bounds = torch.tensor(list(seg_lengths), device=scores.device).cumsum(0)
        seg_of_keep = torch.bucketize(keep, bounds, right=True)  # right=True: a segment's first token is its own
        counts = torch.bincount(seg_of_keep, minlength=len(seg_lengths)).tolist()
        return keep, counts
    if scope != "segment":
        raise ValueError(f"scope={scope!r} is not allowed: use 'segment' or 'global'")
    budgets = [keep_count(n - p, keep_ratio) + p for n, p in zip(seg_lengths, n_protected)]
    keep = torch.empty(sum(budgets), dtype=torch.long, device=scores.device)
    starts, out_starts = offsets(seg_lengths), offsets(budgets)
    for (n, k), members in segment_groups(seg_lengths, budgets).items():  # one batched top-k per size
        rows = rows_of([starts[s] for s in members], n, scores.device)  # [G, n]
        local = scores[rows].topk(k, dim=1).indices.sort(dim=1).values
        out = rows_of([out_starts[s] for s in members], k, scores.device)
        keep[out.flatten()] = rows.gather(1, local).flatten()
    return keep, budgets


def random_scores(length: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[length]`` float32 uniform draws in [0, 1) from ``seed`` (drawn on the CPU, so the same on every
    device): ranking by them and keeping the top-K per segment (:func:`select_tokens`) keeps a uniformly random
    subset of K patches, the control eq. 1's score must beat (``IPCV(selection="random")``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(length, generator=g).to(device)


def farthest_points(x: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max-min (farthest-point) selection of ``k`` of the rows of ``x``, batched over groups.

    The first row chosen is the one farthest from the group's mean; each next one is the row whose
    distance to its nearest chosen row is largest (squared Euclidean distances in float32; ties: the
    lower row). Chosen rows are never chosen again.

    Args: x ``[G, n, D]``; ``0 <= k <= n``. Returns: ``[G, k]`` long rows, in the order chosen.
    """
    G, n, _ = x.shape
    x = x.float()
    out = torch.empty(G, k, dtype=torch.long, device=x.device)
    if k == 0:
        return out
    batch = torch.arange(G, device=x.device)

    def dist(c: torch.Tensor) -> torch.Tensor:  # [G, D] -> [G, n]
        return (x - c[:, None]).square().sum(-1)

    nxt = dist(x.mean(1)).argmax(1)
    min_d = torch.full((G, n), float("inf"), device=x.device)
    for i in range(k):
        out[:, i] = nxt
        if i == k - 1:
            break
        min_d = torch.minimum(min_d, dist(x[batch, nxt]))
        min_d[batch, nxt] = float("-inf")  # stays -inf: minimum() never raises it
        nxt = min_d.argmax(1)
    return out


def farthest_point_select(
    h: torch.Tensor,
    seg_lengths: Sequence[int],
    keep_ratio: float,
    scope: str = "segment",
    protected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Eq. 2 with a diversity rule instead of eq. 1's score (``IPCV(selection="diversity")``): each
    segment keeps the same count as :func:`select_tokens` (``scope="segment"``: ``keep_count``;
    ``"global"``: ``floor_count`` of the call's unprotected tokens, chosen over the whole call), chosen
    by :func:`farthest_points` on the states ``h`` ``[L, D]`` at the pruning block. Protected tokens are
    always kept, never counted and never chosen from.

    Returns: ``keep`` ``[K]`` long (sorted) and the kept count of each segment (protected included).
    """
    L = h.shape[0]
    if sum(seg_lengths) != L:
        raise ValueError(f"segment lengths sum to {sum(seg_lengths)}, but there are {L} states")
    if scope not in ("segment", "global"):
        raise ValueError(f"scope={scope!r} is not allowed: use 'segment' or 'global'")
    prot = torch.zeros(L, dtype=torch.bool, device=h.device) if protected is None else protected.to(h.device)
    starts = offsets(seg_lengths)
    units = [(0, L)] if scope == "global" else [(a, a + n) for a, n in zip(starts, seg_lengths)]
    count = floor_count if scope == "global" else keep_count
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    kept = [prot.nonzero().flatten()]
    for a, b in units:
        free = (~prot[a:b]).nonzero().flatten() + a
        groups.setdefault((free.numel(), count(free.numel(), keep_ratio)), []).append(free)
    for (n, k), frees in groups.items():  # one batched selection per (size, budget)
        rows = torch.stack(frees)  # [G, n]
        kept.append(rows.flatten() if k >= n else rows.gather(1, farthest_points(h[rows], k)).flatten())
    keep = torch.cat(kept).sort().values
    bounds = torch.tensor(list(seg_lengths), device=h.device).cumsum(0)
    counts = torch.bincount(torch.bucketize(keep, bounds, right=True), minlength=len(seg_lengths)).tolist()
    return keep, counts


def farthest_point_flops(n: int, k: int, dim: int) -> int:
    """FLOPs of :func:`farthest_points` choosing ``k`` of ``n`` rows of width ``dim``: the mean (``n D``)
    and ``k`` passes of squared distances to all rows (``3 n D`` each: difference, square, sum); none when
    every row is kept."""
    return n * dim + 3 * n * dim * k if 0 < k < n else 0


def nearest_kept(
    h_rem: torch.Tensor, h_keep: torch.Tensor, k: int, block_elements: int = KNN_BLOCK_ELEMENTS
) -> torch.Tensor:
    """Eq. 3: for each removed token, its ``k`` nearest kept tokens (Euclidean, float32).

    Ranks by ``||b||^2 - 2 a.b``, which orders kept tokens b exactly as ``||a - b||`` does for a
    fixed removed token a. Works on one group or a batch of groups; the distance matrix is built
    at most ``block_elements`` entries at a time, so memory stays bounded whatever R and K are.

    Args:
        h_rem: ``[..., R, D]``; h_keep: ``[..., K, D]`` with ``k <= K``.
    Returns: ``[..., R, k]`` long indices into the K axis, nearest first.
    """
    batch_shape, R, K = h_rem.shape[:-2], h_rem.shape[-2], h_keep.shape[-2]
    keep32 = h_keep.float().reshape(-1, K, h_keep.shape[-1])  # [B, K, D]
    rem32 = h_rem.reshape(-1, R, h_rem.shape[-1])  # [B, R, D]
    B = keep32.shape[0]
    keep_sq = keep32.square().sum(-1).unsqueeze(1)  # [B, 1, K]
    keep_t = keep32.transpose(1, 2)
    rows = max(1, block_elements // max(1, K * B))
    out = torch.empty((B, R, k), dtype=torch.long, device=h_rem.device)
    for start in range(0, R, rows):
        a = rem32[:, start : start + rows].float()
        d = torch.baddbmm(keep_sq, a, keep_t, alpha=-2.0)  # [B, rows, K]
        out[:, start : start + rows] = d.topk(k, dim=-1, largest=False).indices
    return out.reshape(*batch_shape, R, k)


@dataclass(frozen=True)
class Neighbors:
    """NGR neighbourhoods of the removed tokens of one call.

    ``index[r, j]`` is a row of the kept sequence (0..K-1), ``weight[r, j]`` is ``1/k_r`` for the
    ``k_r`` real neighbours of removed token r and 0 for padding (segments with fewer kept tokens
    than ``neighbors``).
    """

    index: torch.Tensor  # [R, k] long
    weight: torch.Tensor  # [R, k] float32


def find_neighbors(
    h_lp: torch.Tensor,
    keep: torch.Tensor,
    rem: torch.Tensor,
    seg_lengths: Sequence[int],
    keep_counts: Sequence[int],
    neighbors: int,
    scope: str = "segment",
    block_elements: int = KNN_BLOCK_ELEMENTS,
) -> Neighbors:
    """Eq. 3 for every removed token: neighbours among the kept tokens of its segment (or of the
    whole call with ``scope="global"``), on the states ``h_lp`` ``[L, D]`` at the pruning block."""
    device = h_lp.device
    K, R = keep.numel(), rem.numel()
    if scope == "global":
        k = min(neighbors, K)
        idx = nearest_kept(h_lp[rem], h_lp[keep], k, block_elements)
        return Neighbors(idx, torch.full((R, k), 1.0 / k, device=device))
    rem_counts = [n - c for n, c in zip(seg_lengths, keep_counts)]
    k_max = min(neighbors, max(keep_counts))
    idx = torch.zeros((R, k_max), dtype=torch.long, device=device)
    weight = torch.zeros((R, k_max), dtype=torch.float32, device=device)
    h_keep, h_rem = h_lp[keep], h_lp[rem]
    kstarts, rstarts = offsets(keep_counts), offsets(rem_counts)
    for (c, r), members in segment_groups(keep_counts, rem_counts).items():  # batched over equal segments
        if not r:
            continue
        k = min(neighbors, c)
        kept_rows = rows_of([kstarts[s] for s in members], c, device)  # [G, c] rows of the kept sequence
        rem_rows = rows_of([rstarts[s] for s in members], r, device)  # [G, r] rows of the removed sequence
        local = nearest_kept(h_rem[rem_rows], h_keep[kept_rows], k, block_elements)  # [G, r, k]
        flat = rem_rows.flatten()
        idx[flat, :k] = kept_rows.gather(1, local.flatten(1)).view(-1, k)
        weight[flat, :k] = 1.0 / k
    return Neighbors(idx, weight)


def ngr(h_rem_lp: torch.Tensor, h_keep_l: torch.Tensor, h_keep_lp: torch.Tensor, nb: Neighbors) -> torch.Tensor:
    """Eq. 4-5 (Algorithm 1): ``h~_{i,l} = h_{i,lp} + mean_{j in N_k(i)} (h_{j,l} - h_{j,lp})``.

    Accumulates one neighbour column at a time in float32, so memory is ``[R, D]``, never
    ``[R, k, D]``.

    Args:
        h_rem_lp: ``[R, D]`` removed tokens at l_p. h_keep_l, h_keep_lp: ``[K, D]`` kept tokens at l
            and at l_p. nb: their neighbourhoods.
    Returns: ``[R, D]`` in the dtype of ``h_keep_l``.
    """
    delta = h_keep_l.float() - h_keep_lp.float()  # eq. 4
    out = h_rem_lp.float().clone()
    for j in range(nb.index.shape[1]):
        out.addcmul_(delta.index_select(0, nb.index[:, j]), nb.weight[:, j : j + 1])
    return out.to(h_keep_l.dtype)
