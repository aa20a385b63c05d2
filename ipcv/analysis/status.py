"""The tables of the book's status page: the paper's numbers beside what the book measured.

Inputs: the summaries the notebooks save during the book build (``report.save_summary`` into a
results folder), the paper's tables (``data/paper``) and the benchmark JSON (``data/bench``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paper import latency_vs_table4, paper_table, table4_vs_vit_flops, vit_keep

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
    """``{file stem: table}`` for ``book/_generated/``."""
    latency, sources = latency_vs_table4()
    none = pd.DataFrame([{"note": "no data/bench/vision_*.json yet (run `python -m ipcv.bench vision`)"}])
    out = {
        "table4_vs_vit_flops": table4_vs_vit_flops(),
        "latency_vs_table4": latency if len(latency) else none,
        "latency_sources": sources if len(sources) else none,
        "ablation_vs_table6": ablation_vs_table6(results),
        "restore_vs_table1": restore_vs_table1(results),
    }
    for name in ("ngr_premise", "attention_stabilization", "bound", "sensitivity", "token_pruning", "vit_baselines"):
        table = _read(results, name)
        out[f"measured_{name}"] = NOT_MEASURED if table is None else table.round(4)
    return out
