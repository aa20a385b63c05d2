"""SparseVLM (text-guided visual token sparsification, Zhang et al. 2025) as pure functions.

Text tokens *rate* the visual tokens: raters are the text tokens most related to the image, a visual
token's score is the attention it receives from them. Deleted tokens are partly *recycled*: the best
of them are clustered (DPC-kNN, density peaks with a k-nearest-neighbour density) and each cluster
returns as one token. Nothing here knows transformers.
"""

from __future__ import annotations

import torch


def rater_scores(probs: torch.Tensor) -> torch.Tensor:
    """Visual-token scores from text-to-visual attention.

    Args: probs ``[H, T, V]``: attention weights from ``T`` text tokens to ``V`` visual tokens.
    Returns: ``[V]`` float32: mean over heads and raters, where raters are the text tokens whose
    mean (over heads and visual tokens) attention to the visual tokens is at least the mean over
    text tokens (all text tokens if none attends at all).
    """
    p = probs.float().mean(0)  # [T, V]
    relation = p.mean(-1)  # [T]
    raters = relation >= relation.mean()
    if not bool(raters.any()):
        raters = torch.ones_like(raters)
    return p[raters].mean(0)


def dpc_knn(
    x: torch.Tensor, n_clusters: int, k: int = 5, include_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with kNN density (Du et al. 2016; as in TCFormer and SparseVLM).

    density ``rho_i = exp(-mean of the squared distances to the k nearest others)`` (``include_self``:
    the k nearest tokens counting the token itself at distance 0, as SparseVLM's code does); ``delta_i`` =
    distance to the nearest denser point (the largest distance for the densest); the
    ``n_clusters`` points with the largest ``rho * delta`` are centres, every point joins its
    nearest centre.

    Args: x ``[M, D]``; ``1 <= n_clusters <= M``.
    Returns: centres ``[C]`` indices into x; assign ``[M]`` cluster index in ``range(C)``.
    """
    M = x.shape[0]
    xf = x.float()
    dist = torch.cdist(xf, xf) / (xf.shape[-1] ** 0.5)
    kk = max(1, min(k, M - 1))
    if include_self:
        near = dist.topk(max(1, min(k, M)), largest=False).values
        rho = (-(near**2).mean(-1)).exp()
    elif M > 1:
        near = dist.topk(kk + 1, largest=False).values[:, 1:]  # drop self
        rho = (-(near**2).mean(-1)).exp()
    else:
        rho = torch.ones(1, device=x.device)
    rho = rho + torch.rand(M, generator=torch.Generator().manual_seed(0)).to(x.device) * 1e-6  # break ties
    denser = rho[None, :] > rho[:, None]  # [i, j]: j denser than i
    big = dist.max() + 1
    delta = dist.masked_fill(~denser, big).min(-1).values
    delta = torch.where(denser.any(-1), delta, dist.max(-1).values)
    centres = (rho * delta).topk(n_clusters).indices
    assign = dist[:, centres].argmin(-1)
    assign[centres] = torch.arange(n_clusters, device=x.device)
    return centres, assign


def recycle(x: torch.Tensor, n_clusters: int, neighbors: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseVLM's recycling of deleted tokens ``x`` ``[M, D]`` into ``n_clusters`` tokens.

    The density uses the ``neighbors`` nearest tokens, the token itself included (None: as many as
    there are clusters, as SparseVLM's code does).
    Returns: centres ``[C]`` (indices into x: each cluster's density peak, whose position the merged
    token takes) and merged ``[C, D]`` (the mean of each cluster's states, in x's dtype).
    """
    centres, assign = dpc_knn(x, n_clusters, n_clusters if neighbors is None else neighbors, include_self=True)
    sums = torch.zeros(n_clusters, x.shape[-1], dtype=torch.float32, device=x.device)
    sums.index_add_(0, assign, x.float())
    sizes = torch.bincount(assign, minlength=n_clusters).clamp_min(1).float()
    return centres, (sums / sizes[:, None]).to(x.dtype)


def recycled_clusters(deleted: int, share: float, rule: str = "plus_one") -> tuple[int, int]:
    """``(m, c)``: of ``deleted`` tokens, ``m`` are recycled into ``c = m // 10 + 1`` clusters.

    ``rule="plus_one"`` (SparseVLM's code): ``m = int(share * deleted) + 1``; ``"at_least_one"`` (the
    IPCV authors' port): ``m = max(1, int(share * deleted))``, and nothing unless ``deleted > 1``.
    ``(0, 0)`` when ``share`` or ``deleted`` is 0; ``m`` is at most ``deleted``."""
    if not deleted or not share:
        return 0, 0
    if rule == "plus_one":
        m = int(share * deleted) + 1
    elif rule == "at_least_one":
        if deleted <= 1:
            return 0, 0
        m = max(1, int(share * deleted))
    else:
        raise ValueError(f"recycled_clusters: rule={rule!r} is not allowed: use 'plus_one' or 'at_least_one'")
    m = min(m, deleted)
    return m, m // 10 + 1
