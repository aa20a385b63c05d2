"""The "what we saw" paragraphs of the notebooks, written from the run's own tables.

Every number a notebook's closing paragraph states is computed here from the tables that notebook
printed, and every comparison ("ahead", "holds", "not reproduced") follows from those numbers, so a
run on other weights, another device or other parameters never shows prose about another run.
Remarks that no table can carry (what a figure of the default photographs shows) are given only
when the run *is* the default build (:func:`is_default_build`) and say so.

Every verdict comes from :mod:`~ipcv.analysis.claims` (a test on per-image differences with a stated threshold
and a 95 % interval, "inconclusive" within noise) and reads "not a result: random weights" when
:mod:`~ipcv.analysis.weights` finds the weights untrained.

Each function returns a :class:`Findings`: Markdown in the book and in Jupyter, plain text elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..analysis.encoders import OFFLINE_DEFAULT, Encoder
from ..analysis.verdicts import Verdict
from . import claims
from .claims import middle
from .report import device_name

DEFAULT_IMAGES = "bundled"
DEFAULT_SIZE = 224


def is_default_build(model: str, images, image_size: int) -> bool:
    """True when the notebook runs on the book's default inputs (offline trained DINOv2, the eight
    bundled photographs at 224 px): the only run the figure-based remarks describe."""
    return model == OFFLINE_DEFAULT and images == DEFAULT_IMAGES and image_size == DEFAULT_SIZE


@dataclass
class Findings:
    """A closing paragraph: one sentence saying which run it describes, then bullet points."""

    context: str
    points: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        return "\n".join([self.context, "", *(f"- {p}" for p in self.points)])

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def __repr__(self) -> str:
        return self.markdown()


def _f(x: float, digits: int = 2) -> str:
    return f"{float(x):.{digits}f}"


def _pair(a: float, b: float, digits: int = 2, most: int = 5) -> tuple[str, str]:
    """``a`` and ``b`` with the fewest decimals (at least ``digits``, at most ``most``) that tell them apart, so
    two different numbers never print alike ("1.00 -> 1.00")."""
    d = digits
    while d < most and f"{float(a):.{d}f}" == f"{float(b):.{d}f}" and a != b:
        d += 1
    return _f(a, d), _f(b, d)


def _span(values, digits: int = 2) -> str:
    """``lo–hi``, or one number when they print alike; decimals as :func:`_pair`."""
    lo, hi = (float(x) for x in (np.nanmin(values), np.nanmax(values)))
    a, b = _pair(lo, hi, digits)
    return a if a == b else f"{a}–{b}"


def _share(x: float) -> str:
    """A share of tokens as a percentage."""
    return f"{100 * float(x):.0f} %"


class Context(str):
    """The sentence that says which run a paragraph describes, carrying whether its weights are trained
    (:attr:`trained`: from :func:`ipcv.analysis.weights.check`, via the encoder)."""

    trained: bool

    def __new__(cls, text: str, trained: bool):
        obj = super().__new__(cls, text)
        obj.trained = bool(trained)
        return obj


def _trained(ctx) -> bool:
    if not isinstance(ctx, Context):
        raise TypeError(f"ctx must be a findings.Context (from findings.context), got {type(ctx).__name__}")
    return ctx.trained


def _pct(r: float) -> str:
    return f"{100 * float(r):g} %"


def context(enc: Encoder, device: str, n_images: int, image_size: int, *extra: str) -> Context:
    """``In this run (weights ..., N photograph(s) at P px, device ...):``, and whether the weights are trained."""
    images = f"{n_images} photograph{'s' if n_images != 1 else ''} at {image_size} px"
    parts = [f"weights: {enc.label}", images, *extra, f"device: {device_name(device)}"]
    text = f"In this run ({'; '.join(parts)}):"
    if not enc.trained:
        text += ' (untrained weights: every verdict below reads "not a result")'
    return Context(text, enc.trained)


def _middle(values: Sequence[float], preferred: float = 0.35) -> float:
    return middle(values, preferred)


def _claim(statement: str, verdict: Verdict) -> str:
    """``statement: **Word** (evidence).``"""
    return f"{statement}: {verdict.markdown()}."


def _rows(table: pd.DataFrame, **where) -> pd.DataFrame:
    mask = pd.Series(True, index=table.index)
    for name, value in where.items():
        mask &= table[name] == value
    return table[mask]


# --------------------------------------------------------------------------- 01 token pruning


def token_pruning(
    ctx: Context,
    gap: float,
    summary: pd.DataFrame,
    mean_share: pd.Series | None,
    budgets: pd.DataFrame,
    ratio: float,
    default: bool,
    share: pd.DataFrame | None = None,
) -> Findings:
    """summary: keep_ratio, all_top_k; mean_share: saliency share by keep_ratio (None: no saliency
    head); share: the same per image (keep_ratio, image, share; the verdict's units); budgets: patches,
    per_image, one_top_k per image at ``ratio``."""
    trained = _trained(ctx)
    out = Findings(ctx)
    top_k = bool(summary["all_top_k"].all())
    out.points.append(
        f"The library's scores are eq. 1 on the unpruned hidden states (largest difference {gap:.1e}), "
        + (
            "and every image keeps exactly its own top-$K$."
            if top_k
            else "but in some image the kept patches are **not** its top-$K$ (see the table)."
        )
    )
    if mean_share is not None:
        if share is None:
            raise ValueError("share: the per-image saliency shares are needed for the verdict")
        said = ", ".join(f"{_f(s)} of it at keep {_pct(r)}" for r, s in mean_share.items())
        verdict = claims.saliency(share, trained)
        out.points.append(
            _claim("The kept patches hold more of the trained saliency mass than their share of the patches", verdict)
            + f" Mean shares: {said}; a content-blind choice would hold the keep ratio itself."
        )
        if default:
            out.points.append(
                'On the default photographs the score is not simply "objects in, background out": in the '
                "rocket, coins and Hubble photos it keeps many dark, uniform background patches and drops parts "
                "of the object (see the figure). DINOv2 without registers is known to turn such background "
                "patches into high-norm tokens that carry global information {cite}`darcet2024registers`, which "
                "may be what block 2's large updates mark; the paper's Figure 6 (on Qwen2-VL) is therefore only "
                "partly mirrored here."
            )
    else:
        out.points.append("These weights have no saliency head, so the saliency share was not measured.")
    per, one, patches = budgets["per_image"], budgets["one_top_k"], budgets["patches"]
    per_text = f"{per.iloc[0]}" if per.nunique() == 1 else f"{per.min()} to {per.max()}"
    if len(budgets) == 1:
        out.points.append(
            f"With one image, one top-$K$ over the call and per-image budgets keep the same {one.iloc[0]} of "
            f"{patches.iloc[0]} patches at keep {_pct(ratio)}."
        )
    else:
        out.points.append(
            f"One top-$K$ over the {len(budgets)} images gives budgets from {one.min()} to {one.max()} of "
            f"{patches.max()} patches per image at keep {_pct(ratio)}; per-segment budgets keep {per_text} "
            "per image."
        )
    return out


def selection_rules(ctx: Context, images: pd.DataFrame) -> Findings:
    """Is eq. 1's feature difference a better choice than random or max-min diversity inside the ViT?
    images: keep_ratio, rule, image, all_cos, share (``ipcv.analysis.pruning.selection_rules``)."""
    trained = _trained(ctx)
    out = Findings(ctx)
    means = images.groupby(["keep_ratio", "rule"], sort=False)[["all_cos", "share"]].mean()
    for value, (label, _) in claims.SELECTION_MEASURES.items():
        if images[value].isna().any():
            out.points.append(f"These weights have no saliency head, so the {label} was not compared.")
            continue
        for other in ("random", "diversity"):
            verdict = claims.selection_rule(images, trained, other, value)
            at = claims.selection_rule_at(images, trained, other, value)
            per = "; ".join(
                f"{_pct(r)}: {_f(means.loc[(r, 'difference'), value], 3)} against "
                f"{_f(means.loc[(r, other), value], 3)} ({verdict_at.word.lower()})"
                for r, verdict_at in at.items()
            )
            out.points.append(
                _claim(f"Eq. 1's feature difference gives a higher {label} than the {other} choice", verdict)
                + f" Means per keep ratio (eq. 1 against {other}): {per}."
            )
    return out


# --------------------------------------------------------------------------- 02 NGR


def ngr_premise(
    ctx: Context,
    medians: pd.DataFrame,
    oracle: float,
    in_ipcv: float,
    frozen: float,
    default: bool,
    images: pd.DataFrame,
) -> Findings:
    """medians: comparison, cosine (rows "NGR neighbours (mean of k)", "one random kept token",
    "k random kept tokens (mean)"); images: image, comparison, cosine (median per image: the verdict's units);
    oracle / in_ipcv / frozen: mean cosines to the true output."""
    trained = _trained(ctx)
    cos = dict(zip(medians["comparison"], medians["cosine"]))
    ngr, one, k_random = cos[claims.NGR], cos[claims.ONE], cos[claims.K_RANDOM]
    out = Findings(ctx)
    verdict = claims.premise(images, trained)
    out.points.append(
        _claim("Tokens close at block $l_p$ change alike afterwards (the premise of NGR)", verdict)
        + f" The change of a removed token from block $l_p$ to the output has median cosine {_f(ngr)} with its "
        f"neighbours' mean change, against {_f(one)} with a random kept token's and {_f(k_random)} with the "
        "mean of $k$ random kept tokens (the stricter control: what a change shared by the whole image gives)."
    )
    if default:
        out.points.append(
            "In the trajectories of the default photographs the token and its neighbours run side by side "
            "through the middle blocks; the last block makes by far the largest move, for both alike."
        )
    a, b = _pair(oracle, in_ipcv)
    if in_ipcv < oracle < 1:
        drift = (oracle - in_ipcv) / (1 - in_ipcv)
        out.points.append(
            f"NGR applied to the unpruned changes reaches a mean cosine of {a} with the true output, NGR "
            f"inside IPCV {b}: about {drift:.0%} of the remaining gap to 1 comes from the kept tokens' "
            "drift under pruning, the rest from the approximation itself."
        )
    else:
        out.points.append(
            f"NGR applied to the unpruned changes reaches a mean cosine of {a} with the true output, NGR inside "
            f"IPCV {b}."
        )
    judged = (
        ""
        if not trained
        else ": no estimate at all, the encoder changes its tokens almost completely after $l_p$"
        if frozen < 0.5
        else ": a fair estimate here, the tokens change little after $l_p$"
    )
    out.points.append(f"The frozen state reaches a mean cosine of {_f(frozen)} with the true output{judged}.")
    return out


# --------------------------------------------------------------------------- 03 AS


def attention_stabilization(
    ctx: Context,
    drift: pd.DataFrame,
    flops: pd.DataFrame,
    per_block: Mapping[float, tuple[float, float]],
    images: pd.DataFrame,
) -> Findings:
    """drift: keep_ratio, stabilize_layers, kept_rel_error, removed_cos; images: keep_ratio, stabilize_layers,
    image, kept_rel_error (the verdict's units); flops: the Qwen2-VL-7B tower's keep_ratio, stabilize_layers,
    ratio; per_block: keep ratio -> GFLOPs of one AS block with kept queries and with all queries."""
    trained = _trained(ctx)
    out = Findings(ctx)
    ratios = list(dict.fromkeys(drift["keep_ratio"]))
    r = _middle(ratios)
    at = _rows(drift, keep_ratio=r).sort_values("stabilize_layers")
    depths = list(at["stabilize_layers"])
    if len(depths) < 2 or depths[0] != 0:
        out.points.append(f"Only the AS depths {depths} were run (no run without AS); nothing to compare.")
        return out
    d_max = claims.as_depth(depths)
    none, deep = at.iloc[0], _rows(at, stabilize_layers=d_max).iloc[0]
    e0, ed = _pair(none["kept_rel_error"], deep["kept_rel_error"])
    c0, cd = _pair(none["removed_cos"], deep["removed_cos"])
    out.points.append(
        _claim(f"At keep {_pct(r)}, {d_max} AS block{'s' if d_max != 1 else ''} lower the kept tokens' error",
               claims.stabilization(images, trained))
        + f" Their relative error is {e0} without AS and {ed} with it; the removed tokens, rebuilt from the kept "
        f"ones, go from cosine {c0} to {cd}."
    )  # fmt: skip
    if len(depths) > 2:
        first = at.iloc[1]
        gain_first = none["kept_rel_error"] - first["kept_rel_error"]
        gain_all = none["kept_rel_error"] - at["kept_rel_error"].min()
        if gain_all > 0:
            out.points.append(
                f"The first {int(first['stabilize_layers'])} stabilized block(s) bring {gain_first / gain_all:.0%} "
                "of the largest gain seen at any depth"
                + (
                    "; deeper AS changes the error "
                    + ("monotonically." if at["kept_rel_error"].is_monotonic_decreasing else "not monotonically.")
                )
            )
    q = _rows(flops, keep_ratio=r)
    f0 = _rows(q, stabilize_layers=0)["ratio"]
    fd = _rows(q, stabilize_layers=d_max)["ratio"]
    if len(f0) and len(fd):
        out.points.append(
            f"The cost on the Qwen2-VL-7B tower at keep {_pct(r)}: {d_max} AS block(s) raise the FLOPs from "
            f"{_f(f0.iloc[0], 3)} to {_f(fd.iloc[0], 3)} of the unpruned tower (architecture only, no weights)."
        )
    if r in per_block:
        ours, theirs = per_block[r]
        out.points.append(
            f"Running AS with all tokens as queries, as the authors' release does, would cost {theirs / ours - 1:.0%} "
            f"more per AS block at keep {_pct(r)} ({theirs:.1f} against {ours:.1f} GFLOPs)."
        )
    return out


# --------------------------------------------------------------------------- 04 reintegration


def reintegration(
    ctx: Context,
    restore: pd.DataFrame,
    removed_vs_frozen: float,
    kept_vs_reintegrated: float,
    ablation: pd.DataFrame,
    baselines: pd.DataFrame,
    neighbors: int,
    restore_images: pd.DataFrame,
    ablation_images: pd.DataFrame,
    baseline_images: pd.DataFrame,
) -> Findings:
    """restore: keep_ratio, method (NGR / copy / frozen), cosine; ablation: variant, all_cos;
    baselines: method, keep_ratio, all_cos, flop_ratio. The verdicts' units, per image: restore_images
    (keep_ratio, image, method, cosine), ablation_images (variant, image, all_cos), baseline_images
    (method, keep_ratio, image, all_cos, flop_ratio)."""
    trained = _trained(ctx)
    out = Findings(ctx)
    cos = restore.pivot_table(index="keep_ratio", columns="method", values="cosine", sort=False)
    diff = cos["NGR"] - cos["copy"]
    verdict = claims.ngr_vs_copy(restore_images, trained)
    at = claims.ngr_vs_copy_at(restore_images, trained)
    per_ratio = ", ".join(f"{_pct(r)} {v.word.lower()}" for r, v in at.items()) if trained else ""
    out.points.append(
        _claim(f"NGR restores the removed tokens closer to the unpruned output than copying the nearest kept token "
               f"($k = {neighbors}$, as fidelity)", verdict)
        + (f" The mean cosine difference is {diff.iloc[0]:+.3f}" if len(diff) == 1 else
           f" The mean cosine difference ranges {diff.min():+.3f} to {diff.max():+.3f} over the keep ratios")
        + (f" (per ratio: {per_ratio})" if per_ratio else "")
        + "; {doc}`06_sensitivity` varies $k$."
    )  # fmt: skip
    out.points.append(
        f"Frozen states reach a mean cosine of {_span(cos['frozen'])}, against {_span(cos['NGR'])} for NGR."
    )
    exact = removed_vs_frozen == 0 and kept_vs_reintegrated == 0
    out.points.append(
        "`reintegrate=False` gives exactly the frozen states and reintegration never touches kept tokens "
        + (
            "(both differences are 0)."
            if exact
            else f"**fails** here (differences {removed_vs_frozen:.2e}, {kept_vs_reintegrated:.2e})."
        )
    )
    ranked = ablation.sort_values("all_cos", ascending=False)
    said = ", ".join(f"{v} {_f(c, 4)}" for v, c in zip(ranked["variant"], ranked["all_cos"]))
    out.points.append(
        _claim("AS and reintegration each help (ablation, all-token cosine)", claims.ablation(ablation_images, trained))
        + f" Means: {said}. The paper's Table 6 measures accuracy instead, where each variant costs less than one "
        "point on Qwen2-VL-7B."
    )
    if (baselines["method"] == "IPCV").any():
        overall, each, f_ref = claims.baselines(baseline_images, trained)
        ours = baselines[baselines["method"] == "IPCV"]
        mid = _rows(ours, keep_ratio=claims.middle(ours["keep_ratio"]))
        c_ref = float(mid["all_cos"].iloc[0])
        reached = [m for m, x in each.items() if x is not None]
        missed = [m for m, x in each.items() if x is None]
        text = (
            _claim(f"IPCV stays closer to the unpruned output than {', '.join(reached)} at the same encoder FLOPs "
                   f"(IPCV's all-token cosine {_f(c_ref, 3)} at a FLOP ratio of {_f(f_ref)}; the others "
                   "interpolated along their curves, per image)", overall)
            if overall is not None
            else f"No ViT-side baseline reaches IPCV's FLOP ratio of {_f(f_ref)}, so none is compared at equal cost."
        )  # fmt: skip
        if missed and overall is not None:
            text += f" {', '.join(missed)} do{'es' if len(missed) == 1 else ''} not reach that cost."
        text += " Fidelity is not what an LLM answers from the tokens, which Table 1 measures."
        out.points.append(text)
        floor = baselines.groupby("method", sort=False)["flop_ratio"].min()
        out.points.append(
            "The lowest FLOP ratio each method reached over the keep ratios run: "
            + ", ".join(f"{m} {_f(v)}" for m, v in floor.items())
            + "."
        )
    return out


# --------------------------------------------------------------------------- 05 error bound


def error_bound(ctx: Context, summary: pd.DataFrame, loose: pd.DataFrame) -> Findings:
    """summary: within, identity, B, d_H, L_proof, L_matched; loose: median_slack, min_slack,
    lemma_slack, above_norm (one row per keep ratio)."""
    trained = _trained(ctx)
    out = Findings(ctx)
    identity = float(summary["identity"].max())
    verdict = claims.bound(summary, loose, trained)
    out.points.append(
        _claim("Every removed token's NGR error is within $2B(L_{\\text{proof}}+1)$ at every keep ratio", verdict)
        + f" The proof's identity holds to {identity:.1e} (the library's reintegration is eq. 5 with the traced "
        "neighbours)."
    )
    above = _span(100 * loose["above_norm"], 0)
    out.points.append(
        f"The bound is loose: a typical (median) token's error is {_span(loose['median_slack'], 1)} times smaller "
        f"than its bound, never less than {_f(loose['min_slack'].min(), 1)} times. It exceeds the norm of the token "
        f"it bounds for {above} % of the tokens (per keep ratio)"
        + (
            ', so for most tokens it says less than the trivial estimate "zero": it holds, but it is vacuous here.'
            if claims.vacuous(loose)
            else "."
        )
    )
    out.points.append(
        f"The constant explains it: at block $l_p$ the tokens are short ($B$ up to {_f(summary['B'].max())}) and "
        f"close ($d_H$ up to {_f(summary['d_H'].max())}), while $L_{{\\text{{proof}}}}$ reaches "
        f"{_f(summary['L_proof'].max(), 0)} ($L_{{\\text{{matched}}}}$ {_f(summary['L_matched'].max(), 0)})."
    )
    out.points.append(
        f"The data-dependent Lemma E.3 bound is {_span(loose['lemma_slack'], 1)} times the error of a typical token."
    )
    return out


# --------------------------------------------------------------------------- 06 sensitivity


def sensitivity(ctx: Context, sweeps: pd.DataFrame, defaults: Mapping[str, int], images: pd.DataFrame) -> Findings:
    """sweeps: sweep ("pruning block", "AS depth", "neighbours"), value, all_cos, copy_all_cos,
    flop_ratio; images: sweep, value, image, all_cos, copy_all_cos (the verdicts' units); defaults: the
    value held fixed per sweep (prune_layer, stabilize_layers, neighbors)."""
    trained = _trained(ctx)
    out = Findings(ctx)

    def sweep(name):
        return sweeps[sweeps["sweep"] == name].sort_values("value")

    lp = sweep("pruning block")
    later = claims.later_pruning(images, trained)
    if later is not None:
        best = lp.loc[lp["all_cos"].idxmax()]
        mono = lp["all_cos"].is_monotonic_increasing
        a, b = _pair(lp["all_cos"].iloc[0], lp["all_cos"].iloc[-1])
        out.points.append(
            _claim("**Pruning block.** Pruning later keeps the output closer", later)
            + f" From $l_p = {lp['value'].iloc[0]}$ to {lp['value'].iloc[-1]} the FLOP ratio goes from "
            f"{_f(lp['flop_ratio'].iloc[0])} to {_f(lp['flop_ratio'].iloc[-1])} and the all-token cosine from {a} "
            f"to {b}, " + ("rising at every step." if mono else f"not monotonically (best at $l_p = {best['value']}$).")
        )
    ad = sweep("AS depth")
    depth_default = defaults.get("stabilize_layers")
    little = claims.matters_little(images, "AS depth", depth_default, trained, only=range(3, 10))
    if little is not None:
        out.points.append(
            _claim(f"**AS depth.** Depths 3 to 9 stay within {claims.NEGLIGIBLE} all-token cosine of the default "
                   f"{depth_default}", little)
            + f" Over the depths run the cosine spans {_span(ad['all_cos'], 3)} for FLOP ratios up to "
            f"{_f(ad['flop_ratio'].max())}."
        )  # fmt: skip
    k = sweep("neighbours")
    k_default = defaults.get("neighbors")
    little = claims.matters_little(images, "neighbours", k_default, trained)
    if little is not None:
        best = k.loc[k["all_cos"].idxmax()]
        out.points.append(
            _claim(f"**Neighbours.** Every $k$ run stays within {claims.NEGLIGIBLE} all-token cosine of the default "
                   f"$k = {k_default}$", little)
            + f" The mean cosine is highest at $k = {best['value']}$ ({_f(best['all_cos'], 3)}) and "
            f"{_f(k['all_cos'].min(), 3)} at its lowest ($k = {k.loc[k['all_cos'].idxmin(), 'value']}$)."
        )  # fmt: skip
    if len(k) > 0:
        by_k = claims.copy_by_k(images, trained)
        fixed = f"$l_p = {defaults.get('prune_layer')}$, AS depth {depth_default}"
        if trained:
            ahead = [str(x) for x, v in by_k.items() if v.outcome == "yes"]
            said = (
                f"ahead at $k \\in \\{{{', '.join(ahead)}\\}}$ (interval above {claims.COSINE})"
                if ahead
                else "ahead at no $k$ tried"
            )
            out.points.append(f"**Copy restore.** IPCV's NGR against copying the nearest kept token: {said}; "
                              f"other parameters at their defaults ({fixed}).")  # fmt: skip
        else:
            out.points.append("**Copy restore.** NGR against copying the nearest kept token at each $k$: "
                              f"**Not a result: random weights** ({fixed}).")  # fmt: skip
    return out


def beyond(ctx: Context, images: pd.DataFrame, costs: pd.DataFrame, cost_model: str) -> Findings:
    """Notebook 09: the pre-LLM methods alone and behind IPCV on the encoder's final tokens.
    images: per image (method, pre_llm, ipcv, keep_ratio, image, tokens, coverage, share, gflops);
    costs: :func:`ipcv.analysis.prellm.costs`."""
    from ..analysis.prellm import LABELS

    f = Findings(str(ctx))
    trained = ctx.trained
    ratios = sorted(set(images["keep_ratio"]), reverse=True)
    mid = middle(ratios)
    means = images.groupby(["pre_llm", "ipcv", "keep_ratio"], sort=False)[["coverage", "share"]].mean()
    alone = [m for m in dict.fromkeys(images["pre_llm"]) if m]
    at = {m: means.loc[(m, False, mid)] for m in alone}
    best = max(at, key=lambda m: at[m]["coverage"])
    f.points.append(
        f"At equal kept tokens ({_share(mid)}), coverage of the unpruned tokens: "
        + ", ".join(f"{LABELS[m]} {_f(at[m]['coverage'], 3)}" for m in alone)
        + f"; the highest is {LABELS[best]}'s."
        + (
            " Saliency share kept: " + ", ".join(f"{LABELS[m]} {_f(at[m]['share'], 3)}" for m in alone) + "."
            if images["share"].notna().all() else " (No saliency head: the share is not measured.)"
        )
    )  # fmt: skip
    for m, tests in claims.versus_random(images, trained).items():
        f.points.append(
            f"{LABELS[m]} carries more than random selection at equal kept tokens (mean over ratios): "
            + "; ".join(f"{value} {verdict.markdown()}" for value, verdict in tests.items())
            + "."
        )
    for m, tests in claims.pairing(images, trained).items():
        same = " (the same patches as alone by construction, so the same share)" if m in claims.CONTENT_BLIND else ""
        f.points.append(f"IPCV + {LABELS[m]} carries more than {LABELS[m]} alone at equal kept tokens (mean over "
                        "ratios): " + "; ".join(f"{value} {verdict.markdown()}" for value, verdict in tests.items())
                        + same + ".")  # fmt: skip
    priced = costs.set_index(["pre_llm", "ipcv", "keep_ratio"])["gflops"]
    pairs = costs[(costs["pre_llm"] != "") & costs["ipcv"]]
    lone = costs[(costs["pre_llm"] != "") & ~costs["ipcv"]]
    saving = [1 - priced[(m, True, r)] / priced[(m, False, r)] for m, r in zip(pairs["pre_llm"], pairs["keep_ratio"])]
    f.points.append(
        f"Cost ({cost_model}): IPCV in the tower makes X's prefill {_span([100 * s for s in saving], 0)} % cheaper "
        "at the same keep ratio, the tower being most of the cost; IPCV + X costs "
        f"{_f(pairs['gflops'].min() / 1e3)}–{_f(pairs['gflops'].max() / 1e3)} TFLOPs over these ratios, X alone "
        f"{_f(lone['gflops'].min() / 1e3)}–{_f(lone['gflops'].max() / 1e3)} TFLOPs."
    )
    apart = []
    for m in alone:
        verdict, compared = claims.at_equal_flops(images, (m, True), (m, False), trained)
        if verdict is None:
            apart.append(LABELS[m])
            continue
        f.points.append(_claim(f"IPCV + {LABELS[m]} carries more than {LABELS[m]} alone at equal FLOPs (coverage)",
                               verdict))  # fmt: skip
    if apart:
        f.points.append(f"IPCV + X against X alone at equal FLOPs ({', '.join(apart)}): not compared, the costs "
                        "of their keep ratios do not overlap and nothing is extrapolated.")  # fmt: skip
    for m in alone:
        verdict, compared = claims.at_equal_flops(images, ("", True), (m, False), trained)
        if verdict is None:
            f.points.append(f"IPCV alone against {LABELS[m]} at equal FLOPs: their costs do not overlap.")
            continue
        shown = ", ".join(_share(r) for r in compared)
        f.points.append(_claim(f"IPCV alone (keep {shown} in the tower, every token restored) carries more than "
                               f"{LABELS[m]} at equal FLOPs (coverage)", verdict))  # fmt: skip
    return f
