"""DART (duplication-aware token reduction, Wen et al. 2025) as pure functions on tensors.

DART keeps a few *pivot* tokens and, for each pivot, the tokens least similar to it: a token that
duplicates a pivot carries little that the pivot does not. Written for one group of candidate
tokens so that the vision-side variant (:class:`ipcv.DARTViT`, one group per image / frame) and an
LLM-side DART can share it. Nothing here knows transformers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pivot_scores(keys: torch.Tensor) -> torch.Tensor:
    """DART's pivot criterion: the L1 norm of each token's attention keys.

    Args: keys ``[N, ...]`` (heads may be kept as extra dims). Returns: ``[N]`` float32.
    """
    return keys.float().flatten(1).abs().sum(-1)


def pivot_budgets(total: int, n_pivots: int) -> list[int]:
    """Split ``total`` selected tokens over ``n_pivots`` pivots as evenly as possible (earlier pivots
    take the remainder): DART's per-pivot budget, made exact so the kept count is what was asked."""
    if n_pivots <= 0:
        return []
    base, extra = divmod(total, n_pivots)
    return [base + (1 if i < extra else 0) for i in range(n_pivots)]


def select_least_duplicated(candidates: torch.Tensor, pivots: torch.Tensor, budgets: Sequence[int]) -> torch.Tensor:
    """DART's selection: for pivot j in turn, take the ``budgets[j]`` candidates with the lowest
    cosine similarity to it that no earlier pivot took.

    Args:
        candidates: ``[N, D]`` tokens that may be selected (pivots excluded by the caller).
        pivots: ``[P, D]``; budgets: ``P`` counts with ``sum(budgets) <= N``.
    Returns: ``[sum(budgets)]`` long indices into ``candidates``, in the order chosen.
    """
    if sum(budgets) > candidates.shape[0]:
        raise ValueError(f"budgets sum to {sum(budgets)} but there are only {candidates.shape[0]} candidates")
    c = candidates.float()
    c = c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    p = pivots.float()
    p = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = p @ c.T  # [P, N]
    taken = torch.zeros(c.shape[0], dtype=torch.bool, device=c.device)
    chosen = []
    for j, budget in enumerate(budgets):
        if budget <= 0:
            continue
        idx = sim[j].masked_fill(taken, float("inf")).topk(budget, largest=False).indices
        taken[idx] = True
        chosen.append(idx)
    if not chosen:
        return torch.zeros(0, dtype=torch.long, device=c.device)
    return torch.cat(chosen)


def official_order(positions: Sequence[int]) -> list[int]:
    """The order in which DART's official code visits its pivots: it puts their prompt positions into
    a Python ``set`` (image pivots first, then text pivots) and iterates over it, so the order is
    CPython's set order of those integers. Returns indices into ``positions`` in that order."""
    where = {p: i for i, p in enumerate(positions)}
    if len(where) != len(positions):
        raise ValueError(f"pivot positions must be distinct, got {list(positions)}")
    return [where[p] for p in set(positions)]


def dart_keep(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    keep: int,
    n_pivots: int,
    guides: torch.Tensor | None = None,
    *,
    positions: torch.Tensor | None = None,
    guide_positions: torch.Tensor | None = None,
    per_pivot: int | None = None,
) -> torch.Tensor:
    """The tokens DART keeps out of one group: the ``min(n_pivots, keep)`` top-scoring pivots plus
    :func:`select_least_duplicated` for the rest.

    Args:
        tokens: ``[N, D]`` states compared by cosine similarity; scores: ``[N]`` pivot scores
            (:func:`pivot_scores`); ``1 <= keep <= N``.
        guides: ``[T, D]`` extra pivots from outside the group (LLM-side DART: the text pivots), or
            None. They take their share of the per-pivot budget, steering the choice away from
            their duplicates, but are not part of the result.
        positions / guide_positions: prompt positions ``[N]`` / ``[T]`` of the tokens and guides. If
            given, pivots are visited in the official order (:func:`official_order`); otherwise
            image pivots by score, then the guides in the order given.
        per_pivot: tokens each pivot takes (the official ``int(n * keep / pivots)``); None: the
            ``keep - pivots`` left are spread as evenly as possible (:func:`pivot_budgets`).
    Returns: long indices into ``tokens``, sorted: ``keep`` of them, or with ``per_pivot``
        ``pivots + per_pivot * (pivots + T)`` (at most N).
    """
    N = tokens.shape[0]
    if keep >= N:
        return torch.arange(N, device=tokens.device)
    P = min(n_pivots, keep)
    pivots = scores.float().topk(P).indices
    rest = torch.ones(N, dtype=torch.bool, device=tokens.device)
    rest[pivots] = False
    pool = rest.nonzero().flatten()
    steer = tokens[pivots] if guides is None else torch.cat([tokens[pivots], guides.to(tokens.dtype)])
    if positions is not None:
        where = positions[pivots].tolist() + ([] if guides is None else guide_positions.tolist())
        steer = steer[official_order(where)]
    if per_pivot is None:
        budgets = pivot_budgets(keep - P, steer.shape[0])
    else:
        budgets, left = [], pool.numel()
        for _ in range(steer.shape[0]):
            budgets.append(min(per_pivot, left))
            left -= budgets[-1]
    picked = pool[select_least_duplicated(tokens[pool], steer, budgets)]
    return torch.cat([pivots, picked]).sort().values
