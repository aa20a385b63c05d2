"""ToMe / ToFu with ``scope="global"``: the IPCV authors' Qwen2-VL ports (first commit of github
Perkzi/IPCV) written out plainly, against the library: on fixed tensors and inside the tiny
Qwen2-VL (same merged sets), plus counts, reduced output, keep 1.0 and refusals.

The transcription below is deliberately naive (a Python list of tokens in the port's order, one
block at a time), in our own words; it follows the published procedure, not its code. Random
weights: these tests check sets, counts and equalities, never accuracy.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from families import INTERNVL, REDUCED_CASES, make_tower, pixels, tiny_internvl, tiny_qwen2vl
from families import qwen_text_tokens as _text
from transformers.vision_utils import get_vision_position_ids

import ipcv
from ipcv.catalog import BY_SETTINGS
from ipcv.flops import vision_flops
from ipcv.methods.tome import bipartite_soft_matching, release_matching
from ipcv.models.qwen2_vl import UNITS_KEY, reduced_units
from ipcv.vision.merging import global_plan, run_merging

SINGLE, PADDED, VIDEO, MIXED = (REDUCED_CASES[c].kw for c in ("single", "padded", "video", "mixed"))


@pytest.fixture(scope="module")
def model():
    m = tiny_qwen2vl("sdpa", layers=3, decoder_std=0.08)  # the output="reduced" tests' Qwen2-VL
    yield m
    ipcv.restore(m)


# --- the authors' port, transcribed --------------------------------------------------------------


def reduction(keep):
    return float(f"{1 - keep:.10f}")  # what the published scripts are given, e.g. 0.65


def port_match(tokens, metric, r):
    """One merge step of the port over ``tokens`` (a list in the port's order) with ``metric[i]`` the
    features of tokens[i]: alternate tokens form A (even places) and B (odd places); every A token
    links to its most cosine-similar B token; the r A tokens with the most similar links go into
    their B token. Returns (merged: {A place: B place}, next order: the A tokens left by decreasing
    link similarity, then all B tokens in order)."""
    m = F.normalize(metric.double(), dim=-1)
    a_places, b_places = list(range(0, len(tokens), 2)), list(range(1, len(tokens), 2))
    links = []
    for i in a_places:
        sims = [float(m[i] @ m[j]) for j in b_places]
        best = max(range(len(sims)), key=lambda k: sims[k])
        links.append((sims[best], i, b_places[best]))
    links.sort(key=lambda x: -x[0])  # Python's sort is stable: ties keep the lower place first
    merged = {i: j for _, i, j in links[:r]}
    order = [i for _, i, _ in links[r:]] + b_places
    return merged, order


def port_r(count, share, target):
    """The port's count for one block: keep max(target / share, 0.8) of the current tokens, the
    removed count rounded down to a multiple of 4; returns (r, share asked)."""
    asked = max(target / share, 0.8)
    r = (count - int(count * asked)) // 4 * 4
    return min(r, count // 2), asked


def port_call(h, seg_lengths, depth, keep, start, attention, metric_of, mlp, tofu=False):
    """The port's ToMe (or ToFu) over one call: every token is a dict (row: the packed position whose
    rotary angles and place it keeps, vec, sources); blocks before ``start`` leave the count alone;
    from ``start`` on while the share asked so far is above the target, one :func:`port_match` per
    block over all tokens of the call. ToMe averages a B token with everything merged into it, each
    counting once; ToFu drops the A tokens in its first half of merging blocks and averages after.
    ``attention(block, tokens)`` -> new vecs (the residual after attention), ``metric_of`` the
    features of the block's keys, ``mlp(block, vecs)`` the residual after the MLP.
    Returns the tokens in the port's order."""
    target, share = 1 - reduction(keep), 1.0
    prune_blocks = math.ceil(math.log(target) / math.log(0.8))
    tokens = [dict(row=i, vec=h[i], sources={i}) for i in range(h.shape[0])]
    for block in range(depth):
        vecs, keys = attention(block, tokens)
        for t, v in zip(tokens, vecs):
            t["vec"] = v
        if block >= start and len(tokens) > 1 and share > target:
            r, asked = port_r(len(tokens), share, target)
            if r > 0:
                merged, order = port_match(tokens, metric_of(keys), r)
                into = {}
                for a, b in merged.items():
                    into.setdefault(b, []).append(a)
                prune = tofu and block - start < prune_blocks / 2
                for b, sources in into.items():
                    if not prune:
                        tokens[b]["vec"] = torch.stack([tokens[b]["vec"]] + [tokens[a]["vec"] for a in sources]).mean(0)
                    for a in sources:
                        tokens[b]["sources"] |= tokens[a]["sources"]
                tokens = [tokens[i] for i in order]
            share *= asked
        out = mlp(block, torch.stack([t["vec"] for t in tokens]))
        for t, v in zip(tokens, out):
            t["vec"] = v
    return tokens


def source_map(tokens, L):
    """For every packed position, the row of the final token that holds it."""
    src = torch.full((L,), -1, dtype=torch.long)
    for t in tokens:
        src[list(t["sources"])] = t["row"]
    return src


def release_settings(cls, keep, start, **extra):
    return cls(
        keep, scope="global", schedule="release", start_layer=start, merge="mean", proportional_attention=False,
        metric="rotated_keys", **extra,
    )  # fmt: skip


# --- fixed tensors -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("r", [1, 4, 9])
def test_release_matching_fixed_tensors(seed, r):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(1, 22, 8, generator=g)
    m, order = release_matching(metric, r)
    merged, expected_order = port_match(list(range(22)), metric[0], r)
    into = list(range(22))
    for a, b in merged.items():
        into[a] = b
    assert m.into[0].tolist() == into
    assert order[0].tolist() == expected_order
    assert torch.equal(m.into, bipartite_soft_matching(metric, r).into)  # the same merged set as ToMe's


class _Ops:
    """Block ops of a made-up encoder whose blocks act on every token alone (so attention segments
    play no part and the port and the library can be compared exactly): the residual after
    attention is ``h + 0.5 tanh(h W_l)``, the keys ``h P_l`` (2 heads), the MLP ``h + 0.1 sin(h)``."""

    def __init__(self, depth, dim, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(depth, dim, dim, generator=g, dtype=torch.float64) / dim**0.5
        self.P = torch.randn(depth, dim, dim, generator=g, dtype=torch.float64)

    def attn(self, layer, h):
        return h + 0.5 * torch.tanh(h @ self.W[layer]), (h @ self.P[layer]).view(h.shape[0], 2, -1)

    def mlp_part(self, layer, h):
        return h + 0.1 * torch.sin(h)

    def full(self, layer, h):
        return self.mlp_part(layer, self.attn(layer, h)[0])

    def attention_part(self, layer, h, rows, seg_lengths, log_size=None, rotated=False):
        assert sum(seg_lengths) == h.shape[0] and all(seg_lengths)
        out, keys = self.attn(layer, h)
        return out, keys.mean(1)


@pytest.mark.parametrize("tofu", [False, True], ids=["ToMe", "ToFu"])
@pytest.mark.parametrize("keep", [0.35, 0.5, 0.2])
def test_port_rule_fixed_tensors(tofu, keep):
    depth, start, seg = 14, 2, [40, 24, 32]
    L = sum(seg)
    ops = _Ops(depth, 12)
    h = torch.randn(L, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = port_call(
        h, seg, depth, keep, start,
        attention=lambda b, toks: ops.attn(b, torch.stack([t["vec"] for t in toks])),
        metric_of=lambda keys: keys.mean(1), mlp=ops.mlp_part, tofu=tofu,
    )  # fmt: skip
    if tofu:
        settings = release_settings(
            ipcv.ToFu, keep, start, prune_layers=ipcv.presets.tofu_release_prune_layers(keep, start)
        )
    else:
        settings = release_settings(ipcv.ToMe, keep, start)
    with ipcv.trace() as tr:
        out = run_merging(ops, depth, h, seg, settings)
    record = tr.calls[0]
    assert torch.equal(record.source, source_map(expected, L))  # the same merged sets
    assert sum(record.keep_counts) == len(expected)
    for t in expected:
        torch.testing.assert_close(out[t["row"]], t["vec"], rtol=1e-5, atol=1e-5)  # merges average in float32
    # merges crossed images (what scope="global" is about), so the images end with unequal shares
    seg_of = torch.bucketize(torch.arange(L), torch.tensor(seg).cumsum(0), right=True)
    assert bool((seg_of[record.source] != seg_of).any())


def test_global_plan_is_the_port_count():
    for n, keep in [(5036, 0.35), (5036, 0.2), (1296, 0.5), (112, 0.35), (6, 0.5)]:
        share, target, count, expected = 1.0, 1 - reduction(keep), n, []
        for block in range(32):
            if block < 3 or count <= 1 or not share > target:
                expected.append(0)
                continue
            r, asked = port_r(count, share, target)
            expected.append(r)
            count, share = count - r, share * asked
        assert global_plan(n, ipcv.ToMe(keep, scope="global", schedule="release"), 32) == expected
    # even schedule, one budget: keep_count of the call's total
    assert sum(global_plan(112, ipcv.ToMe(0.35, scope="global"), 6)) == 112 - 39


# --- inside the tiny Qwen2-VL tower ---------------------------------------------------------------


def _tower_port(tower, grid, settings_keep, start, tofu=False):
    """The port run by hand with the tower's own weights; attention per image / frame of each token's
    place (the port's attention segments are only right for one image; see the book)."""
    grid_t = torch.tensor(grid)
    x = pixels(grid)
    with torch.no_grad():
        h = tower.patch_embed(x)
        cos, sin = tower.rotary_pos_emb(h, get_vision_position_ids(grid_t, tower.spatial_merge_size))
    seg = [h_ * w for t, h_, w in grid for _ in range(t)]
    seg_of = torch.bucketize(torch.arange(h.shape[0]), torch.tensor(seg).cumsum(0), right=True)
    blocks = tower.blocks

    def attention(b, toks):
        blk = blocks[b]
        vecs = torch.stack([t["vec"] for t in toks])
        rows = torch.tensor([t["row"] for t in toks])
        H = blk.attn.num_heads
        q, k, v = blk.attn.qkv(blk.norm1(vecs)).view(len(toks), 3, H, -1).unbind(1)
        c, s = cos[rows].unsqueeze(1), sin[rows].unsqueeze(1)

        def rope(y):
            half = y.shape[-1] // 2
            return y * c + torch.cat([-y[..., half:], y[..., :half]], -1) * s

        q, k = rope(q), rope(k)
        out = torch.zeros_like(q)
        for g in seg_of[rows].unique():
            idx = (seg_of[rows] == g).nonzero().flatten()
            w = torch.einsum("qhd,khd->hqk", q[idx], k[idx]) * blk.attn.scaling
            out[idx] = torch.einsum("hqk,khd->qhd", w.softmax(-1), v[idx])
        return vecs + blk.attn.proj(out.reshape(len(toks), -1)), k

    def mlp(b, vecs):
        return vecs + blocks[b].mlp(blocks[b].norm2(vecs))

    with torch.no_grad():
        tokens = port_call(
            h, seg, len(blocks), settings_keep, start, attention, lambda keys: keys.mean(1), mlp, tofu=tofu
        )
    return tokens, h.shape[0]


@pytest.mark.parametrize("tofu", [False, True], ids=["ToMe", "ToFu"])
@pytest.mark.parametrize(
    "grid", [[[1, 8, 12]], [[1, 8, 12], [1, 4, 8], [2, 4, 6]]], ids=["one image", "two images and a video"]
)
def test_port_rule_in_the_tower(grid, tofu):
    """The library under the paper preset's switches merges the same patches as the port run by hand
    on the tiny tower (one image: the port exactly; several: with attention per image / frame)."""
    tower = make_tower(depth=8)
    keep, start = 0.35, 2
    tokens, L = _tower_port(tower, grid, keep, start, tofu=tofu)
    cls = ipcv.ToFu if tofu else ipcv.ToMe
    extra = dict(prune_layers=ipcv.presets.tofu_release_prune_layers(keep, start)) if tofu else {}
    with (
        torch.no_grad(),
        ipcv.compressed(tower, vision=release_settings(cls, keep, start, **extra)),
        ipcv.trace() as tr,
    ):
        out = tower(pixels(grid), grid_thw=torch.tensor(grid))
    record = tr.calls[0]
    assert bool((record.source != torch.arange(L)).any())  # something was merged
    assert torch.equal(record.source, source_map(tokens, L))
    full = out.last_hidden_state
    for t in tokens:
        torch.testing.assert_close(full[t["row"]], t["vec"], rtol=1e-4, atol=1e-4)


def test_counts_follow_the_run(model):
    """The analytic count (the method's row in ipcv.catalog) removes per block what the run removes from the call."""
    grid = [[1, 8, 12], [1, 4, 8], [2, 4, 6]]
    tower = model.model.visual
    for settings in (
        release_settings(ipcv.ToMe, 0.35, 1),
        ipcv.ToFu(0.2, scope="global"),
        ipcv.ToMe(0.5, scope="global", proportional_attention=True),
    ):
        with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.trace() as tr:
            tower(pixels(grid), grid_thw=torch.tensor(grid))
        ran = [sum(c) for c in tr.calls[0].tokens_per_block]
        seg = [96, 32, 24, 24]
        blocks, overhead = BY_SETTINGS[type(settings)].count(settings, seg, 0, len(tower.blocks), 64, 4)
        assert [sum(b.q_lengths) for b in blocks] == ran
        assert sum(blocks[-1].mlp_lengths) == sum(tr.calls[0].keep_counts)
        assert overhead > 0
        assert vision_flops(model, seg, settings).tokens_per_block == tuple(ran)


# --- reduced output, keep 1.0, generate -----------------------------------------------------------


def test_reduced_units_from_the_global_result(model):
    """output="reduced" with one budget: each image / frame gets round(survivors / 4) merge units of
    the patches that survived the call's merging, so the LLM receives the call's total."""
    settings = release_settings(ipcv.ToMe, 0.35, 1, output="reduced")
    grid = [[1, 8, 12], [1, 4, 4]]
    with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.trace() as tr:
        out = model.model.visual(pixels(grid), grid_thw=torch.tensor(grid))
    record = tr.calls[0]
    seg = [96, 16]
    alive = [int(s.sum()) for s in (record.source == torch.arange(112)).split(seg)]
    assert alive == record.keep_counts and sum(alive) == 112 - sum(global_plan(112, settings, 6))
    units = out[UNITS_KEY]
    assert torch.equal(units, reduced_units(record.source, seg, 4))
    by_hand = [min(n // 4, max(int(s > 0), (2 * s + 4) // 8)) for n, s in zip(seg, alive)]
    assert [int(u.sum()) for u in units.split([24, 4])] == by_hand


@pytest.mark.parametrize("case", ["single", "padded", "video", "mixed"])
def test_reduced_global_in_the_model(model, case):
    """Token and KV counts by hand (text + kept units of each call) and generate() working."""
    kw = {"single": SINGLE, "padded": PADDED, "video": VIDEO, "mixed": MIXED}[case]
    settings = release_settings(ipcv.ToFu, 0.35, 1, output="reduced", prune_layers=3)
    with torch.no_grad(), ipcv.compressed(model, vision=settings):
        with ipcv.trace() as tr:
            model(**kw)
        with ipcv.stats(model) as st:
            out = model(**kw, use_cache=True)
    assert tr.calls and all(c.method == "ToFu" for c in tr.calls)
    units = [int(reduced_units(c.source, c.seg_lengths, 4).sum()) for c in tr.calls]
    B = kw["input_ids"].shape[0]
    if B == 1:  # one sample: its calls' units (a padded batch of two samples shares one image call)
        assert st.decoder[-1].visual[0] == [sum(units)]
        expected = _text(kw, 0) + sum(units)
        assert all(layer.keys.shape[2] == expected for layer in out.past_key_values.layers)
    else:
        assert sum(st.decoder[-1].visual[0]) == sum(units)
    with torch.no_grad(), ipcv.compressed(model, vision=settings), ipcv.stats(model) as gen:
        greedy = model.generate(**kw, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert greedy.shape == (B, kw["input_ids"].shape[1] + 5)
    # the prefill's decoder receives what the forward above did: the same kept units
    assert gen.decoder[0].visual == st.decoder[-1].visual


@pytest.mark.parametrize(
    "settings",
    [
        release_settings(ipcv.ToMe, 1.0, 1),
        release_settings(ipcv.ToFu, 1.0, 1, prune_layers=2),
        ipcv.ToMe(1.0, scope="global"),
        release_settings(ipcv.ToMe, 1.0, 1, output="reduced"),
    ],
    ids=["ToMe", "ToFu", "even", "reduced"],
)
def test_keep_all_bit_exact(model, settings):
    with torch.no_grad():
        ref = model(**MIXED).logits
        greedy_ref = model.generate(**PADDED, max_new_tokens=4, do_sample=False)
        with ipcv.compressed(model, vision=settings):
            out = model(**MIXED).logits
            greedy = model.generate(**PADDED, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref)
    assert torch.equal(greedy, greedy_ref)


def test_segment_scope_unchanged(model):
    """The default scope still merges inside each image only (every source in its own segment)."""
    grid = [[1, 8, 12], [1, 4, 8]]
    with torch.no_grad(), ipcv.compressed(model, vision=ipcv.ToMe(0.35)), ipcv.trace() as tr:
        model.model.visual(pixels(grid), grid_thw=torch.tensor(grid))
    src = tr.calls[0].source
    seg_of = torch.bucketize(torch.arange(128), torch.tensor([96, 128]), right=True)
    assert torch.equal(seg_of[src], seg_of)


# --- refusals ------------------------------------------------------------------------------------


def test_bad_values_and_combinations_are_refused(model):
    with pytest.raises(ValueError, match=r"ToMe: scope='all' is not allowed: use one of \('segment', 'global'\)"):
        ipcv.ToMe(0.35, scope="all")
    with pytest.raises(ValueError, match=r"ToMe: merge='mlerp' is not allowed: use one of \('average', 'mean'\)"):
        ipcv.ToMe(0.35, merge="mlerp")
    with pytest.raises(ValueError, match=r"ToFu: metric='queries' is not allowed"):
        ipcv.ToFu(0.35, metric="queries")
    with pytest.raises(ValueError, match=r"start_layer=6 is outside the allowed range \[0, 5\]"):
        ipcv.compress(model, vision=release_settings(ipcv.ToMe, 0.35, 6))
    with pytest.raises(ValueError, match="runs no LLM-side method"):
        ipcv.compress(model, vision=release_settings(ipcv.ToMe, 0.35, 1, output="reduced"), language=ipcv.DART(0.35))
    with pytest.raises(NotImplementedError, match=r"mRoPE families \(.qwen2_vl., .qwen2_5_vl., .qwen3_vl.\) only"):
        ipcv.compress(make_tower(), vision=release_settings(ipcv.ToMe, 0.35, 1, output="reduced"))


def test_global_on_a_family_with_cls_tokens():
    """InternVL (tiles with a CLS token, no rotary): one matching over all tiles' patches; the CLS tokens
    are never merged nor merged into; the reduced output is refused with the families that have it."""
    several = INTERNVL.cases["several"].kw
    m = tiny_internvl()
    with torch.no_grad(), ipcv.compressed(m, vision=ipcv.ToMe(0.35, scope="global")), ipcv.trace() as tr:
        m(**several)
        m.generate(**several, max_new_tokens=2, do_sample=False)
    record = tr.calls[0]
    assert record.seg_lengths == [65, 65, 65]  # three tiles of 64 patches + CLS
    assert sum(record.keep_counts) == 3 + 67  # CLS tokens + keep_count(192, 0.35) patches of the call
    cls = torch.tensor([0, 65, 130])
    assert torch.equal(record.source[cls], cls)
    patches = torch.ones(195, dtype=torch.bool)
    patches[cls] = False
    assert not bool(torch.isin(record.source[patches], cls).any())
    counted = vision_flops(m, record.seg_lengths, ipcv.ToMe(0.35, scope="global")).tokens_per_block
    assert counted == tuple(sum(c) for c in record.tokens_per_block)  # the analytic count removes what ran
    with pytest.raises(NotImplementedError, match=r"mRoPE families \('qwen2_vl', 'qwen2_5_vl', 'qwen3_vl'\)"):
        ipcv.compress(m, vision=ipcv.ToMe(0.35, scope="global", output="reduced"))
