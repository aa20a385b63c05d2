"""IPCV's selection-rule switch (``IPCV(selection=...)``): eq. 1's feature difference (the paper), a seeded
random draw (the control) and greedy max-min / farthest-point diversity, each keeping the same counts; the
rest of IPCV (NGR, AS, reintegration) is unchanged."""

from __future__ import annotations

import pytest
import torch
from families import pixels, tiny_vit, vit_images

import ipcv
from ipcv.flops import encoder_flops
from ipcv.methods.ipcv import farthest_point_select, farthest_points, random_scores, select_tokens
from ipcv.shapes import EncoderShape

RULES = ("difference", "random", "diversity")


def brute_force_max_min(x: torch.Tensor, k: int) -> list[int]:
    """The greedy max-min rule written out: first the row farthest from the mean, then repeatedly the row
    whose smallest distance to the chosen rows is largest (ties: the lower row), plain Python lists."""
    x = x.double()
    n = x.shape[0]
    d2 = lambda i, c: float(((x[i] - c) ** 2).sum())  # noqa: E731
    mean = x.mean(0)
    far = [d2(i, mean) for i in range(n)]
    chosen = [max(range(n), key=lambda i: (far[i], -i))]
    while len(chosen) < k:
        left = [i for i in range(n) if i not in chosen]
        gap = {i: min(d2(i, x[c]) for c in chosen) for i in left}
        chosen.append(max(left, key=lambda i: (gap[i], -i)))
    return chosen


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_farthest_points_against_brute_force(seed, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 12, 5, generator=g)
    got = farthest_points(x, k)
    for b in range(3):
        assert got[b].tolist() == brute_force_max_min(x[b], k)


def test_farthest_point_select_counts_segments_and_protected():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1 + 20 + 1 + 9, 6, generator=g)
    seg = [21, 10]
    protected = torch.zeros(31, dtype=torch.bool)
    protected[[0, 21]] = True
    keep, counts = farthest_point_select(h, seg, 0.35, protected=protected)
    assert counts == [1 + ipcv.keep_count(20, 0.35), 1 + ipcv.keep_count(9, 0.35)]
    assert {0, 21} <= set(keep.tolist())
    first = sorted(1 + i for i in brute_force_max_min(h[1:21], ipcv.keep_count(20, 0.35)))
    assert keep[keep < 21].tolist() == [0, *first]  # inside a segment, the brute-force choice
    # the same counts as eq. 1's selection in both scopes
    scores = torch.rand(31, generator=g)
    for scope in ("segment", "global"):
        _, by_score = select_tokens(scores, seg, 0.35, scope, protected)
        keep_g, by_diversity = farthest_point_select(h, seg, 0.35, scope, protected)
        assert sum(by_diversity) == sum(by_score) == keep_g.numel()
    keep_g, _ = farthest_point_select(h, seg, 0.35, "global", protected)
    free = (~protected).nonzero().flatten()
    expected = sorted(int(free[i]) for i in brute_force_max_min(h[free], ipcv.budgets.floor_count(29, 0.35)))
    assert sorted(set(keep_g.tolist()) - {0, 21}) == expected


def test_random_rule_is_seeded_and_uniform_per_segment():
    a, b = random_scores(100, 7), random_scores(100, 7)
    assert torch.equal(a, b) and not torch.equal(a, random_scores(100, 8))
    keep, counts = select_tokens(a, [60, 40], 0.5)
    assert counts == [30, 20]


def test_settings_check_the_switch():
    with pytest.raises(ValueError, match=r"selection='max'.*\('difference', 'random', 'diversity'\)"):
        ipcv.IPCV(0.5, selection="max")
    with pytest.raises(ValueError, match="seed=-1"):
        ipcv.IPCV(0.5, selection="random", seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        ipcv.IPCV(0.5, selection="random", seed=1.5)


def _tower_run(tower, settings, grid):
    x = pixels(grid)
    thw = torch.tensor(grid)
    with ipcv.compressed(tower, vision=settings), ipcv.trace() as t, torch.no_grad():
        out = tower(x, grid_thw=thw).last_hidden_state
    return out, t.calls


@pytest.mark.parametrize("rule", RULES)
def test_keep_one_is_bit_exact(tower, rule):
    grid = [[1, 8, 12], [2, 4, 6]]
    with torch.no_grad():
        plain = tower(pixels(grid), grid_thw=torch.tensor(grid)).last_hidden_state
    out, calls = _tower_run(tower, ipcv.IPCV(1.0, prune_layer=2, stabilize_layers=2, selection=rule), grid)
    assert torch.equal(out, plain) and not calls


def test_rules_in_the_tower(tower):
    grid = [[1, 8, 12], [2, 4, 6]]
    runs = {}
    for rule in RULES:
        s = ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3, selection=rule)
        runs[rule] = _tower_run(tower, s, grid)
    counts = {rule: calls[0].keep_counts for rule, (_, calls) in runs.items()}
    assert counts["random"] == counts["diversity"] == counts["difference"]
    keeps = {rule: calls[0].keep for rule, (_, calls) in runs.items()}
    assert not torch.equal(keeps["random"], keeps["difference"])
    assert not torch.equal(keeps["diversity"], keeps["difference"])
    # the trace records eq. 1's scores whatever the rule; the difference rule keeps their top-K
    scores = runs["difference"][1][0].scores
    assert torch.equal(runs["random"][1][0].scores, scores)
    again = _tower_run(tower, ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3, selection="random"), grid)
    assert torch.equal(again[1][0].keep, keeps["random"]) and torch.equal(again[0], runs["random"][0])
    other = _tower_run(
        tower, ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3, selection="random", seed=5), grid
    )
    assert not torch.equal(other[1][0].keep, keeps["random"])


@pytest.mark.parametrize("rule", ("random", "diversity"))
def test_rules_on_a_vit_with_cls(rule):
    model = tiny_vit("dinov2")
    x = vit_images()
    with ipcv.compressed(model, vision=ipcv.IPCV(0.3, 2, 2, 3, selection=rule)), ipcv.trace() as t, torch.no_grad():
        out = model(pixel_values=x).last_hidden_state
    call = t.calls[0]
    assert call.keep_counts == [1 + ipcv.keep_count(49, 0.3)] * 2 and {0, 50} <= set(call.keep.tolist())
    assert out.shape == (2, 50, 32) and torch.isfinite(out).all()


def test_rules_in_every_family(family, family_model):
    case = next(iter(family.cases.values()))
    for rule in ("random", "diversity"):
        ipcv.restore(family_model)
        ipcv.compress(family_model, vision=ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2, neighbors=3,
                                                     selection=rule))  # fmt: skip
        with ipcv.trace() as t, torch.no_grad():
            out = family_model(**case.kw)
        assert t.calls and torch.isfinite(out.logits).all()
        for call, seg in zip(t.calls, case.segments):
            assert call.seg_lengths == seg
            assert call.keep_counts == [family.prefix + ipcv.keep_count(n - family.prefix, 0.5) for n in seg]


def test_flops_count_each_rule():
    shape = EncoderShape(depth=4, dim=8, mlp_dim=16, prefix_tokens=1, heads=2)
    seg = [21, 11]
    counts = {rule: encoder_flops(shape, seg, ipcv.IPCV(0.5, 1, 2, 3, selection=rule)) for rule in RULES}
    assert counts["difference"].blocks == counts["random"].blocks == counts["diversity"].blocks
    L, D = sum(seg), 8
    kept = [ipcv.keep_count(20, 0.5), ipcv.keep_count(10, 0.5)]
    assert counts["difference"].overhead - counts["random"].overhead == 3 * L * D  # eq. 1's score only
    fps = sum(n * D + 3 * n * D * k for n, k in zip((20, 10), kept))
    assert counts["diversity"].overhead - counts["random"].overhead == fps
    glob = encoder_flops(shape, seg, ipcv.IPCV(0.5, 1, 2, 3, scope="global", selection="diversity"))
    rand = encoder_flops(shape, seg, ipcv.IPCV(0.5, 1, 2, 3, scope="global", selection="random"))
    k = ipcv.budgets.floor_count(30, 0.5)
    assert glob.overhead - rand.overhead == 30 * D + 3 * 30 * D * k
