"""LLaVA (``LlavaForConditionalGeneration``) with a CLIP or SigLIP tower whose projector reads an inner
layer, and a Llama decoder (1D RoPE), on tiny random configs of the real classes."""

from __future__ import annotations

import families
import pytest
import torch
from families import LLAVA, tiny_llava
from families import family_languages as languages
from families import family_visions as visions
from families import llava_per_image as per_image
from families import llava_prompts as prompts
from reference import masked_attention, reference_ipcv

import ipcv

IMAGE, DEPTH, LAYERS = families.LLAVA_IMAGE, families.LLAVA_DEPTH, families.LLAVA_LAYERS  # 49 patches per image

SINGLE, TWO, PADDED = prompts(1), LLAVA.cases["two_images"].kw, LLAVA.cases["padded"].kw  # prompts(2), prompts(1, 2)


@pytest.fixture(scope="module")
def model():
    m = tiny_llava()
    yield m
    ipcv.restore(m)


def encoder(m):
    return m.model.vision_tower.encoder


# --- keep 1.0, restore ---------------------------------------------------------------------------


@pytest.mark.parametrize("tower, strategy", [("clip", "default"), ("clip", "full"), ("siglip", "full")])
def test_keep_all_every_method_bit_exact_and_restore(tower, strategy):
    m = tiny_llava(tower, strategy)
    kw = prompts(2, n=per_image(tower, strategy))
    with torch.no_grad():
        ref = m(**kw).logits
        for v, lang in zip(visions(1.0).values(), languages(1.0).values()):
            with ipcv.compressed(m, vision=v, language=lang):
                assert torch.equal(m(**kw).logits, ref), (v, lang)
        classes = [type(x) for x in m.modules()]
        ipcv.compress(m, vision=visions(0.35)["IPCV"], language=ipcv.FastV(0.35))
        assert not torch.equal(m(**kw).logits, ref)
        ipcv.restore(m)
        assert [type(x) for x in m.modules()] == classes and torch.equal(m(**kw).logits, ref)


# --- the layer the projector reads is full length and follows the equations ----------------------


def reference(m, x, settings, depth):
    """Eq. 1-10 over CLIP's first ``depth`` layers, one segment per image, CLS protected."""
    B, N, D = x.shape
    seg = torch.arange(B).repeat_interleave(N)
    protected = torch.zeros(B, N, dtype=torch.bool)
    protected[:, 0] = True

    def block(layer, h, rows):
        blk = encoder(m).layers[layer]
        a = blk.self_attn
        y = blk.layer_norm1(h)
        q, k, v = (p(y).view(h.shape[0], a.num_heads, -1) for p in (a.q_proj, a.k_proj, a.v_proj))
        h = h + a.out_proj(masked_attention(q, k, v, seg[rows], seg[rows], a.scale).reshape(h.shape[0], D))
        return h + blk.mlp(blk.layer_norm2(h))

    with torch.no_grad():
        out, keep, _ = reference_ipcv(
            block, x.reshape(B * N, D), seg, depth, settings.keep_ratio, settings.prune_layer,
            settings.stabilize_layers, settings.neighbors, settings.reintegrate, settings.scope, protected.flatten(),
        )  # fmt: skip
    return out.view(B, N, D), keep


@pytest.mark.parametrize("feature_layer, depth", [(-2, 5), (3, 3), (-1, 6)])
def test_projector_input_is_the_reintegrated_read_layer(feature_layer, depth):
    m = tiny_llava(feature_layer=feature_layer)
    settings = ipcv.IPCV(0.35, prune_layer=1, stabilize_layers=1, neighbors=3)
    with torch.no_grad():
        vt = m.model.vision_tower
        x = vt.pre_layrnorm(vt.embeddings(TWO["pixel_values"]))
    expected, keep = reference(m, x, settings, depth)
    seen = {}
    m.model.multi_modal_projector.register_forward_pre_hook(lambda mod, args: seen.setdefault("in", args[0]))
    with torch.no_grad(), ipcv.compressed(m, vision=settings):
        with ipcv.trace() as t:
            m(**TWO)
        with ipcv.stats(m) as st:
            m(**TWO)
    assert t.calls[0].keep.tolist() == keep
    torch.testing.assert_close(seen["in"], expected[:, 1:], rtol=1e-4, atol=1e-4)  # "default": CLS dropped
    # the blocks from the read layer on run on all 2 x 50 tokens, and are counted so
    tokens = ipcv.costs(m, st).vision_tokens_per_block
    assert tokens[depth:] == (100,) * (DEPTH - depth) and tokens[1] == 2 * 18


def test_read_layer_errors():
    m = tiny_llava(feature_layer=-2)
    with ipcv.compressed(m, vision=ipcv.IPCV(0.35, prune_layer=4, stabilize_layers=2)):
        with pytest.raises(ValueError, match=r"reads hidden state 5 \(vision_feature_layer\).*stabilize_layers=2"):
            with torch.no_grad():
                m(**SINGLE)
    m = tiny_llava(feature_layer=[-2, -1])
    with ipcv.compressed(m, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2)):
        with pytest.raises(ValueError, match=r"layers \[5, 6\] \(vision_feature_layer\).*only one layer"):
            with torch.no_grad():
                m(**SINGLE)


# --- LLM side ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", languages(0.35))
def test_per_image_budgets_and_cache_length(model, name):
    settings = languages(0.35)[name]
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        out = model(**TWO, use_cache=True)
    expected = [[settings.counts(49)[s]] * 2 for s in range(len(settings.stage_layers()))]
    assert [k[0] for k in st.decoder[-1].kept] == expected
    text = TWO["input_ids"].shape[1] - 98
    assert out.past_key_values.layers[LAYERS - 1].get_seq_length() == text + sum(expected[-1])


def test_two_adjacent_images_are_two_spans(model):
    kw = prompts(1)
    kw["input_ids"] = torch.tensor([[1, 5] + [IMAGE] * 98 + [7]])
    kw["pixel_values"] = TWO["pixel_values"]
    kw["attention_mask"] = torch.ones_like(kw["input_ids"])
    with torch.no_grad(), ipcv.compressed(model, language=ipcv.FastV(0.25)), ipcv.stats(model) as st:
        model(**kw)
    assert st.decoder[-1].kept == [[[12, 12]]]


def test_cached_decoding_matches_full_forward(model):
    settings = ipcv.V2Drop(0.35, layers=(1, 3), budget="last")
    kw, n = PADDED, 4
    with torch.no_grad(), ipcv.compressed(model, language=settings):
        out = model.generate(**kw, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True)
        L = kw["input_ids"].shape[1]
        for t in range(n):
            ids = out.sequences[:, : L + t]
            mask = torch.cat([kw["attention_mask"], torch.ones(ids.shape[0], t, dtype=torch.long)], 1)
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=kw["pixel_values"])
            torch.testing.assert_close(out.logits[t], ref.logits[:, -1], rtol=1e-4, atol=1e-4)


def test_siglip_tower_has_no_protected_token():
    m = tiny_llava("siglip", "full")
    kw = prompts(2, n=49)
    with torch.no_grad(), ipcv.compressed(m, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2)):
        with ipcv.trace() as t:
            m(**kw)
    assert t.calls[0].keep_counts == [17, 17]  # round(0.35 * 49), no CLS
