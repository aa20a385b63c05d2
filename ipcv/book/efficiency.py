"""Table 4, Figure 1 and Figure 4 from the efficiency benchmark (``python -m ipcv.bench efficiency``),
beside the paper's Table 4 (``data/paper/table4_efficiency_mmbench.csv``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..paper import table4_key as paper_key
from . import accuracy

BENCH = accuracy.DATA / "bench" / "efficiency_qwen2vl2b_cpu.json"


def load(path: str | Path = BENCH) -> dict:
    return json.loads(Path(path).read_text())


def table4(bench: dict) -> pd.DataFrame:
    """Our rows beside the paper's: relative total latency, relative prefill, FLOPs and KV cache.

    Columns: setting, method; ``total %`` / ``prefill %`` / ``FLOPs %`` / ``KV MB`` measured here;
    ``paper total %`` / ``paper prefill %`` / ``paper FLOPs %`` / ``paper KV %`` from Table 4 (FLOPs and KV
    relative to the paper's vanilla, since the paper's model is the 7B and its input larger)."""
    paper = accuracy.paper_table("table4").set_index(["setting", "method"])
    base = paper.loc[("vanilla", "Vanilla")]
    ours_base_kv = next(r for r in bench["rows"] if r["setting"] == "vanilla")["kv_cache_mb"]
    out = []
    for r in bench["rows"]:
        key = paper_key(r["setting"])
        entry = {
            "setting": key[0], "method": key[1],
            "total %": 100 * r["total_ratio"], "prefill %": 100 * r["prefill_ratio"], "FLOPs %": 100 * r["flop_ratio"],
            "KV %": 100 * r["kv_cache_mb"] / ours_base_kv, "KV MB": r["kv_cache_mb"],
        }  # fmt: skip
        if key in paper.index:
            p = paper.loc[key]
            entry |= {
                "paper total %": p.latency_pct, "paper prefill %": p.prefill_pct,
                "paper FLOPs %": 100 * p.tflops / base.tflops, "paper KV %": 100 * p.kv_cache_mb / base.kv_cache_mb,
            }  # fmt: skip
        out.append(entry)
    return pd.DataFrame(out)


def figure1(bench: dict, ax=None):
    """Vision tower vs the rest of prefill (mostly the LLM), as shares of vanilla's prefill time."""
    shares = pd.DataFrame(bench["figure1"])
    ax = ax or plt.subplots(figsize=(7, 2.8))[1]
    y = range(len(shares))
    ax.barh(y, 100 * shares.vision_share, color="#3b6ea5", label="vision encoder")
    ax.barh(y, 100 * shares.llm_share, left=100 * shares.vision_share, color="#d9a441", hatch="//", label="LLM prefill")
    for i, s in shares.iterrows():
        ax.text(2, i, f"{100 * s.vision_share:.0f} %  ({s.visual_tokens} visual tokens)", va="center", color="white")
    ax.set_yticks(list(y), shares.input)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of prefill time (%)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8, frameon=False)
    ax.set_title(f"Qwen2-VL-2B architecture, random weights, {bench['device']}", fontsize=9)
    return ax


def mmb_accuracy(store_rows: list[dict]) -> tuple[dict[tuple[str, str], float], str]:
    """MMBench-EN accuracy per Table 4 row: from the store's table4 rows when it has any (label
    "measured"), else the paper's Table 4 column (label "paper")."""
    rows = [
        r for r in store_rows
        if r.get("table") == "table4" and r.get("task") == "mmbench_en_dev" and not accuracy.is_pipeline_check(r)
    ]  # fmt: skip
    if rows:
        return {(r["table_setting"], r["method"]): accuracy.value(r, "mmbench_en_dev") for r in rows}, "measured"
    paper = accuracy.paper_table("table4")
    return {(s, m): a for s, m, a in paper[["setting", "method", "mmb_acc"]].itertuples(index=False)}, "paper"


def _vit_side(setting: pd.Series) -> pd.Series:
    """Rows of ViT-side methods: Table 4's settings that prune inside the ViT (``vitNN_llmNN`` with NN < 100,
    the ViT method paired with LLM-side DART); ``vit100_*`` keep every patch and prune in the LLM only."""
    return ~setting.str.startswith("vit100") & (setting != "vanilla")


def figure4(table: pd.DataFrame, acc: dict, source: str, bench: dict | None = None):
    """The paper's Figure 4: accuracy against relative total latency, (a) ViT-side methods (paired with
    LLM-side DART at the same ratio), (b) LLM-side methods. ``bench``: the benchmark file, whose weights
    and device the figure names."""
    from . import plots

    fig, axes = plt.subplots(1, 2, figsize=(plots.WIDTH, 4.2), sharey=True)
    frame = table.assign(acc=[acc.get((s, m)) for s, m in zip(table.setting, table.method)])
    vanilla = frame[frame.method == "Vanilla"].iloc[0]
    panels = (
        (axes[0], _vit_side(frame.setting), "(a) ViT-side methods (+ LLM-side DART)"),
        (axes[1], frame.setting.str.startswith("vit100"), "(b) LLM-side methods"),
    )
    for ax, rows, title in panels:
        part = frame[rows]
        for i, (method, group) in enumerate(part.groupby("method", sort=False)):
            group = group.sort_values("total %")
            ax.plot(group["total %"], group.acc, label=method, **plots.method_style(method, i))
        ax.scatter([vanilla["total %"]], [vanilla.acc], marker="*", s=120, color="black", label="Vanilla", zorder=6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("total latency, % of vanilla (measured here)", fontsize=8)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7, frameon=False)
    axes[0].set_ylabel(f"MMBench-EN accuracy ({'measured' if source == 'measured' else 'paper, Table 4'})")
    if bench is not None:
        fig.suptitle(f"Latency: {_weights_short(bench)}, {bench['device']}", fontsize=9)
    fig.tight_layout()
    return fig


def _weights_short(bench: dict) -> str:
    """``"Qwen2-VL-2B architecture, random weights"`` from the file's ``weights`` field."""
    found = re.search(r"architecture of (?:[\w.-]+/)?([\w.-]+?)(?:-Instruct)?\b[)']", bench.get("weights", ""))
    if bench.get("weights", "").startswith("random") and found:
        return f"{found.group(1)} architecture, random weights"
    return bench.get("weights", "weights not recorded")


def findings(bench: dict, table: pd.DataFrame, source: str) -> str:
    """The closing paragraph, from this run's benchmark file."""
    t = table.set_index(["setting", "method"])
    parts = [
        f"Measured on {bench['device']} with {bench['weights']}, {bench['dtype']}, {bench['attention']} attention, "
        f"{bench['new_tokens']} generated tokens per call, median of {bench['repeats']} runs per setting (the "
        "count recorded in the benchmark file)."
    ]
    key = ("vit35_llm35", "IPCV")
    if key in t.index:
        r = t.loc[key]
        paper = f" (paper, Qwen2-VL-7B on a GPU: {r['paper total %']:.1f} % and {r['paper prefill %']:.1f} %)"
        parts.append(
            f"IPCV at ViT 35 % / LLM 35 % ran in {r['total %']:.1f} % of vanilla's total time and "
            f"{r['prefill %']:.1f} % of its prefill{paper}, for {r['FLOPs %']:.1f} % of the FLOPs."
        )
    shares = bench["figure1"]
    parts.append(
        "The vision encoder's share of vanilla's prefill was "
        + ", ".join(f"{100 * s['vision_share']:.0f} % for the {s['input']}" for s in shares)
        + "."
    )
    load = bench.get("load_average_before_after")
    if load and max(load) > 2.5:
        parts.append(
            f"The machine was busy while this ran (load average {load[0]:.1f} before, {load[1]:.1f} after, on 2 "
            "cores): treat the latency ratios as approximate."
        )
    parts.append(
        f"Accuracy in Figure 4 is {'from the results store' if source == 'measured' else 'Table 4’s column'}; "
        "the latency axis is measured here."
    )
    return " ".join(parts)


# --- python -m ipcv.bench gpu -----------------------------------------------------------------------------


def gpu_runs(folder: Path = BENCH.parent) -> list[Path]:
    """GPU measurements committed in ``data/bench`` (``gpu_<gpu>.json`` of the real architectures; runs of the
    CPU variant on tiny configs are not GPU measurements and are left out)."""
    return sorted(p for p in folder.glob("gpu_*.json") if load(p).get("size") == "real")


def gpu_checks(bench: dict) -> pd.DataFrame:
    """One line per dtype and attention implementation: how many methods were checked, how many gave
    the unpatched model's logits bit for bit at keep 1.0, agreed with eager within tolerance at 0.35,
    or made another decision on a near-tie; the largest relative difference; syncs in IPCV's blocks."""
    rows = pd.DataFrame(bench["check"]["rows"])
    out = []
    for (dtype, attn), g in rows.groupby(["dtype", "attention"], sort=False):
        entry = {
            "dtype": dtype, "attention": attn, "kernel": g.kernel.iloc[0], "methods": len(g),
            "keep 1.0 exact": int(g.keep1_exact.sum()),
        }  # fmt: skip
        if "within" in g and g.within.notna().any():
            same = g[g.same_decisions.astype(bool)]
            entry |= {
                "within tolerance": int((same.within == True).sum()),  # noqa: E712 (None = not compared)
                "near-tie flips": int((~g.same_decisions.astype(bool)).sum()),
                "max rel (same decisions)": same.rel.max() if len(same) else float("nan"),
                "tolerance": g.tolerance.min(),
            }  # fmt: skip
        if "syncs_in_ipcv_blocks" in g and g.syncs_in_ipcv_blocks.notna().any():
            entry["syncs in IPCV blocks"] = int(g.syncs_in_ipcv_blocks.max())
        out.append(entry)
    frame = pd.DataFrame(out)
    counts = ["methods", "keep 1.0 exact", "within tolerance", "near-tie flips", "syncs in IPCV blocks"]
    for c in counts:  # counts stay integers where some rows have none (eager is the reference)
        if c in frame:
            frame[c] = frame[c].astype("Int64")
    return frame


def gpu_kernels(checks: pd.DataFrame) -> str:
    """Which kernel each attention implementation ran (the ``kernel`` column of :func:`gpu_checks`), as a
    sentence: kernel names are long identifiers that would widen the table past the page."""
    pairs = dict(zip(checks.attention, checks.kernel))
    return "Kernels: " + "; ".join(f"{a}: `{k}`" for a, k in pairs.items()) + "."


def shown_table4(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`table4` as the book shows it: the setting as ViT / LLM keep percentages."""
    from .paper import KEEP, keep_label

    return table.assign(setting=table.setting.map(keep_label)).rename(columns={"setting": KEEP})


def gpu_latency(bench: dict, which: int = 0) -> pd.DataFrame:
    """Table 4's columns for one input of the latency part, the paper's relative numbers beside."""
    part = bench["latency"]["inputs"][which]
    frame = pd.DataFrame(part["rows"])
    out = pd.DataFrame(
        {
            "setting": frame.setting, "total ms": 1e3 * frame.total_s, "total %": 100 * frame.total_ratio,
            "prefill %": 100 * frame.prefill_ratio, "vision ms": 1e3 * frame.vision_s,
            "FLOPs %": 100 * frame.flop_ratio, "KV MB": frame.kv_cache_mb, "peak GiB": frame.peak_gib,
        }
    )  # fmt: skip
    for ours, theirs in (("paper total %", "paper_total_pct"), ("paper prefill %", "paper_prefill_pct")):
        out[ours] = frame[theirs] if theirs in frame else float("nan")
    return out


def gpu_findings(bench: dict) -> str:
    """The paragraph under the GPU section, from the file's own numbers."""
    checks = gpu_checks(bench)
    where = f"{bench['device']}, {bench['weights']}"
    parts = [f"Measured on {where} (torch {bench['torch']}, transformers {bench['transformers']})."]
    exact = int(checks["keep 1.0 exact"].sum())
    parts.append(
        f"At keep 1.0, {exact} of {int(checks.methods.sum())} method runs gave the unpatched model's logits bit "
        "for bit, over " + ", ".join(f"{d} / {a}" for d, a in zip(checks.dtype, checks.attention)) + "."
    )
    if "near-tie flips" in checks:
        flips = int(checks["near-tie flips"].sum())
        parts.append(
            f"At keep 0.35 every method agreed with its eager run within tolerance where both made the same "
            f"decisions; {flips} run(s) decided a near-tie differently under another kernel's rounding."
            if not bench["check"]["failures"]
            else f"Checks that failed: {', '.join(bench['check']['failures'])}."
        )
    for t in bench.get("targets", []) if bench["size"] == "real" else []:
        parts.append(
            f"Target '{t['target']}': {t['value']:.3f} against {t['limit']} ({'met' if t['met'] else 'missed'})."
        )
    if bench["size"] == "tiny":
        parts.append(
            "These are tiny models on a CPU: the run checks the command and the methods' exactness, and its "
            "timings mean nothing; the speed targets are for the GPU run."
        )
    return " ".join(parts)


# --------------------------------------------------------------------------- notebook 09: the 2026 comparison's prefill

MODERN_BENCH = accuracy.DATA / "bench" / "prefill_qwen2vl2b_cpu_modern.json"


# fewer timed runs than this and the measured prefill table leads with a warning that its times are single samples
FEW_REPEATS = 3


def modern_prefill(path: str | Path = MODERN_BENCH) -> tuple[pd.DataFrame, str] | None:
    """The measured prefill of ``python -m ipcv.bench prefill --protocol modern`` (None when the file is not in
    ``data/bench``): per setting the median prefill time and its ratio to vanilla (wall and process CPU time),
    the analytic TFLOPs and their ratio, the KV cache; and a caption naming the weights, device and input."""
    path = Path(path)
    if not path.exists():
        return None
    bench = load(path)
    rows = [
        {"setting": r["setting"], "prefill s": r["median_s"],
         "time %": None if r["time_ratio"] is None else 100 * r["time_ratio"],
         "CPU time %": None if r.get("cpu_ratio") is None else 100 * r["cpu_ratio"],
         "TFLOPs": r["tflops"], "FLOPs %": 100 * r["flop_ratio"], "KV MB": r["kv_cache_mb"]}
        for r in bench["rows"]
    ]  # fmt: skip
    caption = (
        f"{bench['benchmark']}; weights: {bench['weights']}; device: {bench['device']}; input: {bench['input']}; "
        f"{bench['measure']}; {bench['repeats']} repeats, {bench['dtype']}, {bench['attention']} attention, "
        f"measured {bench['date']}."
    )
    if bench["repeats"] < FEW_REPEATS:  # one noisy sample per setting: say so first, not at the caption's far end
        caption = (
            f"Timed {bench['repeats']} time(s) per setting: the time columns are single samples; "
            "read FLOPs % and KV MB (analytic).\n" + caption
        )
    return pd.DataFrame(rows), caption
