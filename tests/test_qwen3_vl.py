"""Qwen3-VL: the tower (16-px patches, learned position table + 2D axial rotary, one attention segment per
image / temporal patch, DeepStack taps read through 2x2 mergers) and the Qwen3 decoder (interleaved mRoPE,
DeepStack injected after layers 0 .. 2), on a tiny random config of the real classes. Random weights: every
number here is a pipeline check, never accuracy."""

from __future__ import annotations

import pytest
import torch
from families import QWEN3_TAPS, qwen3_pixels, qwen3_prompts, qwen_text_tokens, tiny_qwen3_vl
from families import family_languages as languages
from families import family_visions as visions
from reference import masked_attention, reference_ipcv
from transformers.masking_utils import create_causal_mask
from transformers.vision_utils import (
    get_vision_attention_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
)

import ipcv
from ipcv.flops import block_flops, vision_flops
from ipcv.models import _decoder

GRIDS = [[1, 8, 12], [2, 4, 8]]  # an image (96 patches) and a 2-temporal-patch video (2 segments of 32)
SEG = [96, 32, 32]


@pytest.fixture(scope="module")
def model():
    m = tiny_qwen3_vl()
    yield m
    ipcv.restore(m)


def run(tower, grid=GRIDS, **kwargs):
    with torch.no_grad():
        return tower(qwen3_pixels(grid), grid_thw=torch.tensor(grid), **kwargs)


def _rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]


def reference(tower, grid, settings):
    """Eq. 1-10 written out for this tower (attention per image / temporal patch, 2D rotary by token, the
    learned position table added before block 0), and each DeepStack feature read from the full sequence
    at its tap, rebuilt as ``settings.taps`` says."""
    g = torch.tensor(grid)
    c = tower.config
    with torch.no_grad():
        idx, w = get_vision_interpolation_indices_and_weights(
            g, num_grid_per_side=tower.num_grid_per_side, mode="bilinear", align_corners=True, spatial_merge_size=2
        )
        h0 = tower.patch_embed(qwen3_pixels(grid)) + (tower.pos_embed(idx) * w[:, :, None]).sum(1)
        cos, sin = tower.rotary_pos_emb(h0, get_vision_position_ids(g, 2))
        seg = torch.repeat_interleave(torch.arange(sum(t for t, _, _ in grid)),
                                      torch.tensor([h * ww for t, h, ww in grid for _ in range(t)]))  # fmt: skip

        def block(layer, x, rows):
            blk = tower.blocks[layer]
            H = blk.attn.num_heads
            q, k, v = blk.attn.qkv(blk.norm1(x)).view(x.shape[0], 3, H, -1).unbind(1)
            q, k = _rotate(q, cos[rows], sin[rows]), _rotate(k, cos[rows], sin[rows])
            a = masked_attention(q, k, v, seg[rows], seg[rows], blk.attn.scaling)
            h = x + blk.attn.proj(a.reshape(x.shape[0], -1))
            return h + blk.mlp(blk.norm2(h))

        taps = dict.fromkeys(c.deepstack_visual_indexes)
        out, keep, counts = reference_ipcv(
            block, h0, seg, len(tower.blocks), settings.keep_ratio, settings.prune_layer, settings.stabilize_layers,
            settings.neighbors, settings.reintegrate, settings.scope, taps=taps, tap_mode=settings.taps,
        )  # fmt: skip
        features = [tower.deepstack_merger_list[k](taps[layer]) for k, layer in enumerate(c.deepstack_visual_indexes)]
    return out, keep, counts, features


SETTINGS = {
    "ngr": ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3),
    "frozen": ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3, taps="frozen"),
    "wo_as_wo_reint_global": ipcv.IPCV(
        0.5, prune_layer=1, stabilize_layers=0, neighbors=2, reintegrate=False, scope="global"
    ),  # fmt: skip
}


@pytest.mark.parametrize("name, attn", [(name, "sdpa") for name in SETTINGS] + [("ngr", "eager")])
def test_tower_and_deepstack_match_reference_equations(name, attn):
    settings = SETTINGS[name]
    tower = tiny_qwen3_vl(attn).model.visual
    expected, keep, counts, features = reference(tower, GRIDS, settings)
    ipcv.compress(tower, vision=settings)
    with ipcv.trace() as t:
        out = run(tower)
    assert t.calls[0].keep.tolist() == keep and t.calls[0].keep_counts == counts
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-4, atol=1e-4)
    assert len(out.deepstack_features) == len(QWEN3_TAPS)
    for got, want in zip(out.deepstack_features, features):
        assert got.shape == (sum(SEG) // 4, 64)  # the vanilla row count, merge order
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_tap_variants_differ_only_where_they_should():
    """A tap before the pruning block is the vanilla feature exactly; after it NGR and frozen differ, and only
    in the merge units that hold a removed token."""
    tower = tiny_qwen3_vl().model.visual
    ref = run(tower)
    outs = {}
    for name in ("ngr", "frozen"):
        with ipcv.compressed(tower, vision=SETTINGS[name]), ipcv.trace() as t:
            outs[name] = run(tower)
    assert torch.equal(outs["ngr"].deepstack_features[0], ref.deepstack_features[0])  # tap 1 < prune layer 2
    assert torch.equal(outs["frozen"].deepstack_features[0], ref.deepstack_features[0])
    removed_units = torch.zeros(sum(SEG) // 4, dtype=torch.bool)
    removed_units[t.calls[0].rem // 4] = True
    for k in (1, 2):
        a, b = outs["ngr"].deepstack_features[k], outs["frozen"].deepstack_features[k]
        assert torch.equal(a[~removed_units], b[~removed_units])
        assert not torch.allclose(a[removed_units], b[removed_units])
    torch.testing.assert_close(outs["ngr"].last_hidden_state, outs["frozen"].last_hidden_state)  # taps only


def test_precomputed_metadata_in_kwargs_is_never_stale(model):
    """transformers may hand the tower its per-call metadata precomputed; under pruning the result is the
    same as without it (the tables are popped once and the kept rows' are rebuilt)."""
    tower = model.model.visual
    g = torch.tensor(GRIDS)
    idx, w = get_vision_interpolation_indices_and_weights(
        g, num_grid_per_side=tower.num_grid_per_side, mode="bilinear", align_corners=True, spatial_merge_size=2
    )
    cu, max_len = get_vision_attention_seqlens(g, tower.config)
    pre = dict(interp_indices=idx, interp_weights=w, position_ids=get_vision_position_ids(g, 2), cu_seqlens=cu,
               max_seqlen=max_len)  # fmt: skip
    for settings in [SETTINGS["ngr"], ipcv.ToMe(0.5)]:
        with ipcv.compressed(tower, vision=settings):
            plain, given = run(tower), run(tower, **pre)
        assert torch.equal(plain.last_hidden_state, given.last_hidden_state)
        assert all(torch.equal(a, b) for a, b in zip(plain.deepstack_features, given.deepstack_features))


def test_keep_all_bit_exact_every_method_and_restore():
    m = tiny_qwen3_vl()
    kw = qwen3_prompts([("image", [1, 8, 12]), ("image", [1, 4, 6])])
    vid = qwen3_prompts([("video", [4, 4, 8])])
    with torch.no_grad():
        ref, ref_video = m(**kw).logits, m(**vid).logits
        tower_ref = run(m.model.visual)
        for v, lang in zip(visions(1.0).values(), languages(1.0).values()):
            with ipcv.compressed(m, vision=v, language=lang):
                assert torch.equal(m(**kw).logits, ref) and torch.equal(m(**vid).logits, ref_video), (v, lang)
                out = run(m.model.visual)
                assert torch.equal(out.last_hidden_state, tower_ref.last_hidden_state)
                assert torch.equal(out.pooler_output, tower_ref.pooler_output)
                assert all(torch.equal(a, b) for a, b in zip(out.deepstack_features, tower_ref.deepstack_features))
        classes = [type(x) for x in m.modules()]
        ipcv.compress(m, vision=SETTINGS["ngr"], language=ipcv.FastV(0.35, layer=1))
        assert not torch.equal(m(**kw).logits, ref)
        ipcv.restore(m)
        assert [type(x) for x in m.modules()] == classes
        assert torch.equal(m(**kw).logits, ref)
        out = run(m.model.visual)
        assert all(torch.equal(a, b) for a, b in zip(out.deepstack_features, tower_ref.deepstack_features))


@pytest.mark.parametrize("name", ["ToMe", "ToFu", "DARTViT"])
def test_baselines_hand_on_full_length_deepstack_features(model, name):
    settings = visions(0.5)[name]
    tower = model.model.visual
    ref = run(tower)
    with ipcv.compressed(model, vision=settings), ipcv.stats(model) as st:
        out = run(tower)
    assert out.last_hidden_state.shape == ref.last_hidden_state.shape == (160, 64)
    for got, want in zip(out.deepstack_features, ref.deepstack_features):
        assert got.shape == want.shape == (40, 64)
    assert not torch.equal(out.deepstack_features[-1], ref.deepstack_features[-1])
    assert st.vision[0].seg_lengths == SEG


@pytest.mark.parametrize("ratio", [0.65, 0.35, 0.2])
def test_kept_tokens_per_temporal_patch_by_hand(model, ratio):
    """One segment per temporal patch: a video of grid (4, 4, 8) (8 frames, 4 temporal patches) is 4 segments
    of 32 patches, each keeps round(32 * ratio) (half up); an image beside it keeps its own share of 96."""
    with ipcv.compressed(model, vision=ipcv.IPCV(ratio, prune_layer=2, stabilize_layers=2)), ipcv.trace() as t:
        run(model.model.visual, [[1, 8, 12], [4, 4, 8]])
    by_hand = {0.65: [62, 21], 0.35: [34, 11], 0.2: [19, 6]}[ratio]
    assert t.calls[0].seg_lengths == [96, 32, 32, 32, 32] and t.calls[0].keep_counts == by_hand[:1] + by_hand[1:] * 4


# --- the LLM side: DeepStack injection under pruning ----------------------------------------------


def test_deepstack_slicing_is_the_models_own_injection_on_the_kept_tokens():
    """DeepStack.select + inject == Qwen3VLTextModel._deepstack_process with visual_pos_masks and every
    deepstack embedding sliced to the kept slots."""
    text = tiny_qwen3_vl().model.language_model
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 2:7], mask[1, 4:9] = True, True
    embeds = [torch.randn(10, 64, generator=g) for _ in range(3)]
    ds = _decoder.DeepStack.of(mask, embeds, (2, 10))
    index = torch.tensor([[0, 1, 3, 6, 9], [0, 4, 5, 8, 9]])  # kept slots per sample
    valid = torch.ones_like(index, dtype=torch.bool)
    kept = ds.select(index, valid)
    h = torch.randn(2, 5, 64, generator=g)
    rows = torch.full((2, 10), -1, dtype=torch.long)
    rows[mask] = torch.arange(10)
    for i in range(3):
        kept_mask = mask.gather(1, index)
        kept_rows = rows.gather(1, index)[kept_mask]
        want = text._deepstack_process(h, kept_mask, embeds[i][kept_rows])
        assert torch.equal(kept.inject(i, h), want)
    assert torch.equal(kept.inject(3, h), h)  # no injection after layer 2


def _captured_decoder_inputs(model, kw):
    """The vanilla decoder's inputs for ``kw`` (inputs_embeds, 3D positions, visual_pos_masks, deepstack)."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**kw)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_pruning_at_an_injection_layer_matches_a_written_out_decoder(model, monkeypatch, layer):
    """FastV pruning before decoder layer 1, 2 (DeepStack still injects after them) or 3 (after the last
    injection): the logits equal the decoder written out with the model's own layers, the kept slots gathered
    and each injection given the kept visual tokens' own deepstack rows."""
    kw = qwen3_prompts([("image", [1, 8, 12]), ("image", [1, 4, 6])])
    kw.pop("attention_mask")
    seen = _captured_decoder_inputs(model, kw)
    selected = []
    original = _decoder._DecoderCall.select
    monkeypatch.setattr(
        _decoder._DecoderCall,
        "select",
        lambda self, i, index, slots: (selected.append(index), original(self, i, index, slots))[1],
    )
    with torch.no_grad(), ipcv.compressed(model, language=ipcv.FastV(0.35, layer=layer)):
        got = model(**kw).logits[:, -1]
    (index,) = selected
    text = model.model.language_model
    with torch.no_grad():
        h, pos = seen["inputs_embeds"], seen["position_ids"]
        mask, embeds = seen["visual_pos_masks"], seen["deepstack_visual_embeds"]
        rows = torch.full(mask.shape, -1, dtype=torch.long)
        rows[mask] = torch.arange(int(mask.sum()))
        cos, sin = text.rotary_emb(h, pos)
        for i, decoder_layer in enumerate(text.layers):
            if i == layer:
                h, cos, sin = (t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for t in (h, cos, sin))
                mask, rows = mask.gather(1, index), rows.gather(1, index)
            causal = create_causal_mask(config=text.config, inputs_embeds=h, attention_mask=None, past_key_values=None)
            h = decoder_layer(h, attention_mask=causal, position_embeddings=(cos, sin))
            if i < len(embeds):
                h = text._deepstack_process(h, mask, embeds[i][rows[mask]])
        want = model.lm_head(text.norm(h))[:, -1]
    assert index.shape[1] < kw["input_ids"].shape[1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_video_with_timestamps_generates_with_kept_counts_per_temporal_patch(model):
    kw = qwen3_prompts([("video", [4, 4, 8])], [("image", [1, 4, 6])])
    vision, language = SETTINGS["ngr"], ipcv.DART(0.35)
    with torch.no_grad(), ipcv.compressed(model, vision=vision, language=language), ipcv.stats(model) as st:
        out = model.generate(**kw, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, kw["input_ids"].shape[1] + 3)
    assert sorted(r.seg_lengths for r in st.vision) == [[24], [32] * 4]  # one segment per temporal patch
    by_hand = [[language.counts(8)[0]] * 4, [language.counts(6)[0]]]  # four temporal patches of 8 tokens; 6
    assert st.decoder[0].kept == [by_hand]


@pytest.mark.parametrize("name", ["ToMe", "DARTViT"])
def test_reduced_output_drops_units_and_their_deepstack_rows(model, name):
    settings = {"ToMe": ipcv.ToMe(0.5, output="reduced"), "DARTViT": ipcv.DARTViT(0.5, prune_layer=2, output="reduced")}
    kw = qwen3_prompts([("image", [1, 8, 12])], [("image", [1, 4, 6]), ("image", [1, 4, 4])])
    with torch.no_grad(), ipcv.compressed(model, vision=settings[name]), ipcv.stats(model) as st:
        model.generate(**kw, max_new_tokens=2, do_sample=False)
    text = [qwen_text_tokens(kw, b) for b in range(2)]
    units = [12, 3 + 2]  # half of 24 merge units; of 6 and 4 (a segment's survivors / 4, half up)
    assert st.decoder[0].tokens[0] == [t + u for t, u in zip(text, units)]


# --- the analytic count: FLOPs of the tower with its DeepStack mergers, KV of the decoder -----------


def test_flops_and_kv_by_hand(model):
    tower = model.model.visual
    shape = ipcv.api.find(model)[0].shape(tower)
    D, out, m = 64, 64, 4
    assert shape.taps == QWEN3_TAPS and shape.mlp_dim == 96 and shape.depth == 6
    per_patch_merger = 2 * (m * D * m * D + m * D * out) // m
    assert shape.head_flops_per_token == 4 * per_patch_merger  # the merger and three DeepStack mergers
    assert shape.embed_flops_per_token == 2 * 3 * 2 * 16 * 16 * D + 8 * D
    full = vision_flops(model, SEG)
    block = 2 * 160 * (3 * D * D + D * D + 2 * D * 96) + 4 * D * (96 * 96 + 32 * 32 + 32 * 32)
    assert block_flops(shape, SEG, SEG) == block and full.blocks == 6 * block
    assert full.embed_and_head == 160 * (shape.embed_flops_per_token + shape.head_flops_per_token)
    # IPCV's NGR runs at every tap from the prune layer on (taps 3 and 4 here), beside AS and reintegration
    s = SETTINGS["ngr"]
    kept = [34, 11, 11]
    removed = [62, 21, 21]
    ngr = sum(2 * D * r * 3 for r in removed) + D * sum(kept)
    knn = sum(2 * D * r * k for r, k in zip(removed, kept))
    assert vision_flops(model, SEG, s).overhead == 3 * 160 * D + knn + (2 + 1 + 2) * ngr
    frozen = SETTINGS["frozen"]
    assert vision_flops(model, SEG, frozen).overhead == 3 * 160 * D + knn + 3 * ngr
    kw = qwen3_prompts([("image", [1, 8, 12])])
    with torch.no_grad(), ipcv.compressed(model, language=ipcv.FastV(0.5, layer=2)), ipcv.stats(model) as st:
        model(**kw, use_cache=True)
    rec = st.decoder[-1]
    assert rec.tokens == [[30], [30], [18], [18]] and rec.visual == [[24], [24], [12], [12]]
    c = ipcv.costs(model, st)
    assert c.kv_cache_mb == pytest.approx((30 + 30 + 18 + 18) * 2 * 2 * 16 * 2 / 1e6)


def test_supported_and_refusals(model):
    names = ipcv.supported_models()
    for cls in ("Qwen3VLForConditionalGeneration", "Qwen3VLModel", "Qwen3VLVisionModel", "Qwen3VLMoeVisionModel"):
        assert cls in names
    with pytest.raises(ValueError, match="taps='stale' is not allowed"):
        ipcv.IPCV(0.5, taps="stale")
    with ipcv.compressed(model, vision=SETTINGS["ngr"]), pytest.raises(ValueError, match="output_hidden_states"):
        run(model.model.visual, output_hidden_states=True)


def test_deepstack_fidelity_function_reports_every_tap(model):
    from ipcv.analysis.deepstack import deepstack_fidelity

    rows = deepstack_fidelity(model.model.visual, qwen3_pixels(GRIDS), torch.tensor(GRIDS),
                              {"ngr": SETTINGS["ngr"], "frozen": SETTINGS["frozen"]})  # fmt: skip
    assert [(r["variant"], r["tap"]) for r in rows] == [(v, t) for v in ("ngr", "frozen") for t in QWEN3_TAPS]
    first = [r for r in rows if r["tap"] == QWEN3_TAPS[0]]
    assert all(r["cosine_mean"] == pytest.approx(1.0) and r["cosine_min"] == pytest.approx(1.0) for r in first)
    later = {(r["variant"], r["tap"]): r["cosine_mean"] for r in rows if r["tap"] != QWEN3_TAPS[0]}
    assert all(c < 1.0 for c in later.values())  # pruned units really differ, so the measure can tell


def test_moe_variant_shares_the_tower_and_decoder_code():
    m = tiny_qwen3_vl(moe=True)
    kw = qwen3_prompts([("image", [1, 8, 12])], [("image", [1, 4, 6]), ("video", [2, 4, 4])])
    with torch.no_grad():
        ref = m(**kw).logits
        with ipcv.compressed(m, vision=ipcv.IPCV(1.0, prune_layer=2, stabilize_layers=2), language=ipcv.DART(1.0)):
            assert torch.equal(m(**kw).logits, ref)
        vision, language = SETTINGS["ngr"], ipcv.FastV(0.35, layer=1)
        with ipcv.compressed(m, vision=vision, language=language), ipcv.stats(m) as st:
            out = m.generate(**kw, max_new_tokens=3, do_sample=False)
        ipcv.restore(m)
        assert torch.equal(m(**kw).logits, ref)
    assert out.shape == (2, kw["input_ids"].shape[1] + 3)
    assert st.decoder[0].kept == [[[8], [2, 1, 1]]]  # 24 tokens keep 8; 6 keep 2; each 4-token frame keeps 1


def test_varlen_kernel_matches_sdpa_under_pruning():
    """``packs_segments``: the tower takes ``ipcv.vision_attention(model, "varlen")`` (one packed call per
    block; on CPU its per-segment reference path), and the pruned run with it matches SDPA."""
    tower = tiny_qwen3_vl().model.visual
    with ipcv.compressed(tower, vision=SETTINGS["ngr"]):
        want = run(tower)
        ipcv.vision_attention(tower, "varlen")
        got = run(tower)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-5, atol=1e-5)
    for a, b in zip(got.deepstack_features, want.deepstack_features):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
