"""The vision side: block schedules of every vision-side method, independent of any model family.

An adapter (``ipcv/models/*``) hands a runner a per-call :class:`BlockOps` that knows how to run one block of
its encoder in several ways; the runner decides which way, block by block. One module per method:
:mod:`~ipcv.vision.ipcv` (the paper's), :mod:`~ipcv.vision.merging` (ToMe, ToFu), :mod:`~ipcv.vision.dart_vit`;
:mod:`~ipcv.vision.sources` keeps the baselines' source maps. Which runner and count go with which settings
class is said in :mod:`ipcv.catalog`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..methods.ipcv import Neighbors


@dataclass(frozen=True)
class Plan:
    """Which tokens one call keeps; built once at the pruning block.

    keep / rem: sorted indices into the packed sequence (``[K]`` / ``[R]``).
    seg_lengths / keep_counts: tokens per segment before / after pruning.
    """

    keep: torch.Tensor
    rem: torch.Tensor
    seg_lengths: list[int]
    keep_counts: list[int]
    neighbors: Neighbors


class BlockOps(Protocol):
    """One encoder call's way to run its blocks (created per call by an adapter). Every method uses ``full``;
    IPCV uses ``kept`` and ``stabilized``; the baselines ``kept``, ``keys``, ``attention_part`` and
    ``mlp_part``."""

    def full(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Block ``layer`` on the full packed sequence ``[L, D]`` (the unmodified block)."""

    def kept(self, layer: int, h_keep: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Block ``layer`` on the kept tokens ``[K, D]`` only, at their original positions."""

    def stabilized(self, layer: int, h_keep: torch.Tensor, h_full: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Eq. 8-9: keys/values from ``h_full`` ``[L, D]``, queries and MLP for kept rows only;
        returns the kept rows' output ``[K, D]``."""


@dataclass(frozen=True)
class BlockCount:
    """What one block computes, for the analytic count: queries, keys/values and MLP rows per segment."""

    q_lengths: list[int]
    kv_lengths: list[int]
    mlp_lengths: list[int]
