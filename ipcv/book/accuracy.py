"""The paper's accuracy tables rebuilt from the results store (``python -m ipcv.eval``), beside the paper's.

Avg. Acc. is computed as the paper does: the mean over a table's benchmark columns of each method's
score relative to vanilla's, in percent (the ratio makes MME's raw score and OCRBench's scale
irrelevant). Checked against the paper's own columns: it reproduces Tables 1, 3 and 6 to within 0.1
(rounding) and Table 2 when its seven columns (VideoMME overall, short, medium, long included) are
averaged (:func:`paper_avg_check`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..eval import store
from ..eval.sweeps import IMAGE_TASKS, TASK_METRICS, VIDEO_TASKS
from ..paths import data_dir
from .paper import paper_table, readable  # noqa: F401 (readable: for the notebook)

DATA = data_dir()
COLUMN_TASKS = {**IMAGE_TASKS, **VIDEO_TASKS, "VideoMME_overall": "videomme"}
META = ("setting", "method", "avg_acc_pct", "rel_latency_pct")


def benchmark_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in META]


def avg_acc(frame: pd.DataFrame, columns: list[str] | None = None) -> pd.Series:
    """Avg. Acc. of every row: mean over ``columns`` of value / vanilla's value, in percent. The vanilla
    row is the one whose method is "Vanilla"; columns missing in a row are left out of its mean."""
    columns = columns or benchmark_columns(frame)
    vanilla = frame.loc[frame.method == "Vanilla", columns].iloc[0].astype(float)
    relative = frame[columns].astype(float) / vanilla
    return 100 * relative.mean(axis=1, skipna=True)


def paper_avg_check(table: str) -> float:
    """Largest gap between the paper's stated Avg. Acc. and :func:`avg_acc` of its own columns."""
    frame = paper_table(table)
    stated = frame.avg_acc_pct.iloc[1:]
    return float((avg_acc(frame).iloc[1:] - stated).abs().max())


def value(row: dict, task: str) -> float | None:
    """A store row's score for ``task`` in the paper's unit (:data:`ipcv.eval.sweeps.TASK_METRICS`)."""
    keys, factor = TASK_METRICS[task]
    metrics = row.get("metrics", {})
    if not all(isinstance(metrics.get(k), (int, float)) for k in keys):
        return None
    return factor * sum(float(metrics[k]) for k in keys)


def is_pipeline_check(row: dict) -> bool:
    """A row that is not a benchmark result: a ``--limit`` run or a task outside the paper's."""
    return row.get("limit") is not None or row.get("task") not in TASK_METRICS


def store_rows(path: str | Path) -> list[dict]:
    return store.load(path)


def store_table(rows: list[dict], table: str, protocol: str = "paper", model: str | None = None) -> pd.DataFrame:
    """``table`` rebuilt from the store's rows of that table (full benchmark runs of ``protocol``; of
    ``model`` if given): one row per (setting, method) as in the paper, its benchmark columns, Avg. Acc.
    relative to the stored vanilla row, and Rel. Latency (total generate time on the table's latency
    benchmark: MMBench-EN for images, MVBench for video) where both were stored."""
    paper = paper_table(table)
    columns = [c for c in benchmark_columns(paper) if c in COLUMN_TASKS]
    mine = [
        r for r in rows
        if r.get("table") == table and r.get("protocol") == protocol and not is_pipeline_check(r)
        and (model is None or r.get("model") == model)
    ]  # fmt: skip
    if not mine:
        return pd.DataFrame(columns=["setting", "method", *columns, "avg_acc_pct", "rel_latency_pct"])
    latency_task = "mvbench" if table == "table2" else "mmbench_en_dev"
    out = []
    for setting, method in paper[["setting", "method"]].itertuples(index=False):
        cells = {r["task"]: r for r in mine if r.get("table_setting") == setting and r.get("method") == method}
        if not cells:
            continue
        entry = {"setting": setting, "method": method}
        for c in columns:
            row = cells.get(COLUMN_TASKS[c])
            entry[c] = value(row, COLUMN_TASKS[c]) if row else None
        lat = cells.get(latency_task)
        entry["latency_s"] = lat["ipcv"]["latency_s"] if lat else None
        entry["device"] = next(iter(cells.values())).get("device")
        out.append(entry)
    frame = pd.DataFrame(out)
    if "Vanilla" in set(frame.method):
        present = [c for c in columns if frame[c].notna().any()]
        frame["avg_acc_pct"] = avg_acc(frame, present)
        base = frame.loc[frame.method == "Vanilla", "latency_s"].iloc[0]
        frame["rel_latency_pct"] = 100 * frame.latency_s / base if base else None
    return frame


COMMAND = {
    "table3": "python -m ipcv.eval table3 --model OpenGVLab/InternVL3-38B-hf --model-args device_map=auto",
}


def command(table: str, protocol: str = "paper") -> str:
    """The one command that fills ``table``'s rows in the store (on a GPU with the released weights)."""
    extra = "" if protocol == "paper" else f" --protocol {protocol}"
    return COMMAND.get(table, f"python -m ipcv.eval {table} --model-args use_flash_attention_2=true") + extra


def table_heading(table: str, mine: pd.DataFrame, protocol: str) -> str:
    """A Markdown heading for one table and what the store holds for it."""
    title = {
        "table1": "Table 1: image benchmarks, Qwen2-VL-7B-Instruct",
        "table2": "Table 2: video benchmarks, Qwen2-VL-7B-Instruct",
        "table3": "Table 3: image benchmarks, InternVL3-38B",
        "table5": "Table 5: IPCV with each LLM-side pruner, Qwen2-VL-7B-Instruct",
        "table6": "Table 6: ablation, Qwen2-VL-7B-Instruct",
    }[table]
    splits = " Short, medium and long are VideoMME's splits by video length." if table == "table2" else ""
    if len(mine):
        devices = ", ".join(sorted({str(d) for d in mine.get("device", pd.Series(dtype=str)).dropna()}))
        return (
            f"### {title}\n\nThe paper's rows, then {len(mine)} rows from the store ({protocol} protocol; "
            f"{devices}).{splits}"
        )
    return (
        f"### {title}\n\nThe paper's rows.{splits} The store has no full-benchmark rows of this table in the "
        f"{protocol} protocol; on a GPU with the released weights, this command fills them:\n\n"
        f"`{command(table, protocol)}`"
    )


def gap_note(gaps: dict[str, float], table5: pd.DataFrame) -> str:
    """One sentence per table whose stated Avg. Acc. the recomputation does not reproduce to rounding."""
    off = {t: g for t, g in gaps.items() if g > 0.15}
    if not off:
        return "Every table's stated Avg. Acc. is reproduced from its columns to rounding (0.15 points)."
    parts = []
    if "table5" in off:
        worst = (table5.recomputed - table5.avg_acc_pct).abs().idxmax()
        r = table5.loc[worst]
        parts.append(f"Table 5's row {r.method} prints {r.avg_acc_pct:.1f} where its columns give {r.recomputed:.1f}.")
    parts += [f"{t}: largest gap {g:.2f} points." for t, g in off.items() if t != "table5"]
    return " ".join(parts) + " Every other stated Avg. Acc. is reproduced to rounding."


def findings(gaps: dict[str, float], tables: dict[str, pd.DataFrame], protocol: str) -> str:
    """The closing paragraph, from this run's store and checks."""
    good = [t for t, g in gaps.items() if g <= 0.15]
    text = [
        f"The paper's Avg. Acc. definition reproduces {len(good)} of {len(gaps)} tables from their own columns "
        f"({', '.join(good)}) to rounding."
    ]
    filled = {t: f for t, f in tables.items() if len(f)}
    if not filled:
        text.append(
            "The results store holds no full benchmark run yet, so no accuracy of ours is shown: accuracy "
            "needs the released weights, the benchmarks and a GPU. One command per table fills it, e.g. "
            f"`{command('table1', protocol)}`, and this page rebuilds the tables from it."
        )
        return " ".join(text)
    for table, frame in filled.items():
        ours = frame.dropna(subset=["avg_acc_pct"]) if "avg_acc_pct" in frame else frame.iloc[0:0]
        if len(ours) > 1:
            best = ours[ours.method != "Vanilla"].sort_values("avg_acc_pct").iloc[-1]
            text.append(
                f"{table}: {len(frame)} rows from the store; the highest Avg. Acc. is {best.method} at "
                f"{best.setting} with {best.avg_acc_pct:.1f} % of vanilla (device: {best.device})."
            )
        else:
            text.append(f"{table}: {len(frame)} rows from the store, without a vanilla row to compare with.")
    return " ".join(text)
