"""Random selection of visual tokens (the "random" control of UniPruneBench and arXiv 2512.07580), as a
pure, reproducible tensor function."""

from __future__ import annotations

import torch


def random_keep(n: int, k: int, seed: int, span: int = 0) -> torch.Tensor:
    """``k`` of ``n`` indices, uniformly without replacement, increasing. A CPU ``torch.Generator`` is seeded with
    ``seed`` and the span's number ``span`` in its sample
    (``seed * 1_000_003 + span``), so the same prompt gives the same kept set on every call, device and batch
    position, and two images of one prompt get different draws."""
    if not 0 <= k <= n:
        raise ValueError(f"random_keep: k={k} is outside the allowed range [0, {n}]")
    g = torch.Generator().manual_seed(seed * 1_000_003 + span)
    return torch.randperm(n, generator=g)[:k].sort().values
