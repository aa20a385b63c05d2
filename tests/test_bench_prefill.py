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
