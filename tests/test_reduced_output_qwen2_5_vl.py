"""ViT-side baselines with ``output="reduced"`` on the tiny Qwen2.5-VL, what is its own: the tower runs in
window order (``window_index``); the kept merge units are chosen on the source map taken back to image
order. The hand-count and reference tests it shares with Qwen2-VL run on both families in
``tests/test_reduced_output.py``. Random weights: shapes, counts and equalities only, never accuracy."""

from __future__ import annotations

import pytest
import torch
from families import REDUCED_CASES, pixels, tiny_qwen2_5_vl
from families import reduced_baselines as baselines
from transformers.vision_utils import get_vision_window_index

import ipcv
from ipcv.models.qwen2_5_vl import image_order_source
from ipcv.models.qwen2_vl import UNITS_KEY, reduced_units
from ipcv.vision.merging import global_plan

LAYERS = 3


@pytest.fixture(scope="module")
def model():
    m = tiny_qwen2_5_vl("sdpa", layers=LAYERS)
    yield m
    ipcv.restore(m)


def test_image_order_source_by_hand():
    # two units of 4 patches, window order = units (1, 0): window position w holds image patch
    # window_index[w // 4] * 4 + w % 4
    window_index = torch.tensor([1, 0])
    source = torch.arange(8)
    source[[1, 2]] = 0  # window positions 1, 2 (image patches 5, 6) merged into window 0 (image 4)
    source[7] = 4  # window position 7 (image patch 3) into window 4 (image patch 0)
    expected = torch.arange(8)
    expected[[5, 6]] = 4
    expected[3] = 0
    assert image_order_source(source, window_index, 4).tolist() == expected.tolist()


@pytest.mark.parametrize("name", ["ToMe", "DARTViT"])
def test_units_are_chosen_in_image_order(model, name):
    """The tower's unit mask is reduced_units of the run's source map in image order: the patches it
    hands on are the surviving ones wherever the window reordering put them."""
    grid = [[1, 8, 12], [1, 4, 8]]
    tower = model.model.visual
    with torch.no_grad(), ipcv.compressed(model, vision=baselines(0.35)[name]), ipcv.trace() as tr:
        out = tower(pixels(grid), grid_thw=torch.tensor(grid))
    window_index, _ = get_vision_window_index(
        torch.tensor(grid), tower.spatial_merge_size, tower.window_size, tower.patch_size
    )
    source = tr.calls[0].source  # window order
    assert not torch.equal(window_index, torch.arange(window_index.numel()))  # the order does change here
    expected = reduced_units(image_order_source(source, window_index, 4), [96, 32], 4)
    assert torch.equal(out[UNITS_KEY], expected)
    # the same count of survivors per image in either order, and as many units as the hand rule gives
    alive = (source == torch.arange(128)).split([96, 32])
    assert [int(u.sum()) for u in out[UNITS_KEY].split([24, 8])] == [
        min(n // 4, max(int(s > 0), (2 * s + 4) // 8)) for n, s in zip([96, 32], (int(a.sum()) for a in alive))
    ]


def test_global_release_ports_run(model):
    """The paper protocol's ToMe on Qwen2.5-VL (one matching over the call, reduced output) runs with
    generate(), and the decoder receives the units its calls kept."""
    mixed = REDUCED_CASES["mixed"].kw  # an image call of 96 + 16 patches, a video call of two 24-patch frames
    vision, _ = ipcv.presets.paper_settings("table4", "vit35_llm35", "ToMe")
    vision = ipcv.ToMe(**{f: getattr(vision, f) for f in vision.__dataclass_fields__} | {"start_layer": 1})
    with torch.no_grad(), ipcv.compressed(model, vision=vision), ipcv.stats(model) as st:
        out = model.generate(**mixed, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == mixed["input_ids"].shape[1] + 3
    # each call keeps what the global plan leaves of it; each image / frame hands on round(survivors / 4) units
    depth = len(model.model.visual.blocks)
    assert [c.seg_lengths for c in st.calls] == [[96, 16], [24, 24]]
    units = 0
    for call in st.calls:
        assert sum(call.keep_counts) == sum(call.seg_lengths) - sum(global_plan(sum(call.seg_lengths), vision, depth))
        units += sum(min(n // 4, max(int(s > 0), (2 * s + 4) // 8)) for n, s in zip(call.seg_lengths, call.keep_counts))
    assert st.decoder[0].visual == [[units]] * LAYERS and sum(st.decoder[0].kept[0][0]) == units
