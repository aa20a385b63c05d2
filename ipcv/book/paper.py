"""The paper's tables (``data/paper/*.csv``), the benchmark results (``data/bench/*.json``) and the
comparisons the book's status page shows beside them."""

from __future__ import annotations

import json
import re

import pandas as pd

import ipcv

from .. import paper as published
from ..analysis.flop_tables import flop_table, qwen2vl_7b_tower
from ..paths import data_dir

# Qwen2-VL's processor in the authors' evaluation: min_pixels = 1280 * 28 * 28, so every MMBench image
# reaches the tower with at least 1280 merged tokens = 5120 patches (small images are upscaled).
MMBENCH_PATCHES = 5120


def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's tables by short name (``"table4"``) or file stem (:func:`ipcv.paper.table_path`)."""
    return pd.read_csv(published.table_path(name))


def vit_keep(setting: str) -> float:
    """The ViT keep ratio of a paper setting such as ``"vit35_llm35"`` (``"vanilla"`` -> 1.0)."""
    if setting == "vanilla":
        return 1.0
    m = re.fullmatch(r"vit(\d+)_llm(\d+)", setting)
    if m is None:
        raise ValueError(f"unknown setting {setting!r}")
    return int(m.group(1)) / 100


def table4_vs_vit_flops(patches: int = MMBENCH_PATCHES) -> pd.DataFrame:
    """Table 4's end-to-end TFLOPs of Vanilla and IPCV beside the vision tower's FLOPs that
    :mod:`ipcv.flops` counts for Qwen2-VL-7B at ``patches`` patches (one image, defaults l_p=3,
    AS=7, k=10). The paper's figure includes the LLM (with DART at the same ratio); ours is the
    tower alone, so only the direction and the ViT's share can be compared."""
    t4 = paper_table("table4")
    t4 = t4[t4.method.isin(["Vanilla", "IPCV"])].copy()
    tower = qwen2vl_7b_tower()
    settings = {s: (None if vit_keep(s) >= 1 else ipcv.IPCV(vit_keep(s))) for s in t4.setting}
    ours = flop_table(tower, [patches], settings).set_index("setting")
    vanilla = float(t4.loc[t4.method == "Vanilla", "tflops"].iloc[0])
    return pd.DataFrame(
        {
            "setting": t4.setting.values,
            "ViT keep": [vit_keep(s) for s in t4.setting],
            "paper TFLOPs (ViT + LLM)": t4.tflops.values,
            "paper ratio": (t4.tflops / vanilla).round(3).values,
            "ViT TFLOPs (ipcv.flops)": (ours.loc[t4.setting, "gflops"] / 1e3).round(2).values,
            "ViT ratio (ipcv.flops)": ours.loc[t4.setting, "ratio"].round(3).values,
        }
    )


def bench_results() -> dict[str, dict]:
    """``{file stem: payload}`` of every ``data/bench/*.json`` (empty if none)."""
    folder = data_dir() / "bench"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def _tower_name(payload: dict) -> str:
    """The tower a ``vision_*.json`` measured, from its ``benchmark`` field ("Qwen2-VL-7B vision tower, ...")."""
    return payload.get("benchmark", "").split(", vanilla vs IPCV")[0] or "vision tower"


def tower_latency() -> list[dict]:
    """One entry per ``data/bench/vision_*.json``: ``file`` (its path in the checkout), ``tower``, ``measure``
    (which time, median of how many repeats), ``note`` (device, dtype, attention, torch, date) and
    ``table`` (one row per patch count and ViT keep ratio: time ratio, FLOP ratio, and the seconds the
    ratio was taken from, ``CPU s`` (the process's CPU time over all its threads) or ``wall s``).

    The time ratio is the process's CPU time, median of the file's repeats, relative to vanilla's, where
    the file recorded CPU time: on a CPU shared with other jobs the wall time of a run stretches by
    whatever else ran (InternViT at keep 0.65: wall times 3.3 s and 6.5 s, CPU times 6.46 s and 6.43 s).
    Older files hold wall times only; their ratio is the median wall time, and the note says so.
    """
    out = []
    for name, payload in bench_results().items():
        if not name.startswith("vision_"):
            continue
        rows = payload["rows"]
        cpu = all("cpu_time_ratio" in r for r in rows)
        repeats = payload.get("repeats") or len(rows[0].get("times_s", []))
        measure = f"CPU time, median of {repeats} repeats" if cpu else f"wall time, median of {repeats} repeats"
        seconds = "CPU s" if cpu else "wall s"  # the medians the ratio is taken from
        table = pd.DataFrame(
            {
                "patches": r["patches"],
                "ViT keep": r["keep"],
                "time ratio": round(r["cpu_time_ratio" if cpu else "time_ratio"], 3),
                "FLOP ratio": round(r["flop_ratio"], 3),
                seconds: round(median_of(r["cpu_s"] if cpu else r["times_s"]), 2),
            }
            for r in rows
        )
        note = (
            f"{payload['device']}, {payload['dtype']}, {payload.get('attention', '')} attention, torch "
            f"{payload.get('torch', '?')}, {payload.get('date', '')}"
        )
        out.append(
            {
                "file": f"data/bench/{name}.json", "tower": _tower_name(payload), "measure": measure, "note": note,
                "table": table,
            }
        )  # fmt: skip
    return out


def median_of(values) -> float:
    values = sorted(values)
    n = len(values)
    return float(values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2)


def table4_ipcv_latency() -> pd.DataFrame:
    """Table 4's *end-to-end* numbers of IPCV (Qwen2-VL-7B-Instruct on a GPU, the whole MLLM with DART in
    the LLM at the same ratio, MMBench-EN): not comparable with a vision tower's time, shown on its own."""
    t4 = paper_table("table4")
    rows = t4[t4.method.isin(["Vanilla", "IPCV"])]
    return pd.DataFrame(
        {
            "ViT keep": [vit_keep(s) for s in rows.setting],
            "method": rows.method.values,
            "total latency %": rows.latency_pct.values,
            "prefill %": rows.prefill_pct.values,
            "TFLOPs": rows.tflops.values,
        }
    )


# --------------------------------------------------------------------------- tables as readers see them

PAPER_COLUMNS = {
    "avg_acc_pct": "Avg. Acc. %",
    "rel_latency_pct": "Rel. Latency %",
    "VideoMME_overall": "VideoMME",  # and its three splits by video length
    "VideoMME_short": "short",
    "VideoMME_medium": "medium",
    "VideoMME_long": "long",
    "latency_pct": "latency %",
    "prefill_pct": "prefill %",
    "mmb_acc": "MMBench-EN acc.",
    "latency_s": "latency s",
    "prefill_s": "prefill s",
    "tflops": "TFLOPs",
    "kv_cache_mb": "KV cache MB",
}
KEEP = "keep % (ViT / LLM)"
# what a reader looks for first: the setting, the method and the table's summary columns
FIRST = (KEEP, "method", "Avg. Acc. %", "Rel. Latency %", "latency %", "prefill %", "MMBench-EN acc.")


def keep_label(setting: str) -> str:
    """``"vit35_llm35"`` -> ``"35/35"``, ``"vanilla"`` -> ``"100/100"`` (ViT / LLM keep ratios in percent)."""
    if setting == "vanilla":
        return "100/100"
    found = re.fullmatch(r"vit(\d+)_llm(\d+)", setting)
    return f"{found.group(1)}/{found.group(2)}" if found else setting


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """A paper table (or one rebuilt from the results store) as the book shows it: the setting as ViT / LLM
    keep percentages, columns named in words, and the key columns (setting, method, Avg. Acc., Rel.
    Latency; Table 4: latency, prefill, accuracy) first, then the benchmarks."""
    out = frame.rename(columns=PAPER_COLUMNS)
    if "setting" in out:
        out = out.assign(setting=out.setting.map(keep_label)).rename(columns={"setting": KEEP})
    first = [c for c in FIRST if c in out]
    return out[first + [c for c in out.columns if c not in first]]
