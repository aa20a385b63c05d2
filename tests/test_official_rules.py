"""Each compared method's selection rule, written out plainly from its official code (and from the IPCV
authors' ports where the paper ran those), against the library: on fixed tensors and, for the LLM-side
methods, inside the tiny Qwen2-VL (same kept sets).

The transcriptions below are deliberately naive (Python sets and lists, one pivot / stage at a time),
in our own words; they follow the published procedures, not their code.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from families import pixels, qwen_prompts, tiny_qwen2vl
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen

import ipcv
from ipcv import catalog
from ipcv.budgets import floor_count, per_pivot4, progressive_counts
from ipcv.methods import dart as dart_fns
from ipcv.methods.ipcv import select_tokens
from ipcv.methods.sparsevlm import recycled_clusters
from ipcv.methods.tome import release_schedule
from ipcv.vision.dart_vit import dart_select

# --- plain transcriptions of the official rules ---------------------------------------------------


def reduction(keep):
    return float(f"{1 - keep:.10f}")  # what the published scripts are given, e.g. 0.65


def official_dart(keys, states, image, question, keep, n_img=4, n_txt=4):
    """DART: the 4 image and 4 question tokens with the largest key L1 norm are pivots; each pivot in
    turn (in the iteration order of a Python set of their positions) claims int(n * keep / 8) of the
    remaining image tokens, those least cosine-similar to it; kept = image pivots + claimed."""
    per = int(len(image) * (1 - reduction(keep)) / (n_img + n_txt))
    l1 = keys.abs().sum(-1)
    img_piv = [image[i] for i in l1[image].topk(n_img).indices.tolist()]
    txt_piv = [question[i] for i in l1[question].topk(n_txt).indices.tolist()]
    chosen = set(img_piv + txt_piv)
    pool = set(image) - set(img_piv)
    for p in list(chosen):
        cand = list(pool)
        sim = F.cosine_similarity(states[p][None].float(), states[cand].float(), dim=-1)
        claim = [cand[i] for i in (-sim).topk(per).indices.tolist()]
        chosen |= set(claim)
        pool -= set(claim)
    return sorted(chosen - set(txt_piv))


def official_fastv(attn, image, keep):
    """FastV: the attention the last token pays in layer K-1, heads averaged; top round(n * keep)."""
    score = attn.mean(0)[-1, image]
    k = round(len(image) * keep)
    return sorted(image[i] for i in score.topk(k).indices.tolist())


def official_v2drop_stage(h_now, h_before, image, ratio):
    """V2Drop, one stage: keep max(1, int(n * ratio)) tokens with the largest ||h_l - h_{l-1}||."""
    change = (h_now[image] - h_before[image]).norm(dim=-1)
    k = max(1, int(len(image) * ratio))
    return sorted(image[i] for i in change.topk(k).indices.tolist())


def official_sparsevlm_raters(embeds, image, question):
    """SparseVLM's raters, once from the input embeddings: softmax over the question of
    image @ question^T, averaged over the image tokens; raters are those above the mean."""
    rel = (embeds[image] @ embeds[question].T).softmax(1).mean(0)
    return [question[i] for i in range(len(question)) if rel[i] > rel.mean()]


def official_sparsevlm_stage(attn, raters, image, k):
    """SparseVLM, one stage (top part): the attention from the raters, heads then raters averaged."""
    score = attn.mean(0)[raters][:, image].mean(0)
    return sorted(image[i] for i in score.topk(k).indices.tolist())


def release_ipcv_keep(h_lp, h_prev, keep):
    """IPCV release: one top-k of ||h_lp - h_{lp-1}|| over all patches of the call, int(L * (1 - r))."""
    score = (h_lp - h_prev).norm(dim=-1)
    k = int(score.numel() * (1 - reduction(keep)))
    return sorted(score.topk(k).indices.tolist())


def release_dart_vit(keys, states, keep, pivots=4):
    """The authors' DART(ViT): 4 pivots over the whole call; each claims the per-pivot count rounded
    to the nearer multiple of 4 (tie down) of the least cosine-similar remaining patches."""
    n = states.shape[0]
    raw = n * (1 - reduction(keep)) / pivots
    lo, hi = int(raw) // 4 * 4, (int(raw) + 3) // 4 * 4
    per = lo if abs(raw - lo) <= abs(raw - hi) else hi
    piv = keys.abs().sum(-1).topk(pivots).indices.tolist()
    chosen, pool = set(piv), set(range(n)) - set(piv)
    for p in list(chosen):
        cand = list(pool)
        sim = F.cosine_similarity(states[p][None], states[cand], dim=-1)
        claim = [cand[i] for i in (-sim).topk(per).indices.tolist()]
        chosen |= set(claim)
        pool -= set(claim)
    return sorted(chosen)


def release_tome_schedule(n, keep, start, depth):
    """The authors' ToMe/ToFu: from block `start`, remove (c - int(c * max(t / s, 0.8))) // 4 * 4."""
    t, s, c, out = 1 - reduction(keep), 1.0, n, []
    for i in range(depth):
        if i < start or c <= 1 or not s > t:
            out.append(0)
            continue
        a = max(t / s, 0.8)
        r = (c - int(c * a)) // 4 * 4
        out.append(r)
        c, s = c - r, s * a
    return out


# --- fixed tensors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.35, 0.2, 0.5])
@pytest.mark.parametrize("seed", range(3))
def test_dart_rule_fixed_tensors(keep, seed):
    g = torch.Generator().manual_seed(seed)
    N, first, n = 90, 7, 64  # 7 text tokens, 64 image tokens, 19 text tokens after the image
    keys, states = torch.randn(N, 32, generator=g), torch.randn(N, 24, generator=g)
    image, question = list(range(first, first + n)), list(range(first + n, N))
    expected = official_dart(keys, states, image, question, keep)
    scores = dart_fns.pivot_scores(keys)
    rows = torch.tensor(image)
    guide_rows = torch.tensor(question)[scores[question].topk(4).indices]
    per = int(n * (1 - reduction(keep)) / 8)
    local = dart_fns.dart_keep(
        states[rows], scores[rows], 4 + 8 * per, 4, states[guide_rows],
        positions=rows, guide_positions=guide_rows, per_pivot=per,
    )  # fmt: skip
    assert rows[local].tolist() == expected
    assert ipcv.DART(keep, budget="per_pivot").counts(n) == [len(expected)]


def test_official_pivot_order_is_python_set_order():
    positions = [40, 9, 33, 1, 72, 17]
    order = dart_fns.official_order(positions)
    assert [positions[i] for i in order] == list(set(positions))


@pytest.mark.parametrize("keep", [0.35, 0.5, 0.2])
def test_ipcv_global_scope_is_the_release_budget(keep):
    g = torch.Generator().manual_seed(1)
    h_prev, h = torch.randn(1023 + 293, 16, generator=g), torch.randn(1023 + 293, 16, generator=g)
    keep_rows, counts = select_tokens((h - h_prev).norm(dim=-1), [1023, 293], keep, "global")
    assert keep_rows.tolist() == release_ipcv_keep(h, h_prev, keep)
    assert sum(counts) == int(1316 * (1 - reduction(keep)))


@pytest.mark.parametrize("keep", [0.65, 0.5, 0.35, 0.2])
def test_dart_vit_release_rule(keep):
    g = torch.Generator().manual_seed(2)
    seg = [96, 64]
    keys, states = torch.randn(160, 32, generator=g), torch.randn(160, 16, generator=g)
    settings = ipcv.DARTViT(keep, pivots=4, key_layer="previous", budget="per_pivot4", scope="global")
    kept, counts = dart_select(states, dart_fns.pivot_scores(keys), seg, None, settings)
    assert kept.tolist() == release_dart_vit(keys, states, keep)
    assert sum(counts) == 4 + 4 * per_pivot4(160, keep, 4)


@pytest.mark.parametrize("keep", [0.65, 0.5, 0.35, 0.2])
@pytest.mark.parametrize("n", [1024, 1316, 256])
def test_tome_release_schedule(keep, n):
    assert release_schedule(n, 1 - reduction(keep), 32, 3) == release_tome_schedule(n, keep, 3, 32)


def test_v2drop_progressive_counts():
    # official Qwen2-VL code: 0.25, 0.05, 0 of the current count at layers 3, 16, 22
    assert progressive_counts(1316, (0.25, 0.05, 0.0)) == [329, 16, 1]
    # the IPCV authors' port at keep 0.35: 0.35, 0.35 of the current count, then one token
    n, out = 256, []
    for r in (0.35, 0.35, 0.0):
        n = max(1, int(n * (1 - reduction(r))))
        out.append(n)
    assert progressive_counts(256, (0.35, 0.35, 0.0), "floor") == out == [89, 31, 1]


def test_layer_averaged_budget_matches_sparsevlm_accounting():
    # SparseVLM counts the equivalent tokens as the average over all layers: LLaVA 576 tokens, 32 layers,
    # counts 300 / 200 / 110 from the inputs of layers 2 / 6 / 16 average 191 tokens
    from ipcv.budgets import average_counts, layer_average

    assert layer_average(576, [300, 200, 110], (2, 6, 16), 32) == pytest.approx(191.0)
    counts = average_counts(256, 0.35, (3, 7, 16), 28)
    assert layer_average(256, counts, (3, 7, 16), 28) <= 0.35 * 256
    bigger = [c + 1 for c in counts]  # one more token at every stage overshoots: the largest schedule
    assert layer_average(256, bigger, (3, 7, 16), 28) > 0.35 * 256 - 3
    with pytest.raises(ValueError, match=r"keep_ratio=0\.05 cannot be reached with budget='average'"):
        ipcv.SparseVLM(0.05).check_depth(28)


def test_sparsevlm_recycle_counts():
    assert recycled_clusters(276, 0.3) == (83, 9)  # official: int(0.3 * d) + 1 recycled, m // 10 + 1 clusters
    assert recycled_clusters(100, 0.05, "at_least_one") == (5, 1)  # the authors' port
    assert recycled_clusters(1, 0.05, "at_least_one") == (0, 0)


def test_floor_count_is_the_published_rounding():
    for n in (24, 256, 1023, 1316):
        for keep in (0.65, 0.5, 0.35, 0.2, 0.05):
            assert floor_count(n, keep) == max(1, int(n * (1 - reduction(keep))))


# --- inside the tiny Qwen2-VL: same kept sets -----------------------------------------------------

IMAGE, START, END = 250, 252, 253
BEFORE, AFTER = [1, 5, 9], [END, 6, 8, 11, 12, 13, 7]  # the vision-end token counts as text after the image


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2vl("eager", layers=4, decoder_std=0.08)


def prompt(grids):
    ids = list(BEFORE)
    for t, h, w in grids:
        ids += [START] + [IMAGE] * (t * h * w // 4)
        ids += [END, 4] if (t, h, w) != grids[-1] else []
    ids = torch.tensor([ids + AFTER])
    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=(ids == IMAGE).int(),
        pixel_values=pixels(grids),
        image_grid_thw=torch.tensor(grids),
    )


def internals(model, kw):
    """Uncompressed run: decoder inputs of every layer, and each text layer's post-rotary keys and
    eager attention weights (captured from transformers' own eager attention function)."""
    keys, attn = {}, {}
    original = qwen.eager_attention_forward

    def spy(module, *args, **kwargs):
        out, weights = original(module, *args, **kwargs)
        if isinstance(module, qwen.Qwen2VLAttention):  # text layers: (query, key, value, mask, ...)
            keys[module.layer_idx], attn[module.layer_idx] = args[1][0], weights[0]
        return out, weights

    qwen.eager_attention_forward = spy
    try:
        with torch.no_grad():
            out = model(**kw, output_hidden_states=True)
    finally:
        qwen.eager_attention_forward = original
    return out.hidden_states, keys, attn


def library_choice(model, kw, settings):
    """Visual prompt positions the library keeps at each stage (the selections of one call)."""
    chosen = []
    row = catalog.BY_SETTINGS[type(settings)]
    select = row.run

    def spy(ops, s, stage, layer, h, h_prev, slots):
        sel = select(ops, s, stage, layer, h, h_prev, slots)
        chosen.append(sorted(slots.pos[0, sel.keep[0]].tolist()))
        return sel

    catalog.BY_SETTINGS[type(settings)] = dataclasses.replace(row, run=spy)
    try:
        with torch.no_grad(), ipcv.compressed(model, language=settings):
            model(**kw)
    finally:
        catalog.BY_SETTINGS[type(settings)] = row
    return chosen


def positions(kw):
    ids = kw["input_ids"][0].tolist()
    image = [i for i, t in enumerate(ids) if t == IMAGE]
    return ids, image


@pytest.mark.parametrize("keep", [0.35, 0.5])
def test_dart_in_qwen2vl(model, keep):
    kw = prompt([[1, 8, 12]])
    hidden, keys, _ = internals(model, kw)
    ids, image = positions(kw)
    question = list(range(image[-1] + 1, len(ids)))
    K = 2
    flat = keys[K - 1].transpose(0, 1).flatten(1)  # [N, heads * d], layer K-1's keys
    states = model.model.language_model.norm(hidden[K][0])
    expected = official_dart(flat, states, image, question, keep)
    settings = ipcv.DART(keep, layer=K, budget="per_pivot", spans="first", rounding="floor")
    assert library_choice(model, kw, settings) == [expected]


def test_dart_first_image_only(model):
    kw = prompt([[1, 8, 12], [1, 4, 8]])
    hidden, keys, _ = internals(model, kw)
    ids, image = positions(kw)
    first = image[:24]
    question = list(range(first[-1] + 1, len(ids)))
    question = [q for q in question if ids[q] != IMAGE]
    flat = keys[1].transpose(0, 1).flatten(1)
    expected = official_dart(flat, model.model.language_model.norm(hidden[2][0]), first, question, 0.35)
    settings = ipcv.DART(0.35, budget="per_pivot", spans="first")
    assert library_choice(model, kw, settings) == [expected]
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        model(**kw)
    assert st.decoder[-1].kept == [[[len(expected), len(image) - 24]]]  # the second image is not pruned


@pytest.mark.parametrize("keep", [0.35, 0.2])
def test_fastv_in_qwen2vl(model, keep):
    kw = prompt([[1, 8, 12]])
    _, _, attn = internals(model, kw)
    _, image = positions(kw)
    assert library_choice(model, kw, ipcv.FastV(keep, layer=2)) == [official_fastv(attn[1], image, keep)]


def release_fastv(attn_prev, image, keep):
    """The IPCV authors' FastV port: at decoder layer ``pruned_layer`` (their scripts: 3) it takes the eager
    attention of layer ``pruned_layer - 1``, heads averaged, the last token's row, and keeps the top
    ``int(n * (1 - reduction))`` image tokens."""
    score = attn_prev.mean(0)[-1, image]
    k = int(len(image) * (1 - reduction(keep)))
    return sorted(image[i] for i in score.topk(k).indices.tolist())


@pytest.mark.parametrize("keep", [0.35, 0.2])
def test_fastv_paper_preset_is_the_release_script(model, keep):
    """``protocol="paper"`` runs FastV where the authors' lmms-eval scripts do (``pruned_layer=3``: the input
    of decoder layer 3, scored by layer 2's attention), with their rounding."""
    kw = prompt([[1, 8, 12]])
    _, _, attn = internals(model, kw)
    _, image = positions(kw)
    _, settings = ipcv.presets.paper_settings("table4", f"vit100_llm{round(keep * 100)}", "FastV")
    assert settings.layer == 3
    assert library_choice(model, kw, settings) == [release_fastv(attn[2], image, keep)]
    _, with_ipcv = ipcv.presets.paper_settings("table5", "vit35_llm35", "IPCV+FastV")
    assert with_ipcv.layer == 3


def test_v2drop_in_qwen2vl(model):
    kw = prompt([[1, 8, 12]])
    hidden, _, _ = internals(model, kw)
    _, image = positions(kw)
    settings = ipcv.V2Drop(0.5, layers=(2, 3), budget="progressive", stage_ratios=(0.5, 0.25))
    chosen = library_choice(model, kw, settings)
    assert chosen[0] == official_v2drop_stage(hidden[2][0], hidden[1][0], image, 0.5)
    assert len(chosen[1]) == max(1, int(12 * 0.25))


def test_sparsevlm_in_qwen2vl(model):
    kw = prompt([[1, 8, 12]])
    hidden, _, attn = internals(model, kw)
    ids, image = positions(kw)
    question = list(range(image[-1] + 1, len(ids)))
    raters = official_sparsevlm_raters(hidden[0][0].float(), image, question)
    settings = ipcv.SparseVLM(0.5, layers=(2, 3), budget="progressive", stage_ratios=(0.5, 0.5))
    chosen = library_choice(model, kw, settings)
    k = 12  # int(24 * 0.5)
    top = official_sparsevlm_stage(attn[1], raters, image, k)
    m, c = recycled_clusters(24 - k, 0.3)
    assert (m, c) == (4, 1)
    assert set(top) <= set(chosen[0]) and len(chosen[0]) == k + c  # the cluster centre comes on top


def test_keep_one_is_bit_exact_in_every_protocol(model):
    kw = prompt([[1, 8, 12]])
    with torch.no_grad():
        ref = model(**kw).logits
        for settings in (
            ipcv.DART(1.0, budget="per_pivot", spans="first", rounding="floor", layer=3),
            ipcv.FastV(1.0, layer=3, spans="first", rounding="floor"),
            ipcv.V2Drop(1.0, layers=(1, 2, 3)),
            ipcv.V2Drop(1.0, layers=(1, 2, 3), budget="progressive", rounding="floor"),
            ipcv.SparseVLM(1.0, layers=(1, 2, 3)),
            ipcv.SparseVLM(1.0, layers=(1, 2, 3), budget="progressive", stage_ratios=(1.0, 1.0, 1.0)),
        ):
            with ipcv.compressed(model, language=settings):
                assert torch.equal(model(**kw).logits, ref), settings


def test_ipcv_global_in_the_tower(model):
    """The patched tower under scope='global' keeps the release's top int(L * (1 - r)) patches."""
    kw = prompt([[1, 8, 12], [1, 4, 8]])
    tower = model.model.visual
    states = {}

    def grab(i):
        def hook(module, args, kwargs):
            states[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        return hook

    handles = [tower.blocks[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in (1, 2)]
    try:
        with torch.no_grad():
            tower(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
    finally:
        for h in handles:
            h.remove()
    settings = ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=1, scope="global")
    with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.trace() as tr:
        tower(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
    kept = tr.calls[0].keep.tolist()
    assert kept == release_ipcv_keep(states[2], states[1], 0.35)
    assert len(kept) == math.floor(128 * 0.35)


def test_spans_first_takes_a_video_as_one_span_and_spares_later_images(model):
    kw = qwen_prompts([("video", [4, 6, 8]), ("image", [1, 4, 4])])  # 4 frames of 12 tokens, then a 4-token image
    settings = ipcv.V2Drop(0.5, layers=(2,), budget="progressive", spans="first")
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        model(**kw)
    # one budget over all frames: int(48 * 0.5) = 24 kept in total (split as the scores fall); the image whole
    kept = st.decoder[-1].kept[0][0]
    assert len(kept) == 5 and sum(kept[:4]) == 24 and kept[4] == 4
    settings = ipcv.V2Drop(0.5, layers=(2,), budget="progressive", spans="all")
    with torch.no_grad(), ipcv.compressed(model, language=settings), ipcv.stats(model) as st:
        model(**kw)
    assert sum(st.decoder[-1].kept[0][0]) == 26  # int(52 * 0.5) over every visual token of the sample


@pytest.mark.parametrize(
    "settings",
    [
        ipcv.DARTViT(1.0, pivots=4, key_layer="previous", budget="per_pivot4", scope="global"),
        ipcv.ToMe(1.0, schedule="release"),
        ipcv.ToFu(1.0, schedule="release", prune_layers=4, merge="average"),
        ipcv.IPCV(1.0, prune_layer=2, stabilize_layers=1, scope="global"),
    ],
    ids=["DARTViT", "ToMe", "ToFu", "IPCV"],
)
def test_vision_switches_keep_one_bit_exact(model, settings):
    kw = prompt([[1, 8, 12], [1, 4, 8]])
    tower = model.model.visual
    with torch.no_grad():
        ref = tower(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
        with ipcv.compressed(model, vision=settings):
            out = tower(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
    ref = ref.pooler_output if hasattr(ref, "pooler_output") else ref
    out = out.pooler_output if hasattr(out, "pooler_output") else out
    assert torch.equal(out, ref)


def test_dart_vit_release_switches_run_in_the_tower(model):
    kw = prompt([[1, 8, 12], [1, 4, 8]])
    settings = ipcv.DARTViT(0.35, prune_layer=2, pivots=4, key_layer="previous", budget="per_pivot4", scope="global")
    with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.trace() as tr:
        model.model.visual(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
    assert sum(tr.calls[0].keep_counts) == 4 + 4 * per_pivot4(128, 0.35, 4)  # over both images together


def test_costs_of_the_release_switches(model):
    """ipcv.costs accounts for the authors' DART(ViT) (one budget over both images) and ToMe schedule."""
    kw = prompt([[1, 8, 12], [1, 4, 8]])
    for settings in (
        ipcv.DARTViT(0.35, prune_layer=2, pivots=4, key_layer="previous", budget="per_pivot4", scope="global"),
        ipcv.ToMe(0.35, schedule="release", start_layer=2),
    ):
        with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.stats(model) as st:
            model(**kw)
        c = ipcv.costs(model, st)
        assert 0 < c.vision < ipcv.costs(model, _vanilla_stats(model, kw)).vision


def _vanilla_stats(model, kw):
    with torch.no_grad(), ipcv.stats(model) as st:
        model(**kw)
    return st


def test_average_budget_refuses_what_it_cannot_reach():
    from ipcv.budgets import average_counts

    with pytest.raises(ValueError, match=r"keep_ratio=0\.11 cannot be reached with budget='average' for a span of 256"):
        average_counts(256, 0.11, (3, 7, 16), 28)


# --- ToMe's own order after a merge (official tome/merge.py), several blocks ------------------------


def official_tome(x, rs, class_token):
    """Official ToMe block after block on fixed features (the metric is the tokens themselves): the sequence
    alternates A (even positions) / B (odd); each A token links to its most cosine-similar B token (CLS, at
    position 0, links to nothing); the r best-linked A tokens merge into their B token (size-weighted mean);
    the next sequence is the unmerged A tokens (in link order, or back in sequence order when there is a CLS
    token), then all B tokens. Returns each final token's (feature, sources)."""
    seq = [(x[i].double(), 1.0, [i]) for i in range(x.shape[0])]
    for r in rs:
        r = min(r, (len(seq) - int(class_token)) // 2)
        if r <= 0:
            continue
        A, B = seq[0::2], seq[1::2]
        unit = [a[0] / a[0].norm() for a in A], [b[0] / b[0].norm() for b in B]
        link = []
        for i, ua in enumerate(unit[0]):
            sims = [float(ua @ ub) for ub in unit[1]]
            best = max(range(len(B)), key=lambda j: (sims[j], -j))
            link.append((-math.inf if class_token and i == 0 else sims[best], best))
        ranked = sorted(range(len(A)), key=lambda i: -link[i][0])  # stable: ties keep A order
        merged, unmerged = ranked[:r], ranked[r:]
        if class_token:
            unmerged = sorted(unmerged)
        new_b = []
        for j, (fb, sb, src) in enumerate(B):
            members = [(fb, sb, src)] + [A[i] for i in merged if link[i][1] == j]
            size = sum(m[1] for m in members)
            new_b.append((sum(m[0] * m[1] for m in members) / size, size, sum((m[2] for m in members), [])))
        seq = [A[i] for i in unmerged] + new_b
    return [(f, sorted(src)) for f, _, src in seq]


class _Identity:
    """Block ops whose attention and MLP change nothing and whose metric is the tokens themselves, so that
    run_merging's matching can be compared with a transcription on fixed features."""

    def full(self, layer, h):
        return h

    def attention_part(self, layer, h, rows, seg_lengths, log_size=None, rotated=False):
        return h, h

    def mlp_part(self, layer, h):
        return h


@pytest.mark.parametrize("class_token", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_tome_continues_in_its_own_order(class_token, seed):
    """ToMe's default and ``protocol="official"`` rule over several blocks: the library's merged groups and
    merged features are official ToMe's, in whose order the next block's A / B split is taken."""
    from ipcv.vision.merging import merge_plan, run_merging

    g = torch.Generator().manual_seed(seed)
    p = int(class_token)
    n, depth, keep = 40, 4, 0.25
    x = torch.randn(p + n, 6, generator=g)
    protected = torch.zeros(p + n, dtype=torch.bool)
    protected[:p] = True
    settings = ipcv.ToMe(keep, proportional_attention=False)
    rs = [r[0] for r in merge_plan([p + n], [p], settings, depth)]
    assert sum(1 for r in rs if r) >= 3  # several blocks merge: the order of the later ones matters
    with ipcv.trace() as t:
        out = run_merging(_Identity(), depth, x, [p + n], settings, protected if p else None)
    source = t.calls[0].source
    groups = {}
    for pos, s in enumerate(source.tolist()):
        groups.setdefault(s, []).append(pos)
    expected = official_tome(x, rs, class_token)
    assert sorted(groups.values()) == sorted(src for _, src in expected)
    for feature, src in expected:
        torch.testing.assert_close(out[src], feature.float().expand(len(src), -1), rtol=1e-5, atol=1e-5)
    # the test can tell the orders apart: keeping the original order after each merge pairs other tokens
    original = _tome_in_original_order(x, rs, p)
    assert sorted(original) != sorted(src for _, src in expected)


def _tome_in_original_order(x, rs, p):
    """The previous rule (each surviving token stays at its packed position between blocks, A / B alternating
    over the free tokens in that order): its merged groups, to show that the fixture separates the orders."""
    seq = [(x[i].double(), 1.0, [i], i) for i in range(p, x.shape[0])]  # (feature, size, sources, row)
    for r in rs:
        if not r:
            continue
        A, B = seq[0::2], seq[1::2]
        link = []
        for fa, _, _, _ in A:
            sims = [float(fa @ fb / (fa.norm() * fb.norm())) for fb, _, _, _ in B]
            best = max(range(len(B)), key=lambda j: (sims[j], -j))
            link.append((sims[best], best))
        merged = sorted(range(len(A)), key=lambda i: -link[i][0])[:r]
        out = []
        for pos in range(len(seq)):
            if pos % 2 == 0 and pos // 2 in merged:
                continue
            members = [seq[pos]] + ([A[i] for i in merged if link[i][1] == pos // 2] if pos % 2 else [])
            size = sum(m[1] for m in members)
            out.append((sum(m[0] * m[1] for m in members) / size, size, sum((m[2] for m in members), []), seq[pos][3]))
        seq = sorted(out, key=lambda t: t[3])
    return [sorted(src) for _, _, src, _ in seq] + [[i] for i in range(p)]


# --- DART (ViT) as the authors ran it: rotated keys, their frame boundaries -------------------------


def _tower_internals(tower, kw, blocks):
    """Unpruned tower: the input of each block in ``blocks`` and each block's keys after the 2D rotary
    embedding, captured from transformers' own ``apply_rotary_pos_emb_vision`` (one call per block)."""
    states, rotated = {}, []
    original = qwen.apply_rotary_pos_emb_vision

    def spy(q, k, cos, sin):
        out = original(q, k, cos, sin)
        rotated.append(out[1].detach().clone())
        return out

    def grab(i):
        def hook(module, args, kwargs):
            states[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        return hook

    handles = [tower.blocks[i].register_forward_pre_hook(grab(i), with_kwargs=True) for i in blocks]
    qwen.apply_rotary_pos_emb_vision = spy
    try:
        with torch.no_grad():
            tower(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
    finally:
        qwen.apply_rotary_pos_emb_vision = original
        for h in handles:
            h.remove()
    return states, rotated


@pytest.mark.parametrize("keep", [0.35, 0.5])
def test_dart_vit_paper_preset_scores_rotated_keys(model, keep):
    """The authors' DART(ViT) (first commit of their release): pivots by the L1 norm of block lp - 1's keys
    *after* the rotary embedding (the keys its attention returns), over all patches of the call."""
    kw = prompt([[1, 8, 12], [1, 4, 8]])
    tower = model.model.visual
    states, rotated = _tower_internals(tower, kw, [2])
    keys = rotated[1].flatten(1)  # block 1's rotated keys [L, H * d]
    vision, _ = ipcv.presets.paper_settings("table4", f"vit{round(keep * 100)}_llm{round(keep * 100)}", "DART (ViT)")
    assert vision.metric == "rotated_keys" and vision.frame_bounds == "release"
    settings = dataclasses.replace(vision, prune_layer=2, output="full")
    with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.trace() as tr:
        tower(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
    kept = torch.nonzero(tr.calls[0].source == torch.arange(128)).flatten().tolist()
    assert kept == release_dart_vit(keys, states[2], keep)
    # keys before the rotary (the library's default) choose other pivots on this input
    plain = dataclasses.replace(settings, metric="keys")
    with torch.no_grad(), ipcv.compressed(model, vision=plain), ipcv.trace() as tr2:
        tower(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
    assert not torch.equal(tr2.calls[0].source, tr.calls[0].source)


def release_cu_seqlens(cu_seqlens, keep):
    """The authors' pruned cu_seqlens: each kept index's frame by searchsorted(cu_seqlens, index, right=False)
    - 1, clamped to the frames, counted, cumulated."""
    frames = len(cu_seqlens) - 1
    frame = (torch.searchsorted(cu_seqlens, keep, right=False) - 1).clamp(0, frames - 1)
    counts = torch.bincount(frame, minlength=frames)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).tolist()


def test_dart_vit_frame_bounds_release_is_the_authors_cu_seqlens(model):
    """``frame_bounds="release"``: the blocks after pruning attend in the segments the authors' code builds
    (a kept first patch of the second image is counted in the first); ``"exact"``: in each image's own."""
    from ipcv.vision.dart_vit import release_frame_counts

    g = torch.Generator().manual_seed(0)
    keep = torch.cat([torch.tensor([0, 96]), torch.randperm(160, generator=g)[:40]]).unique().sort().values
    cu = torch.tensor([0, 96, 128, 160])
    assert [0, *torch.tensor(release_frame_counts(keep, [96, 32, 32])).cumsum(0).tolist()] == release_cu_seqlens(
        cu, keep
    )
    kw = prompt([[1, 8, 12], [1, 4, 8]])
    tower = model.model.visual
    seen = {}

    def grab(module, args, kwargs):
        seen.setdefault("cu", kwargs["cu_seqlens"].tolist())

    base = ipcv.DARTViT(0.5, prune_layer=2, pivots=4, key_layer="previous", scope="global")
    for bounds in ("exact", "release"):
        seen.clear()
        hook = tower.blocks[3].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad(), ipcv.compressed(model, vision=dataclasses.replace(base, frame_bounds=bounds)):
                with ipcv.trace() as tr:
                    tower(kw["pixel_values"], grid_thw=kw["image_grid_thw"])
        finally:
            hook.remove()
        kept = torch.nonzero(tr.calls[0].source == torch.arange(128)).flatten()
        exact = [0, *torch.tensor(tr.calls[0].keep_counts).cumsum(0).tolist()]
        expected = release_cu_seqlens(torch.tensor([0, 96, 128]), kept) if bounds == "release" else exact
        assert 96 in kept.tolist() and expected[1] == exact[1] + (bounds == "release")  # the case the bug hits
        assert seen["cu"] == [c for i, c in enumerate(expected) if i == 0 or c != expected[i - 1]]
