"""Token merging (ToMe, Bolya et al. 2023) and Token Fusion (ToFu, Kim et al. 2024) as pure
functions on tensors: bipartite soft matching, size-weighted merging, MLERP merging, pruning, and
the per-block reduction schedule of the IPCV paper's baselines (Appendix C); for the IPCV authors'
ports of ToMe / ToFu (their runs of those baselines): their schedule (:func:`release_schedule`), the
order in which they pass tokens on (:func:`release_matching`) and their unweighted mean
(:func:`merge_mean`).

Layout: a batch of groups ``[B, N, ...]`` (one group = the unprotected tokens of one image or video
frame; groups of one batch have the same length). A reduction is described by a :class:`Matching`
of index tensors; ``merge_*`` apply it, :func:`unmerge` copies the result back to every source
position. Nothing here knows transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Matching:
    """One reduction of ``N`` tokens to ``N - r`` in every group of a batch.

    into: ``[B, N]`` long, the token (index in ``0..N-1``) each token is merged into; a surviving
        token is merged into itself.
    keep: ``[B, N - r]`` long, the surviving tokens, increasing (original order is kept).
    out_index: ``[B, N]`` long, the output row (``0..N-r-1``) that each token ends in.
    """

    into: torch.Tensor
    keep: torch.Tensor
    out_index: torch.Tensor

    @property
    def r(self) -> int:
        return self.into.shape[1] - self.keep.shape[1]


def identity_matching(batch: int, n: int, device: torch.device) -> Matching:
    """The matching that reduces nothing (``r = 0``)."""
    idx = torch.arange(n, device=device).expand(batch, n)
    return Matching(idx, idx, idx)


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Matching:
    """ToMe's bipartite soft matching (ToMe paper, section 3).

    Tokens at even positions form set A, odd positions set B. Each A token is linked to its most
    cosine-similar B token; the ``r`` A tokens with the most similar links are merged into their B
    token (ties: lower A position first). ``r`` is capped at ``|A| = ceil(N / 2)``.

    Args:
        metric: ``[B, N, C]`` similarity features (ToMe: attention keys averaged over heads).
        r: tokens to remove from every group.
    Returns: the :class:`Matching` (``min(r, |A|)`` tokens removed; none if ``N < 2``).
    """
    B, N, _ = metric.shape
    device = metric.device
    r = min(r, (N + 1) // 2) if N >= 2 else 0
    if r <= 0:
        return identity_matching(B, N, device)
    order, best_b = _links(metric)
    return _matching(order, best_b, r, N)


def _links(metric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A tokens (even positions) by decreasing similarity of their best link (ties: lower position
    first), ``[B, Na]`` positions in A, and each A token's most cosine-similar B token ``[B, Na]``."""
    m = metric.float()
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b = m[:, 0::2], m[:, 1::2]  # [B, Na, C], [B, Nb, C]
    best, best_b = (a @ b.transpose(1, 2)).max(dim=-1)  # [B, Na]
    return best.argsort(dim=-1, descending=True, stable=True), best_b


def _matching(order: torch.Tensor, best_b: torch.Tensor, r: int, N: int) -> Matching:
    """The :class:`Matching` that merges the first ``r`` A tokens of ``order`` into their links."""
    B, device = order.shape[0], order.device
    src_a = order[:, :r]  # [B, r] positions in A
    src = 2 * src_a  # token indices of A position i: 2i; of B position j: 2j + 1
    dst = 2 * best_b.gather(1, src_a) + 1
    into = torch.arange(N, device=device).repeat(B, 1)
    into.scatter_(1, src, dst)
    survives = into == torch.arange(N, device=device)
    keep = survives.nonzero()[:, 1].view(B, N - r)
    rank = survives.long().cumsum(1) - 1  # output row of each surviving token
    return Matching(into, keep, rank.gather(1, into))


def tome_matching(metric: torch.Tensor, r: int, protected: int = 0) -> tuple[Matching, torch.Tensor]:
    """Official ToMe's bipartite soft matching (``tome/merge.py``) on tokens given in ToMe's current order,
    and the order in which official ToMe hands the survivors to the next block.

    Official ToMe sees ``protected`` tokens (a CLS token; it has no other kind) *before* these ``N`` and
    alternates A / B over that whole sequence: a token at sequence position ``protected + i`` is in A when that
    position is even. Protected tokens are never merged nor merged into (they are not passed here). Each A
    token links to its most cosine-similar B token; the ``r`` A tokens with the most similar links merge into
    theirs (ties: lower A position first; official ToMe's argsort is not stable). The next order is ToMe's
    merge output: the unmerged A tokens (by decreasing link similarity; with a protected token in front,
    official ToMe sorts them back into sequence order), then every B token in sequence order. ``r`` is capped
    at the number of A tokens.

    Args: metric ``[B, N, C]`` in ToMe's order; r tokens to remove; protected tokens in front.
    Returns: the :class:`Matching` (indices into the given order) and ``[B, N - r]`` long, the surviving
        tokens (indices in ``0..N-1``) in ToMe's next order.
    """
    B, N, _ = metric.shape
    device = metric.device
    a_idx = torch.arange(protected % 2, N, 2, device=device)  # sequence position protected + i even
    b_idx = torch.arange(1 - protected % 2, N, 2, device=device)
    r = min(r, a_idx.numel()) if b_idx.numel() else 0
    if r <= 0:
        m = identity_matching(B, N, device)
        return m, m.keep
    m = metric.float()
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    best, best_b = (m[:, a_idx] @ m[:, b_idx].transpose(1, 2)).max(dim=-1)  # [B, Na]
    order = best.argsort(dim=-1, descending=True, stable=True)  # A positions by decreasing link similarity
    src = a_idx[order[:, :r]]
    dst = b_idx[best_b.gather(1, order[:, :r])]
    into = torch.arange(N, device=device).repeat(B, 1)
    into.scatter_(1, src, dst)
    survives = into == torch.arange(N, device=device)
    keep = survives.nonzero()[:, 1].view(B, N - r)
    rank = survives.long().cumsum(1) - 1
    unmerged = order[:, r:]
    if protected:
        unmerged = unmerged.sort(dim=1).values
    nxt = torch.cat([a_idx[unmerged], b_idx.expand(B, -1)], dim=1)
    return Matching(into, keep, rank.gather(1, into)), nxt


def release_matching(metric: torch.Tensor, r: int) -> tuple[Matching, torch.Tensor]:
    """The IPCV authors' ToMe / ToFu ports on Qwen2-VL (first commit of github Perkzi/IPCV): ToMe's
    bipartite matching (:func:`bipartite_soft_matching`, same merged set) plus the order in which
    their port hands the surviving tokens to the next block: first the A tokens that were not merged,
    by decreasing similarity of their best link, then every B token in its previous order. The next
    block splits A / B by alternating positions in *that* order, so the order decides later merges.

    Args: as :func:`bipartite_soft_matching` (``metric`` ``[B, N, C]`` in the release's order).
    Returns: the :class:`Matching` and ``[B, N - r]`` long, the surviving tokens (indices in
        ``0..N-1``) in the release's output order.
    """
    B, N, _ = metric.shape
    r = min(r, (N + 1) // 2) if N >= 2 else 0
    if r <= 0:
        m = identity_matching(B, N, metric.device)
        return m, m.keep
    order, best_b = _links(metric)
    unmerged_a = 2 * order[:, r:]  # token indices of the A tokens left, by decreasing link similarity
    b_tokens = torch.arange(1, N, 2, device=metric.device).expand(B, -1)
    return _matching(order, best_b, r, N), torch.cat([unmerged_a, b_tokens], dim=1)


def merge_average(x: torch.Tensor, size: torch.Tensor, m: Matching) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's size-weighted average: ``x_t = sum_i s_i x_i / sum_i s_i`` over the tokens merged into t.

    Args:
        x: ``[B, N, D]`` tokens. size: ``[B, N]`` source positions each token stands for (>= 1).
    Returns: ``[B, N - r, D]`` merged tokens (dtype of ``x``; summed in float32) and their sizes
        ``[B, N - r]``.
    """
    if m.r == 0:
        return x, size
    s = size.float()
    num = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    num.scatter_add_(1, m.into.unsqueeze(-1).expand(x.shape), x.float() * s.unsqueeze(-1))
    den = torch.zeros_like(s).scatter_add_(1, m.into, s)
    keep = m.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return (num.gather(1, keep) / den.gather(1, m.keep).unsqueeze(-1)).to(x.dtype), den.gather(1, m.keep)


def merge_mean(x: torch.Tensor, size: torch.Tensor, m: Matching) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted mean of the tokens merged into t (each counts once, whatever it stands for), as the
    IPCV authors' ToMe / ToFu ports average; the returned sizes still add up (for the unmerge map).

    Args / returns: as :func:`merge_average`.
    """
    if m.r == 0:
        return x, size
    merged, _ = merge_average(x, torch.ones_like(size), m)
    den = torch.zeros_like(size.float()).scatter_add_(1, m.into, size.float())
    return merged, den.gather(1, m.keep)


def merge_mlerp(x: torch.Tensor, size: torch.Tensor, m: Matching) -> tuple[torch.Tensor, torch.Tensor]:
    """ToFu's MLERP merge: the (size-weighted) mean direction of the merged tokens, rescaled to the
    largest norm among them: ``x_t = mean / ||mean|| * max_i ||x_i||``. A token that absorbs nothing
    is returned unchanged.

    Args / returns: as :func:`merge_average`.
    """
    if m.r == 0:
        return x, size
    mean, new_size = merge_average(x, size, m)
    norms = x.float().norm(dim=-1)  # [B, N]
    max_norm = torch.zeros_like(norms).scatter_reduce_(1, m.into, norms, reduce="amax", include_self=False)
    max_norm = max_norm.gather(1, m.keep)
    mean32 = mean.float()
    out = mean32 / mean32.norm(dim=-1, keepdim=True).clamp_min(1e-12) * max_norm.unsqueeze(-1)
    absorbed = new_size != size.float().gather(1, m.keep)  # groups with more than the token itself
    kept = x.gather(1, m.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return torch.where(absorbed.unsqueeze(-1), out.to(x.dtype), kept), new_size


def merge_prune(x: torch.Tensor, size: torch.Tensor, m: Matching) -> tuple[torch.Tensor, torch.Tensor]:
    """ToFu's pruning step: the matched A tokens are dropped and their B token is kept unchanged; it
    still stands for their positions (its size grows), so :func:`unmerge` copies it there.

    Args / returns: as :func:`merge_average`.
    """
    if m.r == 0:
        return x, size
    s = size.float()
    den = torch.zeros_like(s).scatter_add_(1, m.into, s)
    return x.gather(1, m.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])), den.gather(1, m.keep)


def unmerge(y: torch.Tensor, m: Matching) -> torch.Tensor:
    """``[B, N - r, D]`` -> ``[B, N, D]``: every source position gets a copy of the token it ended in."""
    return y.gather(1, m.out_index.unsqueeze(-1).expand(-1, -1, y.shape[-1]))


def compose(first: Matching, second: Matching) -> Matching:
    """The matching of ``first`` followed by ``second`` (``second`` acts on ``first``'s output)."""
    out_index = second.out_index.gather(1, first.out_index)
    keep = first.keep.gather(1, second.keep)
    into = keep.gather(1, out_index)
    return Matching(into, keep, out_index)


def merge_schedule(n: int, k: int, depth: int) -> list[int]:
    """Tokens each block removes so that ``n`` tokens become ``k`` after ``depth`` blocks, spread
    evenly ("reduced proportionally across layers until the target is reached", paper Appendix C):
    block l removes ``floor(R (l+1) / depth) - floor(R l / depth)`` with ``R = n - k``, so every
    block removes ``floor(R / depth)`` or one more, and the total is exactly R.
    """
    R = n - k
    return [R * (layer + 1) // depth - R * layer // depth for layer in range(depth)]


def release_schedule(n: int, target: float, depth: int, start: int, min_keep: float = 0.8) -> list[int]:
    """Tokens each block removes in the IPCV authors' ToMe / ToFu runs: blocks before ``start`` none;
    from ``start`` on, while the running share (the product of the shares asked so far) is above
    ``target``, a block asks for ``max(target / share, min_keep)`` of its ``c`` tokens and removes
    ``c - int(c * asked)`` rounded down to a multiple of 4. The running share multiplies the share
    asked, not the one obtained, so the result can stay above ``target * n``.

    Args: n tokens; target share in (0, 1]; depth blocks; start block. Returns ``[depth]`` counts.
    """
    r, share, cur = [0] * depth, 1.0, n
    for layer in range(start, depth):
        if cur <= 1 or not share > target:
            break
        asked = max(target / share, min_keep)
        removed = (cur - int(cur * asked)) // 4 * 4
        r[layer], cur, share = removed, cur - removed, share * asked
    return r


def merge_rounds(n: int, r: int, protected: int = 0) -> list[int]:
    """How a block removes ``r`` of ``n`` tokens: one bipartite round removes at most its A tokens
    (``ceil(n / 2)``; ``floor(n / 2)`` behind an odd number of ``protected`` tokens, which take A's first
    place: :func:`tome_matching`), so a larger ``r`` (only for extreme ratios on shallow encoders) takes
    several rounds, each on the previous round's output. Returns r per round."""
    rounds = []
    while r > 0 and n >= 2:
        step = min(r, (n + 1 - protected % 2) // 2)
        rounds.append(step)
        n, r = n - step, r - step
    return rounds
