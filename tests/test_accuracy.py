"""Avg. Acc. as the paper computes it, and tables rebuilt from store rows."""

from __future__ import annotations

import pytest

from ipcv.book import accuracy


@pytest.mark.parametrize("table", ["table1", "table2", "table3", "table6"])
def test_avg_acc_reproduces_the_papers_column(table):
    assert accuracy.paper_avg_check(table) < 0.1


def test_table5_has_one_row_the_formula_does_not_reproduce():
    frame = accuracy.paper_table("table5")
    gap = (accuracy.avg_acc(frame) - frame.avg_acc_pct).abs()
    assert list(frame.method[gap > 0.1]) == ["IPCV+V2Drop"]


def _row(method, setting, task, metrics, limit=None, latency=10.0):
    return {
        "model": "Qwen/Qwen2-VL-7B-Instruct", "vision": method, "language": "x", "task": task, "limit": limit,
        "table": "table6", "protocol": "paper", "table_setting": setting, "method": method,
        "metrics": metrics, "ipcv": {"latency_s": latency}, "device": "NVIDIA H100",
    }  # fmt: skip


def test_store_table_rebuilds_columns_avg_acc_and_latency():
    rows = [
        _row("Vanilla", "vanilla", "gqa", {"exact_match": 0.6}, latency=20.0),
        _row("Vanilla", "vanilla", "mme", {"mme_perception_score": 1600.0, "mme_cognition_score": 600.0}),
        _row("Vanilla", "vanilla", "mmbench_en_dev", {"gpt_eval_score": 80.0}, latency=40.0),
        _row("IPCV", "vit35_llm35", "gqa", {"exact_match": 0.3}),
        _row("IPCV", "vit35_llm35", "mme", {"mme_perception_score": 1100.0, "mme_cognition_score": 550.0}),
        _row("IPCV", "vit35_llm35", "mmbench_en_dev", {"gpt_eval_score": 60.0}, latency=24.0),
        _row("IPCV", "vit35_llm35", "pope", {"pope_accuracy": 0.9}, limit=5),  # a smoke run: not a result
    ]
    frame = accuracy.store_table(rows, "table6").set_index("method")
    assert frame.loc["Vanilla", "GQA"] == pytest.approx(60.0)
    assert frame.loc["IPCV", "MME"] == pytest.approx(1650.0)
    assert frame.loc["IPCV", "POPE"] is None or frame.loc["IPCV", "POPE"] != frame.loc["IPCV", "POPE"]  # missing
    assert frame.loc["IPCV", "avg_acc_pct"] == pytest.approx(100 * (0.5 + 0.75 + 0.75) / 3)
    assert frame.loc["IPCV", "rel_latency_pct"] == pytest.approx(60.0)


def test_store_table_without_rows_is_empty_and_says_how_to_fill_it():
    frame = accuracy.store_table([], "table1")
    assert len(frame) == 0 and "GQA" in frame.columns
    assert "python -m ipcv.eval table1" in accuracy.table_heading("table1", frame, "paper")
