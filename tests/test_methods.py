"""The pure functions of ipcv.methods.ipcv against brute force."""

from __future__ import annotations

import pytest
import torch

from ipcv.methods import ipcv as m
from ipcv.methods import packed


def test_keep_count_rounds_half_up_and_clamps():
    from ipcv import keep_count

    assert keep_count(1024, 0.35) == 358  # 358.4
    assert keep_count(10, 0.25) == 3  # 2.5 -> 3
    assert keep_count(10, 0.01) == 1  # never empty
    assert keep_count(7, 1.0) == 7


def test_select_tokens_segment_and_global_boundaries():
    # three segments; the best score of the call is the FIRST token of segment 2
    scores = torch.tensor([1.0, 2, 3, 4, 0.5, 0.6, 9, 0.1, 0.2, 0.3])
    keep, counts = m.select_tokens(scores, [4, 2, 4], 0.5, "segment")
    assert keep.tolist() == [2, 3, 5, 6, 9]
    assert counts == [2, 1, 2]
    keep, counts = m.select_tokens(scores, [4, 2, 4], 0.3, "global")
    assert keep.tolist() == [2, 3, 6]
    assert counts == [2, 0, 1]  # token 6 belongs to segment 2 (the authors' release counted it in segment 1)


def test_select_tokens_protects_and_does_not_count_prefix():
    scores = torch.tensor([0.0, 5, 1, 2, 0.0, 1, 7, 3])
    protected = torch.tensor([True, False, False, False] * 2)
    keep, counts = m.select_tokens(scores, [4, 4], 0.34, "segment", protected)  # 3 patches -> keep 1
    assert keep.tolist() == [0, 1, 4, 6]
    assert counts == [2, 2]


def test_select_tokens_rejects_bad_lengths():
    with pytest.raises(ValueError, match="sum"):
        m.select_tokens(torch.zeros(5), [2, 2], 0.5)


def test_nearest_kept_matches_brute_force_and_is_chunked(monkeypatch):
    g = torch.Generator().manual_seed(0)
    rem, keep = torch.randn(300, 16, generator=g), torch.randn(90, 16, generator=g)
    brute = torch.stack([((keep - r) ** 2).sum(-1).argsort()[:5] for r in rem])
    assert torch.equal(m.nearest_kept(rem, keep, 5), brute)
    widest = []
    real = torch.baddbmm

    def spy(bias, a, b, **kw):
        widest.append(a.shape[-2] * b.shape[-1])
        return real(bias, a, b, **kw)

    monkeypatch.setattr(torch, "baddbmm", spy)
    assert torch.equal(m.nearest_kept(rem, keep, 5, block_elements=900), brute)
    assert max(widest) <= 900 and len(widest) == 30  # 10 rows at a time


def test_find_neighbors_stays_in_segment_and_pads_small_segments():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(12, 8, generator=g)
    keep = torch.tensor([0, 1, 2, 8])  # segment 0 = 0..7 keeps 3, segment 1 = 8..11 keeps 1
    rem = packed.complement(keep, 12)
    nb = m.find_neighbors(h, keep, rem, [8, 4], [3, 1], neighbors=2)
    assert nb.index.shape == (8, 2)
    for r, i in enumerate(rem.tolist()):
        real = nb.index[r][nb.weight[r] > 0]
        if i < 8:
            assert set(real.tolist()) <= {0, 1, 2} and len(real) == 2
            assert torch.allclose(nb.weight[r], torch.tensor([0.5, 0.5]))
        else:
            assert real.tolist() == [3] and nb.weight[r].tolist() == [1.0, 0.0]


def test_ngr_is_equation_5():
    g = torch.Generator().manual_seed(2)
    h_rem, k_lp, k_l = (torch.randn(n, 6, generator=g) for n in (5, 7, 7))
    idx = torch.randint(0, 7, (5, 3), generator=g)
    nb = m.Neighbors(idx, torch.full((5, 3), 1 / 3))
    expected = torch.stack([h_rem[i] + (k_l[idx[i]] - k_lp[idx[i]]).mean(0) for i in range(5)])
    torch.testing.assert_close(m.ngr(h_rem, k_l, k_lp, nb), expected)
    assert torch.equal(m.ngr(h_rem, k_lp, k_lp, nb), h_rem)  # at l = l_p the frozen state


def test_scatter_tokens_puts_rows_back():
    keep, rem = torch.tensor([0, 3]), torch.tensor([1, 2, 4])
    full = packed.scatter_tokens(torch.tensor([[0.0], [3.0]]), torch.tensor([[1.0], [2.0], [4.0]]), keep, rem)
    assert full.flatten().tolist() == [0, 1, 2, 3, 4]
