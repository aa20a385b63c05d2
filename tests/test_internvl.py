"""InternVL (InternVL3 ``-hf`` classes): IPCV and every vision-side / LLM-side method on a tiny random
config of the real transformers classes (InternViT tower with CLS per tile and LayerScale, Qwen2
decoder with 1D RoPE)."""

from __future__ import annotations

import families
import pytest
import torch
from families import INTERNVL, tiny_internvl
from families import family_languages as languages
from families import family_visions as visions
from families import internvl_prompts as prompts
from reference import keep_budget, masked_attention, reference_ipcv
from transformers import InternVLConfig, InternVLForConditionalGeneration

import ipcv

IMAGE, PAD, PER_TILE = families.INTERNVL_IMAGE, families.PAD, families.PER_TILE
SIZE, PATCH = families.INTERNVL_SIZE, families.INTERNVL_PATCH  # 8x8 = 64 patches + CLS per tile; 16 LLM tokens per tile
LAYERS, DEPTH = families.INTERNVL_LAYERS, families.INTERNVL_DEPTH

SINGLE = prompts([2])  # one image of two tiles
CASES = {name: case.kw for name, case in INTERNVL.cases.items()}
SEVERAL, PADDED = CASES["several"], CASES["padded"]  # two images: 2 tiles + 1 tile; [1] and [2, 1] tiles


@pytest.fixture(scope="module")
def model():
    m = tiny_internvl()
    yield m
    ipcv.restore(m)


def encoder(m):
    return m.model.vision_tower.encoder


# --- keep 1.0 and restore: bit-exact --------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_all_every_method_bit_exact(attn):
    m = tiny_internvl(attn)
    with torch.no_grad():
        ref = m(**SEVERAL).logits
        for v in visions(1.0).values():
            with ipcv.compressed(m, vision=v):
                assert torch.equal(m(**SEVERAL).logits, ref), v
        for name, lang in languages(1.0).items():
            with ipcv.compressed(m, vision=visions(1.0)["IPCV"], language=lang):
                assert torch.equal(m(**SEVERAL).logits, ref), name
        greedy = m.generate(**PADDED, max_new_tokens=4, do_sample=False)
        with ipcv.compressed(m, vision=visions(1.0)["IPCV"], language=languages(1.0)["DART"]):
            assert torch.equal(m.generate(**PADDED, max_new_tokens=4, do_sample=False), greedy)


def test_restore_is_bit_exact_and_complete():
    m = tiny_internvl("eager")
    with torch.no_grad():
        ref = m(**SEVERAL).logits
    classes = [type(x) for x in m.modules()]
    attributes = {n for x in m.modules() for n in vars(x)}
    ipcv.compress(m, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2), language=ipcv.FastV(0.35))
    assert type(encoder(m)).__name__ == "IPCVInternVLVisionEncoder"
    with torch.no_grad():
        assert not torch.equal(m(**SEVERAL).logits, ref)
    ipcv.restore(m)
    assert [type(x) for x in m.modules()] == classes
    assert {n for x in m.modules() for n in vars(x)} == attributes
    with torch.no_grad():
        assert torch.equal(m(**SEVERAL).logits, ref)


# --- the vision tower against the plain equations ----------------------------------------------


def reference(m, x, settings, depth=DEPTH):
    """Eq. 1-10 over the InternViT blocks, written from the layer definition: pre-norm attention with
    optional qk-norm, LayerScale ``lambda_1`` / ``lambda_2``, one segment per tile, CLS protected."""
    B, N, D = x.shape
    seg = torch.arange(B).repeat_interleave(N)
    protected = torch.zeros(B, N, dtype=torch.bool)
    protected[:, 0] = True

    def block(layer, h, rows):
        blk = encoder(m).layer[layer]
        a = blk.attention
        y = blk.layernorm_before(h)
        q, k, v = a.q_norm(a.q_proj(y)), a.k_norm(a.k_proj(y)), a.v_proj(y)
        q, k, v = (t.view(h.shape[0], a.num_heads, -1) for t in (q, k, v))
        out = masked_attention(q, k, v, seg[rows], seg[rows], a.scale).reshape(h.shape[0], D)
        h = h + blk.lambda_1 * a.projection_layer(out)
        return h + blk.lambda_2 * blk.mlp(blk.layernorm_after(h))

    with torch.no_grad():
        out, keep, counts = reference_ipcv(
            block, x.reshape(B * N, D), seg, depth, settings.keep_ratio, settings.prune_layer,
            settings.stabilize_layers, settings.neighbors, settings.reintegrate, settings.scope, protected.flatten(),
        )  # fmt: skip
    return out.view(B, N, D), keep, counts


def tower_input(m, pixels):
    with torch.no_grad():
        return m.model.vision_tower.embeddings(pixels)


@pytest.mark.parametrize("qk_norm", [False, True], ids=["InternViT-300M", "qk-norm (6B)"])
@pytest.mark.parametrize(
    "settings",
    [
        ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3),
        ipcv.IPCV(0.5, prune_layer=1, stabilize_layers=0, neighbors=4, reintegrate=False),
        ipcv.IPCV(0.2, prune_layer=2, stabilize_layers=3, neighbors=30, scope="global"),
    ],
    ids=["default", "ablations", "global-k>kept"],
)
def test_tower_matches_reference_equations(qk_norm, settings):
    m = tiny_internvl("sdpa", qk_norm=qk_norm)
    x = tower_input(m, SEVERAL["pixel_values"])
    expected, keep, counts = reference(m, x, settings)
    ipcv.compress(m, vision=settings)
    with torch.no_grad(), ipcv.trace() as t:
        out = encoder(m)(x).last_hidden_state
        m(**SEVERAL)  # the whole model runs on the full-length output
    assert t.calls[0].keep.tolist() == keep and t.calls[0].keep_counts == counts
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.65, 0.35, 0.2])
def test_each_tile_a_segment_cls_kept_and_not_counted(model, ratio):
    with torch.no_grad(), ipcv.compressed(model, vision=ipcv.IPCV(ratio, prune_layer=2, stabilize_layers=2)):
        with ipcv.trace() as t:
            model(**SEVERAL)
    call = t.calls[0]
    N = 1 + (SIZE // PATCH) ** 2
    assert call.seg_lengths == [N] * 3
    assert call.keep_counts == [keep_budget(N - 1, ratio) + 1] * 3
    assert set(range(0, 3 * N, N)) <= set(call.keep.tolist())


def test_projector_reads_an_inner_layer_full_length():
    """vision_feature_layer=-3 reads hidden state 4 of 6: the schedule ends there, reintegrated, and the
    projector's input is what the equations give at depth 4 (blocks 4-5 then run on the full sequence)."""
    m = tiny_internvl("sdpa", feature_layer=-3)
    settings = ipcv.IPCV(0.35, prune_layer=1, stabilize_layers=2, neighbors=3)
    x = tower_input(m, SINGLE["pixel_values"])
    expected, keep, _ = reference(m, x, settings, depth=4)
    seen = {}
    m.model.multi_modal_projector.register_forward_pre_hook(lambda mod, args: seen.setdefault("in", args[0]))
    ipcv.compress(m, vision=settings)
    with torch.no_grad(), ipcv.trace() as t:
        m(**SINGLE)
    shuffled = m.model.pixel_shuffle(expected[:, 1:].reshape(2, 8, 8, -1), 0.5).reshape(2, PER_TILE, -1)
    torch.testing.assert_close(seen["in"], shuffled, rtol=1e-4, atol=1e-4)
    assert t.calls[0].keep.tolist() == keep
    # the schedule must fit in the blocks before the layer read
    ipcv.compress(m, vision=ipcv.IPCV(0.35, prune_layer=3, stabilize_layers=2))
    with pytest.raises(ValueError, match=r"reads hidden state 4 \(vision_feature_layer\).*stabilize_layers=2"):
        with torch.no_grad():
            m(**SINGLE)


def test_output_flags_are_refused_not_ignored(model):
    tower = model.model.vision_tower
    with ipcv.compressed(model, vision=ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2)):
        with pytest.raises(ValueError, match="output_hidden_states=True is not supported"):
            tower(pixel_values=SINGLE["pixel_values"], output_hidden_states=True)
        with pytest.raises(ValueError, match="output_attentions=True is not supported"):
            tower(pixel_values=SINGLE["pixel_values"], output_attentions=True)
        with pytest.raises(ValueError, match=r"layers \[2, 6\] .*only one layer"):
            tower(pixel_values=SINGLE["pixel_values"], output_hidden_states=[2, -1])
    with pytest.raises(ValueError, match="stabilize_layers=9 is outside the allowed range"):
        ipcv.compress(model, vision=ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=9))


@pytest.mark.parametrize("method", ["ToMe", "ToFu", "DARTViT"])
def test_vision_baselines_counts_match_flops(model, method):
    settings = visions(0.35)[method]
    with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.stats(model) as st:
        model(**SEVERAL)
    call = st.vision[0]
    assert call.seg_lengths == [65] * 3 and call.settings == settings
    from ipcv.flops import vision_flops

    full, pruned = vision_flops(model, [65] * 3), vision_flops(model, [65] * 3, settings)
    assert pruned.total < full.total and pruned.tokens_per_block[0] <= 195


# --- the LLM side: per-tile budgets, cache, costs, decoding --------------------------------------


@pytest.mark.parametrize("name", languages(0.35))
def test_per_tile_budgets_and_cache_length(model, name):
    settings = languages(0.35)[name]
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        out = model(**SEVERAL, use_cache=True)
    record = st.decoder[-1]
    expected = [[settings.counts(PER_TILE)[s]] * 3 for s in range(len(settings.stage_layers()))]
    assert [k[0] for k in record.kept] == expected
    text = SEVERAL["input_ids"].shape[1] - 3 * PER_TILE
    cache = out.past_key_values
    assert cache.layers[0].get_seq_length() == SEVERAL["input_ids"].shape[1]
    assert cache.layers[LAYERS - 1].get_seq_length() == text + sum(expected[-1])
    assert out.logits.shape[1] == SEVERAL["input_ids"].shape[1]


def test_accounting_matches_hand_count(model):
    # SINGLE: 2 tiles -> 32 image tokens, 6 text; FastV(0.5) at layer 2 keeps 8 per tile; IPCV in the tower
    vision, language = ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2), ipcv.FastV(0.5, layer=2)
    with torch.no_grad(), ipcv.compressed(model, vision=vision, language=language), ipcv.stats(model) as st:
        model(**SINGLE, use_cache=True)
    rec = st.decoder[-1]
    assert rec.tokens == [[38], [38], [22], [22]] and rec.cache == rec.tokens
    assert rec.visual == [[32], [32], [16], [16]]
    c = ipcv.costs(model, st)
    assert c.vision_tokens_per_block == (130, 130, 66, 66, 66, 66)  # 2 x (CLS + 32 of 64)
    assert c.decoder_tokens_per_layer == (38, 38, 22, 22)
    assert c.kv_cache_mb == pytest.approx((38 + 38 + 22 + 22) * 2 * 2 * 16 * 2 / 1e6)
    with torch.no_grad(), ipcv.stats(model) as st:  # vanilla, seen without patching
        model(**SINGLE, use_cache=True)
    assert st.decoder[-1].tokens == [[38]] * LAYERS and st.decoder[-1].visual == [[32]] * LAYERS
    assert st.vision[0].seg_lengths == [65, 65] and st.vision[0].settings is None


@pytest.mark.parametrize("settings", [ipcv.V2Drop(0.35, layers=(1, 3), budget="last"), ipcv.DART(0.35, text_pivots=0)])
@pytest.mark.parametrize("case", ["several", "padded"])
def test_cached_decoding_matches_full_forward(model, settings, case):
    """V2Drop's and text-free DART's choices depend only on the visual tokens, so a no-cache forward of
    prompt + generated tokens prunes the same ones: its last logits equal the cached step's (cache
    masks, filler slots and the original 1D positions of kept tokens). The positions are generate's
    (they start at each sample's first real token): DART's key norms are taken after RoPE."""
    kw = CASES[case]
    n = 4
    with torch.no_grad(), ipcv.compressed(model, language=settings):
        out = model.generate(**kw, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True)
        L = kw["input_ids"].shape[1]
        for t in range(n):
            ids = out.sequences[:, : L + t]
            mask = torch.cat([kw["attention_mask"], torch.ones(ids.shape[0], t, dtype=torch.long)], 1)
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # generate's positions for a padded batch
            ref = model(
                input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=kw["pixel_values"], use_cache=False
            )
            torch.testing.assert_close(out.logits[t], ref.logits[:, -1], rtol=1e-4, atol=1e-4)


def test_ipcv_fastv_table3_pairing_counts(model):
    """Table 3's InternVL3 setting: IPCV in the tower and FastV in the decoder, one call of each."""
    with pytest.raises(ValueError, match=r"stabilize_layers=7 is outside the allowed range \[0, 3\]"):
        ipcv.compress(model, vision=ipcv.IPCV(0.35), language=ipcv.FastV(0.35))  # paper defaults need depth 10
    assert ipcv.settings(model) is None and ipcv.settings(model, "language") is None
    with (
        torch.no_grad(),
        ipcv.compressed(model, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2), language=ipcv.FastV(0.35)),
        ipcv.stats(model) as st,
    ):
        model(**PADDED)
    assert len(st.vision) == 1 and len(st.decoder) == 1
    assert st.decoder[0].kept == [[[6], [6, 6, 6]]]  # keep_count(16, 0.35) per tile, every sample


@pytest.mark.parametrize("decoder", ["qwen2", "qwen3"], ids=["Qwen2 (InternVL3)", "Qwen3 qk-norm (InternVL3.5)"])
def test_method_keys_and_queries_are_the_layers_own(decoder):
    """The keys / queries the LLM-side methods score with are the ones the decoder layer computes
    (per-head qk-norm of Qwen3-style decoders, then RoPE): compared with the keys the plain layer
    puts in its KV cache, and with queries recomputed the way the layer does."""
    from ipcv.models._decoder import _DecoderCall

    cfg = dict(
        model_type=decoder, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512, pad_token_id=PAD,
    )  # fmt: skip
    m = InternVLForConditionalGeneration(InternVLConfig(text_config=cfg, vision_config=dict(hidden_size=32,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=[SIZE, SIZE],
        patch_size=[PATCH, PATCH]), image_token_id=IMAGE, downsample_ratio=0.5)).eval()  # fmt: skip
    lm = m.model.language_model
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(1.0 if p.dim() == 1 else 0.0, 0.3)  # norms away from 1, so a missing qk-norm shows
        seen = {}
        lm.layers[1].register_forward_pre_hook(lambda mod, args, kw: seen.update(h=args[0]), with_kwargs=True)
        ids = torch.randint(3, 200, (2, 9))
        out = lm(input_ids=ids, use_cache=True)
        h = seen["h"]
        pos = torch.arange(9).expand(2, 9)
        call = _DecoderCall(lm, None, lm.rotary_emb(h, pos), pos, None, False, {})
        torch.testing.assert_close(call.keys(1, h), out.past_key_values.layers[1].keys)
        attn = lm.layers[1].self_attn
        rows = torch.tensor([[8], [4]])
        q = attn.q_proj(lm.layers[1].input_layernorm(h)).view(2, 9, -1, 16)
        q = (attn.q_norm(q) if decoder == "qwen3" else q).transpose(1, 2)
        cos, sin = lm.rotary_emb(h, pos)
        q = q * cos[:, None] + torch.cat([-q[..., 8:], q[..., :8]], -1) * sin[:, None]
        expected = torch.stack([q[0, :, 8:9], q[1, :, 4:5]])
        torch.testing.assert_close(call.queries(1, h, rows), expected)
    assert (decoder == "qwen3") == hasattr(attn, "q_norm")


def test_qwen3_decoder_generates_under_every_method():
    cfg = dict(
        model_type="qwen3", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512, pad_token_id=PAD,
    )  # fmt: skip
    torch.manual_seed(0)
    m = InternVLForConditionalGeneration(InternVLConfig(text_config=cfg, vision_config=dict(hidden_size=32,
        num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=[SIZE, SIZE],
        patch_size=[PATCH, PATCH]), image_token_id=IMAGE, downsample_ratio=0.5)).eval()  # fmt: skip
    with torch.no_grad():
        for lang in languages(0.35).values():
            with ipcv.compressed(m, language=lang), ipcv.stats(m) as st:
                out = m.generate(**PADDED, max_new_tokens=3, min_new_tokens=3, do_sample=False)
            k = lang.counts(PER_TILE)[-1]
            assert out.shape[1] == PADDED["input_ids"].shape[1] + 3 and st.decoder[0].kept[-1] == [[k], [k] * 3]
