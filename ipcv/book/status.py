"""The tables of the book's status page: the paper's numbers beside what the book measured.

Inputs: the summaries the notebooks save during the book build (``report.save_summary`` into a
results folder), the paper's tables (``data/paper``) and the benchmark JSON (``data/bench``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import paper as published
from . import claims as claim_tests
from . import efficiency, names
from .paper import KEEP, keep_label, paper_table, table4_ipcv_latency, table4_vs_vit_flops, tower_latency, vit_keep
from .paper import readable as paper_readable

NOT_IN_PAPER = "—"  # a setting the paper's table does not have
NOT_MEASURED = pd.DataFrame([{"note": "not measured in this build (run `python -m ipcv.book build`)"}])

# ablation variants of the notebooks -> rows of the paper's Table 6
TABLE6_NAMES = {
    "IPCV": "IPCV",
    "w/o AS": "IPCV (w/o AS)",
    "w/o Reint.": "IPCV (w/o Reint.)",
    "w/o AS & Reint.": "IPCV (w/o AS & Reint.)",
}


def _read(results: Path, name: str) -> pd.DataFrame | None:
    path = results / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def ablation_vs_table6(results: Path) -> pd.DataFrame:
    """Table 6 (Qwen2-VL-7B accuracy and latency, ViT keep 35%) beside the fidelity of the same
    variants on the book's encoder (notebook 04's ``ablation`` summary)."""
    ours = _read(results, "ablation")
    if ours is None:
        return NOT_MEASURED
    t6 = paper_table("table6").set_index("method")
    rows = []
    for _, r in ours.iterrows():
        paper = t6.loc[TABLE6_NAMES[r["variant"]]]
        rows.append(
            {
                "variant": r["variant"],
                "paper avg. acc. %": paper["avg_acc_pct"],
                "paper rel. latency %": paper["rel_latency_pct"],
                "book: all-token cosine": round(r["all_cos"], 4),
                "book: removed-token cosine": round(r["removed_cos"], 4),
                "book: saliency MAE": round(r["saliency_mae"], 4) if pd.notna(r.get("saliency_mae")) else None,
            }
        )
    return pd.DataFrame(rows)


def restore_vs_table1(results: Path) -> pd.DataFrame:
    """Table 1's average accuracy of IPCV and ToMe (whose unmerge copies a kept token) beside the
    book's NGR and copy restorations of the removed tokens at the same ViT keep ratio."""
    ours = _read(results, "reintegration")
    if ours is None:
        return NOT_MEASURED
    t1 = paper_table("table1")
    t1 = t1[t1.method.isin(["IPCV", "ToMe"])].assign(keep=lambda d: d.setting.map(vit_keep))
    rows = []
    for keep in sorted(set(ours.keep_ratio), reverse=True):
        mine = ours[ours.keep_ratio == keep].set_index("method")
        paper = t1[(t1.keep - keep).abs() < 1e-9].set_index("method")
        rows.append(
            {
                "ViT keep": keep,
                "paper IPCV avg. acc. %": paper.avg_acc_pct.get("IPCV", NOT_IN_PAPER),
                "paper ToMe avg. acc. %": paper.avg_acc_pct.get("ToMe", NOT_IN_PAPER),
                "book NGR cosine": round(mine.loc["NGR", "cosine"], 4),
                "book copy cosine": round(mine.loc["copy", "cosine"], 4),
                "book frozen cosine": round(mine.loc["frozen", "cosine"], 4),
            }
        )
    return pd.DataFrame(rows)


def tables(results: Path) -> dict[str, pd.DataFrame]:
    """``{file stem: table}`` for ``book/_generated/``: one ``tower_latency_<file>`` per
    ``data/bench/vision_*.json`` (:func:`ipcv.analysis.paper.tower_latency`), Table 4's end-to-end
    latency of IPCV on its own, the notebooks' summaries with their columns named in words, and the
    paper's tables with their key columns first (:func:`ipcv.analysis.paper.readable`)."""
    out = {
        "table4_vs_vit_flops": flops_shown(),
        "table4_ipcv_latency": table4_ipcv_latency(),
        **{f"tower_latency_{Path(t['file']).stem}": t["table"] for t in tower_latency()},
        "ablation_vs_table6": ablation_vs_table6(results),
        "restore_vs_table1": restore_vs_table1(results),
        "claims": claims(results),
        "build_run": _readable_run(build_run(results)),
    }
    for name in ("ngr_premise", "attention_stabilization", "bound", "sensitivity", "token_pruning", "vit_baselines"):
        table = _read(results, name)
        wide = name in ("bound", "token_pruning")  # a few keep ratios, many quantities: one column per ratio
        shown = NOT_MEASURED if table is None else (by_keep_ratio if wide else readable)(table.round(4))
        out[f"measured_{name}"] = shown
    for name in ("table1", "table2", "table3", "table5", "table6"):  # a dozen columns: split in two
        table = paper_readable(paper_table(name))
        summary = [c for c in ("Avg. Acc. %", "Rel. Latency %") if c in table]
        out[f"paper_{name}_summary"] = table[[KEEP, "method", *summary]]
        out[f"paper_{name}_scores"] = table.drop(columns=summary)
    out["paper_table4"] = paper_readable(paper_table("table4"))
    return out


def flops_shown() -> pd.DataFrame:
    """:func:`ipcv.analysis.paper.table4_vs_vit_flops` with Table 4's setting as ViT / LLM keep %."""
    t = table4_vs_vit_flops()
    return t.assign(setting=t.setting.map(keep_label)).rename(columns={"setting": KEEP}).drop(columns="ViT keep")


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its columns named in words and maths (:func:`ipcv.analysis.names.column`)."""
    return table.rename(columns=names.column)


def by_keep_ratio(table: pd.DataFrame) -> pd.DataFrame:
    """A summary with one row per keep ratio and many columns, turned on its side: one row per quantity,
    one column per keep ratio, so that it fits the page."""
    side = table.set_index("keep_ratio").T
    side.columns = [f"keep {k:g}" for k in side.columns]
    return side.rename(index=names.column).rename_axis("quantity").reset_index()


# --------------------------------------------------------------------------- the claims table

WHERE = {
    "token_pruning": "{doc}`01 <notebooks/01_token_pruning>`",
    "ngr_premise": "{doc}`02 <notebooks/02_neighbor_guided_reconstruction>`",
    "attention_stabilization": "{doc}`03 <notebooks/03_attention_stabilization>`",
    "reintegration": "{doc}`04 <notebooks/04_reintegration>`",
    "bound": "{doc}`05 <notebooks/05_error_bound>`",
    "sensitivity": "{doc}`06 <notebooks/06_sensitivity>`",
}
NOT_RUN = "not measured in this build"


def _pct(r: float) -> str:
    return f"{100 * float(r):g} %"


def trained_build(results: Path) -> bool | None:
    """Whether every notebook of this build ran on weights :mod:`~ipcv.analysis.weights` found trained (None: no
    notebook ran). Builds older than the check (no ``trained`` column) count as unchecked, so untrained."""
    t = _read(results, "run")
    if t is None:
        return None
    return bool("trained" in t and t["trained"].astype(str).str.lower().eq("true").all())


def _needs(results: Path, *names: str) -> list[pd.DataFrame] | None:
    tables = [_read(results, n) for n in names]
    return None if any(t is None for t in tables) else tables


def _claim_saliency(results: Path) -> str:
    t = _read(results, "token_pruning")
    if t is None:
        return NOT_RUN
    if "share" not in t:
        return "Not measured: these weights have no saliency head"
    images = _read(results, "token_pruning_images")
    if images is None:
        return NOT_RUN
    r = claim_tests.middle(t["keep_ratio"])
    share = float(t.loc[t["keep_ratio"] == r, "share"].iloc[0])
    verdict = claim_tests.saliency(images, bool(trained_build(results)))
    return (
        f"{verdict.markdown()}: kept patches hold {share:.2f} of the saliency mass at keep {_pct(r)}; "
        "language-free, but not an object detector"
    )


def _claim_selection(results: Path) -> str:
    images = _read(results, "selection_rules_images")
    if images is None:
        return NOT_RUN
    trained = bool(trained_build(results))
    said = f"all-token cosine: {claim_tests.selection_rule(images, trained, 'random', 'all_cos').markdown()}"
    if not images["share"].isna().any():
        said += f"; saliency share: {claim_tests.selection_rule(images, trained, 'random', 'share').markdown()}"
    return said


def _claim_premise(results: Path) -> str:
    found = _needs(results, "ngr_premise", "ngr_premise_images")
    if found is None:
        return NOT_RUN
    t, images = found
    c = dict(zip(t["comparison"], t["cosine"]))
    verdict = claim_tests.premise(images, bool(trained_build(results)))
    return (
        f"{verdict.markdown()}: median cosine {c[claim_tests.NGR]:.2f} with the neighbours' mean change vs "
        f"{c[claim_tests.ONE]:.2f} for a random kept token ({c[claim_tests.K_RANDOM]:.2f} for the mean of $k$ "
        "random kept tokens, a stricter control)"
    )


def _claim_ngr_vs_copy(results: Path) -> str:
    images = _read(results, "reintegration_images")
    if images is None:
        return NOT_RUN
    trained = bool(trained_build(results))
    verdict = claim_tests.ngr_vs_copy(images, trained)
    text = f"{verdict.markdown()}, as fidelity"
    s = _read(results, "sensitivity_images")
    if s is not None and trained and (s["sweep"] == "neighbours").any():
        ahead = [str(k) for k, v in claim_tests.copy_by_k(s, trained).items() if v.outcome == "yes"]
        text += "; NGR ahead of copy at " + (f"$k \\in \\{{{', '.join(ahead)}\\}}$" if ahead else "no $k$ tried")
    return text


def _claim_as(results: Path) -> str:
    found = _needs(results, "attention_stabilization", "attention_stabilization_images")
    if found is None:
        return NOT_RUN
    t, images = found
    r = claim_tests.middle(t["keep_ratio"])
    at = t[t["keep_ratio"] == r].sort_values("stabilize_layers")
    if 0 not in set(at["stabilize_layers"]):
        return NOT_RUN
    d = claim_tests.as_depth(at["stabilize_layers"])
    none, deep = at.iloc[0], at[at["stabilize_layers"] == d].iloc[0]
    extra = deep["flop_ratio"] - none["flop_ratio"]
    verdict = claim_tests.stabilization(images, bool(trained_build(results)))
    return (
        f"{verdict.markdown()}, as fidelity, at keep {_pct(r)} with {d} AS blocks, for {100 * extra:+.1f} % of the "
        "unpruned Qwen2-VL-7B tower's FLOPs"
    )


def _claim_baselines(results: Path) -> str:
    images = _read(results, "vit_baselines_images")
    if images is None:
        return NOT_RUN
    overall, each, flop = claim_tests.baselines(images, bool(trained_build(results)))
    missed = [m for m, v in each.items() if v is None]
    if overall is None:
        return f"Not compared: no baseline reaches IPCV's FLOP ratio ({flop:.2f})"
    return (
        f"{overall.markdown()}, as fidelity at IPCV's FLOP ratio ({flop:.2f})"
        + (f"; {', '.join(missed)} do not reach that cost" if missed else "")
        + ". Fidelity is not MLLM accuracy, which is what Table 1 measures"
    )


def _claim_ablation(results: Path) -> str:
    images = _read(results, "ablation_images")
    if images is None:
        return NOT_RUN
    verdict = claim_tests.ablation(images, bool(trained_build(results)))
    return f"{verdict.markdown()}, as fidelity; Table 6 loses under one point of accuracy per variant"


def _claim_sensitivity(results: Path) -> str:
    images = _read(results, "sensitivity_images")
    if images is None:
        return NOT_RUN
    trained = bool(trained_build(results))
    parts = []
    later = claim_tests.later_pruning(images, trained)
    if later is not None:
        parts.append(f"later pruning closer: {later.markdown()}")
    for sweep, default, only, name in (("AS depth", 7, range(3, 10), "AS depth 3–9"), ("neighbours", 10, None, "$k$")):
        little = claim_tests.matters_little(images, sweep, default, trained, only)
        if little is not None:
            parts.append(f"{name} within {claim_tests.NEGLIGIBLE} of the default: {little.markdown()}")
    return "; ".join(parts) if parts else NOT_RUN


def _claim_bound(results: Path) -> str:
    t = _read(results, "bound")
    if t is None:
        return NOT_RUN
    verdict = claim_tests.bound(t, t, bool(trained_build(results)))
    word = verdict.word if verdict.outcome == "not a result" else "Holds" if verdict.outcome == "yes" else "Fails"
    if verdict.outcome == "yes" and claim_tests.vacuous(t):
        word = "Holds, but vacuous"
    return (
        f"**{word}**: {verdict.said()}; loose: median slack "
        f"{t['median_slack'].min():.0f}–{t['median_slack'].max():.0f}×"
    )


def _claim_flops() -> str:
    t = table4_vs_vit_flops()
    vanilla = t[t["setting"] == "vanilla"].iloc[0]
    return (
        "**Partly.** Latency shares need the full MLLM on a GPU (not reproduced). FLOPs: at the 5120 patches of "
        f"the authors' MMBench setting the tower alone is {vanilla['ViT TFLOPs (ipcv.flops)']:.1f} TFLOPs, against "
        f"Table 4's {vanilla['paper TFLOPs (ViT + LLM)']:.1f} for the whole model"
    )


def _claim_table4() -> str:
    """Table 4's row, from the committed benchmark files (``data/bench``): the GPU run when there is one."""
    key = "IPCV | ViT 35% / LLM 35%"
    paper = published.table4()[published.table4_key(key)]
    said = f"Table 4: {paper['latency_pct']:g} / {paper['prefill_pct']:g} %"
    runs = efficiency.gpu_runs(efficiency.BENCH.parent)
    if runs:
        bench = efficiency.load(runs[-1])
        first = bench["latency"]["inputs"][0]
        row = next(r for r in first["rows"] if r["setting"] == key)
        return (
            f"**Measured on {bench['device']}** (Qwen2-VL-7B architecture, random weights, bf16): IPCV+DART 35/35 "
            f"total {100 * row['total_ratio']:.1f} % and prefill {100 * row['prefill_ratio']:.1f} % of vanilla "
            f"({said}), {first['input']}"
        )
    parts = ["**Partly**: the tower's FLOP ratio (`ipcv.flops`) and its CPU latency ratio (tables below)"]
    if efficiency.BENCH.is_file():
        bench = efficiency.load()
        row = next((r for r in bench["rows"] if r["setting"] == key), None)
        if row is not None:
            parts.append(
                f"whole `generate()` on the Qwen2-VL-2B architecture on a CPU ({bench['device']}): IPCV+DART 35/35 "
                f"total {100 * row['total_ratio']:.1f} %, prefill {100 * row['prefill_ratio']:.1f} % of vanilla "
                f"({said} on a GPU with the 7B)"
            )
    parts.append("the GPU measurement (`python -m ipcv.bench gpu`) has not been run for this release")
    return "; ".join(parts)


def claims(results: Path) -> pd.DataFrame:
    """The status page's claims table: each claim of the paper, and whether *this build* reproduces
    it, every number read from this build's saved results (``results``) or computed by ipcv.flops."""
    rows = [
        ("The vision encoder is a large share of MLLM cost, so pruning inside it pays", "§1, Figure 1",
         _claim_flops(), "FLOP table below"),
        ("The feature-difference score (eq. 1) keeps informative regions without language guidance",
         "§3.1, Figure 6, App. F", _claim_saliency(results), WHERE["token_pruning"]),
        ("Eq. 1 chooses better than a random choice of as many patches (an ablation the paper does not run)",
         "§3.1, ablation", _claim_selection(results), WHERE["token_pruning"]),
        ("Tokens similar at $l_p$ change alike afterwards", "§3.2, Figure 2", _claim_premise(results),
         WHERE["ngr_premise"]),
        ("NGR restores pruned tokens better than copying similar kept tokens (ToMe)", "§1, §3.2, §3.4",
         _claim_ngr_vs_copy(results), f"{WHERE['reintegration']}, {WHERE['sensitivity']}"),
        ("Attention Stabilization reduces the distortion of kept tokens at little cost", "§3.3", _claim_as(results),
         WHERE["attention_stabilization"]),
        ("The LLM receives the same number and order of visual tokens", "§3.4–3.5",
         "**Yes**, by construction and test; shown on Qwen2-VL's real code path (random weights, shapes only)",
         f"{WHERE['reintegration']}, `tests/`"),
        ("IPCV is training-free and works with LLM-side pruners", "§3.5, Table 5",
         "Training-free: yes. The LLM-side pruners (DART, FastV, V²Drop, SparseVLM) combine with IPCV "
         "(`compress(model, vision=..., language=...)`), but their **accuracy is not reproduced** (needs an MLLM "
         "with real weights)", "{doc}`usage`"),
        ("Accuracy vs latency on 9 image and 4 video benchmarks beats ViT- and LLM-side baselines",
         "§4, Tables 1–3, Figure 4",
         "**Not reproduced**: needs the released weights, the datasets and a GPU", "—"),
        ("IPCV beats the ViT-side baselines ToMe, ToFu and DART (ViT)", "§4.2, Table 1", _claim_baselines(results),
         WHERE["reintegration"]),
        ("Latency, prefill, FLOPs and KV cache on MMBench", "§5.1, Table 4",
         _claim_table4(), "tables below, {doc}`07 <notebooks/07_efficiency>`"),
        ("AS and Reintegration each help; both together help most", "§5.3, Table 6", _claim_ablation(results),
         f"{WHERE['reintegration']}, table below"),
        ("Later pruning is more accurate but slower; AS depth 3–9 and $k$ matter little", "§5.4, Figure 5",
         _claim_sensitivity(results), WHERE["sensitivity"]),
        ("NGR error $\\le 2B(L_{\\text{ViT}}+1)$", "App. E, Theorem E.5", _claim_bound(results), WHERE["bound"]),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["claim", "paper", "reproduced in this build?", "where"])


def _readable_run(run: pd.DataFrame) -> pd.DataFrame:
    """:func:`build_run` as the page shows it: the weights check in words."""
    if "trained" not in run:
        return run
    checked = run["trained"].astype(str).str.lower().map({"true": "trained", "false": "random (untrained)"})
    return run.assign(trained=checked).rename(columns={"trained": "weights checked"})


def build_run(results: Path) -> pd.DataFrame:
    """Which weights and device this build's notebook numbers come from (``run.csv``, written by
    :func:`ipcv.book.report.run_note` during the build); ``trained`` is what :mod:`ipcv.analysis.weights`
    found (True / False), shown on the page as "weights checked: trained / untrained"."""
    t = _read(results, "run")
    if t is None:
        return pd.DataFrame([{"weights": NOT_RUN, "device": NOT_RUN}])
    return t.drop_duplicates()
