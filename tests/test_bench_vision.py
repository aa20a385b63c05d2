"""The tower benchmark's families at their real sizes, on the meta device (shapes only, no compute):
the FLOP count each row prints beside its time ratio."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import ipcv
from ipcv.bench import vision
from ipcv.flops import vision_flops


@pytest.mark.parametrize(
    "family, blocks, width", [("qwen2_vl", 32, 1280), ("qwen2_5_vl", 32, 1280), ("internvl", 24, 1024)]
)
def test_real_size_towers_and_flop_ratios(family, blocks, width):
    tower = vision.build_tower(torch.device("meta"), torch.float32, "sdpa", family=family)
    adapter, target = ipcv.api.find(tower)
    shape = adapter.shape(target)
    assert (shape.depth, shape.dim) == (blocks, width)
    segments = vision.FAMILIES[family].segments(1024)
    assert segments == ([1025] if family == "internvl" else [1024])
    inputs = vision.FAMILIES[family].inputs(1024, torch.device("meta"), torch.float32)
    assert all(t.device.type == "meta" for t in inputs.values())
    vanilla = vision_flops(tower, segments).total
    ratios = [vision_flops(tower, segments, ipcv.IPCV(k)).total / vanilla for k in (0.65, 0.5, 0.35, 0.2)]
    assert all(1 > a > b > 0.15 for a, b in zip(ratios, ratios[1:]))


def test_window_attention_costs_less_than_full_attention():
    tower = vision.build_tower(torch.device("meta"), torch.float32, "sdpa", family="qwen2_5_vl")
    adapter, target = ipcv.api.find(tower)
    shape = adapter.shape(target)
    assert (shape.window_tokens, shape.full_blocks) == (64, (7, 15, 23, 31))
    full = ipcv.flops.encoder_flops(dataclasses.replace(shape, window_tokens=0), [1024]).blocks
    windowed = ipcv.flops.encoder_flops(shape, [1024]).blocks
    # 28 of 32 blocks attend within 16 windows of 64 patches: 15/16 of their attention products go
    assert full - windowed == 28 * 4 * 1280 * (1024 * 1024 - 1024 * 1024 // 16)


def test_internvl_patches_must_be_whole_tiles():
    with pytest.raises(ValueError, match="--patches 1000: .*multiple of 1024"):
        vision.FAMILIES["internvl"].inputs(1000, torch.device("meta"), torch.float32)
