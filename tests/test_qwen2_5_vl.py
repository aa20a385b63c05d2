"""Qwen2.5-VL: window attention in the vision tower (windows reordered by ``window_index``, full
attention at ``fullatt_block_indexes``, windows emptied by pruning) and the mRoPE decoder shared with
Qwen2-VL, on a tiny random config of the real classes."""

from __future__ import annotations

import pytest
import torch
from families import QWEN2_5_FULL_BLOCKS as FULL_BLOCKS
from families import QWEN2_5_VL, pixels, tiny_qwen2_5_vl
from families import family_languages as languages
from families import qwen_prompts as prompts
from reference import masked_attention, reference_ipcv
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as q25
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

import ipcv
from ipcv.flops import block_flops, vision_flops
from ipcv.models.qwen2_vl import Windows, _TowerCall

LAYERS = 4
GRIDS = [[1, 8, 12], [1, 10, 4]]  # windows of 4x4 patches: 6 full ones, then 16, 16, 8 (padded edge)


@pytest.fixture(scope="module")
def model():
    m = tiny_qwen2_5_vl()
    yield m
    ipcv.restore(m)


def run(tower, grid=GRIDS):
    with torch.no_grad():
        return tower(pixels(grid), grid_thw=torch.tensor(grid))


def _rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]


def reference(tower, grid, settings):
    """Eq. 1-10 for this tower, written out: the packed sequence in window order, selection and kNN
    per image, attention per window in windowed blocks and per image in full blocks."""
    g = torch.tensor(grid)
    m = tower.spatial_merge_size**2
    with torch.no_grad():
        win_index, cu_win = get_vision_window_index(g, tower.spatial_merge_size, tower.window_size, tower.patch_size)
        order = (win_index[:, None] * m + torch.arange(m)).flatten()  # patch order after the reordering
        h0 = tower.patch_embed(pixels(grid))[order]
        cos, sin = tower.rotary_pos_emb(h0, get_vision_position_ids(g, tower.spatial_merge_size))
        cos, sin = cos[order], sin[order]
        cu, _ = get_vision_attention_seqlens(g, tower.config)
        image = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff())
        window = torch.repeat_interleave(torch.arange(len(cu_win) - 1), cu_win.diff())

        def block(layer, x, rows):
            blk = tower.blocks[layer]
            H = blk.attn.num_heads
            seg = image if layer in FULL_BLOCKS else window
            q, k, v = blk.attn.qkv(blk.norm1(x)).view(x.shape[0], 3, H, -1).unbind(1)
            q, k = _rotate(q, cos[rows], sin[rows]), _rotate(k, cos[rows], sin[rows])
            a = masked_attention(q, k, v, seg[rows], seg[rows], blk.attn.scaling)
            h = x + blk.attn.proj(a.reshape(x.shape[0], -1))
            return h + blk.mlp(blk.norm2(h))

        out, keep, counts = reference_ipcv(
            block, h0, image, len(tower.blocks), settings.keep_ratio, settings.prune_layer,
            settings.stabilize_layers, settings.neighbors, settings.reintegrate, settings.scope,
        )  # fmt: skip
    return out, keep, counts, window


SETTINGS = {
    "default": ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3),
    "as_over_full_block": ipcv.IPCV(0.5, prune_layer=1, stabilize_layers=4, neighbors=4),
    "wo_as_wo_reint": ipcv.IPCV(0.35, prune_layer=3, stabilize_layers=0, neighbors=3, reintegrate=False),
    "empty_windows": ipcv.IPCV(0.1, prune_layer=2, stabilize_layers=2, neighbors=2, scope="global"),
}


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_tower_matches_reference_equations(name, attn):
    settings = SETTINGS[name]
    tower = tiny_qwen2_5_vl(attn).model.visual
    expected, keep, counts, window = reference(tower, GRIDS, settings)
    ipcv.compress(tower, vision=settings)
    with ipcv.trace() as t:
        out = run(tower)
    assert t.calls[0].keep.tolist() == keep and t.calls[0].keep_counts == counts
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-4, atol=1e-4)
    assert out.pooler_output.shape == (expected.shape[0] // 4, 64)
    empty = set(window.unique().tolist()) - set(window[torch.tensor(keep)].tolist())
    assert bool(empty) == (name == "empty_windows")  # the case is really exercised


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_all_bit_exact_every_method_and_restore(attn):
    m = tiny_qwen2_5_vl(attn)
    kw = prompts([("image", GRIDS[0]), ("image", GRIDS[1])])
    vid = prompts([("video", [2, 4, 8])])
    with torch.no_grad():
        ref, ref_video = m(**kw).logits, m(**vid).logits
        tower_ref = run(m.model.visual)
        visions = [ipcv.IPCV(1.0, prune_layer=2, stabilize_layers=2), ipcv.ToMe(1.0), ipcv.ToFu(1.0), ipcv.DARTViT(1.0)]
        languages = [
            ipcv.DART(1.0),
            ipcv.FastV(1.0),
            ipcv.V2Drop(1.0, layers=(1, 3), budget="last"),
            ipcv.SparseVLM(1.0, layers=(1, 2), budget="last", recycle_in_budget=True),
        ]
        for v, lang in zip(visions, languages):
            with ipcv.compressed(m, vision=v, language=lang):
                assert torch.equal(m(**kw).logits, ref) and torch.equal(m(**vid).logits, ref_video), (v, lang)
                out = run(m.model.visual)
                assert torch.equal(out.last_hidden_state, tower_ref.last_hidden_state)
                assert torch.equal(out.pooler_output, tower_ref.pooler_output)
        classes = [type(x) for x in m.modules()]
        ipcv.compress(m, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2), language=ipcv.FastV(0.35))
        assert not torch.equal(m(**kw).logits, ref)
        ipcv.restore(m)
        assert [type(x) for x in m.modules()] == classes
        assert torch.equal(m(**kw).logits, ref)
        assert type(m.model.visual).__name__ == "Qwen2_5_VisionTransformerPretrainedModel"


@pytest.mark.parametrize("name", ["ToMe", "ToFu", "DARTViT"])
def test_baselines_full_length_in_window_order(model, name):
    settings = {"ToMe": ipcv.ToMe(0.5), "ToFu": ipcv.ToFu(0.5), "DARTViT": ipcv.DARTViT(0.5, prune_layer=1)}[name]
    tower = model.model.visual
    with torch.no_grad():
        ref = run(tower)
        with ipcv.compressed(model, vision=settings), ipcv.stats(model) as st:
            out = run(tower)
    assert out.last_hidden_state.shape == ref.last_hidden_state.shape == (136, 64)
    assert out.pooler_output.shape == ref.pooler_output.shape == (34, 64)
    assert not torch.equal(out.pooler_output, ref.pooler_output)
    assert st.vision[0].seg_lengths == [96, 40]


def test_windowed_attention_never_crosses_windows(model):
    """The ops of a windowed block: tokens of three windows attend as each window alone would."""
    tower = model.model.visual
    g = torch.tensor([GRIDS[0]])
    _, cu_win = get_vision_window_index(g, 2, tower.window_size, tower.patch_size)
    cos, sin = tower.rotary_pos_emb(torch.zeros(96, 64), get_vision_position_ids(g, 2))
    cu, _ = get_vision_attention_seqlens(g, tower.config)
    call = _TowerCall(tower, cu, None, (cos, sin), {}, q25.eager_attention_forward, Windows(cu_win, None, frozenset()))
    h = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([0, 3, 5, 16, 17, 40])  # windows 0, 0, 0, 1, 1, 2
    with torch.no_grad():
        both, _ = call.attention_part(0, h[rows], rows, [6])
        alone = [call.attention_part(0, h[r], r, [len(r)])[0] for r in (rows[:3], rows[3:5], rows[5:])]
        as_image, _ = _TowerCall(tower, cu, None, (cos, sin), {}, q25.eager_attention_forward).attention_part(
            0, h[rows], rows, [6]
        )
    torch.testing.assert_close(both, torch.cat(alone))
    assert not torch.allclose(both, as_image)  # without windows the six tokens attend to each other


def test_flops_count_windows(model):
    tower = model.model.visual
    shape = ipcv.api.find(model)[0].shape(tower)
    assert (shape.window_tokens, shape.full_blocks) == (16, FULL_BLOCKS)
    seg = [96, 40]
    full = vision_flops(model, seg).blocks
    windows = [6, 3]  # ceil(96 / 16), ceil(40 / 16)
    by_hand = 2 * block_flops(shape, seg, seg) + 4 * block_flops(shape, seg, seg, None, windows)
    assert full == by_hand
    attention = 4 * 64 * (96 * 96 // 6 + 40 * 40 // 3)
    assert block_flops(shape, seg, seg, None, windows) - block_flops(shape, seg, seg, None, [10**9] * 2) == attention
    pruned = vision_flops(model, seg, SETTINGS["default"])
    assert pruned.total < vision_flops(model, seg).total


# --- the LLM side (the mRoPE decoder code shared with Qwen2-VL) -----------------------------------

SINGLE = prompts([("image", [1, 8, 12])])
CASES = {name: case.kw for name, case in QWEN2_5_VL.cases.items()}  # two_images, video, padded


def test_shares_the_mrope_decoder_code_with_qwen2_vl():
    from ipcv.models import qwen2_5_vl, qwen2_vl

    assert qwen2_5_vl.LANGUAGE.decoder_forward.__code__ is qwen2_vl.LANGUAGE.decoder_forward.__code__
    assert qwen2_5_vl._mrope is qwen2_vl._mrope


@pytest.mark.parametrize("name", languages(0.35))
def test_per_span_budgets_and_cache_length(model, name):
    settings = languages(0.35)[name]
    kw = prompts([("image", [1, 8, 12]), ("video", [2, 4, 6]), ("image", [1, 4, 4])])
    spans = [24, 6, 6, 4]  # one image, two video frames, one image
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        out = model(**kw, use_cache=True)
    expected = [[settings.counts(n)[s] for n in spans] for s in range(len(settings.stage_layers()))]
    assert [k[0] for k in st.decoder[-1].kept] == expected
    text = int((kw["mm_token_type_ids"] == 0).sum())
    assert out.past_key_values.layers[LAYERS - 1].get_seq_length() == text + sum(expected[-1])


def test_accounting_matches_hand_count(model):
    vision, language = ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2), ipcv.FastV(0.5, layer=2)
    with torch.no_grad(), ipcv.compressed(model, vision=vision, language=language), ipcv.stats(model) as st:
        model(**SINGLE, use_cache=True)
    rec = st.decoder[-1]
    assert rec.tokens == [[30], [30], [18], [18]] and rec.visual == [[24], [24], [12], [12]]
    c = ipcv.costs(model, st)
    assert c.vision_tokens_per_block == (96, 96, 48, 48, 48, 48)
    assert c.kv_cache_mb == pytest.approx((30 + 30 + 18 + 18) * 2 * 2 * 16 * 2 / 1e6)


@pytest.mark.parametrize("settings", [ipcv.V2Drop(0.35, layers=(1, 3), budget="last")], ids=["V2Drop"])
@pytest.mark.parametrize("case", ["two_images", "padded"])
def test_cached_decoding_matches_full_forward(model, settings, case):
    kw = CASES[case]
    n = 4
    with torch.no_grad(), ipcv.compressed(model, language=settings):
        out = model.generate(**kw, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True)
        L = kw["input_ids"].shape[1]
        for t in range(n):
            ids = out.sequences[:, : L + t]
            full = dict(kw, input_ids=ids)
            full["attention_mask"] = torch.cat([kw["attention_mask"], torch.ones(ids.shape[0], t, dtype=torch.long)], 1)
            full["mm_token_type_ids"] = torch.cat(
                [kw["mm_token_type_ids"], torch.zeros(ids.shape[0], t, dtype=torch.int)], 1
            )
            ref = model(**full, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[t], ref, rtol=1e-4, atol=1e-4)
