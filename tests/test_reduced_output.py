"""ViT-side baselines with ``output="reduced"`` on the tiny Qwen2-VL and Qwen2.5-VL (the ``model`` fixture
runs every test that takes it on both): the LLM receives only the kept 2x2 merge units of each image /
frame (random weights: these tests check shapes, counts and equalities, never accuracy). Qwen2.5-VL's
window-order checks are in ``tests/test_reduced_output_qwen2_5_vl.py``."""

from __future__ import annotations

import pytest
import torch
from families import (
    IMAGE,
    QWEN2_5_VL,
    QWEN2_VL,
    REDUCED_CASES,
    VIDEO_TOKEN,
    check_kept,
    make_tower,
    pixels,
    tiny_qwen2_5_vl,
    tiny_qwen2vl,
)
from families import qwen_text_tokens as _text
from families import reduced_baselines as baselines

import ipcv
from ipcv.budgets import keep_count
from ipcv.models.qwen2_vl import UNITS_KEY, reduced_units

LAYERS = 3
CASES = {name: case.kw for name, case in REDUCED_CASES.items()}
SINGLE, PADDED, MIXED = CASES["single"], CASES["padded"], CASES["mixed"]
MODELS = {  # random init barely moves the residual stream: make layers matter
    QWEN2_VL.name: lambda: tiny_qwen2vl("sdpa", layers=LAYERS, decoder_std=0.08),
    QWEN2_5_VL.name: lambda: tiny_qwen2_5_vl("sdpa", layers=LAYERS),
}


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    """Each mRoPE family's tiny model (the families whose towers hand on the kept units only)."""
    m = MODELS[request.param]()
    yield m
    ipcv.restore(m)


def _units(n: int, keep: float) -> int:
    """Hand count: merge units of an image / frame of ``n`` patches (ToMe / ToFu / DART-ViT keep
    ``keep_count(n, keep)`` patches; the LLM gets that divided by 4, half up)."""
    s = keep_count(n, keep)
    return min(n // 4, max(int(s > 0), int(s / 4 + 0.5)))


# --- the unit rule ---------------------------------------------------------------------------------


def test_reduced_units_rule_by_hand():
    # two segments of 8 patches (2 units each) and one of 4 (1 unit)
    source = torch.arange(20)
    source[[1, 2, 3]] = 0  # unit 0: one survivor
    source[[8, 9]] = 10  # unit 2: 2 survivors, unit 3 (12..15): 4 survivors
    source[[16, 17, 18, 19]] = 16  # unit 4: one survivor
    keep = reduced_units(source, [8, 8, 4], 4)
    # segment 0: 5 survivors -> round(5/4) = 1 unit, the one with 4 survivors (unit 1)
    # segment 1: 6 survivors -> round(1.5) = 2 units; segment 2: 1 survivor -> at least 1 unit
    assert keep.tolist() == [False, True, True, True, True]
    assert reduced_units(None, [8, 4], 4).tolist() == [True] * 3
    tie = torch.tensor([0, 0, 2, 2, 4, 4, 6, 6])  # 2 survivors in each unit: the earlier one wins
    assert reduced_units(tie, [8], 4).tolist() == [True, False]


def test_tower_marks_units(model):
    grid = [[1, 8, 12], [2, 4, 6]]
    with torch.no_grad(), ipcv.compressed(model, vision=ipcv.ToMe(0.35, output="reduced")):
        out = model.model.visual(pixels(grid), grid_thw=torch.tensor(grid))
    units = out[UNITS_KEY]
    assert units.shape == (24 + 12,)
    assert out.pooler_output.shape[0] == 36  # full length: transformers splits it by the grids
    per = units.split([24, 6, 6])
    assert [int(u.sum()) for u in per] == [_units(96, 0.35), _units(24, 0.35), _units(24, 0.35)] == [9, 2, 2]


# --- counts, KV, costs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ToMe", "ToFu", "DARTViT"])
def test_token_and_kv_hand_counts(model, name):
    settings = baselines(0.35)[name]
    kw = MIXED
    spans = [96, 24, 24, 16]  # patches: image, two video frames, image
    units = [_units(n, 0.35) for n in spans]
    assert units == [9, 2, 2, 2]
    with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.stats(model) as st:
        out = model(**kw, use_cache=True)
    expected = _text(kw, 0) + sum(units)
    record = st.decoder[-1]
    assert record.tokens == record.cache == [[expected]] * LAYERS
    assert record.visual == [[sum(units)]] * LAYERS
    assert record.kept == [[units]] and record.stages == [0]
    assert all(layer.keys.shape[2] == expected for layer in out.past_key_values.layers)
    assert out.logits.shape[1] == kw["input_ids"].shape[1]  # logits stay prompt-length
    c = ipcv.costs(model, st)
    kv_heads, head_dim = 2, 64 // 4  # tiny_qwen2vl's text config
    assert c.kv_cache_mb == pytest.approx(LAYERS * expected * 2 * kv_heads * head_dim * 2 / 1e6)
    with torch.no_grad(), ipcv.stats(model) as vanilla:
        model(**kw, use_cache=True)
    assert vanilla.decoder[-1].cache == [[kw["input_ids"].shape[1]]] * LAYERS
    assert ipcv.costs(model, vanilla).decoder > c.decoder


def test_padded_batch_counts(model):
    with torch.no_grad(), ipcv.compressed(model, vision=baselines(0.35)["ToMe"]), ipcv.stats(model) as st:
        out = model(**PADDED, use_cache=True)
    expected = [_text(PADDED, 0) + _units(96, 0.35), _text(PADDED, 1) + _units(24, 0.35) + _units(16, 0.35)]
    assert expected == [6 + 9, 9 + 2 + 2]
    assert st.decoder[-1].cache == [expected] * LAYERS
    assert out.past_key_values.get_seq_length() == max(expected)


# --- the reduced sequence through the *unpatched* model is the reference ----------------------------


def _reference_logits(model, settings, kw, extra_ids=None):
    """Last-position logits of a no-cache forward of the unpatched model on the reduced sequence:
    text + kept units' features, each at its original 3D mRoPE position, padding kept as padding."""
    ids = kw["input_ids"] if extra_ids is None else torch.cat([kw["input_ids"], extra_ids], 1)
    B, L = ids.shape
    mask = torch.cat([kw["attention_mask"], torch.ones(B, L - kw["input_ids"].shape[1], dtype=torch.long)], 1)
    types = torch.cat([kw["mm_token_type_ids"], torch.zeros(B, L - kw["input_ids"].shape[1], dtype=torch.int)], 1)
    inner = model.model
    with ipcv.compressed(model, vision=settings):
        embeds = inner.get_input_embeddings()(ids)
        drop = torch.zeros(B, L, dtype=torch.bool)
        for kind, token, key, grid in (
            ("image", IMAGE, "pixel_values", "image_grid_thw"),
            ("video", VIDEO_TOKEN, "pixel_values_videos", "video_grid_thw"),
        ):
            if key not in kw:
                continue
            get = inner.get_image_features if kind == "image" else inner.get_video_features
            out = get(kw[key], kw[grid], return_dict=True)
            place = ids == token
            embeds = embeds.masked_scatter(place[..., None], torch.cat(out.pooler_output))
            drop[place] = ~out[UNITS_KEY]
    positions, _ = inner.get_rope_index(
        ids, types, kw.get("image_grid_thw"), kw.get("video_grid_thw"), attention_mask=mask
    )
    keep = mask.bool() & ~drop
    n = int(keep.sum(1).max())
    index = torch.zeros(B, n, dtype=torch.long)
    valid = torch.zeros(B, n, dtype=torch.long)
    for b in range(B):
        rows = keep[b].nonzero().flatten()
        index[b, n - rows.numel() :], valid[b, n - rows.numel() :] = rows, 1
    x = embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[-1]))
    pos = positions.gather(2, index[None].expand(3, -1, -1))
    inner.rope_deltas = None
    return model(inputs_embeds=x, attention_mask=valid, position_ids=pos, use_cache=False).logits[:, -1]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["ToMe", "DARTViT"])
def test_cached_decoding_equals_reduced_sequence(model, name, case):
    """generate() (prefill + cached steps) gives, at every step, the logits of a no-cache forward of
    the unpatched model on the reduced sequence (checks mask, left padding, cache and mRoPE)."""
    settings = baselines(0.35)[name]
    kw = CASES[case]
    n = 4
    with torch.no_grad():
        with ipcv.compressed(model, vision=settings):
            out = model.generate(
                **kw, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_logits=True,
                return_dict_in_generate=True,
            )  # fmt: skip
        L = kw["input_ids"].shape[1]
        for t in range(n):
            extra = out.sequences[:, L : L + t]
            ref = _reference_logits(model, settings, kw, extra)
            torch.testing.assert_close(out.logits[t], ref, rtol=1e-4, atol=1e-4)


def test_plain_forward_equals_reduced_sequence(model):
    settings = baselines(0.35)["ToFu"]
    with torch.no_grad():
        with ipcv.compressed(model, vision=settings):
            last = model(**MIXED).logits[:, -1]
        torch.testing.assert_close(last, _reference_logits(model, settings, MIXED), rtol=1e-4, atol=1e-4)


# --- keep 1.0, generate, errors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ToMe", "ToFu", "DARTViT"])
def test_keep_all_bit_exact(model, name):
    with torch.no_grad():
        ref = model(**PADDED).logits
        greedy_ref = model.generate(**PADDED, max_new_tokens=4, do_sample=False)
        with ipcv.compressed(model, vision=baselines(1.0)[name]):
            out = model(**PADDED).logits
            greedy = model.generate(**PADDED, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref)
    assert torch.equal(greedy, greedy_ref)


VIDEOS = ("video", "mixed")


@pytest.mark.parametrize("case", CASES)
def test_generate_greedy_and_sampled(model, case):
    kw, spans, segments = CASES[case], REDUCED_CASES[case].spans, REDUCED_CASES[case].segments
    with torch.no_grad(), ipcv.compressed(model, vision=baselines(0.35)["ToMe"]):
        with ipcv.stats(model) as greedy_stats:
            greedy = model.generate(**kw, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.manual_seed(0)
        with ipcv.stats(model) as sampled_stats:
            sampled = model.generate(**kw, max_new_tokens=8, min_new_tokens=8, do_sample=True, top_k=0)
    assert greedy.shape == sampled.shape == (kw["input_ids"].shape[0], kw["input_ids"].shape[1] + 8)
    # each image / frame of n patches keeps keep_count(n) of them, and _units(n) units reach the LLM
    for st in (greedy_stats, sampled_stats):
        assert [c.keep_counts for c in st.calls] == [[keep_count(n, 0.35) for n in seg] for seg in segments]
        check_kept(st.decoder[0].kept, [[[_units(4 * n, 0.35) for n in sample] for sample in spans]])


def test_restore_after_reduced(model):
    with torch.no_grad():
        ref = model(**SINGLE).logits
        ipcv.compress(model, vision=baselines(0.35)["ToMe"])
        assert not torch.equal(model(**SINGLE).logits, ref)
        ipcv.restore(model)
        assert torch.equal(model(**SINGLE).logits, ref)


def test_refusals(model):
    with pytest.raises(NotImplementedError, match=r"mRoPE families \(.qwen2_vl., .qwen2_5_vl., .qwen3_vl.\) only"):
        ipcv.compress(make_tower(), vision=baselines(0.35)["ToMe"])  # a tower alone has no decoder
    with pytest.raises(ValueError, match="runs no LLM-side method"):
        ipcv.compress(model, vision=baselines(0.35)["ToMe"], language=ipcv.DART(0.35))
    with pytest.raises(ValueError, match="output"):
        ipcv.ToMe(0.35, output="short")
    with torch.no_grad(), ipcv.compressed(model, vision=baselines(0.35)["ToMe"]):
        embeds = model.model.get_input_embeddings()(SINGLE["input_ids"])
        kw = {k: v for k, v in SINGLE.items() if k != "input_ids"}
        with pytest.raises(ValueError, match="input_ids=None"):
            model(inputs_embeds=embeds, **kw)
