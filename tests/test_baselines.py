"""The vision-side baselines (ToMe, ToFu, DART-ViT): pure functions against brute force, the
patched towers on tiny random configs, token accounting against a hand count, validation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from families import MIXED, SEVERAL, SINGLE, VIDEO, make_tower, pixels, tiny_vit, vit_encoder, vit_images, vit_layers
from reference import keep_budget

import ipcv
from ipcv.flops import encoder_flops, vision_flops
from ipcv.methods import dart, tome
from ipcv.shapes import EncoderShape

METHODS = {
    "tome": ipcv.ToMe,
    "tofu": lambda r: ipcv.ToFu(r, prune_layers=2),
    "dart": lambda r: ipcv.DARTViT(r, prune_layer=2, pivots=3),
}
GRIDS = {"single": SINGLE, "several": SEVERAL, "video": VIDEO}


def run(tower, grid):
    with torch.no_grad():
        return tower(pixels(grid), grid_thw=torch.tensor(grid))


# --- pure functions against brute force ---------------------------------------------------------


def test_bipartite_matching_merges_the_r_best_links():
    g = torch.Generator().manual_seed(0)
    metric = torch.randn(3, 9, 5, generator=g)
    for r in range(6):
        m = tome.bipartite_soft_matching(metric, r)
        for b in range(3):
            x = metric[b] / metric[b].norm(dim=-1, keepdim=True)
            a_tokens, b_tokens = range(0, 9, 2), range(1, 9, 2)
            best = {i: max(b_tokens, key=lambda j: float(x[i] @ x[j])) for i in a_tokens}
            score = {i: float(x[i] @ x[best[i]]) for i in a_tokens}
            merged = sorted(a_tokens, key=lambda i: -score[i])[: min(r, 5)]
            expected_into = [best[i] if i in merged else i for i in range(9)]
            assert m.into[b].tolist() == expected_into
            survivors = [i for i in range(9) if i not in merged]
            assert m.keep[b].tolist() == survivors
            assert m.out_index[b].tolist() == [survivors.index(t) for t in expected_into]
    assert tome.bipartite_soft_matching(metric[:, :1], 3).r == 0  # nothing to match with


def test_size_weighted_average_prune_mlerp_and_unmerge():
    g = torch.Generator().manual_seed(1)
    x, size = torch.randn(2, 7, 4, generator=g), torch.randint(1, 4, (2, 7), generator=g).float()
    m = tome.bipartite_soft_matching(torch.randn(2, 7, 3, generator=g), 3)
    avg, s_avg = tome.merge_average(x, size, m)
    mler, s_mler = tome.merge_mlerp(x, size, m)
    pru, s_pru = tome.merge_prune(x, size, m)
    for b in range(2):
        for out_row, t in enumerate(m.keep[b].tolist()):
            group = [i for i in range(7) if m.into[b, i] == t]
            w = size[b, group]
            mean = (x[b, group] * w[:, None]).sum(0) / w.sum()
            torch.testing.assert_close(avg[b, out_row], mean)
            assert s_avg[b, out_row] == s_mler[b, out_row] == s_pru[b, out_row] == w.sum()
            torch.testing.assert_close(pru[b, out_row], x[b, t], rtol=0, atol=0)
            if len(group) == 1:
                assert torch.equal(mler[b, out_row], x[b, t])
            else:
                top = max(float(x[b, i].norm()) for i in group)
                torch.testing.assert_close(mler[b, out_row], mean / mean.norm() * top)
    back = tome.unmerge(avg, m)
    assert back.shape == x.shape
    for b, i in itertools.product(range(2), range(7)):
        assert torch.equal(back[b, i], avg[b, m.out_index[b, i]])


def test_mlerp_keeps_the_largest_norm_and_the_mean_direction():
    x = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])
    m = tome.Matching(torch.tensor([[1, 1]]), torch.tensor([[1]]), torch.tensor([[0, 0]]))
    out, size = tome.merge_mlerp(x, torch.ones(1, 2), m)
    torch.testing.assert_close(out[0, 0], torch.tensor([3.0, 1.0]) / math.sqrt(10) * 3.0)
    assert size.tolist() == [[2.0]]


def test_composed_rounds_and_schedule():
    assert tome.merge_schedule(10, 3, 4) == [1, 2, 2, 2] and sum(tome.merge_schedule(95, 1, 6)) == 94
    assert tome.merge_schedule(5, 5, 3) == [0, 0, 0]
    assert tome.merge_rounds(16, 15) == [8, 4, 2, 1]
    assert tome.merge_rounds(9, 4) == [4]
    g = torch.Generator().manual_seed(2)
    metric = torch.randn(1, 8, 3, generator=g)
    first = tome.bipartite_soft_matching(metric, 4)
    second = tome.bipartite_soft_matching(metric[:, first.keep[0]], 2)
    both = tome.compose(first, second)
    assert both.keep.shape == (1, 2)
    for i in range(8):  # each token ends where its first-round target ends after the second round
        assert both.out_index[0, i] == second.out_index[0, first.out_index[0, i]]
        assert both.into[0, i] == both.keep[0, both.out_index[0, i]]


def test_dart_selection_budget_and_least_duplicated():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(20, 6, generator=g)
    scores = dart.pivot_scores(torch.randn(20, 2, 3, generator=g))
    for keep in (1, 3, 7, 20):
        kept = dart.dart_keep(tokens, scores, keep, n_pivots=3)
        assert kept.numel() == keep == len(set(kept.tolist())) and torch.equal(kept, kept.sort().values)
    assert dart.pivot_budgets(7, 3) == [3, 2, 2] and dart.pivot_budgets(2, 3) == [1, 1, 0]
    # brute force: pivot j takes its budget of the remaining candidates, lowest cosine first
    pivots = tokens[:2]
    cands = tokens[2:]
    chosen = dart.select_least_duplicated(cands, pivots, [2, 3]).tolist()
    cos = torch.nn.functional.cosine_similarity(cands[:, None], pivots[None], dim=-1)
    first = sorted(range(18), key=lambda i: float(cos[i, 0]))[:2]
    second = sorted((i for i in range(18) if i not in first), key=lambda i: float(cos[i, 1]))[:3]
    assert chosen == first + second
    with pytest.raises(ValueError, match="budgets sum to 30"):
        dart.select_least_duplicated(cands, pivots, [15, 15])


# --- keep_ratio 1.0 is the unpatched model, bit for bit -------------------------------------------


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
@pytest.mark.parametrize("method", METHODS)
def test_qwen_keep_all_is_bit_exact(method, grid):
    tower = make_tower()
    ref = run(tower, grid)
    ipcv.compress(tower, vision=METHODS[method](1.0))
    out = run(tower, grid)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(out.pooler_output, ref.pooler_output)


@pytest.mark.parametrize("family", ["dinov2", "clip", "siglip"])
@pytest.mark.parametrize("method", METHODS)
def test_vit_keep_all_is_bit_exact(method, family):
    model = tiny_vit(family, "sdpa")
    x = vit_images()
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
        ipcv.compress(model, vision=METHODS[method](1.0))
        out = model(pixel_values=x).last_hidden_state
    assert torch.equal(out, ref)


# --- budgets, full-length output, copies ---------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.5, 0.2, 0.01])
@pytest.mark.parametrize("method", METHODS)
def test_qwen_per_segment_counts_and_full_length_copies(method, ratio):
    tower = make_tower()
    ref = run(tower, MIXED)  # an image of 96 patches and a 3-frame video of 16 patches per frame
    ipcv.compress(tower, vision=METHODS[method](ratio))
    with ipcv.trace() as t:
        out = run(tower, MIXED)
    call = t.calls[0]
    assert call.seg_lengths == [96, 16, 16, 16]
    assert call.keep_counts == [keep_budget(n, ratio) for n in call.seg_lengths]
    assert call.tokens_per_block[-1] != call.seg_lengths
    h = out.last_hidden_state
    assert h.shape == ref.last_hidden_state.shape and out.pooler_output.shape == ref.pooler_output.shape
    assert not torch.allclose(h, ref.last_hidden_state, atol=1e-3)
    # every position holds a copy of a surviving token of its own segment
    seg = torch.repeat_interleave(torch.arange(4), torch.tensor(call.seg_lengths))
    src = call.source
    assert torch.equal(seg[src], seg)
    assert torch.equal(h, h[src])
    survivors = src.unique()
    assert torch.equal(src[survivors], survivors)
    assert [int((seg[survivors] == s).sum()) for s in range(4)] == call.keep_counts
    expected = vision_flops(tower, call.seg_lengths, METHODS[method](ratio)).tokens_per_block
    assert tuple(sum(c) for c in call.tokens_per_block) == expected


@pytest.mark.parametrize("method", METHODS)
def test_vit_counts_protect_cls(method):
    model = tiny_vit("dinov2")
    x = vit_images()
    ipcv.compress(model, vision=METHODS[method](0.3))
    with ipcv.trace() as t, torch.no_grad():
        out = model(pixel_values=x).last_hidden_state
    call = t.calls[0]
    assert call.seg_lengths == [50, 50] and call.keep_counts == [1 + keep_budget(49, 0.3)] * 2
    assert call.source[0] == 0 and call.source[50] == 50  # CLS never merged nor pruned
    assert out.shape == (2, 50, 32) and torch.equal(out.reshape(100, -1), out.reshape(100, -1)[call.source])
    assert vision_flops(model, [50, 50], METHODS[method](0.3)).tokens_per_block == tuple(
        sum(c) for c in call.tokens_per_block
    )


def test_proportional_attention_and_tofu_split_change_the_output():
    outs = {}
    for name, s in {
        "tome": ipcv.ToMe(0.3),
        "tome_no_prop": ipcv.ToMe(0.3, proportional_attention=False),
        "tofu_merge_only": ipcv.ToFu(0.3, prune_layers=0),
        "tofu_prune_only": ipcv.ToFu(0.3, prune_layers=6),
    }.items():
        tower = make_tower()
        ipcv.compress(tower, vision=s)
        outs[name] = run(tower, SEVERAL).last_hidden_state
    names = list(outs)
    for a, b in itertools.combinations(names, 2):
        assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)


def test_tome_matches_a_plain_reference_on_a_vit():
    """ToMe written out with explicit per-token bookkeeping on CLIP (no rotary), one image, in official ToMe's
    order: its sequence starts with CLS (set A's first token, never merged), A / B alternate over that
    sequence, and after a merge it continues with CLS, the unmerged A tokens in sequence order, then B."""
    model = tiny_vit("clip", "eager")
    x = vit_images(batch=1)
    settings = ipcv.ToMe(0.3)
    enc = vit_encoder(model)
    captured = {}

    def grab(module, args, kwargs):
        captured["h"] = kwargs["inputs_embeds"][0].clone()

    hook = enc.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(pixel_values=x)
    hook.remove()
    h = captured["h"]  # [50, D]: CLS + 49 patches
    depth = len(vit_layers(model))
    schedule = tome.merge_schedule(49, keep_budget(49, 0.3), depth)
    groups = [[i] for i in range(50)]  # source positions of each current token (rows of h)
    seq = list(range(50))  # ToMe's order of the rows of h, CLS first
    with torch.no_grad():
        for layer, r in zip(vit_layers(model), schedule):
            a = layer.self_attn
            n = layer.layer_norm1(h)
            H = a.num_heads
            q, k, v = (p(n).view(len(groups), H, -1) for p in (a.q_proj, a.k_proj, a.v_proj))
            logits = torch.einsum("qhd,khd->hqk", q, k) * a.scale
            logits = logits + torch.tensor([math.log(len(g)) for g in groups])
            h = h + a.out_proj(torch.einsum("hqk,khd->qhd", logits.softmax(-1), v).reshape(len(groups), -1))
            metric = k.mean(1)
            A, B = seq[0::2], seq[1::2]  # A[0] is CLS: never merged
            unit = metric / metric.norm(dim=-1, keepdim=True)
            cos = {(i, j): float(unit[i] @ unit[j]) for i in A[1:] for j in B}
            best = {i: max(B, key=lambda j, i=i: cos[i, j]) for i in A[1:]}
            merged = sorted(A[1:], key=lambda i: -cos[i, best[i]])[:r]
            new_h, new_groups, row_of = [], [], {}
            for i in range(len(groups)):
                if i in merged:
                    continue
                members = [i] + [s for s in merged if best[s] == i]
                w = torch.tensor([float(len(groups[m])) for m in members])
                row_of[i] = len(new_h)
                new_h.append((h[members] * w[:, None]).sum(0) / w.sum())
                new_groups.append(sum((groups[m] for m in members), []))
            seq = [row_of[i] for i in A if i not in merged] + [row_of[j] for j in B]
            h, groups = torch.stack(new_h), new_groups
            h = h + layer.mlp(layer.layer_norm2(h))
        expected = torch.empty(50, h.shape[1])
        for row, g in enumerate(groups):
            expected[g] = h[row]
        ipcv.compress(model, vision=settings)
        out = model(pixel_values=x).last_hidden_state[0]
    assert len(groups) == 1 + keep_budget(49, 0.3)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


# --- token accounting against a hand count --------------------------------------------------------


def _block(n_q, n_kv, n_mlp, D=4, F=3):
    return 2 * D * D * (2 * n_q + 2 * n_kv) + 2 * 2 * n_mlp * D * F + 4 * D * n_q * n_kv


def test_flops_hand_count():
    shape = EncoderShape(depth=3, dim=4, mlp_dim=3, prefix_tokens=1, heads=2)
    # one segment: CLS + 6 patches; keep 0.5 -> 3 patches; one patch removed in each of the 3 blocks
    tome_c = encoder_flops(shape, [7], ipcv.ToMe(0.5))
    assert tome_c.tokens_per_block == (7, 6, 5)
    assert tome_c.blocks == _block(7, 7, 6) + _block(6, 6, 5) + _block(5, 5, 4)
    # matching rounds on 6, 5, 4 free patches: similarity 2*d*|A|*|B| (d = 2) + merge 2*D*n
    assert tome_c.overhead == (2 * 2 * 3 * 3 + 2 * 4 * 6) + (2 * 2 * 3 * 2 + 2 * 4 * 5) + (2 * 2 * 2 * 2 + 2 * 4 * 4)
    tofu_c = encoder_flops(shape, [7], ipcv.ToFu(0.5, prune_layers=1))
    assert tofu_c.blocks == tome_c.blocks
    assert tofu_c.overhead == 2 * 2 * 3 * 3 + (2 * 2 * 3 * 2 + 2 * 4 * 5) + (2 * 2 * 2 * 2 + 2 * 4 * 4)
    dart_c = encoder_flops(shape, [7], ipcv.DARTViT(0.5, prune_layer=1, pivots=2))
    assert dart_c.tokens_per_block == (7, 4, 4)
    assert dart_c.blocks == _block(7, 7, 7) + 2 * _block(4, 4, 4)
    # keys of block 1 (2*D*D*7), 2 pivots x 6 candidates (2*D*2*6), 3 pruned x 4 kept (2*D*3*4)
    assert dart_c.overhead == 2 * 16 * 7 + 2 * 4 * 2 * 6 + 2 * 4 * 3 * 4
    for s in (ipcv.ToMe(1.0), ipcv.ToFu(1.0), ipcv.DARTViT(1.0)):
        assert encoder_flops(shape, [7], s) == encoder_flops(shape, [7])


def test_tiny_tower_tokens_and_fewer_flops():
    tower = make_tower(depth=6)
    full = vision_flops(tower, [96, 16])
    for make in METHODS.values():
        c = vision_flops(tower, [96, 16], make(0.35))
        assert c.tokens_per_block[0] == 112 and c.tokens_per_block[-1] < 112
        assert c.blocks < full.blocks and c.overhead > 0 and c.embed_and_head == full.embed_and_head


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: ipcv.ToMe(0.0), ValueError, r"ToMe: keep_ratio=0\.0 .*\(0, 1\]"),
        (lambda: ipcv.ToMe("0.5"), TypeError, r"ToMe: keep_ratio must be a real number"),
        (lambda: ipcv.ToMe(0.5, proportional_attention=1), TypeError, r"proportional_attention must be a bool"),
        (lambda: ipcv.ToFu(1.5), ValueError, r"ToFu: keep_ratio=1\.5"),
        (lambda: ipcv.ToFu(0.5, prune_layers=-1), ValueError, r"prune_layers=-1 .*>= 0"),
        (lambda: ipcv.ToFu(0.5, prune_layers=2.0), TypeError, r"prune_layers must be an int"),
        (lambda: ipcv.DARTViT(float("nan")), ValueError, r"DARTViT: keep_ratio=nan"),
        (lambda: ipcv.DARTViT(0.5, prune_layer=-1), ValueError, r"prune_layer=-1 .*>= 0"),
        (lambda: ipcv.DARTViT(0.5, pivots=0), ValueError, r"pivots=0 .*>= 1"),
        (lambda: ipcv.DARTViT(0.5, pivots=True), TypeError, r"pivots must be an int"),
    ],
)
def test_settings_validation(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_depth_validation_and_registry():
    tower = make_tower(depth=6)
    with pytest.raises(ValueError, match=r"prune_layer=6 is outside the allowed range \[0, 5\]"):
        ipcv.compress(tower, vision=ipcv.DARTViT(0.5, prune_layer=6))
    with pytest.raises(ValueError, match=r"prune_layers=7 is outside the allowed range \[0, 6\]"):
        ipcv.compress(tower, vision=ipcv.ToFu(0.5, prune_layers=7))
    assert type(tower).__name__ == "Qwen2VisionTransformerPretrainedModel"
    assert ipcv.ToFu(0.5).pruning_blocks(32) == 10
    for s in (ipcv.ToMe(0.5), ipcv.ToFu(0.5), ipcv.DARTViT(0.5)):
        ipcv.compress(tower, vision=s)
        assert ipcv.settings(tower) == s
    ipcv.restore(tower)
    with pytest.raises(AttributeError):
        ipcv.ToMe(0.5).keep_ratio = 0.2
