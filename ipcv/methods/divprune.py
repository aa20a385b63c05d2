"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): visual token pruning as a Max-Min Diversity Problem,
as pure tensor functions. Written from the paper only (the official code is CC BY-NC 4.0 and was not read).

The paper's problem (its eq. for MMDP): among the ``n`` visual tokens ``V`` choose ``S``, ``|S| = k``,
maximising ``min_{i != j in S} d(v_i, v_j)`` with the cosine distance ``d(u, v) = 1 - cos(u, v)``. It is
NP-hard; the paper solves it greedily (its Algorithm 1): the first token is the one whose distance to its
nearest other token is largest, then each step adds the token whose distance to the *selected* set (its
nearest selected token) is largest. Nothing here knows transformers.
"""

from __future__ import annotations

import torch


def cosine_distances(x: torch.Tensor) -> torch.Tensor:
    """``d(v_i, v_j) = 1 - cos(v_i, v_j)`` for ``x`` ``[n, D]``: ``[n, n]`` float32 (0 on the diagonal up to
    rounding; a zero vector is at distance 1 from everything)."""
    x = x.float()
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return 1.0 - unit @ unit.T


def max_min_greedy(dist: torch.Tensor, k: int) -> torch.Tensor:
    """The greedy solution of the Max-Min Diversity Problem (DivPrune's Algorithm 1) on a distance matrix.

    Args:
        dist: ``[n, n]`` symmetric distances. k: tokens to keep, ``0 <= k <= n``.
    Returns: ``[k]`` long indices in the order they were chosen. Step 1: ``argmax_i min_{j != i} d_ij``;
        step t: ``argmax_{i not in S} min_{j in S} d_ij``. Ties go to the lowest index (``argmax``'s rule).
    """
    n = dist.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"max_min_greedy: k={k} is outside the allowed range [0, {n}]")
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=dist.device)
    dist = dist.float()
    eye = torch.eye(n, dtype=torch.bool, device=dist.device)
    nearest_other = dist.masked_fill(eye, float("inf")).min(1).values if n > 1 else torch.zeros(1, device=dist.device)
    chosen = [int(nearest_other.argmax())]
    to_selected = dist[chosen[0]].clone()  # [n] distance of every token to its nearest selected token
    to_selected[chosen[0]] = -float("inf")
    for _ in range(k - 1):
        j = int(to_selected.argmax())
        chosen.append(j)
        to_selected = torch.minimum(to_selected, dist[j])
        to_selected[chosen] = -float("inf")
    return torch.tensor(chosen, dtype=torch.long, device=dist.device)


def divprune_keep(x: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's kept tokens of one span ``x`` ``[n, D]`` (the visual tokens at the LLM's input): ``[k]``
    indices, increasing."""
    return max_min_greedy(cosine_distances(x), k).sort().values
