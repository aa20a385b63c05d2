"""LLM-side methods (DART, FastV, V2Drop, SparseVLM) in Qwen2-VL's decoder, on a tiny random config."""

from __future__ import annotations

import pytest
import torch
from families import QWEN2_VL, make_tower, tiny_qwen2vl
from families import family_languages as methods
from families import qwen_prompts as prompts

import ipcv
from ipcv.flops import decoder_layer_flops, kv_cache_mb

LAYERS = 4

CASES = {name: case.kw for name, case in QWEN2_VL.cases.items()}
SINGLE, TWO_IMAGES, PADDED = (CASES[c] for c in ("single", "two_images", "padded"))


@pytest.fixture(scope="module")
def model():
    m = tiny_qwen2vl("sdpa", layers=LAYERS, decoder_std=0.08)  # random init barely moves the residual stream
    yield m
    ipcv.restore(m)


# --- keep 1.0 is the unpatched model, bit for bit ------------------------------------------------


@pytest.mark.parametrize("name", methods(1.0))
def test_keep_all_logits_bit_exact(model, name):
    with torch.no_grad():
        ref = model(**TWO_IMAGES).logits
        with ipcv.compressed(model, language=methods(1.0)[name]):
            out = model(**TWO_IMAGES).logits
            greedy = model.generate(**PADDED, max_new_tokens=4, do_sample=False)
        assert torch.equal(greedy, model.generate(**PADDED, max_new_tokens=4, do_sample=False))
    assert torch.equal(out, ref)


# --- budgets, cache length, accounting -----------------------------------------------------------


def _visual_per_span(kw, b):
    ids = kw["input_ids"][b]
    return ids, int((kw["attention_mask"][b] == 1).sum())


@pytest.mark.parametrize("name", methods(0.35))
def test_per_span_budgets_and_cache_length(model, name):
    settings = methods(0.35)[name]
    kw = prompts([("image", [1, 8, 12]), ("video", [2, 4, 6]), ("image", [1, 4, 4])])
    spans = [24, 6, 6, 4]  # one image, two video frames, one image
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        out = model(**kw, use_cache=True)
    record = st.decoder[-1]
    expected = [[settings.counts(n)[s] for n in spans] for s in range(len(settings.stage_layers()))]
    assert [k[0] for k in record.kept] == expected
    text = int((kw["mm_token_type_ids"] == 0).sum())
    cache = out.past_key_values
    first = settings.stage_layers()[0]
    assert cache.layers[0].get_seq_length() == kw["input_ids"].shape[1]
    assert cache.layers[first].get_seq_length() == text + sum(expected[0])
    assert cache.layers[LAYERS - 1].get_seq_length() == text + sum(expected[-1])
    assert out.logits.shape[1] == kw["input_ids"].shape[1]  # full length out


def test_padded_batch_cache_per_sample(model):
    settings = ipcv.FastV(0.35, layer=2)
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        out = model(**PADDED, use_cache=True)
    record = st.decoder[-1]
    text = [int(((PADDED["mm_token_type_ids"][b] == 0) & (PADDED["attention_mask"][b] == 1)).sum()) for b in range(2)]
    kept = [8, 2 + 1]  # keep_count(24), keep_count(6) + keep_count(4)
    assert record.kept == [[[8], [2, 1]]]
    assert record.cache[2] == [t + k for t, k in zip(text, kept)]
    assert out.past_key_values.layers[2].get_seq_length() == max(t + k for t, k in zip(text, kept))


@pytest.mark.parametrize(
    "settings, tokens",
    [
        (ipcv.DART(0.5), [30, 30, 18, 18]),  # 24 visual + 6 text; 12 visual kept from layer 2
        (ipcv.FastV(0.5), [30, 30, 18, 18]),
        (ipcv.V2Drop(0.5, layers=(1, 3), budget="last"), [30, 23, 23, 18]),  # round(24 * 0.5 ** 0.5) = 17, then 12
        (ipcv.SparseVLM(0.5, layers=(1, 2), budget="last", recycle_in_budget=True), [30, 23, 18, 18]),
    ],
    ids=lambda x: type(x).__name__ if not isinstance(x, list) else "",
)
def test_token_counts_per_layer_by_hand(model, settings, tokens):
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        model(**SINGLE, use_cache=True)
    rec = st.decoder[-1]
    assert [t[0] for t in rec.tokens] == tokens and rec.cache == rec.tokens
    assert [v[0] for v in rec.visual] == [t - 6 for t in tokens]
    assert st.vision[0].seg_lengths == [96] and st.vision[0].settings is None
    assert ipcv.costs(model, st).decoder_tokens_per_layer == tuple(tokens)


def test_compress_composes_sides_and_costs_refuses_a_trace(model):
    # the trap: compress(language=...) after compress(vision=...) used to drop the vision side silently
    vision, language = ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2), ipcv.FastV(0.5, layer=2)
    try:
        ipcv.compress(model, vision=vision)
        ipcv.compress(model, language=language)
        assert (ipcv.settings(model), ipcv.settings(model, "language")) == (vision, language)
        with torch.no_grad(), ipcv.stats(model) as st:
            model(**SINGLE, use_cache=True)
        assert st.decoder[-1].visual == [[24], [24], [12], [12]]  # the tower kept 24 of 48 -> 24 visual tokens
        other = ipcv.DARTViT(0.5)
        ipcv.compress(model, vision=other)  # a side given again is replaced, the other one stays
        assert (ipcv.settings(model), ipcv.settings(model, "language")) == (other, language)
        with torch.no_grad(), ipcv.trace() as t:
            model(**SINGLE, use_cache=True)
        with pytest.raises(ValueError, match=r"ipcv\.trace\(\).*ipcv\.stats\(model\)"):
            ipcv.costs(model, t)
        with pytest.raises(TypeError, match=r"stats must be .*ipcv\.stats\(model\).*got dict"):
            ipcv.costs(model, {})
    finally:
        ipcv.restore(model)
    assert (ipcv.settings(model), ipcv.settings(model, "language")) == (None, None)


def test_token_accounting_matches_hand_count(model):
    # SINGLE: 24 visual tokens, 6 text tokens; FastV(0.5) at layer 2 keeps 12; IPCV(0.5) in the tower
    vision, language = ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2), ipcv.FastV(0.5, layer=2)
    with torch.no_grad(), ipcv.compressed(model, vision=vision, language=language), ipcv.stats(model) as st:
        model(**SINGLE, use_cache=True)
    rec = st.decoder[-1]
    assert rec.tokens == [[30], [30], [18], [18]] and rec.cache == rec.tokens
    assert rec.visual == [[24], [24], [12], [12]]
    assert [(c.seg_lengths, c.settings) for c in st.vision] == [([96], vision)]
    c = ipcv.costs(model, st)
    assert c.vision_tokens_per_block == (96, 96, 48, 48, 48, 48)
    assert c.decoder_tokens_per_layer == (30, 30, 18, 18)
    shape = ipcv.models.qwen2_vl.decoder_shape(model.model.language_model)
    assert (shape.kv_heads, shape.head_dim) == (2, 16)
    assert c.kv_cache_mb == pytest.approx((30 + 30 + 18 + 18) * 2 * 2 * 16 * 2 / 1e6)
    layers = 2 * decoder_layer_flops(shape, 30, 30) + 2 * decoder_layer_flops(shape, 18, 18)
    assert layers < c.decoder < layers + 2 * 30 * 64 * 64 + 2 * 64 * 256 + 30 * 64 * 64 * 2
    # vanilla: every layer sees all 30 tokens, the vision tower 96 patches per block
    with torch.no_grad(), ipcv.stats(model) as st:
        model(**SINGLE, use_cache=True)
    assert st.decoder[-1].tokens == [[30]] * 4 and st.vision[0].settings is None
    assert st.decoder[-1].visual == [[24]] * 4  # 96 patches / 2x2 merge, seen without any patch
    assert kv_cache_mb(shape, st.decoder[-1]) == pytest.approx(4 * 30 * 2 * 2 * 16 * 2 / 1e6)


# --- decoding: cached steps equal a no-cache forward of the same pruned sequence -----------------


@pytest.mark.parametrize(
    "settings",
    [ipcv.V2Drop(0.35, layers=(1, 3), budget="last"), ipcv.DART(0.35, text_pivots=0)],
    ids=["V2Drop", "DART"],
)
@pytest.mark.parametrize("case", ["two_images", "padded"])
def test_cached_decoding_matches_full_forward(model, settings, case):
    """V2Drop's and text-free DART's choices depend only on the visual tokens (causal), so a no-cache
    forward of prompt + generated tokens prunes the same tokens: its last logits must equal the
    cached step's (checks cache masks, filler slots and mRoPE positions)."""
    kw = CASES[case]
    n = 5
    with torch.no_grad(), ipcv.compressed(model, language=settings):
        out = model.generate(**kw, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True)
        L = kw["input_ids"].shape[1]
        for t in range(n):
            ids = out.sequences[:, : L + t]
            extra = ids.shape[1] - L
            full = dict(kw, input_ids=ids)
            full["attention_mask"] = torch.cat(
                [kw["attention_mask"], torch.ones(ids.shape[0], extra, dtype=torch.long)], 1
            )
            full["mm_token_type_ids"] = torch.cat(
                [kw["mm_token_type_ids"], torch.zeros(ids.shape[0], extra, dtype=torch.int)], 1
            )
            ref = model(**full, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[t], ref, rtol=1e-4, atol=1e-4)


# --- patching: restore, context manager, validation ----------------------------------------------


def test_restore_both_sides_bit_exact_and_context_manager():
    model = tiny_qwen2vl("eager", layers=LAYERS)
    with torch.no_grad():
        ref = model(**TWO_IMAGES).logits
    before = {n for m in model.modules() for n in vars(m)}
    classes = [type(m) for m in model.modules()]
    first = (ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2), ipcv.DART(0.5))
    ipcv.compress(model, vision=first[0], language=first[1])
    with ipcv.compressed(model, language=ipcv.FastV(0.2)):  # composes: the vision side stays
        assert ipcv.settings(model) == first[0] and ipcv.settings(model, "language") == ipcv.FastV(0.2)
    assert (ipcv.settings(model), ipcv.settings(model, "language")) == first
    with torch.no_grad():
        assert not torch.equal(model(**TWO_IMAGES).logits, ref)
    ipcv.restore(model)
    assert [type(m) for m in model.modules()] == classes
    assert {n for m in model.modules() for n in vars(m)} == before
    with torch.no_grad():
        assert torch.equal(model(**TWO_IMAGES).logits, ref)


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: ipcv.DART(0.0), ValueError, r"keep_ratio=0\.0 .*\(0, 1\]"),
        (lambda: ipcv.DART(0.5, layer=0), ValueError, r"layer=0 .*>= 1"),
        (lambda: ipcv.DART(0.5, text_pivots=8), ValueError, r"text_pivots=8 .*\[0, 7\]"),
        (lambda: ipcv.DART(0.5, normalize=1), TypeError, r"normalize must be a bool"),
        (lambda: ipcv.FastV(0.5, layer=2.0), TypeError, r"layer must be an int"),
        (lambda: ipcv.FastV("0.5"), TypeError, r"keep_ratio must be a real number"),
        (lambda: ipcv.V2Drop(0.5, layers=(3, 2)), ValueError, r"layers=\(3, 2\) .*increasing"),
        (lambda: ipcv.V2Drop(0.5, layers=()), TypeError, r"layers must be a non-empty tuple"),
        (lambda: ipcv.SparseVLM(0.5, recycle=1.0), ValueError, r"recycle=1\.0 .*\[0, 1\)"),
    ],
)
def test_settings_validation(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_depth_and_model_validation(model):
    with pytest.raises(ValueError, match=r"FastV: layer=4 is outside the allowed range \[1, 3\]"):
        ipcv.compress(model, language=ipcv.FastV(0.5, layer=4))
    with pytest.raises(ValueError, match=r"V2Drop: layers=\(3, 16, 22\) is outside the allowed range \[1, 3\]"):
        ipcv.compress(model, language=ipcv.V2Drop(0.5))
    assert ipcv.settings(model, "language") is None
    with pytest.raises(TypeError, match="Qwen2VisionTransformerPretrainedModel has no language decoder"):
        ipcv.compress(make_tower(), language=ipcv.DART(0.5))
    with pytest.raises(TypeError, match="language='DART' is not a language-side method"):
        ipcv.compress(model, language="DART")


def test_two_threads_two_compressed_models():
    import threading

    models = [tiny_qwen2vl("sdpa", layers=LAYERS) for _ in range(2)]
    settings = [ipcv.DART(0.35), ipcv.V2Drop(0.2, layers=(1, 2), budget="last")]
    for m, s in zip(models, settings):
        ipcv.compress(m, language=s)
    with torch.no_grad():
        expected = [m.generate(**PADDED, max_new_tokens=6, do_sample=False) for m in models]
    results = [[], []]

    def work(i):
        with torch.no_grad():
            for _ in range(3):
                results[i].append(models[i].generate(**PADDED, max_new_tokens=6, do_sample=False))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, expected[i]) for i in range(2) for r in results[i])


def test_fastv_computes_one_attention_row_inside_the_sdpa_path(model, monkeypatch):
    """FastV's cost: its score is the last token's attention row only (``[B, H, 1, N]``), computed from that
    layer's queries of one row and its keys; every decoder layer keeps the model's own sdpa attention (no eager
    layer, no ``[N, N]`` attention matrix), so pruning never costs more than the row it reads."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen

    from ipcv.methods import fastv as fastv_fns

    rows, eager_calls = [], []
    real_probs, real_eager = fastv_fns.attention_probs, qwen.eager_attention_forward

    def probs(q, k, allowed, scaling):
        out = real_probs(q, k, allowed, scaling)
        rows.append(tuple(out.shape))
        return out

    def eager(module, *args, **kwargs):
        eager_calls.append(type(module).__name__)
        return real_eager(module, *args, **kwargs)

    monkeypatch.setattr(fastv_fns, "attention_probs", probs)
    monkeypatch.setattr(qwen, "eager_attention_forward", eager)
    assert model.config.text_config._attn_implementation == "sdpa"
    with torch.no_grad(), ipcv.compressed(model, language=ipcv.FastV(0.35)):
        model(**SINGLE)
    n = SINGLE["input_ids"].shape[1]
    heads = model.config.text_config.num_attention_heads
    assert rows == [(1, heads, 1, n)] and eager_calls == []
