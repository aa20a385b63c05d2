"""Typed, validated, immutable settings objects for the compression methods.

A settings object says *what* to do; it holds no tensors and no model. Checks that need the
model (its depth) run when the settings are applied, in :func:`ipcv.compress`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Literal

Scope = Literal["segment", "global"]
SCOPES: tuple[str, ...] = ("segment", "global")


def _check_int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    return value


def _check_keep_ratio(owner: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}: keep_ratio must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"{owner}: keep_ratio={value!r} is outside the allowed range (0, 1]")
    return value


def keep_count(n: int, keep_ratio: float) -> int:
    """Tokens kept out of ``n``: ``max(1, min(n, floor(keep_ratio * n + 0.5)))`` (round half up)."""
    return max(1, min(n, math.floor(keep_ratio * n + 0.5)))


@dataclass(frozen=True, slots=True)
class IPCV:
    """Settings of IPCV (paper section 3) for a vision encoder.

    Args:
        keep_ratio: share of each segment's patches kept after ``prune_layer``, in (0, 1].
        prune_layer: l_p, the 0-based block whose *input* is pruned; the score is the change made by
            block l_p - 1 (eq. 1), so ``1 <= prune_layer < depth``.
        stabilize_layers: Attention Stabilization depth; blocks l_p .. l_p + stabilize_layers - 1
            let the removed tokens (reconstructed by NGR) act as keys/values. ``0`` is the
            paper's "w/o AS" ablation. ``prune_layer + stabilize_layers <= depth``.
        neighbors: k of Neighbor-Guided Reconstruction (eq. 3-5), ``>= 1``; a segment with fewer
            kept tokens uses all of them.
        reintegrate: rebuild the removed tokens with NGR after the last block (eq. 10). ``False``
            is the paper's "w/o Reint." ablation: removed tokens come back as their frozen states
            at l_p.
        scope: ``"segment"`` keeps ``keep_count(n)`` patches of every image / video frame and looks
            for neighbours inside it; ``"global"`` is the authors' release: one top-K over all
            patches of the call, neighbours across segments.
    """

    keep_ratio: float
    prune_layer: int = 3
    stabilize_layers: int = 7
    neighbors: int = 10
    reintegrate: bool = True
    scope: Scope = "segment"

    def __post_init__(self) -> None:
        name = "IPCV"
        object.__setattr__(self, "keep_ratio", _check_keep_ratio(name, self.keep_ratio))
        _check_int(name, "prune_layer", self.prune_layer)
        _check_int(name, "stabilize_layers", self.stabilize_layers)
        _check_int(name, "neighbors", self.neighbors)
        if self.prune_layer < 1:
            raise ValueError(
                f"{name}: prune_layer={self.prune_layer} is not allowed: it must be >= 1 (the score of eq. 1 "
                "needs the input of block prune_layer - 1) and < the encoder depth"
            )
        if self.stabilize_layers < 0:
            raise ValueError(f"{name}: stabilize_layers={self.stabilize_layers} is not allowed: it must be >= 0")
        if self.neighbors < 1:
            raise ValueError(f"{name}: neighbors={self.neighbors} is not allowed: it must be >= 1")
        if not isinstance(self.reintegrate, bool):
            raise TypeError(f"{name}: reintegrate must be a bool, got {self.reintegrate!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"{name}: scope={self.scope!r} is not allowed: use one of {SCOPES}")

    def check_depth(self, depth: int) -> None:
        """Raise ValueError if these settings do not fit an encoder of ``depth`` blocks."""
        if not 1 <= self.prune_layer < depth:
            raise ValueError(
                f"IPCV: prune_layer={self.prune_layer} is outside the allowed range [1, {depth - 1}] "
                f"for this encoder (depth {depth})"
            )
        if self.prune_layer + self.stabilize_layers > depth:
            raise ValueError(
                f"IPCV: stabilize_layers={self.stabilize_layers} is outside the allowed range "
                f"[0, {depth - self.prune_layer}] for prune_layer={self.prune_layer} and depth {depth} "
                "(prune_layer + stabilize_layers must be <= depth)"
            )
