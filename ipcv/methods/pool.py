"""Spatial average pooling of the visual tokens of one image / frame (the "pooling / downsampling" control of
UniPruneBench and VTC-Bench), as pure tensor functions.

The tokens of a span lie on an ``h x w`` grid (row-major). They are averaged over the cells of an
``h' x w'`` output grid with ``h' = max(1, round(h sqrt(keep)))`` (and ``w'`` alike), the cells being those of
``torch.nn.functional.adaptive_avg_pool2d``: output row ``i`` covers input rows ``floor(i h / h')`` to
``ceil((i + 1) h / h') - 1``. At ``keep = 0.25`` on an even grid this is the plain 2x2 average with stride 2.
Nothing here knows transformers.
"""

from __future__ import annotations

import math

import torch


def pooled_grid(h: int, w: int, keep_ratio: float) -> tuple[int, int]:
    """``(h', w')`` of the output grid: ``max(1, min(side, round(side * sqrt(keep_ratio))))`` per side (half up)."""
    s = math.sqrt(keep_ratio)
    return tuple(max(1, min(n, math.floor(n * s + 0.5))) for n in (h, w))


def _bins(n: int, out: int) -> list[range]:
    return [range((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]


def pool_cells(h: int, w: int, keep_ratio: float) -> list[torch.Tensor]:
    """The cells of the pooled grid, row-major: for each, the ``[c]`` row-major indices of the input tokens
    it averages (increasing; the first is the cell's top-left token)."""
    oh, ow = pooled_grid(h, w, keep_ratio)
    cells = []
    for rows in _bins(h, oh):
        for cols in _bins(w, ow):
            cells.append(torch.tensor([r * w + c for r in rows for c in cols], dtype=torch.long))
    return cells


def pool_states(x: torch.Tensor, cells: list[torch.Tensor]) -> torch.Tensor:
    """``[len(cells), D]`` mean state of each cell of ``x`` ``[h w, D]``."""
    return torch.stack([x[c.to(x.device)].mean(0) for c in cells])
