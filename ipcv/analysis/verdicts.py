"""Verdicts that cannot flip on noise or on untrained weights.

Every "reproduced / not reproduced / better than" the book writes is one of these tests on **paired
differences per image** (the unit that varies independently: tokens of one image are not independent):

- :func:`exceeds`: is the mean difference larger than a stated threshold? **Yes** when the whole 95 %
  interval lies above the threshold, **No** when it lies below it, **Inconclusive** when it straddles it.
- :func:`within`: is the difference negligible? **Yes** when the whole interval lies inside
  ``(-margin, margin)``, **No** when it lies entirely outside, **Inconclusive** otherwise.

The interval is a percentile bootstrap of the mean over images (10,000 resamples, fixed seed, so a
rebuild gives the same words). Fewer than :data:`MIN_UNITS` images give no interval: **Inconclusive**.
On weights that :mod:`ipcv.analysis.weights` finds untrained every verdict is **Not a result: random
weights**, whatever the numbers say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

YES, NO, INCONCLUSIVE, NOT_A_RESULT = "yes", "no", "inconclusive", "not a result"
MIN_UNITS = 3
RESAMPLES = 10_000
LEVEL = 0.95
RANDOM_WEIGHTS = "random weights"


def bootstrap_interval(values: Sequence[float], level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one per unit)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 1:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(RESAMPLES, len(x)))
    means = x[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


@dataclass(frozen=True)
class Evidence:
    """One measured difference: its mean over ``units`` images and its interval, against ``threshold``."""

    measure: str
    estimate: float
    low: float
    high: float
    units: int
    threshold: float
    test: str  # "exceeds", "within" or "exact" (a deterministic check: measure says it all)

    def text(self, digits: int = 3) -> str:
        d = digits
        if self.test == "exact":
            return self.measure
        if self.units < MIN_UNITS:
            return f"{self.measure} {self.estimate:+.{d}f} [{self.units} image{'s' * (self.units != 1)}]"
        bound = f"threshold {self.threshold:+.{d}f}" if self.test == "exceeds" else f"margin ±{self.threshold:.{d}f}"
        return (
            f"{self.measure} {self.estimate:+.{d}f} [95 % interval {self.low:+.{d}f} to {self.high:+.{d}f}, "
            f"{self.units} images, {bound}]"
        )


@dataclass(frozen=True)
class Verdict:
    """The outcome of a test and the evidence behind it. reason: why it is not a result / inconclusive."""

    outcome: str
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)
    reason: str = ""

    def __post_init__(self):
        if self.outcome not in (YES, NO, INCONCLUSIVE, NOT_A_RESULT):
            raise ValueError(f"outcome={self.outcome!r}: use one of yes, no, inconclusive, not a result")

    @property
    def word(self) -> str:
        """``Yes``, ``No``, ``Inconclusive`` or ``Not a result: <reason>``."""
        if self.outcome == NOT_A_RESULT:
            return f"Not a result: {self.reason}"
        return self.outcome.capitalize()

    def said(self, digits: int = 3) -> str:
        """The evidence, in words: ``measure +0.012 [95 % interval +0.008 to +0.016, 8 images, threshold +0.001]``;
        several measures tested alike share one trailer: ``a +0.012 [+0.008, +0.016]; b ... (95 % intervals over 8
        images, threshold +0.001)``."""
        tested = [e for e in self.evidence if e.test != "exact" and e.units >= MIN_UNITS]
        alike = len({(e.test, e.threshold, e.units) for e in tested}) == 1 and len(tested) == len(self.evidence) > 1
        if alike:
            d, e0 = digits, tested[0]
            bound = f"threshold {e0.threshold:+.{d}f}" if e0.test == "exceeds" else f"margin ±{e0.threshold:.{d}f}"
            parts = "; ".join(f"{e.measure} {e.estimate:+.{d}f} [{e.low:+.{d}f}, {e.high:+.{d}f}]" for e in tested)
            parts += f"; 95 % intervals over {e0.units} images, {bound}"
        else:
            parts = "; ".join(e.text(digits) for e in self.evidence)
        if self.outcome == INCONCLUSIVE and self.reason:
            parts = f"{parts}; {self.reason}" if parts else self.reason
        return parts

    def markdown(self, digits: int = 3) -> str:
        """``**Word**`` followed by the evidence in brackets."""
        said = self.said(digits)
        return f"**{self.word}**" + (f" ({said})" if said else "")


def _per_unit(differences: Mapping[str, float] | Sequence[float]) -> np.ndarray:
    values = list(differences.values()) if isinstance(differences, Mapping) else list(differences)
    x = np.asarray(values, dtype=float)
    if np.isnan(x).any():
        raise ValueError("differences contain NaN: a measure that was not taken cannot be tested")
    return x


def _evidence(x: np.ndarray, measure: str, threshold: float, test: str) -> Evidence:
    if len(x) >= MIN_UNITS:
        low, high = bootstrap_interval(x)
    else:
        low = high = float("nan")
    return Evidence(measure, float(x.mean()), low, high, len(x), threshold, test)


def _too_few(e: Evidence) -> Verdict:
    n = e.units
    return Verdict(INCONCLUSIVE, (e,), f"{n} image{'s' * (n != 1)}: at least {MIN_UNITS} are needed for an interval")


def exceeds(differences, threshold: float, measure: str, trained: bool = True) -> Verdict:
    """Is the mean paired difference (one value per image) above ``threshold``? See the module docstring."""
    x = _per_unit(differences)
    e = _evidence(x, measure, threshold, "exceeds")
    if not trained:
        return Verdict(NOT_A_RESULT, (e,), RANDOM_WEIGHTS)
    if e.units < MIN_UNITS:
        return _too_few(e)
    outcome = YES if e.low > threshold else NO if e.high < threshold else INCONCLUSIVE
    return Verdict(outcome, (e,), "the interval contains the threshold" if outcome == INCONCLUSIVE else "")


def within(differences, margin: float, measure: str, trained: bool = True) -> Verdict:
    """Is the mean paired difference (one value per image) negligible, inside ``(-margin, margin)``?"""
    if margin <= 0:
        raise ValueError(f"margin={margin}: must be > 0")
    x = _per_unit(differences)
    e = _evidence(x, measure, margin, "within")
    if not trained:
        return Verdict(NOT_A_RESULT, (e,), RANDOM_WEIGHTS)
    if e.units < MIN_UNITS:
        return _too_few(e)
    inside = -margin < e.low and e.high < margin
    outside = e.low > margin or e.high < -margin
    outcome = YES if inside else NO if outside else INCONCLUSIVE
    return Verdict(outcome, (e,), "the interval crosses the margin" if outcome == INCONCLUSIVE else "")


def all_of(*verdicts: Verdict) -> Verdict:
    """A claim made of several tests: not a result if any is, no if any is no, inconclusive if any is, else yes."""
    if not verdicts:
        raise ValueError("all_of needs at least one verdict")
    evidence = tuple(e for v in verdicts for e in v.evidence)
    for outcome in (NOT_A_RESULT, NO, INCONCLUSIVE):
        hit = [v for v in verdicts if v.outcome == outcome]
        if hit:
            reasons = list(dict.fromkeys(v.reason for v in hit if v.reason))
            return Verdict(outcome, evidence, "; ".join(reasons))
    return Verdict(YES, evidence)


def exact(holds: bool, trained: bool, evidence: str) -> Verdict:
    """A deterministic check (an inequality that holds for every token or not): no interval needed."""
    e = Evidence(evidence, float("nan"), float("nan"), float("nan"), 0, float("nan"), "exact")
    v = Verdict(YES if holds else NO, (e,))
    return v if trained else replace(v, outcome=NOT_A_RESULT, reason=RANDOM_WEIGHTS)


def per_image(table, value: str, *, image: str = "image") -> dict[str, float]:
    """``{image: mean of value}`` over a long table's rows (tokens, keep ratios ...) of each image."""
    return table.groupby(image, sort=False)[value].mean().to_dict()


def paired(table, column: str, a: str, b: str, value: str, *, image: str = "image") -> dict[str, float]:
    """``{image: mean(value | column == a) - mean(value | column == b)}``: the paired difference per image."""
    means = table.groupby([image, column], sort=False)[value].mean().unstack(column)
    missing = {a, b} - set(means.columns)
    if missing:
        raise KeyError(f"{column}={sorted(missing)} not in the table (has {sorted(means.columns)})")
    return (means[a] - means[b]).to_dict()
