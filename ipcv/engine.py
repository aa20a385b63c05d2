"""The IPCV block schedule, independent of any model family.

An adapter (``ipcv/models/*``) hands :func:`run_ipcv` a per-call :class:`BlockOps` that knows how
to run one block of its encoder in three ways; this module decides which way, block by block:

    blocks 0 .. lp-1            full sequence                    (ops.full)
    at lp                       score (eq. 1), select (eq. 2), neighbours (eq. 3)
    blocks lp .. lp+AS-1        kept queries, full keys/values    (ops.stabilized, eq. 6-9)
    blocks lp+AS .. depth-1     kept tokens only                  (ops.kept)
    after the last block        reintegration (eq. 10)

All state of the call lives in local variables and in the :class:`Plan` passed to the ops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from . import trace as _trace
from .config import IPCV
from .methods.ipcv import (
    Neighbors,
    complement,
    feature_difference_scores,
    find_neighbors,
    ngr,
    scatter_tokens,
    select_tokens,
)


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
    """One encoder call's way to run its blocks (created per call by an adapter)."""

    def full(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Block ``layer`` on the full packed sequence ``[L, D]`` (the unmodified block)."""

    def kept(self, layer: int, h_keep: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Block ``layer`` on the kept tokens ``[K, D]`` only, at their original positions."""

    def stabilized(self, layer: int, h_keep: torch.Tensor, h_full: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Eq. 8-9: keys/values from ``h_full`` ``[L, D]``, queries and MLP for kept rows only;
        returns the kept rows' output ``[K, D]``."""


def run_ipcv(
    ops: BlockOps,
    depth: int,
    h: torch.Tensor,
    seg_lengths: Sequence[int],
    settings: IPCV,
    protected: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run all ``depth`` blocks of one call under IPCV.

    Args:
        h: ``[L, D]`` packed input of block 0. seg_lengths: attention segments (sum L).
        protected: ``[L]`` bool, tokens never pruned nor counted (CLS), or None.
    Returns: ``[L, D]`` output of the last block, full length, original order.
    """
    lp, n_as = settings.prune_layer, settings.stabilize_layers
    seg_lengths = [int(n) for n in seg_lengths]
    for layer in range(lp - 1):
        h = ops.full(layer, h)
    h_prev, h = h, ops.full(lp - 1, h)  # inputs of blocks lp-1 and lp

    record = _trace.active()
    device = h.device
    with _trace.section("score", device):
        scores = feature_difference_scores(h, h_prev)  # eq. 1
        keep, keep_counts = select_tokens(scores, seg_lengths, settings.keep_ratio, settings.scope, protected)
    if keep.numel() == h.shape[0]:  # nothing removed: IPCV is the identity here, run the plain blocks
        for layer in range(lp, depth):
            h = ops.full(layer, h)
        return h
    with _trace.section("knn", device):
        rem = complement(keep, h.shape[0])
        nb = find_neighbors(h, keep, rem, seg_lengths, keep_counts, settings.neighbors, settings.scope)
    plan = Plan(keep, rem, seg_lengths, keep_counts, nb)
    if record is not None:
        record.calls.append(_trace.CallRecord(seg_lengths, list(keep_counts), keep, rem, nb.index, scores))

    h_keep_lp, h_rem_lp = h[keep], h[rem]  # eq. 2
    h_keep = h_keep_lp
    for layer in range(lp, lp + n_as):
        with _trace.section("ngr", device):
            h_rem = ngr(h_rem_lp, h_keep, h_keep_lp, nb)  # eq. 6 (at l = lp this is h_rem_lp)
            h_full = scatter_tokens(h_keep, h_rem, keep, rem)  # eq. 7
        h_keep = ops.stabilized(layer, h_keep, h_full, plan)  # eq. 8-9
        _record_state(record, layer, h_keep)
    for layer in range(lp + n_as, depth):
        h_keep = ops.kept(layer, h_keep, plan)
        _record_state(record, layer, h_keep)

    with _trace.section("ngr", device):
        h_rem = ngr(h_rem_lp, h_keep, h_keep_lp, nb) if settings.reintegrate else h_rem_lp
        return scatter_tokens(h_keep, h_rem, keep, rem)  # eq. 10


def _record_state(record: _trace.Trace | None, layer: int, h_keep: torch.Tensor) -> None:
    if record is not None and record.states:
        record.calls[-1].states[layer] = h_keep.detach().clone()


# The registry of vision-side methods: settings class -> the schedule that runs the blocks.
# Every runner has run_ipcv's signature; adapters call run_vision and never name a method.
VISION_RUNNERS: dict[type, Callable[..., torch.Tensor]] = {IPCV: run_ipcv}


def run_vision(
    ops: BlockOps,
    depth: int,
    h: torch.Tensor,
    seg_lengths: Sequence[int],
    settings,
    protected: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the blocks of one call under the vision-side method ``settings`` (see VISION_RUNNERS)."""
    return VISION_RUNNERS[type(settings)](ops, depth, h, seg_lengths, settings, protected)
