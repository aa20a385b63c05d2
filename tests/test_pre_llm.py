"""The pre-LLM methods (VisionZip, DivPrune, CDPruner, RandomKeep, Pool): each official rule transcribed
plainly on fixed tensors against the library's maths, then the methods inside the tiny models of every
family: keep 1.0 bit-exact, generate() with the kept counts and a cache that matches a full forward, padded
batches, several images, and the pairing with IPCV inside the ViT.

The transcriptions are naive (Python lists, determinants, explicit loops) and in our own words; DivPrune's
follows its paper (its code is CC BY-NC and was not read).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from families import BY_NAME, FAMILIES, QWEN2_VL, check_kept

import ipcv
from ipcv.methods import cdpruner, divprune, pool, random_keep, visionzip
from ipcv.models import registry

# --- plain transcriptions of the official rules ---------------------------------------------------


def naive_divprune(x, k):
    """DivPrune's Algorithm 1 in words: the token farthest (1 - cosine) from its nearest other token first,
    then repeatedly the token whose nearest chosen token is farthest."""
    n = len(x)
    d = [[1 - float(F.cosine_similarity(x[i], x[j], dim=0)) for j in range(n)] for i in range(n)]
    first = max(range(n), key=lambda i: (min(d[i][j] for j in range(n) if j != i), -i))
    chosen = [first]
    while len(chosen) < k:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (min(d[i][j] for j in chosen), -i)))
    return sorted(chosen)


def naive_cdpruner(image, text, k):
    """CDPruner: relevance = min-max of -mean cos(image, text) (the official sign); kernel
    diag(r) S diag(r); greedy MAP: each step the item that maximises det(L_S) (float64 determinants)."""
    cos = F.normalize(image.double(), dim=-1) @ F.normalize(text.double(), dim=-1).T
    r = -cos.mean(-1)
    r = (r - r.min() + 1e-6) / (r.max() - r.min())
    unit = F.normalize(image.double(), dim=-1)
    L = r[:, None] * (unit @ unit.T) * r[None, :]
    chosen = []
    for _ in range(k):
        rest = [i for i in range(len(image)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: float(torch.det(L[chosen + [i]][:, chosen + [i]]))))
    return sorted(chosen)


def naive_visionzip(cls_attention, keys, states, dominant, contextual):
    """VisionZip (official LLaVA rule): [CLS] attention summed over heads, top ``dominant`` patches; the
    rest in order, targets every ``max(1, r // contextual)``-th of them; each other one goes to its most
    cosine-similar target (keys averaged over heads); contextual token = target + mean(assigned)."""
    score = cls_attention.sum(0)
    top = sorted(score.topk(dominant).indices.tolist())
    rest = [i for i in range(len(score)) if i not in top]
    step = max(1, len(rest) // contextual)
    targets = [rest[j] for j in range(0, len(rest), step)][:contextual]
    metric = keys.mean(0)
    groups = {t: [] for t in targets}
    for i in rest:
        if i in targets:
            continue
        sims = [float(F.cosine_similarity(metric[i], metric[t], dim=0)) for t in targets]
        groups[targets[sims.index(max(sims))]].append(i)
    merged = [states[t] + (states[groups[t]].mean(0) if groups[t] else 0) for t in targets]
    return top, targets, torch.stack(merged)


def test_divprune_is_the_papers_greedy():
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    for k in (1, 5, 14, 40):
        assert divprune.divprune_keep(x, k).tolist() == naive_divprune(x, k)


def test_cdpruner_fast_map_is_the_greedy_determinant_and_the_official_relevance():
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(24, 32, generator=g), torch.randn(5, 32, generator=g)  # rank 24 >= k
    for k in (1, 4, 9):
        assert cdpruner.cdpruner_keep(image, image, text, k).tolist() == naive_cdpruner(image, text, k)
    raw = -(F.normalize(image) @ F.normalize(text).T).mean(-1)
    torch.testing.assert_close(cdpruner.relevance(image, text), (raw - raw.min() + 1e-6) / (raw.max() - raw.min()))
    # theta: q = exp(theta / (2 (1 - theta)) r), the paper's trade-off
    L = cdpruner.conditional_kernel(torch.eye(3), torch.tensor([0.0, 0.5, 1.0]), 0.5)
    torch.testing.assert_close(L.diagonal(), torch.exp(torch.tensor([0.0, 0.5, 1.0])))


def test_visionzip_is_the_official_dominant_and_contextual_rule():
    g = torch.Generator().manual_seed(2)
    heads, n, d = 4, 30, 8
    cls = torch.rand(heads, n, generator=g)
    keys, states = torch.randn(heads, n, d, generator=g), torch.randn(n, 16, generator=g)
    dominant, contextual = visionzip.split_counts(12, 10 / 64)
    assert (dominant, contextual) == (10, 2)
    assert visionzip.split_counts(64, 10 / 64) == (54, 10) and visionzip.split_counts(192, 10 / 64) == (162, 30)
    top, targets, groups = visionzip.visionzip_merge(cls.sum(0), keys.mean(0), dominant, contextual)
    ref_top, ref_targets, ref_states = naive_visionzip(cls, keys, states, dominant, contextual)
    assert top.tolist() == ref_top and targets.tolist() == ref_targets
    torch.testing.assert_close(visionzip.contextual_states(states, targets, groups), ref_states)
    assert sorted(torch.cat([top, targets, *groups]).tolist()) == list(range(n))  # every token used once


def test_column_attention_is_the_mean_received_attention():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(6, 2, 4, generator=g), torch.randn(6, 2, 4, generator=g)
    probs = torch.stack([(q[:, h] @ k[:, h].T * 0.5).softmax(-1) for h in range(2)])  # [H, Q, K]
    torch.testing.assert_close(visionzip.column_attention(q, k, 0.5), probs.mean(1).sum(0))


def test_pool_is_torch_average_pooling():
    x = torch.randn(6 * 8, 5, generator=torch.Generator().manual_seed(4))
    grid = x.T.reshape(1, 5, 6, 8)
    ref = F.avg_pool2d(grid, 2).flatten(2)[0].T  # 2x2, stride 2: keep 0.25
    torch.testing.assert_close(pool.pool_states(x, pool.pool_cells(6, 8, 0.25)), ref)
    assert pool.pooled_grid(6, 8, 0.35) == (4, 5)  # round(6 * 0.59), round(8 * 0.59)
    ref = F.adaptive_avg_pool2d(grid, (4, 5)).flatten(2)[0].T
    torch.testing.assert_close(pool.pool_states(x, pool.pool_cells(6, 8, 0.35)), ref)
    assert [int(c[0]) for c in pool.pool_cells(4, 4, 0.25)] == [0, 2, 8, 10]  # each cell's top-left token


def test_random_keep_is_seeded_per_span():
    a, b = random_keep.random_keep(50, 10, seed=3, span=0), random_keep.random_keep(50, 10, seed=3, span=0)
    assert torch.equal(a, b) and a.tolist() == sorted(set(a.tolist())) and len(a) == 10
    assert not torch.equal(a, random_keep.random_keep(50, 10, seed=3, span=1))
    g = torch.Generator().manual_seed(3 * 1_000_003)
    assert a.tolist() == sorted(torch.randperm(50, generator=g)[:10].tolist())


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: ipcv.RandomKeep(0.5, seed=-1), "seed=-1 is not allowed"),
        (lambda: ipcv.CDPruner(0.5, theta=1.0), r"theta=1.0 is outside the allowed range \[0, 1\)"),
        (lambda: ipcv.CDPruner(0.5, text_from="question"), "text_from='question' is not allowed"),
        (lambda: ipcv.VisionZip(0.5, contextual_share=1.0), "contextual_share=1.0 is outside"),
        (lambda: ipcv.Pool(0.5, spans="all"), "spans='all' is not allowed"),
        (lambda: ipcv.DivPrune(0.0), r"keep_ratio=0.0 is outside the allowed range \(0, 1\]"),
    ],
)
def test_settings_validation(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


# --- inside the models ------------------------------------------------------------------------------


def pre_llm(keep):
    return {
        "VisionZip": ipcv.VisionZip(keep),
        "DivPrune": ipcv.DivPrune(keep),
        "CDPruner": ipcv.CDPruner(keep),
        "RandomKeep": ipcv.RandomKeep(keep, seed=1),
        "Pool": ipcv.Pool(keep),
    }


def expected(settings, spans, grids=None):
    """Per sample and span, the kept count: ``settings.counts(n)``; Pool: the pooled grid's cells."""
    if isinstance(settings, ipcv.Pool):
        return [[[math.prod(pool.pooled_grid(h, w, settings.keep_ratio)) for h, w in g] for g in grids]]
    return [[[settings.counts(n)[0] for n in sample] for sample in spans]]


def llm_grids(family, case):
    """(h, w) of each span's LLM grid: Qwen's grids halved by the 2x2 merge; square spans otherwise."""
    c = family.cases[case]
    return [[(math.isqrt(n),) * 2 for n in sample] for sample in c.spans]


QWEN_GRIDS = {"padded": [[(4, 6)], [(2, 3), (2, 2)]], "two_images": [[(4, 6), (2, 3)]]}


def family_grids(family, case):
    # the mRoPE families' tiny batches share their grids (8 x 12, then 4 x 6 and 4 x 4 patches)
    return QWEN_GRIDS[case] if family.name.startswith("qwen") else llm_grids(family, case)


@pytest.mark.parametrize("name", pre_llm(0.35))
def test_keep_all_is_bit_exact_and_restore(name):
    model, kw = _qwen(), QWEN2_VL.cases["padded"].kw
    with torch.no_grad():
        vanilla = model(**kw).logits
        with ipcv.compressed(model, language=type(pre_llm(0.35)[name])(1.0)):
            kept_all = model(**kw).logits
        restored = model(**kw).logits
    assert torch.equal(kept_all, vanilla) and torch.equal(restored, vanilla)


_MODELS: dict = {}


def _qwen():
    if "qwen" not in _MODELS:
        _MODELS["qwen"] = QWEN2_VL.make()
    return _MODELS["qwen"]


@pytest.mark.parametrize("name", pre_llm(0.35))
def test_generate_kept_counts_and_cache_match_a_full_forward(name, case="padded"):
    """generate() keeps the counts of every span (a padded batch whose second sample has two images), and
    its cached steps give
    the logits of a no-cache forward over prompt + generated tokens (each method's choice depends on the
    visual tokens only, or for CDPruner on the text after the image, which the appended tokens extend:
    there the prefill alone is compared)."""
    model, c = _qwen(), QWEN2_VL.cases[case]
    settings, kw, n = pre_llm(0.35)[name], c.kw, 3
    with torch.no_grad(), ipcv.compressed(model, language=settings):
        with ipcv.stats(model) as st:
            out = model.generate(
                **kw, max_new_tokens=n, min_new_tokens=n, do_sample=False, output_logits=True,
                return_dict_in_generate=True,
            )  # fmt: skip
        check_kept(st.decoder[0].kept, expected(settings, c.spans, QWEN_GRIDS[case]))
        assert all(not r.kept for r in st.decoder[1:])
        L = kw["input_ids"].shape[1]
        for t in (0,) if name == "CDPruner" else (0, n - 1):
            ids = out.sequences[:, : L + t]
            extra = ids.shape[1] - L
            full = dict(kw, input_ids=ids)
            full["attention_mask"] = torch.cat([kw["attention_mask"], torch.ones(ids.shape[0], extra).long()], 1)
            full["mm_token_type_ids"] = torch.cat(
                [kw["mm_token_type_ids"], torch.zeros(ids.shape[0], extra, dtype=torch.int)], 1
            )
            ref = model(**full, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[t], ref, rtol=1e-4, atol=1e-4)
    costs = ipcv.costs(model, st)
    assert costs.decoder > 0 and costs.kv_cache_mb > 0


def test_pool_feeds_the_cell_means_at_the_top_left_positions():
    """The first decoder layer receives, for a 4 x 6 LLM grid under Pool(0.25), the 2x2 means of the input
    embeddings, at the rotary angles of each cell's top-left token (checked through the layer's input)."""
    model, kw = _qwen(), QWEN2_VL.cases["single"].kw
    seen = []
    layer0 = model.model.language_model.layers[0]
    hook = layer0.register_forward_pre_hook(
        lambda m, a, k: seen.append((a[0], k["position_embeddings"])), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**kw)
            with ipcv.compressed(model, language=ipcv.Pool(0.25)):
                model(**kw)
    finally:
        hook.remove()
    (full, (cos_full, _)), (pooled, (cos_pooled, _)) = seen
    visual = (kw["input_ids"][0] == 250).nonzero().flatten()
    first = int(visual[0])
    grid = full[0, visual].T.reshape(1, -1, 4, 6)
    means = F.avg_pool2d(grid, 2).flatten(2)[0].T  # [6, D]
    torch.testing.assert_close(pooled[0, first : first + 6], means)
    top_left = visual[torch.tensor([0, 2, 4, 12, 14, 16])]
    torch.testing.assert_close(cos_pooled[0, first : first + 6], cos_full[0, top_left])


@pytest.mark.parametrize("family", FAMILIES, ids=str, indirect=True)
@pytest.mark.parametrize("name", pre_llm(0.35))
def test_every_family_generates_or_refuses(family, family_model, name):
    settings, c = pre_llm(0.35)[name], family.cases["padded"]
    if name == "VisionZip" and not registry.family(family.name).tower_scores:
        with pytest.raises(NotImplementedError, match="needs the vision tower's attention"):
            ipcv.compress(family_model, language=settings)
        return
    if name == "Pool" and family.name == "llava_onevision":  # AnyRes spans (base + unpadded grid + newlines)
        with torch.no_grad(), ipcv.compressed(family_model, language=settings):
            with pytest.raises(ValueError, match="with 1D positions is not a square grid"):
                family_model.generate(**c.kw, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        return
    with torch.no_grad(), ipcv.compressed(family_model, language=settings):
        with ipcv.stats(family_model) as st:
            out = family_model.generate(**c.kw, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] == c.kw["input_ids"].shape[1] + 2
    check_kept(st.decoder[0].kept, expected(settings, c.spans, family_grids(family, "padded")))


PAIRS = [("qwen2_vl", name) for name in pre_llm(0.5)] + [("qwen2_5_vl", "VisionZip"), ("qwen2_5_vl", "Pool")]


@pytest.mark.parametrize("family_name, name", PAIRS)
def test_ipcv_in_the_vit_with_each_pre_llm_method(family_name, name):
    """compress(model, vision=IPCV(0.5), language=<pre-LLM>(0.5)): the tower prunes inside, its output is
    full length, and the decoder's input keeps each method's count (VisionZip scores a block before IPCV's
    first pruned one; its default, the last block, is refused with IPCV)."""
    family = BY_NAME[family_name]
    model = _MODELS.setdefault(family_name, family.make())
    c = family.cases["padded"]
    v = ipcv.IPCV(0.5, prune_layer=3, stabilize_layers=2, neighbors=3)
    lang = pre_llm(0.5)[name]
    if name == "VisionZip":
        with (
            ipcv.compressed(model, vision=v, language=lang),
            pytest.raises(ValueError, match="does not run tower block 5"),
        ):
            model(**c.kw)
        lang = ipcv.VisionZip(0.5, layer=2)
    with torch.no_grad(), ipcv.compressed(model, vision=v, language=lang):
        with ipcv.stats(model) as st:
            out = model.generate(**c.kw, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] == c.kw["input_ids"].shape[1] + 2
    assert [call.settings for call in st.vision] == [v]
    check_kept(st.decoder[0].kept, expected(lang, c.spans, QWEN_GRIDS["padded"]))
    costs = ipcv.costs(model, st)
    with torch.no_grad(), ipcv.stats(model) as plain:
        model(**c.kw)
    assert costs.vision < ipcv.costs(model, plain).vision or name == "VisionZip"
