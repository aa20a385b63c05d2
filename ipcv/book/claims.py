"""The paper's claims as tests on the book's per-image measurements: one function per claim, used both by the
notebooks' closing paragraphs (:mod:`~ipcv.analysis.findings`, on the tables in memory) and by the status page
(:mod:`~ipcv.analysis.status`, on the same tables saved during the build), so the two never disagree.

Each takes the long per-image table a notebook saves (``<summary>_images.csv``) and ``trained`` (from
:mod:`ipcv.analysis.weights`), and returns a :class:`~ipcv.analysis.verdicts.Verdict`. The thresholds are
the smallest differences that count as an effect, stated here once:
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..analysis import verdicts as v

#: mean cosine of output tokens (they sit near 1: a difference of 0.001 is a tenth of a percent)
COSINE = 0.001
#: cosine between two tokens' changes (spread over [-1, 1])
CHANGE_COSINE = 0.01
#: mean relative error of the kept tokens
REL_ERROR = 0.005
#: share of the saliency mass on kept patches, against the share of patches kept
SHARE = 0.01
#: "matters little": a setting within this much all-token cosine of the default
NEGLIGIBLE = 0.01

THRESHOLDS = {
    "output cosine": COSINE,
    "cosine of token changes": CHANGE_COSINE,
    "kept tokens' relative error": REL_ERROR,
    "saliency share above the keep ratio": SHARE,
    "a setting matters little (margin, all-token cosine)": NEGLIGIBLE,
}


def middle(values, preferred: float = 0.35) -> float:
    """The keep ratio a claim is read at: the paper's default 35 % when it was run, else the middle one."""
    values = list(dict.fromkeys(float(x) for x in values))
    return preferred if preferred in values else sorted(values, reverse=True)[len(values) // 2]


def _images(table: pd.DataFrame, column: str = "image") -> int:
    return table[column].nunique()


# --------------------------------------------------------------------------- 01 token pruning


def saliency(share: pd.DataFrame, trained: bool) -> v.Verdict:
    """Kept patches hold more of the trained saliency mass than their share of the patches.
    share: keep_ratio, image, share (per keep ratio and image)."""
    above = (share["share"] - share["keep_ratio"]).groupby(share["image"], sort=False).mean()
    return v.exceeds(above.to_dict(), SHARE, "saliency share − keep ratio (mean over ratios)", trained)


#: the measures of the selection-rule comparison: all-token cosine and the saliency share of the kept patches
SELECTION_MEASURES = {"all_cos": ("all-token cosine", COSINE), "share": ("saliency share", SHARE)}


def selection_rule(images: pd.DataFrame, trained: bool, other: str = "random", value: str = "all_cos") -> v.Verdict:
    """Eq. 1's feature difference chooses better than ``other`` (``"random"``, ``"diversity"``): its ``value``
    (``"all_cos"`` or ``"share"``) minus the other rule's, per image, mean over the keep ratios, above the measure's
    threshold. images: keep_ratio, rule, image, all_cos, share (``ipcv.analysis.pruning.selection_rules``)."""
    label, threshold = SELECTION_MEASURES[value]
    diff = v.paired(images, "rule", "difference", other, value)
    return v.exceeds(diff, threshold, f"{label}, eq. 1 − {other} (mean over ratios)", trained)


def selection_rule_at(
    images: pd.DataFrame, trained: bool, other: str = "random", value: str = "all_cos"
) -> dict[float, v.Verdict]:
    """:func:`selection_rule` at each keep ratio."""
    label, threshold = SELECTION_MEASURES[value]
    return {
        float(r): v.exceeds(v.paired(t, "rule", "difference", other, value), threshold,
                            f"{label}, eq. 1 − {other}", trained)
        for r, t in images.groupby("keep_ratio", sort=False)
    }  # fmt: skip


# --------------------------------------------------------------------------- 02 NGR premise

NGR, ONE, K_RANDOM = "NGR neighbours (mean of k)", "one random kept token", "k random kept tokens (mean)"


def premise(images: pd.DataFrame, trained: bool) -> v.Verdict:
    """A removed token's change agrees better with its NGR neighbours' mean change than with a random kept
    token's (the paper's comparison) and than with the mean of k random kept tokens (the stricter control).
    images: image, comparison, cosine (median over the image's removed tokens)."""
    return v.all_of(
        v.exceeds(v.paired(images, "comparison", NGR, ONE, "cosine"), CHANGE_COSINE,
                  "cosine, neighbours − one random kept token", trained),
        v.exceeds(v.paired(images, "comparison", NGR, K_RANDOM, "cosine"), CHANGE_COSINE,
                  "cosine, neighbours − k random kept tokens", trained),
    )  # fmt: skip


# --------------------------------------------------------------------------- 03 AS


def as_depth(depths) -> int:
    """The AS depth a claim is read at: the paper's default 7, or the deepest run below it."""
    depths = sorted(set(int(d) for d in depths))
    return max([d for d in depths if 0 < d <= 7] or depths[-1:])


def stabilization(images: pd.DataFrame, trained: bool) -> v.Verdict:
    """AS lowers the kept tokens' error: without AS minus with the default depth, at the middle keep ratio.
    images: keep_ratio, stabilize_layers, image, kept_rel_error."""
    at = images[images["keep_ratio"] == middle(images["keep_ratio"])]
    d = as_depth(at["stabilize_layers"])
    diff = v.paired(at, "stabilize_layers", 0, d, "kept_rel_error")
    return v.exceeds(diff, REL_ERROR, f"kept tokens' relative error, no AS − {d} AS blocks", trained)


# --------------------------------------------------------------------------- 04 reintegration


def ngr_vs_copy(images: pd.DataFrame, trained: bool) -> v.Verdict:
    """NGR restores removed tokens closer to the unpruned output than copying the nearest kept token.
    images: keep_ratio, image, method, cosine (mean over the image's removed tokens), all keep ratios."""
    diff = v.paired(images, "method", "NGR", "copy", "cosine")  # mean over keep ratios, per image
    return v.exceeds(diff, COSINE, "removed-token cosine, NGR − copy (mean over ratios)", trained)


def ngr_vs_copy_at(images: pd.DataFrame, trained: bool) -> dict[float, v.Verdict]:
    """:func:`ngr_vs_copy` at each keep ratio."""
    return {
        float(r): v.exceeds(v.paired(t, "method", "NGR", "copy", "cosine"), COSINE, "NGR − copy", trained)
        for r, t in images.groupby("keep_ratio", sort=False)
    }


def ablation(images: pd.DataFrame, trained: bool) -> v.Verdict:
    """AS and reintegration each help: full IPCV above IPCV without AS, and above IPCV without reintegration.
    images: variant, image, all_cos."""
    return v.all_of(
        v.exceeds(v.paired(images, "variant", "IPCV", "w/o AS", "all_cos"), COSINE,
                  "all-token cosine, IPCV − w/o AS", trained),
        v.exceeds(v.paired(images, "variant", "IPCV", "w/o Reint.", "all_cos"), COSINE,
                  "all-token cosine, IPCV − w/o Reint.", trained),
    )  # fmt: skip


def at_equal_cost(
    images: pd.DataFrame, flop_ratio: float, value: str = "all_cos"
) -> dict[str, dict[str, float] | None]:
    """Each non-IPCV method's ``value`` per image at ``flop_ratio``, interpolated linearly along its points;
    None where the method's runs do not span that cost. images: method, keep_ratio, image, flop_ratio, value."""
    out: dict[str, dict[str, float] | None] = {}
    for method, rows in images[images["method"] != "IPCV"].groupby("method", sort=False):
        per = {}
        for image, pts in rows.groupby("image", sort=False):
            pts = pts.sort_values("flop_ratio")
            x, y = pts["flop_ratio"].to_numpy(float), pts[value].to_numpy(float)
            per[image] = float(np.interp(flop_ratio, x, y)) if x[0] <= flop_ratio <= x[-1] else None
        out[method] = None if any(p is None for p in per.values()) else per
    return out


def baselines(images: pd.DataFrame, trained: bool) -> tuple[v.Verdict | None, dict[str, v.Verdict | None], float]:
    """IPCV stays closer to the unpruned output than each ViT-side baseline at the same encoder FLOPs (IPCV's
    middle keep ratio). Returns (all of them, per baseline (None: it does not reach that cost), the FLOP ratio).
    images: method, keep_ratio, image, flop_ratio, all_cos."""
    ours = images[images["method"] == "IPCV"]
    mid = ours[ours["keep_ratio"] == middle(ours["keep_ratio"])]
    flop = float(mid["flop_ratio"].iloc[0])
    ref = mid.set_index("image")["all_cos"]
    each: dict[str, v.Verdict | None] = {}
    for method, per in at_equal_cost(images, flop).items():
        if per is None:
            each[method] = None
            continue
        diff = {image: float(ref[image]) - c for image, c in per.items()}
        each[method] = v.exceeds(diff, COSINE, f"all-token cosine, IPCV − {method}", trained)
    tested = [x for x in each.values() if x is not None]
    return (v.all_of(*tested) if tested else None), each, flop


# --------------------------------------------------------------------------- 05 error bound


def bound(summary: pd.DataFrame, loose: pd.DataFrame, trained: bool) -> v.Verdict:
    """Theorem E.5 holds for every removed token (a deterministic check); the evidence says how much it says:
    the share of tokens whose bound exceeds their own norm (where it is weaker than predicting zero)."""
    holds = bool(summary["within"].all())
    above = float(loose["above_norm"].max())
    said = (
        "every removed token's error is within its bound" if holds else "some removed token's error exceeds its bound"
    )
    said += f"; the bound exceeds the token's own norm for up to {above:.0%} of the tokens"
    return v.exact(holds, trained, said)


def vacuous(loose: pd.DataFrame) -> bool:
    """The bound says nothing for most tokens: it exceeds their own norm (predicting zero does better)."""
    return float(loose["above_norm"].min()) > 0.5


# --------------------------------------------------------------------------- 06 sensitivity


def later_pruning(images: pd.DataFrame, trained: bool) -> v.Verdict | None:
    """Pruning later keeps the output closer: the last pruning block minus the first (None: one block run).
    images: sweep, value, image, all_cos."""
    lp = images[images["sweep"] == "pruning block"]
    values = sorted(set(lp["value"]))
    if len(values) < 2:
        return None
    diff = v.paired(lp, "value", values[-1], values[0], "all_cos")
    return v.exceeds(diff, COSINE, f"all-token cosine, $l_p = {values[-1]}$ − $l_p = {values[0]}$", trained)


def matters_little(images: pd.DataFrame, sweep: str, default, trained: bool, only=None) -> v.Verdict | None:
    """Every value of a sweep (``only``: those values) stays within :data:`NEGLIGIBLE` all-token cosine of the
    default's (None: nothing to compare). images: sweep, value, image, all_cos."""
    t = images[images["sweep"] == sweep]
    values = [x for x in sorted(set(t["value"])) if x != default and (only is None or x in only)]
    if default not in set(t["value"]) or not values:
        return None
    name = {"neighbours": "k", "AS depth": "AS depth"}.get(sweep, sweep)
    return v.all_of(*(
        v.within(v.paired(t, "value", x, default, "all_cos"), NEGLIGIBLE, f"{name} {x} − {name} {default}", trained)
        for x in values
    ))  # fmt: skip


def copy_by_k(images: pd.DataFrame, trained: bool) -> dict[int, v.Verdict]:
    """NGR against copying the nearest kept token at each $k$ of the neighbours sweep (all-token cosine).
    images: sweep, value, image, all_cos, copy_all_cos."""
    k = images[images["sweep"] == "neighbours"]
    return {
        int(value): v.exceeds((t["all_cos"] - t["copy_all_cos"]).groupby(t["image"]).mean().to_dict(), COSINE,
                              f"all-token cosine, NGR − copy at k = {value}", trained)
        for value, t in k.groupby("value", sort=True)
    }  # fmt: skip


# --------------------------------------------------------------------------- 09 beyond the paper (pre-LLM methods)

#: the two measures of notebook 09 and the smallest difference that counts (coverage is a cosine)
PRE_LLM_MEASURES = {"coverage": ("coverage", COSINE), "share": ("saliency share", SHARE)}


def _per_image_diff(a: pd.DataFrame, b: pd.DataFrame, value: str) -> dict[str, float]:
    """Mean over keep ratios of ``a - b`` per image (rows matched on image and keep ratio)."""
    m = a.merge(b, on=["image", "keep_ratio"], suffixes=("_a", "_b"))
    return (m[f"{value}_a"] - m[f"{value}_b"]).groupby(m["image"], sort=False).mean().to_dict()


#: methods whose kept patches do not depend on the tokens: behind IPCV they keep the same patches, so their
#: saliency share is the same by construction and is not tested
CONTENT_BLIND = ("RandomKeep", "Pool")


def said(method: str) -> str:
    """A method's name in a verdict's evidence."""
    return "random" if method == "RandomKeep" else method


def _rows(images: pd.DataFrame, method: str, paired: bool) -> pd.DataFrame:
    return images[(images["pre_llm"] == method) & (images["ipcv"] == paired)]


def pairing(images: pd.DataFrame, trained: bool) -> dict[str, dict[str, v.Verdict]]:
    """IPCV + X carries more than X alone at equal kept tokens, per pre-LLM method X and measure (the
    difference per image, averaged over the keep ratios; no share test for :data:`CONTENT_BLIND` methods).
    images: notebook 09's per-image table."""
    out = {}
    for method in dict.fromkeys(m for m in images["pre_llm"] if m):
        a, b = _rows(images, method, True), _rows(images, method, False)
        out[method] = {
            value: v.exceeds(_per_image_diff(a, b, value), threshold,
                             f"{name}, IPCV + {said(method)} − {said(method)}", trained)
            for value, (name, threshold) in PRE_LLM_MEASURES.items()
            if images[value].notna().all() and not (value == "share" and method in CONTENT_BLIND)
        }  # fmt: skip
    return out


def versus_random(images: pd.DataFrame, trained: bool, control: str = "RandomKeep") -> dict[str, dict[str, v.Verdict]]:
    """Each pre-LLM method alone carries more than random selection at the same keep ratio, per measure."""
    ref = _rows(images, control, False)
    out = {}
    for method in dict.fromkeys(m for m in images["pre_llm"] if m and m != control):
        a = _rows(images, method, False)
        out[method] = {
            value: v.exceeds(_per_image_diff(a, ref, value), threshold, f"{name}, {said(method)} − random", trained)
            for value, (name, threshold) in PRE_LLM_MEASURES.items()
            if images[value].notna().all()
        }
    return out


def _interpolate(points: pd.DataFrame, x: float, value: str) -> float | None:
    pts = points.sort_values("gflops")
    xs, ys = pts["gflops"].to_numpy(float), pts[value].to_numpy(float)
    return float(np.interp(x, xs, ys)) if xs[0] <= x <= xs[-1] else None


def at_equal_flops(
    images: pd.DataFrame, ours: tuple[str, bool], theirs: tuple[str, bool], trained: bool, value: str = "coverage"
) -> tuple[v.Verdict | None, list[float]]:
    """``ours`` carries more than ``theirs`` at the same total FLOPs; each is ``(pre_llm, ipcv)`` naming rows of
    the table (``("", True)``: IPCV alone). At each of our points whose cost their keep ratios span, theirs is
    interpolated linearly in FLOPs; the difference per image is averaged over those points. Returns (verdict,
    our keep ratios compared); the verdict is None when no point of ours lies in their range of cost (no
    interpolation beyond it). images: notebook 09's per-image table with a ``gflops`` column."""
    name, threshold = PRE_LLM_MEASURES[value]
    a, b = _rows(images, *ours), _rows(images, *theirs)
    diffs: dict[str, list[float]] = {}
    ratios: list[float] = []
    for (image, r), row in a.groupby(["image", "keep_ratio"], sort=False):
        other = _interpolate(b[b["image"] == image], float(row["gflops"].iloc[0]), value)
        if other is not None:
            diffs.setdefault(image, []).append(float(row[value].iloc[0]) - other)
            ratios.append(float(r))
    if not diffs:
        return None, []
    per = {image: float(np.mean(d)) for image, d in diffs.items()}
    row = lambda m, p: ("IPCV" + (f" + {said(m)}" if m else " alone")) if p else said(m)  # noqa: E731
    test = v.exceeds(per, threshold, f"{name} at equal FLOPs, {row(*ours)} − {row(*theirs)}", trained)
    return test, sorted(set(ratios), reverse=True)
