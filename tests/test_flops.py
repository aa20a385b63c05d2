"""Analytic FLOPs against a hand count, and the benchmark commands on a tiny tower."""

from __future__ import annotations

import json

import pytest
from families import make_tower

import ipcv
from ipcv.flops import encoder_flops, vision_flops
from ipcv.shapes import EncoderShape


def test_encoder_flops_hand_count():
    shape = EncoderShape(depth=4, dim=2, mlp_dim=3, embed_flops_per_token=5, head_flops_per_token=7, prefix_tokens=1)
    # one segment of 5 tokens (1 CLS + 4 patches); a full block:
    # q,o and k,v projections 2*D*D*(2*5 + 2*5); mlp 2*2*5*D*3; attention 4*D*25
    full = 2 * 4 * (2 * 5 + 2 * 5) + 2 * 2 * 5 * 2 * 3 + 4 * 2 * 25
    assert encoder_flops(shape, [5]).blocks == 4 * full
    assert encoder_flops(shape, [5]).embed_and_head == 5 * 12
    # keep 0.5 of 4 patches -> 2 (+CLS) = 3 kept, 2 removed; lp=1, AS=2, k=2
    s = ipcv.IPCV(0.5, prune_layer=1, stabilize_layers=2, neighbors=2)
    stab = 2 * 4 * (2 * 3 + 2 * 5) + 2 * 2 * 3 * 2 * 3 + 4 * 2 * 15
    kept = 2 * 4 * (2 * 3 + 2 * 3) + 2 * 2 * 3 * 2 * 3 + 4 * 2 * 9
    c = encoder_flops(shape, [5], s)
    assert c.blocks == full + 2 * stab + kept
    score, knn, ngr = 3 * 5 * 2, 2 * 2 * 2 * 3, 3 * (2 * 2 * 2 * 2 + 2 * 3)
    assert c.overhead == score + knn + ngr
    assert c.tokens_per_block == (5, 3, 3, 3)


def test_vision_flops_reads_the_model():
    tower = make_tower(depth=6)
    full = vision_flops(tower, [96, 16])
    pruned = vision_flops(tower, [96, 16], ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2))
    assert full.tokens_per_block == (112,) * 6
    assert pruned.tokens_per_block == (112, 112) + (34 + 6,) * 4
    assert 0.3 < pruned.blocks / full.blocks < 0.7
    assert pruned.embed_and_head == full.embed_and_head and full.overhead == 0 < pruned.overhead
    with pytest.raises(TypeError, match="cannot compress"):
        vision_flops(object(), [4])


def test_vision_benchmark_runs_on_a_small_tower(monkeypatch, tmp_path, capsys):
    from ipcv.bench import __main__ as cli
    from ipcv.models import qwen2_vl

    monkeypatch.setattr(  # the tower the qwen2_vl adapter names, shrunk (read when the benchmark builds it)
        qwen2_vl,
        "QWEN2_VL_7B_VISION",
        dict(qwen2_vl.QWEN2_VL_7B_VISION, depth=4, embed_dim=32, num_heads=2, hidden_size=16),
    )
    out = tmp_path / "v.json"
    cli.main(["vision", "--patches", "64", "--keep", "0.5", "--prune-layer", "1", "--stabilize-layers", "1",
              "--repeats", "1", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert [r["setting"] for r in result["rows"]] == ["vanilla", "ipcv0.5"]
    assert result["rows"][0]["time_ratio"] == 1.0 and result["weights"].startswith("random")
    assert "CPU" in result["device"]
    assert "ipcv0.5" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--patches 60"):
        qwen2_vl.square_grid(60)
