"""VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467): dominant tokens by attention plus merged contextual
tokens, as pure tensor functions (dvlab-research/VisionZip, Apache-2.0, read for the rule; not copied).

- dominant tokens: the ``k_d`` tokens with the largest attention score (official LLaVA: the attention the
  [CLS] token pays each patch in the layer the projector reads, summed over heads);
- contextual tokens: of the remaining tokens, ``k_c`` *targets* are taken at a uniform stride
  (``step = max(1, r // k_c)``, targets ``0, step, 2 step, ...`` of the remaining, in order); every other
  remaining token goes to the target whose metric (the layer's keys, averaged over heads) is most
  cosine-similar; each contextual token is ``target + mean(assigned)`` (the official sum; a target with
  nothing assigned stays itself).

Nothing here knows transformers.
"""

from __future__ import annotations

import torch


def split_counts(k: int, contextual_share: float) -> tuple[int, int]:
    """``(dominant, contextual)`` tokens of a budget ``k``: ``contextual = round(k * share)`` (half up; at
    most ``k - 1`` when ``k > 1``, 0 when ``k <= 1``). The official LLaVA settings are 54 + 10, 108 + 20 and
    162 + 30: a share of 10 / 64."""
    if k <= 1:
        return k, 0
    c = min(k - 1, int(k * contextual_share + 0.5))
    return k - c, c


def column_attention(q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
    """The attention each token *receives* in one segment, averaged over the queries and summed over the
    heads: ``[n]`` from ``q``, ``k`` ``[n, H, d]`` (the "no [CLS]" score; see :class:`ipcv.VisionZip`)."""
    logits = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scaling
    return logits.softmax(-1).mean(1).sum(0)


def visionzip_merge(
    scores: torch.Tensor, metric: torch.Tensor, dominant: int, contextual: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """VisionZip on one span of ``n`` tokens.

    Args:
        scores: ``[n]`` attention score; metric: ``[n, d]`` the merging metric; dominant, contextual: counts.
    Returns: ``(dominant [k_d], targets [k_c], groups)`` indices into the span: the dominant tokens (by score,
        ties to the lower index), the contextual targets, and for each target the other remaining tokens
        assigned to it (possibly empty).
    """
    n = scores.shape[0]
    if dominant + contextual > n:
        raise ValueError(f"visionzip_merge: dominant={dominant} + contextual={contextual} exceeds the {n} tokens")
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    top = order[:dominant].sort().values
    rest = torch.ones(n, dtype=torch.bool, device=scores.device)
    rest[top] = False
    remaining = rest.nonzero().flatten()
    if contextual == 0:
        return top, remaining[:0], []
    step = max(1, remaining.numel() // contextual)
    local = torch.arange(0, remaining.numel(), step, device=scores.device)[:contextual]
    targets = remaining[local]
    is_target = torch.zeros(remaining.numel(), dtype=torch.bool, device=scores.device)
    is_target[local] = True
    others = remaining[~is_target]
    m = metric.float()
    m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    nearest = (m[others] @ m[targets].T).argmax(1) if others.numel() else others
    groups = [others[nearest == t] for t in range(targets.numel())]
    return top, targets, groups


def contextual_states(x: torch.Tensor, targets: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """The contextual tokens' states ``[k_c, D]``: ``x[target] + mean(x[assigned])`` (the official code adds
    the mean of the assigned tokens to the target; a target with none assigned keeps its state)."""
    out = x[targets].clone()
    for t, g in enumerate(groups):
        if g.numel():
            out[t] = out[t] + x[g].mean(0)
    return out
