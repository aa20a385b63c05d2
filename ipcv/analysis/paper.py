"""The paper's tables (``data/paper/*.csv``), the benchmark results (``data/bench/*.json``) and the
comparisons the book's status page shows beside them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

import ipcv

from .costs import flop_table, qwen2vl_7b_tower

TABLES = {
    "table1": "table1_qwen2vl_image.csv",
    "table2": "table2_qwen2vl_video.csv",
    "table3": "table3_internvl3_38b.csv",
    "table4": "table4_efficiency_mmbench.csv",
    "table5": "table5_llm_compat.csv",
    "table6": "table6_ablation.csv",
}
# Qwen2-VL's processor in the authors' evaluation: min_pixels = 1280 * 28 * 28, so every MMBench image
# reaches the tower with at least 1280 merged tokens = 5120 patches (small images are upscaled).
MMBENCH_PATCHES = 5120
MMBENCH_GRID = (64, 80)  # one 896 x 1120 px image = 5120 patches


def data_dir() -> Path:
    """``data/`` of the repository checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "data"


def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's tables by short name (``"table4"``) or file stem."""
    file = TABLES.get(name, f"{name}.csv")
    path = data_dir() / "paper" / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the paper's tables live in data/paper of a checkout")
    return pd.read_csv(path)


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


def latency_vs_table4() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measured vision-tower latency ratios (``data/bench/vision_*.json``) beside Table 4's
    end-to-end GPU latency of IPCV at the same ViT keep ratio, and where each file was measured.

    Returns ``(ratios, sources)``; both empty if nothing was measured.
    """
    t4 = paper_table("table4")
    ipcv_rows = t4[t4.method == "IPCV"].assign(keep=lambda d: d.setting.map(vit_keep))
    rows, sources = [], []
    for name, payload in bench_results().items():
        if not name.startswith("vision_"):
            continue
        sources.append(
            {
                "file": f"data/bench/{name}.json",
                "device": payload["device"],
                "dtype": payload["dtype"],
                "attention": payload.get("attention", ""),
                "weights": "random at the real size (speed only)",
                "torch": payload.get("torch", ""),
                "date": payload.get("date", ""),
            }
        )
        for r in payload["rows"]:
            if r["setting"] == "vanilla":
                continue
            paper = ipcv_rows[(ipcv_rows.keep - r["keep"]).abs() < 1e-9]
            rows.append(
                {
                    "patches": r["patches"],
                    "ViT keep": r["keep"],
                    "tower time ratio (measured)": round(r["time_ratio"], 3),
                    "tower FLOP ratio": round(r["flop_ratio"], 3),
                    "paper latency % (end to end)": float(paper.latency_pct.iloc[0]) if len(paper) else "—",
                    "file": f"{name}.json",
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(sources)
