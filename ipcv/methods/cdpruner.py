"""CDPruner (Zhang et al., NeurIPS 2025, arXiv 2506.10967): a determinantal point process over
instruction-conditioned similarity, as pure tensor functions (Theia-4869/CDPruner, Apache-2.0, read for the
rule; not copied).

- similarity ``S = X̂ X̂^T`` of the visual tokens' unit features (the paper's eq. for the similarity kernel);
- relevance ``r_i``: the *negated* cosine similarity of token ``i`` to the instruction's text embeddings,
  averaged over them, then min-max normalised over the image (the official code's sign and normalisation);
- the conditional kernel ``L = diag(q) S diag(q)``, ``q = r`` (the official code) or ``q = exp(alpha r)``,
  ``alpha = theta / (2 (1 - theta))`` (the paper's trade-off ``theta``);
- the greedy MAP of the DPP by the fast incremental Cholesky update (Chen et al. 2018, "Fast greedy MAP
  inference for DPP", which the official code implements).

Nothing here knows transformers.
"""

from __future__ import annotations

import torch


def similarity_kernel(x: torch.Tensor) -> torch.Tensor:
    """``[n, n]`` cosine similarities of the visual features ``x`` ``[n, D]`` (float32)."""
    x = x.float()
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def relevance(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The official relevance of each visual token to the instruction, ``[n]`` in ``[0, 1]``:
    ``-mean_m cos(image_i, text_m)``, then ``(r - min r + 1e-6) / (max r - min r)`` over the ``n`` tokens
    (all ones when every token is equally relevant, or when there is no text)."""
    if text.shape[0] == 0:
        return torch.ones(image.shape[0], device=image.device)
    i = image.float() / image.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    t = text.float() / text.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = -(i @ t.T).mean(-1)
    spread = r.max() - r.min()
    if float(spread) == 0.0:
        return torch.ones_like(r)
    return (r - r.min() + 1e-6) / spread


def conditional_kernel(sim: torch.Tensor, rel: torch.Tensor, theta: float | None = None) -> torch.Tensor:
    """``L = diag(q) S diag(q)`` with ``q = rel`` (``theta=None``, the official code) or
    ``q = exp(theta / (2 (1 - theta)) * rel)`` (the paper's trade-off, ``0 <= theta < 1``)."""
    q = rel if theta is None else torch.exp(theta / (2.0 * (1.0 - theta)) * rel)
    return q[:, None] * sim * q[None, :]


def dpp_greedy_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP inference of a DPP with kernel ``L`` ``[n, n]``: ``k`` items, each step adding the item
    with the largest marginal gain ``d_j^2`` (the Schur complement of ``L`` on the chosen set), updated by
    one Cholesky row per step: ``e = (L[j] - c[:, j]^T c) / sqrt(d_j^2)``, ``d^2 -= e^2``. ``[k]`` long
    indices in the order chosen (ties: lowest index)."""
    n = kernel.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"dpp_greedy_map: k={k} is outside the allowed range [0, {n}]")
    kernel = kernel.float()
    c = torch.zeros(k, n, device=kernel.device)
    d2 = kernel.diagonal().clone()
    chosen = []
    for i in range(k):
        j = int(d2.argmax())
        chosen.append(j)
        e = (kernel[j] - c[:i, j] @ c[:i]) / torch.sqrt(d2[j])
        c[i] = e
        d2 = d2 - e.square()
        d2[chosen] = -float("inf")
    return torch.tensor(chosen, dtype=torch.long, device=kernel.device)


def cdpruner_keep(
    features: torch.Tensor, image: torch.Tensor, text: torch.Tensor, k: int, theta: float | None = None
) -> torch.Tensor:
    """CDPruner's kept tokens of one image: similarity from ``features`` ``[n, D]``, relevance of ``image``
    ``[n, C]`` to ``text`` ``[m, C]``; ``[k]`` indices, increasing."""
    kernel = conditional_kernel(similarity_kernel(features), relevance(image, text), theta)
    return dpp_greedy_map(kernel, k).sort().values
