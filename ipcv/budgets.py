"""Budget arithmetic: how many tokens a method keeps, at the bottom of the package (under the settings, the
maths and the schedules alike; no torch, no settings objects).

- :func:`keep_count` (ours: round half up), :func:`floor_count` (the published code's ``int(n * (1 - r))``)
  and :func:`release_share` (the share those scripts multiply by, from the reduction ratio they are given);
- multi-stage budgets of the LLM-side methods: :func:`stage_counts`, :func:`progressive_counts`,
  :func:`layer_average`, :func:`average_counts`;
- per-pivot counts of DART: :func:`dart_per_pivot` (the official LLM-side rule) and :func:`per_pivot4`
  (the IPCV authors' DART(ViT)).
"""

from __future__ import annotations

import math
import operator
from numbers import Real


def _check_count(owner: str, n: object, keep_ratio: object) -> tuple[int, float]:
    """``(n, keep_ratio)`` of a budget function, or ValueError naming the argument and what is allowed."""
    try:
        count = None if isinstance(n, bool) else operator.index(n)
    except TypeError:
        count = None
    if count is None or count < 0:
        raise ValueError(f"{owner}: n={n!r} is not allowed: it must be an integer >= 0 (tokens in the segment)")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, Real):
        raise ValueError(f"{owner}: keep_ratio={keep_ratio!r} is not a number in the allowed range (0, 1]")
    if not 0.0 < keep_ratio <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{owner}: keep_ratio={keep_ratio!r} is outside the allowed range (0, 1]")
    return count, float(keep_ratio)


def keep_count(n: int, keep_ratio: float) -> int:
    """Tokens kept out of ``n``: ``max(1, min(n, floor(keep_ratio * n + 0.5)))`` (round half up, never
    empty, never more than ``n``) for ``n >= 1``; 0 for an empty segment (``n = 0``).

    Raises ValueError if ``n`` is not an integer >= 0 or ``keep_ratio`` is outside (0, 1] (NaN included).
    """
    n, keep_ratio = _check_count("keep_count", n, keep_ratio)
    return min(n, max(1, math.floor(keep_ratio * n + 0.5)))


def reduction_of(keep_ratio: float) -> float:
    """The reduction ratio a script of the published code would have been given for ``keep_ratio``:
    ``1 - keep_ratio`` rounded to 12 decimals, so ``keep_ratio`` 0.35 gives the float ``0.65`` exactly
    as ``float("0.65")`` (not ``0.6499999999999999``)."""
    return round(1.0 - keep_ratio, 12)


def floor_count(n: int, keep_ratio: float) -> int:
    """The published code's count: ``int(n * (1 - reduction))`` with ``reduction = reduction_of(keep_ratio)``,
    at least 1 (their ``max(1, ...)``) and at most ``n`` (0 for ``n = 0``); ValueError as :func:`keep_count`."""
    n, keep_ratio = _check_count("floor_count", n, keep_ratio)
    return min(n, max(1, int(n * release_share(keep_ratio))))


def rounded_count(n: int, keep_ratio: float, rounding: str) -> int:
    """``keep_count`` (``rounding="nearest"``) or :func:`floor_count` (``"floor"``)."""
    return keep_count(n, keep_ratio) if rounding == "nearest" else floor_count(n, keep_ratio)


def release_share(keep_ratio: float) -> float:
    """The share a published script multiplies by: ``1 - reduction_of(keep_ratio)`` (it is given the reduction
    ratio), which differs from ``keep_ratio`` in the last bit for many ratios (0.35 -> 0.35000000000000003)."""
    return 1.0 - reduction_of(keep_ratio)


def dart_per_pivot(n: int, keep_ratio: float, pivots: int) -> int:
    """The official DART's tokens per pivot for a span of ``n``: ``int(n * keep / pivots)``, ``keep`` as the
    published code computes it (:func:`release_share`)."""
    return int(n * release_share(keep_ratio) / pivots)


def stage_counts(n: int, keep_ratio: float, stages: int) -> list[int]:
    """Tokens one visual span of ``n`` keeps after each of ``stages`` pruning stages: an even geometric
    schedule ``keep_count(n, keep_ratio ** (s / stages))`` for ``s = 1 .. stages``, so the last
    stage ends at ``keep_count(n, keep_ratio)`` and ``keep_ratio`` 1.0 prunes nothing."""
    counts, prev = [], n
    for s in range(1, stages + 1):
        prev = min(prev, keep_count(n, keep_ratio ** (s / stages)))
        counts.append(prev)
    return counts


def progressive_counts(n: int, ratios: tuple[float, ...], rounding: str = "nearest") -> list[int]:
    """V2Drop's official rule: stage ``s`` keeps ``max(1, int(current * ratios[s]))`` of the tokens
    left by the previous stage (``ratios`` relative to the current count; 0 keeps one token).
    ``rounding="floor"`` multiplies by ``1 - reduction_of(r)`` instead of ``r``, as the IPCV
    authors' ports do (they are given the reduction ratio), which differs from ``r`` in the last bit
    and so changes ``int()`` where ``current * r`` is a whole number."""
    counts, cur = [], n
    for r in ratios:
        share = release_share(r) if rounding == "floor" else r
        cur = min(cur, max(1, int(cur * share)))
        counts.append(cur)
    return counts


def layer_average(n: int, counts: list[int], layers: tuple[int, ...], num_layers: int) -> float:
    """Visual tokens per decoder layer, averaged over all ``num_layers`` layers, when a span of ``n``
    holds ``counts[s]`` tokens from the input of ``layers[s]`` on (SparseVLM's "equivalent" count)."""
    total, prev_layer, cur = 0, 0, n
    for layer, c in zip(layers, counts):
        total += (layer - prev_layer) * cur
        prev_layer, cur = layer, c
    return (total + (num_layers - prev_layer) * cur) / num_layers


def average_counts(n: int, keep_ratio: float, layers: tuple[int, ...], num_layers: int) -> list[int]:
    """Stage counts whose layer average (:func:`layer_average`) is ``keep_ratio * n``: every stage keeps
    the same share ``x`` of the previous one (counts ``round(n * x ** s)``, at least 1), ``x`` the
    largest share whose average does not exceed the target (found by bisection). SparseVLM's official
    code defines its budget as this average but hard-codes the per-stage counts for LLaVA's 576
    tokens; the geometric shape is ours. ``keep_ratio`` 1.0 keeps everything. Raises ValueError if even
    one token per stage averages above the target."""
    if keep_ratio >= 1.0:
        return [n] * len(layers)

    def counts(x: float) -> list[int]:
        out, prev = [], n
        for s in range(1, len(layers) + 1):
            prev = min(prev, max(1, math.floor(n * x**s + 0.5)))
            out.append(prev)
        return out

    target = keep_ratio * n
    least = layer_average(n, counts(0.0), layers, num_layers)
    if least > target:
        raise ValueError(
            f"keep_ratio={keep_ratio!r} cannot be reached with budget='average' for a span of {n} tokens: keeping "
            f"one token from layer {layers[0]} on already averages {least:.2f} tokens per layer, above {target:.2f}"
        )
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if layer_average(n, counts(mid), layers, num_layers) <= target:
            lo = mid
        else:
            hi = mid
    return counts(lo)


def per_pivot4(n: int, keep_ratio: float, pivots: int) -> int:
    """The IPCV authors' DART(ViT) per-pivot count: ``n * (1 - reduction) / pivots`` rounded to the
    nearer multiple of 4 (from ``int`` of it; a tie goes down)."""
    raw = n * release_share(keep_ratio) / pivots
    down, up = int(raw) // 4 * 4, (int(raw) + 3) // 4 * 4
    return down if abs(raw - down) <= abs(raw - up) else up
