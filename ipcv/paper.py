"""The paper's tables as published (``data/paper/*.csv``): one reader for the benchmarks, the harness and the
book. Rows are dicts of strings as the CSV holds them; :func:`table4` gives Table 4 with numbers, by row."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from .paths import data_dir

TABLES = {
    "table1": "table1_qwen2vl_image.csv",
    "table2": "table2_qwen2vl_video.csv",
    "table3": "table3_internvl3_38b.csv",
    "table4": "table4_efficiency_mmbench.csv",
    "table5": "table5_llm_compat.csv",
    "table6": "table6_ablation.csv",
}


def table_path(name: str) -> Path:
    """The CSV file of one of the paper's tables by short name (``"table4"``) or file stem; FileNotFoundError
    naming where it was looked for."""
    path = data_dir() / "paper" / TABLES.get(name, f"{name}.csv")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the paper's tables live in data/paper of a checkout")
    return path


def rows(name: str) -> list[dict[str, str]]:
    """The rows of one of the paper's tables."""
    with table_path(name).open(newline="") as f:
        return list(csv.DictReader(f))


def table4_key(name: str) -> tuple[str, str]:
    """A benchmark row's name -> Table 4's ``(setting, method)``: ``"IPCV | ViT 35% / LLM 35%"`` ->
    ``("vit35_llm35", "IPCV")``, ``"IPCV | vit35_llm35"`` (a preset row) likewise, ``"vanilla"`` ->
    ``("vanilla", "Vanilla")``."""
    if name == "vanilla":
        return "vanilla", "Vanilla"
    method, rest = (p.strip() for p in name.split("|"))
    method = {"DART(ViT)": "DART (ViT)"}.get(method, method)
    if "%" not in rest:
        return rest, method
    vit, llm = re.findall(r"(\d+)%", rest)
    return f"vit{vit}_llm{llm}", method


def table4() -> dict[tuple[str, str], dict[str, float]]:
    """Table 4's rows by ``(setting, method)``, numbers as floats; empty where no checkout holds the table (an
    installed package: the benchmarks then write no paper columns)."""
    try:
        found = rows("table4")
    except FileNotFoundError:
        return {}
    return {
        (r["setting"], r["method"]): {k: float(v) for k, v in r.items() if k not in ("setting", "method")}
        for r in found
    }
