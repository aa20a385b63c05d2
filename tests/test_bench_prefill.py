"""python -m ipcv.bench prefill on a tiny Qwen2-VL: its rows and its progress display (timings on a tiny model
mean nothing; the token counts are checked)."""

from __future__ import annotations

import argparse
import json

from families import tiny_qwen2vl

import ipcv
from ipcv.bench import prefill


def test_prefill_rows_and_progress_on_a_tiny_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(prefill, "build_model", lambda dtype, attn: tiny_qwen2vl(attn, layers=4))
    settings = {
        "vanilla": (None, None),
        "IPCV | ViT 35% / LLM 35%": (ipcv.IPCV(0.35, stabilize_layers=2), ipcv.DART(0.35)),
        "DART | ViT 100% / LLM 35%": (None, ipcv.DART(0.35)),
    }
    monkeypatch.setattr(prefill, "ratio_grid", lambda: settings)
    monkeypatch.setenv("IPCV_PROGRESS", "lines")
    out = tmp_path / "prefill.json"
    args = argparse.Namespace(repeats=2, protocol="ours", side=112, kv_fit=False, dtype="fp32", attn="eager", out=out)
    prefill.main(args)
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == list(settings)
    n = (112 // 28) ** 2  # 16 LLM visual tokens
    assert rows["vanilla"]["visual_tokens_per_layer"] == [n] * 4 and len(rows["vanilla"]["times_s"]) == 2
    assert rows["DART | ViT 100% / LLM 35%"]["visual_tokens_per_layer"] == [n, n] + [ipcv.keep_count(n, 0.35)] * 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("prefill: building Qwen2-VL-2B (fp32, eager, random weights) for 3 settings")
    steps = [line.split(" (")[0] for line in err[1:-1]]
    assert steps == [
        "prefill [1/9] vanilla: warm-up and token counts",
        "prefill [2/9] IPCV | ViT 35% / LLM 35%: warm-up and token counts",
        "prefill [3/9] DART | ViT 100% / LLM 35%: warm-up and token counts",
        "prefill [4/9] vanilla: timed run 1/2",
        "prefill [5/9] IPCV | ViT 35% / LLM 35%: timed run 1/2",
        "prefill [6/9] DART | ViT 100% / LLM 35%: timed run 1/2",
        "prefill [7/9] vanilla: timed run 2/2",
        "prefill [8/9] IPCV | ViT 35% / LLM 35%: timed run 2/2",
        "prefill [9/9] DART | ViT 100% / LLM 35%: timed run 2/2",
    ]
    assert err[-1].startswith("prefill: 9 step(s) done in ")


def test_modern_grid_and_only_filter_on_a_tiny_model(monkeypatch, tmp_path):
    """--protocol modern: this project's 2026 rows (the pre-LLM methods at 35/20/10 %, IPCV 35 % + each);
    --only keeps the matching rows and vanilla; the pre-LLM stage prunes the input of layer 0."""
    grid = prefill.modern_grid()
    assert set(grid) == {
        "vanilla", "IPCV 35%",
        *(f"{m} {r}%" for m in ipcv.presets.PRE_LLM for r in (35, 20, 10)),
        *(f"IPCV+{m} 35%" for m in ipcv.presets.PRE_LLM),
    }  # fmt: skip
    assert grid["IPCV+VisionZip 35%"] == (ipcv.IPCV(0.35), ipcv.VisionZip(0.35, layer=2))
    monkeypatch.setattr(prefill, "build_model", lambda dtype, attn: tiny_qwen2vl(attn, layers=4))
    out = tmp_path / "prefill.json"
    args = argparse.Namespace(
        repeats=1, protocol="modern", side=112, kv_fit=False, dtype="fp32", attn="eager", out=out,
        only="^(DivPrune|Pool) 35%$",
    )  # fmt: skip
    prefill.main(args)
    result = json.loads(out.read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["vanilla", "DivPrune 35%", "Pool 35%"] and result["only"] == args.only
    n = (112 // 28) ** 2  # a 4 x 4 grid of LLM tokens
    assert rows["DivPrune 35%"]["visual_tokens_per_layer"] == [ipcv.keep_count(n, 0.35)] * 4
    assert rows["Pool 35%"]["visual_tokens_per_layer"] == [4] * 4  # round(4 * sqrt(0.35)) = 2 per side
    assert rows["DivPrune 35%"]["cpu_ratio"] > 0 and rows["DivPrune 35%"]["flop_ratio"] < 1
