"""python -m ipcv.bench efficiency on a tiny Qwen2-VL: the command's structure and its JSON (timings on a
tiny model mean nothing; the analytic columns and token counts are checked)."""

from __future__ import annotations

import argparse
import json
import re

import pytest
from families import tiny_qwen2vl

import ipcv
from ipcv.bench import efficiency
from ipcv.book import efficiency as analysis


def test_efficiency_rows_and_figure1_on_a_tiny_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(efficiency, "build_model", lambda dtype, attn: tiny_qwen2vl(attn, layers=4))
    monkeypatch.setattr(efficiency, "FIGURE1_INPUTS", (("low", "image", 56, 1), ("video", "video", 56, 4)))
    real_inputs = efficiency.inputs  # Table 4's 448 px prompt at 112 px; Figure 1's inputs as given
    monkeypatch.setattr(efficiency, "inputs", lambda m, side=448: real_inputs(m, side=112 if side == 448 else side))
    settings = {
        "vanilla": (None, None),
        "IPCV | ViT 35% / LLM 35%": (ipcv.IPCV(0.35, stabilize_layers=2), ipcv.DART(0.35)),
        "DART | ViT 100% / LLM 35%": (None, ipcv.DART(0.35)),
        "SparseVLM | ViT 100% / LLM 5%": (None, ipcv.SparseVLM(0.05)),  # too deep for 4 layers: reported
    }
    monkeypatch.setattr(efficiency, "ratio_grid", lambda vit, llm: settings)
    monkeypatch.setattr(efficiency, "pre_llm_grid", dict)  # the pre-LLM rows: see the test below
    monkeypatch.setenv("IPCV_PROGRESS", "lines")
    out = tmp_path / "eff.json"
    args = argparse.Namespace(repeats=1, new_tokens=3, only=None, dtype="fp32", attn="eager", out=out)
    efficiency.main(args)
    err = [re.sub(r" (\(.*\)|in \S+)$", "", line) for line in capsys.readouterr().err.splitlines()]  # no times
    assert err[0] == "efficiency: building Qwen2-VL-2B (fp32, eager, random weights) for 4 settings"
    assert err[1:] == [  # the setting too deep for this model is reported, not timed
        "efficiency: Table 4 [1/4] warm-up",
        "efficiency: Table 4 [2/4] vanilla: generate 1/1",
        "efficiency: Table 4 [3/4] IPCV | ViT 35% / LLM 35%: generate 1/1",
        "efficiency: Table 4 [4/4] DART | ViT 100% / LLM 35%: generate 1/1",
        "efficiency: Table 4: 4 step(s) done",
        "efficiency: Figure 1 [1/2] low: prefill 1/1",
        "efficiency: Figure 1 [2/2] video: prefill 1/1",
        "efficiency: Figure 1: 2 step(s) done",
    ]
    bench = json.loads(out.read_text())
    rows = {r["setting"]: r for r in bench["rows"]}
    assert set(rows) == set(settings) - {"SparseVLM | ViT 100% / LLM 5%"}
    assert "SparseVLM" in bench["skipped"]["SparseVLM | ViT 100% / LLM 5%"]
    n = 112 // 14 * (112 // 14) // 4  # 16 LLM visual tokens
    assert rows["vanilla"]["visual_tokens_per_layer"] == [n] * 4
    assert rows["DART | ViT 100% / LLM 35%"]["visual_tokens_per_layer"] == [n, n] + [ipcv.keep_count(n, 0.35)] * 2
    assert rows["IPCV | ViT 35% / LLM 35%"]["flop_ratio"] < rows["DART | ViT 100% / LLM 35%"]["flop_ratio"] < 1
    assert rows["vanilla"]["total_ratio"] == 1.0 and all(r["prefill_s"] <= r["total_s"] for r in rows.values())
    assert [s["visual_tokens"] for s in bench["figure1"]] == [4, 2 * 4]
    assert all(0 < s["vision_share"] < 1 for s in bench["figure1"])
    assert bench["weights"].startswith("random") and bench["device"].startswith("CPU")
    table = analysis.table4(bench).set_index(["setting", "method"])
    assert table.loc[("vit35_llm35", "IPCV"), "paper total %"] == pytest.approx(60.8)
    assert "IPCV at ViT 35 % / LLM 35 %" in analysis.findings(bench, table.reset_index(), "paper")


def test_the_pre_llm_rows_of_the_efficiency_bench():
    rows = efficiency.pre_llm_grid()
    assert len(rows) == 5 * 3 and rows["DivPrune | ViT 100% / LLM 5%"] == (None, ipcv.DivPrune(0.05))
    assert set(efficiency.selected(["Pool"])) == {"vanilla", *(f"Pool | ViT 100% / LLM {r}%" for r in (35, 20, 5))}
