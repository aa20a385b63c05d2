"""LLaVA-OneVision (SigLIP tower, read at its last block) and LLaVA-NeXT (CLIP tower, read at -2) with AnyRes
crops, unpadding and newlines, OneVision's video and multi-image paths, and a Llama decoder (1D RoPE), on tiny
random configs of the real classes. generate() under every LLM-side method and every vision x language pair on
OneVision runs in tests/test_generate.py (``families.LLAVA_ONEVISION``); here: bit-exactness, the tower against
the equations with the trimmed rows pruned first, the kept tokens per crop by hand, spans, costs, LLaVA-NeXT's
pairs."""

from __future__ import annotations

import families
import pytest
import torch
from families import (
    ANYRES_IMAGES,
    ANYRES_SIDE,
    LLAVA_ONEVISION,
    NEXT_PADDED,
    OV_DOWNSAMPLED,
    anyres_prompts,
    tiny_anyres,
)
from families import family_languages as languages
from families import family_visions as visions
from reference import masked_attention, reference_ipcv

import ipcv
from ipcv.models import llava_anyres

N = ANYRES_SIDE**2  # 16 patches per crop
DEPTH = families.ANYRES_DEPTH
OV, NEXT = "llava_onevision", "llava_next"
PADDED, VIDEO = LLAVA_ONEVISION.cases["padded"], LLAVA_ONEVISION.cases["video"]
CASES = {OV: PADDED, NEXT: NEXT_PADDED}
DOWN = OV_DOWNSAMPLED  # one image, 17 crops, unpadded and downsampled
PREFIX = {OV: 0, NEXT: 1}  # CLIP's CLS


@pytest.fixture(scope="module")
def models():
    ms = {OV: tiny_anyres(OV), NEXT: tiny_anyres(NEXT)}
    yield ms
    for m in ms.values():
        ipcv.restore(m)


def encoder(m):
    return m.model.vision_tower.encoder


# --- keep 1.0, restore -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [OV, NEXT])
def test_keep_all_every_method_bit_exact_and_restore(models, family):
    m = models[family]
    calls = [CASES[family].kw] + ([VIDEO.kw, DOWN.kw] if family == OV else [])
    with torch.no_grad():
        refs = [m(**kw).logits for kw in calls]
        greedy = m.generate(**calls[0], max_new_tokens=3, do_sample=False)
        for i, (v, lang) in enumerate(zip(visions(1.0).values(), languages(1.0).values())):
            with ipcv.compressed(m, vision=v, language=lang):
                assert torch.equal(m(**calls[0]).logits, refs[0]), (v, lang)
                if i == 0:  # IPCV + DART: the video and the downsampled image, and generate()
                    assert all(torch.equal(m(**kw).logits, ref) for kw, ref in zip(calls[1:], refs[1:]))
                    assert torch.equal(m.generate(**calls[0], max_new_tokens=3, do_sample=False), greedy)
        classes = [type(x) for x in m.modules()]
        attributes = {n for x in m.modules() for n in vars(x)}
        ipcv.compress(m, vision=visions(0.35)["IPCV"])  # vision only: the outer model hands over image_sizes
        assert type(m.model).__name__.startswith("IPCV") and type(m.model.language_model).__name__ == "LlamaModel"
        assert not torch.equal(m(**calls[0]).logits, refs[0])
        ipcv.compress(m, language=ipcv.FastV(0.35))
        ipcv.restore(m)
        assert [type(x) for x in m.modules()] == classes
        assert {n for x in m.modules() for n in vars(x)} == attributes
        assert all(torch.equal(m(**kw).logits, ref) for kw, ref in zip(calls, refs))


# --- the AnyRes arithmetic by hand ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", [OV, NEXT])
def test_crops_tokens_and_trimmed_rows_by_hand(models, family):
    config = models[family].config
    for size, (crops, tokens, trimmed) in ANYRES_IMAGES[family].items():
        assert llava_anyres.crops_of(config, size) == crops
        assert llava_anyres.image_tokens(config, size) == tokens
        assert llava_anyres.trimmed_tokens(config, size).sum(1).tolist() == trimmed
    # (12, 90): a 1 x 3 grid of 4 x 4 crops keeps feature rows 1 and 2: rows 0 and 3 of every crop are trimmed
    grid = llava_anyres.trimmed_tokens(config, (12, 90))
    assert [row.nonzero().flatten().tolist() for row in grid[1:]] == [[0, 1, 2, 3, 12, 13, 14, 15]] * 3
    assert not grid[0].any() and not llava_anyres.trimmed_tokens(config, (40, 70), tiled=False).any()
    assert llava_anyres.image_tokens(config, (40, 70), tiled=False) == N + 1


# --- the tower against the equations, trimmed rows pruned first ----------------------------------------------


def reference(m, family, kw, settings, depth):
    """Eq. 1-10 over the tower's first ``depth`` blocks, one segment per crop, CLS protected, the tokens
    ``unpad_image`` trims ranked last (their positions: ``trimmed_tokens``, checked by hand above)."""
    vt = m.model.vision_tower
    tiled = [n == 1 for n in kw["batch_num_images"] for _ in range(n)] if "batch_num_images" in kw else None
    tiled = tiled or [True] * len(kw["image_sizes"])
    counts = [llava_anyres.crops_of(m.config, s, t) for s, t in zip(kw["image_sizes"], tiled)]
    pixels = torch.cat([p[:c] for p, c in zip(kw["pixel_values"], counts)])
    p = PREFIX[family]
    trimmed = torch.cat([llava_anyres.trimmed_tokens(m.config, s, t) for s, t in zip(kw["image_sizes"], tiled)])
    with torch.no_grad():
        x = vt.embeddings(pixels)
        x = vt.pre_layrnorm(x) if p else x
    B, L, D = x.shape
    seg = torch.arange(B).repeat_interleave(L)
    protected = torch.zeros(B, L, dtype=torch.bool)
    protected[:, :p] = True
    expendable = torch.cat([torch.zeros(B, p, dtype=torch.bool), trimmed], 1)

    def block(layer, h, rows):
        blk = encoder(m).layers[layer]
        a = blk.self_attn
        y = blk.layer_norm1(h)
        q, k, v = (f(y).view(h.shape[0], a.num_heads, -1) for f in (a.q_proj, a.k_proj, a.v_proj))
        h = h + a.out_proj(masked_attention(q, k, v, seg[rows], seg[rows], a.scale).reshape(h.shape[0], D))
        return h + blk.mlp(blk.layer_norm2(h))

    with torch.no_grad():
        out, keep, _ = reference_ipcv(
            block, x.reshape(B * L, D), seg, depth, settings.keep_ratio, settings.prune_layer,
            settings.stabilize_layers, settings.neighbors, settings.reintegrate, settings.scope, protected.flatten(),
            expendable=expendable.flatten(),
        )  # fmt: skip
    return out.view(B, L, D), keep, expendable


@pytest.mark.parametrize(
    "family, case, depth, ratio",  # vision_feature_layer -1 (OneVision) / -2 (NeXT)
    [(OV, "down", DEPTH, 0.35), (OV, "padded", DEPTH, 0.65), (NEXT, "padded", DEPTH - 1, 0.35),
     (NEXT, "padded", DEPTH - 1, 0.65)],
)  # fmt: skip
def test_projector_input_follows_the_equations_with_trimmed_rows_first(models, family, case, depth, ratio):
    m, kw = models[family], (DOWN if case == "down" else CASES[family]).kw
    settings = ipcv.IPCV(ratio, prune_layer=1, stabilize_layers=2, neighbors=3)
    expected, keep, expendable = reference(m, family, kw, settings, depth)
    seen = {}
    hook = m.model.multi_modal_projector.register_forward_pre_hook(lambda mod, a: seen.setdefault("in", a[0]))
    try:
        with torch.no_grad(), ipcv.compressed(m, vision=settings), ipcv.trace() as t:
            m(**kw)
    finally:
        hook.remove()
    assert t.calls[0].keep.tolist() == keep
    torch.testing.assert_close(seen["in"], expected[:, PREFIX[family] :], rtol=1e-4, atol=1e-4)
    assert bool(expendable.any())  # the batch has trimmed rows, and the reference ranked them last


# --- kept tokens per crop, by hand ---------------------------------------------------------------------------


def hand_kept(family, kw, budget):
    """Per crop of ``kw``: (kept tokens, of them real) when ``budget`` of a crop's 16 patches are kept and the
    trimmed rows go first (the hand counts of :data:`families.ANYRES_IMAGES`; untiled images trim nothing)."""
    tiled = [n == 1 for n in kw["batch_num_images"] for _ in range(n)] if "batch_num_images" in kw else None
    tiled = tiled or [True] * len(kw["image_sizes"])
    out = []
    for size, t in zip(kw["image_sizes"].tolist(), tiled):
        trimmed = ANYRES_IMAGES[family][tuple(size)][2] if t else [0]
        out += [(budget + PREFIX[family], min(budget, N - x)) for x in trimmed]
    return out


def kept_rows(record) -> torch.Tensor:
    if hasattr(record, "keep"):
        return record.keep
    return (record.source == torch.arange(record.source.numel())).nonzero().flatten()


@pytest.mark.parametrize("family", [OV, NEXT])
@pytest.mark.parametrize("method", ["IPCV", "DARTViT"])
@pytest.mark.parametrize("ratio", [0.65, 0.2])  # crops with fewer real tokens than K, and with more
def test_each_crop_keeps_k_and_spends_it_on_real_tokens_first(models, family, method, ratio):
    m, kw = models[family], CASES[family].kw
    settings = visions(ratio)[method]
    with torch.no_grad(), ipcv.compressed(m, vision=settings), ipcv.trace() as t:
        m(**kw)
    call, p = t.calls[0], PREFIX[family]
    budget = ipcv.keep_count(N, ratio) if method == "IPCV" else call.keep_counts[0] - p
    expendable = torch.cat([llava_anyres.trimmed_tokens(m.config, s, b) for s, b in _tiling(kw)])
    expendable = torch.cat([torch.zeros(expendable.shape[0], p, dtype=torch.bool), expendable], 1).flatten()
    keep = kept_rows(call)
    per_crop = []
    for c in range(len(call.seg_lengths)):
        mine = keep[(keep >= c * (N + p)) & (keep < (c + 1) * (N + p))]
        per_crop.append((mine.numel(), int((~expendable[mine]).sum()) - p))
    assert per_crop == hand_kept(family, kw, budget)


def _tiling(kw):
    tiled = [n == 1 for n in kw["batch_num_images"] for _ in range(n)] if "batch_num_images" in kw else None
    return zip(kw["image_sizes"].tolist(), tiled or [True] * len(kw["image_sizes"]))


def test_video_frames_and_the_tower_alone_trim_nothing(models):
    m = models[OV]
    with torch.no_grad(), ipcv.compressed(m, vision=visions(0.35)["IPCV"]), ipcv.trace() as t:
        m(**VIDEO.kw)
        m.model.vision_tower(PADDED.kw["pixel_values"][0])  # a direct call: nobody said what is trimmed
    plain = ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3)
    for call in t.calls:  # the kept rows are the plain top scores of each segment
        scores = call.scores.view(len(call.seg_lengths), -1)
        top = scores.topk(ipcv.keep_count(N, plain.keep_ratio), dim=1).indices.sort(1).values
        assert call.keep.tolist() == (top + torch.arange(len(call.seg_lengths))[:, None] * N).flatten().tolist()


# --- the LLM side: spans, pairs, costs --------------------------------------------------------------------


def test_adjacent_images_are_two_spans_in_forward_and_generate(models):
    m = models[OV]
    kw = anyres_prompts([("image", (40, 70)), ("image", (12, 90))])
    ids = kw["input_ids"][0].tolist()
    first = ids.index(families.ANYRES_IMAGE)
    kw["input_ids"] = torch.tensor([ids[: first + N + 1] + ids[first + N + 2 :]])  # no separator between them
    kw["attention_mask"] = torch.ones_like(kw["input_ids"])
    with torch.no_grad(), ipcv.compressed(m, language=ipcv.FastV(0.35)):
        with ipcv.stats(m) as forward:
            m(**kw)
        with ipcv.stats(m) as generated:
            m.generate(**kw, max_new_tokens=2, do_sample=False)
    per_image = ipcv.FastV(0.35).counts(N + 1)[0]
    assert forward.decoder[-1].kept == generated.decoder[0].kept == [[[per_image, per_image]]]


@pytest.mark.parametrize("vision", visions(0.35))
def test_llava_next_every_pair(models, vision):
    """Every vision x language pair at prefill (kept counts per crop and per image span); generate() greedy
    and sampled with one LLM-side method per vision one."""
    m, c = models[NEXT], NEXT_PADDED
    v = visions(0.35)[vision]
    for i, lang in enumerate(languages(0.35).values()):
        stages = range(len(lang.stage_layers()))
        expected = [[[lang.counts(n)[s] for n in sample] for sample in c.spans] for s in stages]
        with torch.no_grad(), ipcv.compressed(m, vision=v, language=lang):
            with ipcv.stats(m) as st:
                out = m(**c.kw, use_cache=True)
            assert [call.seg_lengths for call in st.vision] == c.segments and st.decoder[-1].kept == expected
            assert all(k == st.calls[0].keep_counts[0] for k in st.calls[0].keep_counts)  # equal K per crop
            text = int(c.kw["attention_mask"][1].sum()) - sum(c.spans[1])
            assert out.past_key_values.layers[-1].get_seq_length() >= text + sum(expected[-1][1])
            if i == list(visions(0.35)).index(vision):
                for sample in (False, True):
                    torch.manual_seed(0)
                    with ipcv.stats(m) as gen:
                        ids = m.generate(**c.kw, max_new_tokens=3, min_new_tokens=3, do_sample=sample)
                    assert ids.shape[1] == c.kw["input_ids"].shape[1] + 3 and gen.decoder[0].kept == expected


def _block(D, F, q, kv, mlp=None):
    """One encoder block by hand: q/o and k/v projections, fc1 + fc2, QK^T and AV (multiply-adds x 2)."""
    mlp = q if mlp is None else mlp
    return 2 * D * D * (2 * q + 2 * kv) + 4 * mlp * D * F + 4 * D * q * kv


def test_costs_against_hand_counts(models):
    m, kw = models[OV], DOWN.kw
    D, F, depth, crops, p = 32, 64, DEPTH, 17, 8
    embed = 2 * 3 * p * p * D * N * crops
    settings = ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3)
    with torch.no_grad():
        with ipcv.stats(m) as vanilla:
            m(**kw)
        with ipcv.compressed(m, vision=settings), ipcv.stats(m) as st:
            m(**kw)
    assert ipcv.costs(m, vanilla).vision == crops * depth * _block(D, F, N, N) + embed
    K, R, k = ipcv.keep_count(N, 0.35), N - ipcv.keep_count(N, 0.35), 3
    blocks = 2 * _block(D, F, N, N) + 2 * _block(D, F, K, N) + 2 * _block(D, F, K, K)
    overhead = 3 * N * D + 2 * D * R * K + 3 * (2 * D * R * k + D * K)  # eq. 1, kNN, NGR at 2 AS blocks + eq. 10
    cost = ipcv.costs(m, st)
    assert cost.vision == crops * (blocks + overhead) + embed
    assert cost.vision_tokens_per_block == (crops * N,) * 2 + (crops * K,) * 4
    # the KV cache: every prompt token of both samples (no LLM-side method), 4 layers x 2 KV heads x 16 dims, fp16
    tokens = int(kw["attention_mask"].sum())
    assert cost.kv_cache_mb == pytest.approx(tokens * 4 * 2 * 2 * 16 * 2 / 1e6)


def test_real_tower_flops_by_hand():
    """OneVision-7B's SigLIP-so400m (26 blocks, D 1152, MLP 4304) on one 384x384 crop of 27 x 27 patches."""
    with torch.device("meta"):
        tower = llava_anyres.TOWER.build()
    from ipcv.flops import vision_flops

    D, F, n = 1152, 4304, 729
    count = vision_flops(tower, [n])
    assert count.blocks == 26 * _block(D, F, n, n)
    assert count.embed_and_head == 2 * 3 * 14 * 14 * D * n
    K = ipcv.keep_count(n, 0.35)
    low = vision_flops(tower, [n], ipcv.IPCV(0.35))  # l_p 3, AS 7
    assert low.blocks == 3 * _block(D, F, n, n) + 7 * _block(D, F, K, n) + 16 * _block(D, F, K, K)


def test_reduced_output_is_refused_clearly(models):
    for m in models.values():
        with pytest.raises(NotImplementedError, match=r"output='reduced' is built for the mRoPE families"):
            ipcv.compress(m, vision=ipcv.ToMe(0.5, output="reduced"))
    names = ipcv.supported_models()
    for cls in ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel", "LlavaNextForConditionalGeneration"):
        assert f"{cls} (SigLIP tower)" in names and f"{cls} (CLIP tower)" in names
