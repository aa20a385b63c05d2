"""ipcv.analysis on tiny random models and hand-made tensors; numbers checked against values
computed by hand or by an independent route (the model's own output_hidden_states)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from families import VIT_SIZE, make_tower, tiny_vit

import ipcv
from ipcv.analysis import bound, encoders, fidelity, flop_tables, hidden, pruning
from ipcv.analysis import images as imgs
from ipcv.book import claims, paper, report, status
from ipcv.shapes import EncoderShape

SIZE = VIT_SIZE  # 7 x 7 patches of 8 + CLS


def photos(n: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (60, 70, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def vit():
    enc = encoders.vit_encoder(tiny_vit("dinov2", "sdpa"), "tiny random DINOv2", trained=False)
    batch = enc.prepare(photos(), ["a", "b"], SIZE)
    settings = ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2, neighbors=3)
    return enc, batch, hidden.run_unpruned(enc, batch), hidden.run_compressed(enc, batch, settings)


# --------------------------------------------------------------------------- images


def test_to_rgb_conversions():
    grey = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    assert imgs.to_rgb(grey).shape == (2, 2, 3) and (imgs.to_rgb(grey)[..., 2] == grey).all()
    assert imgs.to_rgb(np.array([[True, False]])).tolist() == [[[255] * 3, [0] * 3]]
    rgba = np.zeros((1, 1, 4), dtype=np.uint8) + np.array([1, 2, 3, 4], dtype=np.uint8)
    assert imgs.to_rgb(rgba).tolist() == [[[1, 2, 3]]]
    assert imgs.to_rgb(np.array([[0.5]])).tolist() == [[[128, 128, 128]]]


def test_image_sets_and_errors():
    assert imgs.image_names("smoke") == ["astronaut"]
    assert imgs.image_names(["coins", "page"]) == ["coins", "page"]
    loaded = imgs.load_images(["camera"])
    assert loaded["camera"].shape == (512, 512, 3) and loaded["camera"].dtype == np.uint8
    with pytest.raises(ValueError, match="no image 'nope'"):
        imgs.load_images(["nope"])


def test_qwen2vl_raster_is_the_processors_patch_order():
    # hand-written: 2x2 windows of a 4x4 grid, row-major windows, row-major inside a window
    assert encoders.qwen2vl_raster(4, 4).tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    # and what the real image processor does: each patch painted with its grid index
    img = np.zeros((56, 56, 3), dtype=np.uint8)
    for r in range(4):
        for c in range(4):
            img[14 * r : 14 * (r + 1), 14 * c : 14 * (c + 1)] = 10 * (4 * r + c) + 5
    enc = encoders.qwen2vl_encoder(make_tower(), "tiny", trained=False)
    batch = enc.prepare([img], ["grid"], 56)
    x = batch.kwargs["hidden_states"][:, : 2 * 14 * 14].mean(1)  # channel 0 of every patch
    painted = ((x * 0.26862954 + 0.48145466) * 255 - 5) / 10
    assert painted.round().long().tolist() == batch.rasters[0].tolist()


def test_to_grid_places_values_by_raster():
    raster = encoders.qwen2vl_raster(2, 4)  # [0, 1, 4, 5, 2, 3, 6, 7]
    grid = imgs.to_grid(np.arange(8), raster, (2, 4))
    assert grid.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]


# --------------------------------------------------------------------------- hidden states


def test_unpruned_states_match_output_hidden_states(vit):
    enc, batch, un, _ = vit
    with torch.no_grad():
        ref = enc.model(**batch.kwargs, output_hidden_states=True)
    expected = torch.stack(ref.hidden_states).reshape(enc.depth + 1, -1, 32)
    assert un.states.shape == (7, 2 * 50, 32)
    torch.testing.assert_close(un.states, expected, rtol=0, atol=0)
    torch.testing.assert_close(un.output, ref.last_hidden_state.reshape(-1, 32))


def test_batch_layout(vit):
    _, batch, _, _ = vit
    assert batch.seg_lengths == [50, 50] and batch.starts == [0, 50] and batch.patch_rows(1) == slice(51, 100)
    assert batch.is_prefix().nonzero().flatten().tolist() == [0, 50]
    values = torch.arange(100.0)
    assert batch.grid_values(values)["b"][0, :3].tolist() == [51.0, 52.0, 53.0]


def test_compressed_run_matches_trace_and_frozen_baseline(vit):
    enc, batch, un, c = vit
    assert len(c.keep) + len(c.rem) == batch.length and c.neighbors.shape == (len(c.rem), 3)
    assert sorted(c.states) == [2, 3, 4, 5]
    # block l_p is stabilized with the exact removed states: its kept output is the unpruned one
    torch.testing.assert_close(c.states[2], un.states[3][c.keep], rtol=1e-5, atol=1e-5)
    off = hidden.run_compressed(enc, batch, ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2, neighbors=3,
                                                      reintegrate=False))  # fmt: skip
    frozen = fidelity.removed_estimates(un, c)["frozen"]
    assert torch.equal(off.final[off.rem], frozen)
    assert torch.equal(off.final[off.keep], c.final[c.keep])


def test_qwen2vl_tower_runs(tmp_path):
    tower = make_tower()
    enc = encoders.qwen2vl_encoder(tower, "tiny", trained=False)
    batch = enc.prepare(photos(2), ["a", "b"], 56)
    assert batch.seg_lengths == [16, 16] and batch.prefix_tokens == 0
    un = hidden.run_unpruned(enc, batch)
    with torch.no_grad():
        ref = tower(**batch.kwargs)
    torch.testing.assert_close(un.final, ref.last_hidden_state)
    assert un.output.shape == (8, 48)  # 2x2 merger: [L / 4, hidden_size]
    c = hidden.run_compressed(enc, batch, ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=1, neighbors=2))
    assert c.output.shape == un.output.shape and c.keep_counts == [8, 8]


def test_random_weights_refuse_fidelity(vit):
    with pytest.raises(RuntimeError, match="random weights"):
        vit[0].require_trained()


# --------------------------------------------------------------------------- fidelity


def test_row_measures_by_hand():
    a = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 1.0], [3.0, 4.0]])
    torch.testing.assert_close(fidelity.row_cosine(a, b), torch.tensor([1 / math.sqrt(2), 1.0]))
    torch.testing.assert_close(fidelity.relative_error(a, b), torch.tensor([1 / math.sqrt(2), 0.0]))


def test_copy_baseline_by_hand():
    final = torch.arange(10.0).view(5, 2)
    keep = torch.tensor([0, 2, 3])
    neighbors = torch.tensor([[2, 0], [1, 2]])  # rows of the kept sequence, nearest first
    assert fidelity.copy_baseline(final, keep, neighbors).tolist() == [[6.0, 7.0], [4.0, 5.0]]


def _hand_run(states: torch.Tensor, keep, rem, neighbors, lp: int):
    un = hidden.Unpruned(states, states[-1], None)
    L = states.shape[1]
    settings = ipcv.IPCV(0.5, prune_layer=lp, stabilize_layers=0, neighbors=1)
    c = hidden.Compressed(
        settings, torch.tensor(keep), torch.tensor(rem), torch.tensor(neighbors), torch.zeros(L), {}, [L],
        [len(keep)], states[-1].clone(), states[-1], None,
    )  # fmt: skip
    batch = encoders.Batch({}, ["x"], 0, [(1, L)], [L], 0, [np.arange(L)])
    return un, c, batch


def test_delta_agreement_by_hand():
    h0 = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [6.0, 5.0]])
    delta = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])  # token 0 changes like token 1
    states = torch.stack([h0, h0, h0 + delta])  # lp = 1, depth = 2
    un, c, batch = _hand_run(states, [1, 2, 3], [0], [[0]], lp=1)
    df = fidelity.delta_agreement(un, c, batch)
    ngr_row = df[df.comparison.str.startswith("NGR")].iloc[0]
    assert ngr_row.layer == 2 and ngr_row.l1 == 0.0 and ngr_row.cosine == pytest.approx(1.0)
    other = df[df.comparison == "one random kept token"].iloc[0]
    assert (other.l1, other.cosine) in [(0.0, pytest.approx(1.0)), (3.0, pytest.approx(0.0))]


def test_ngr_on_unpruned_by_hand():
    h0 = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    states = torch.stack([h0, h0, h0 + torch.tensor([[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]])])
    un, c, _ = _hand_run(states, [1, 2], [0], [[0, 1]], lp=1)
    # eq. 5: h_0 + mean of the neighbours' changes = (0, 0) + ((1, 2) + (3, 4)) / 2
    assert fidelity.ngr_on_unpruned(un, c).tolist() == [[2.0, 3.0]]


def test_fidelity_rows_agree(vit):
    enc, batch, un, c = vit
    row = fidelity.fidelity_row(un, c, batch.is_prefix())
    down = fidelity.downstream_rows(enc, batch, un, c).set_index("method")
    assert down.loc["NGR", "all_cos"] == pytest.approx(row["all_cos"], abs=1e-6)
    assert set(down.index) == set(fidelity.METHODS) and 0 < row["removed_cos"] <= 1
    rows = fidelity.restoration_rows(un, c, batch)
    assert len(rows) == 3 * len(c.rem) and set(rows.image) == {"a", "b"}
    drift = fidelity.kept_drift(un, c, batch.is_prefix())
    assert drift.block.tolist() == [2, 3, 4, 5] and drift.rel_error.iloc[0] < 1e-5


def test_quantile_picks_and_pca():
    assert fidelity.quantile_picks(torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0]), 3) == [3, 2, 4]
    line = torch.stack([torch.arange(4.0), 2 * torch.arange(4.0), torch.zeros(4)], dim=1)  # points on a line
    (proj,) = fidelity.pca_2d(line)
    assert np.allclose(np.abs(proj[:, 0]), np.abs(np.arange(4) - 1.5) * math.sqrt(5)) and np.allclose(proj[:, 1], 0)


# --------------------------------------------------------------------------- Appendix E


def test_hausdorff_to_subset_by_hand():
    x = torch.tensor([[0.0], [1.0], [5.0], [10.0]])
    assert bound.hausdorff_to_subset(x, torch.tensor([True, False, False, True])) == 5.0
    assert bound.hausdorff_to_subset(x, torch.tensor([True, True, True, True])) == 0.0


def test_appendix_e_by_brute_force(vit):
    _, batch, un, c = vit
    per_image, per_token = bound.appendix_e(un, c, batch)
    assert per_image.within.all() and (per_image.identity_residual < 1e-4).all()
    seg = batch.segment_ids()
    lp = c.settings.prune_layer
    for s, row in per_image.iterrows():
        rows = (seg == s).nonzero().flatten().tolist()
        kept = [i for i in rows if i in set(c.keep.tolist())]
        removed = [i for i in rows if i not in set(kept)]
        h = un.states[lp].double()
        B = max(float(h[i].norm()) for i in rows)
        d_h = max(min(float((h[i] - h[j]).norm()) for j in kept) for i in removed)
        ratio = 0.0
        for pos, i in enumerate(c.rem.tolist()):
            if i in removed:
                for r in c.neighbor_rows[pos].tolist():
                    ratio = max(ratio, float((un.final[i].double() - c.final[r].double()).norm()) / d_h)
        assert row.B == pytest.approx(B) and row.d_H == pytest.approx(d_h) and row.L_proof == pytest.approx(ratio)
        assert row.bound == pytest.approx(2 * B * (ratio + 1))
    assert (per_token.error <= per_token.lemma + 1e-6).all()


# --------------------------------------------------------------------------- costs, paper, status, report


def test_stabilized_block_flops_by_hand():
    shape = EncoderShape(depth=1, dim=4, mlp_dim=8)
    # kept queries: linear 2*16*(2*4 + 2*10) + 2*2*4*4*8 = 1408, attention 4*4*(4*10) = 640
    assert flop_tables.stabilized_block_flops(shape, [10], [4], "kept") == 2048
    # all queries: full block 2*16*40 + 4*10*4*8 + 4*4*100 = 4160, minus the MLP of 6 removed rows (768)
    assert flop_tables.stabilized_block_flops(shape, [10], [4], "all") == 3392
    with pytest.raises(ValueError):
        flop_tables.stabilized_block_flops(shape, [10], [4], "some")


def test_qwen2vl_7b_on_meta():
    tower = flop_tables.qwen2vl_7b_tower()
    assert next(tower.parameters()).is_meta
    assert round(sum(p.numel() for p in tower.parameters()) / 1e6, 1) == 675.8
    table = flop_tables.flop_table(tower, [1024], {"vanilla": None, "ipcv": ipcv.IPCV(0.35)})
    assert table.ratio.iloc[0] == 1.0 and 0.3 < table.ratio.iloc[1] < 0.6


def test_budgets_by_hand():
    table = pruning.budgets([10, 7, 65], [0.5], prefix=0)
    assert table["keep 0.5"].tolist() == [5, 4, 33]  # round half up
    assert pruning.budgets([65], [0.5], prefix=1)["keep 0.5"].tolist() == [33]  # 64 patches -> 32, + CLS
    assert pruning.qwen2vl_segments([(1, 4, 4), (3, 2, 2)]) == [16, 4, 4, 4]


def test_selection_table(vit):
    _, batch, un, c = vit
    scores = (un.states[2] - un.states[1]).norm(dim=-1)
    table = pruning.selection_table(batch, scores, {0.5: c})
    assert table.top_k.all() and (table.kept == table.budget).all() and table.kept.tolist() == [25, 25]
    assert (table.score_kept > table.score_removed).all()


def test_paper_tables_and_flops():
    t4 = paper.paper_table("table4")
    assert {"setting", "method", "tflops"} <= set(t4.columns) and (t4.method == "IPCV").sum() == 4
    assert paper.vit_keep("vit35_llm35") == 0.35 and paper.vit_keep("vanilla") == 1.0
    table = paper.table4_vs_vit_flops()
    assert table["ViT ratio (ipcv.flops)"].iloc[0] == 1.0
    assert table["ViT ratio (ipcv.flops)"].is_monotonic_decreasing


def test_status_tables(tmp_path):
    assert status.ablation_vs_table6(tmp_path).equals(status.NOT_MEASURED)
    pd.DataFrame([dict(variant="w/o AS", keep_ratio=0.35, all_cos=0.9, removed_cos=0.8, kept_cos=0.95,
                       saliency_mae=0.01)]).to_csv(tmp_path / "ablation.csv", index=False)  # fmt: skip
    table = status.ablation_vs_table6(tmp_path)
    assert table["paper avg. acc. %"].tolist() == [94.1] and table["book: all-token cosine"].tolist() == [0.9]


def test_report(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(report.RESULTS_ENV, raising=False)
    assert report.save_summary("x", {"a": 1}) is None
    monkeypatch.setenv(report.RESULTS_ENV, str(tmp_path))
    assert report.save_summary("x", {"a": 1}).read_text() == "a\n1\n"
    report.print_table(pd.DataFrame(dict(method=["NGR"], cosine=[0.98765])), digits=3)
    report.print_values(k=10, cosine=0.5)
    assert capsys.readouterr().out == "method  cosine\n   NGR   0.988\nk       10\ncosine  0.500\n"
    assert 'every verdict on quality reads "not a result: random weights"' in repr(report.RunNote("w", "cpu", False))


# --- the "what we saw" paragraphs follow the run's numbers ---------------------------------------------


IMAGES = [f"im{i}" for i in range(8)]


def _restore_tables(ngr_minus_copy: float):
    """notebook 04's restore table and its per-image rows: NGR ahead of copy by about ``ngr_minus_copy``."""
    noise = np.random.default_rng(0).normal(0, 0.002, len(IMAGES))
    noise -= noise.mean()  # the mean difference is exactly ngr_minus_copy
    rows = [(0.5, im, m, c) for im, e in zip(IMAGES, noise)
            for m, c in (("NGR", 0.8 + ngr_minus_copy + e), ("copy", 0.8), ("frozen", 0.05))]  # fmt: skip
    images = pd.DataFrame(rows, columns=["keep_ratio", "image", "method", "cosine"])
    return images.groupby(["keep_ratio", "method"], sort=False)["cosine"].mean().reset_index(), images


def _reintegration(ctx, ngr_minus_copy):
    from ipcv.book import findings

    restore, restore_images = _restore_tables(ngr_minus_copy)
    ablation = pd.DataFrame(dict(variant=["IPCV", "w/o AS", "w/o Reint."], all_cos=[0.8, 0.7, 0.4]))
    ablation_images = pd.DataFrame(
        [(v, im, c) for v, c in zip(ablation["variant"], ablation["all_cos"]) for im in IMAGES],
        columns=["variant", "image", "all_cos"],
    )
    baselines = pd.DataFrame(
        dict(method=["IPCV", "ToMe"], keep_ratio=[0.5, 0.5], all_cos=[0.8, 0.9], flop_ratio=[0.6, 0.61])
    )
    baseline_images = baselines.merge(pd.DataFrame(dict(image=IMAGES)), how="cross")
    return findings.reintegration(
        ctx, restore, 0.0, 0.0, ablation, baselines, 10, restore_images, ablation_images, baseline_images
    ).markdown()


def test_findings_state_the_runs_numbers_and_verdicts():
    from types import SimpleNamespace

    from ipcv.book import findings

    ctx = findings.context(SimpleNamespace(label="a trained encoder", trained=True), "cpu", 8, 56)
    assert ctx.startswith("In this run (weights: a trained encoder; 8 photographs at 56 px;") and ctx.trained

    lost, won, noise = _reintegration(ctx, -0.01), _reintegration(ctx, 0.02), _reintegration(ctx, 0.001)
    assert "than copying the nearest kept token ($k = 10$, as fidelity): **No** (" in lost
    assert "as fidelity): **Yes** (removed-token cosine, NGR − copy (mean over ratios) +0.02" in won
    assert "**Inconclusive**" in noise.split("\n")[2]  # at the threshold, within the images' noise
    assert "No ViT-side baseline reaches IPCV's FLOP ratio of 0.60" in won and "ToMe does not" not in won
    assert "AS and reintegration each help (ablation, all-token cosine): **Yes**" in won
    with pytest.raises(TypeError, match="findings.Context"):
        findings.reintegration("plain text", *([None] * 9))

    summary = pd.DataFrame(dict(keep_ratio=[0.5], all_top_k=[True]))
    budgets = pd.DataFrame(dict(patches=[16], per_image=[8], one_top_k=[8]))

    def share(value):
        return pd.DataFrame(dict(keep_ratio=0.5, image=IMAGES, share=value + np.linspace(-0.01, 0.01, 8)))

    below = findings.token_pruning(ctx, 0.0, summary, pd.Series({0.5: 0.3}), budgets, 0.5, False, share(0.3))
    above = findings.token_pruning(ctx, 0.0, summary, pd.Series({0.5: 0.7}), budgets, 0.5, False, share(0.7))
    assert "share of the patches: **No**" in below.markdown() and "0.30 of it at keep 50 %" in below.markdown()
    assert "share of the patches: **Yes**" in above.markdown() and "rocket" not in above.markdown()


def test_findings_on_untrained_weights_draw_no_verdict():
    from types import SimpleNamespace

    from ipcv.book import findings

    ctx = findings.context(SimpleNamespace(label="random (untrained): ...", trained=False), "cpu", 8, 56)
    assert not ctx.trained and 'every verdict below reads "not a result"' in ctx
    text = _reintegration(ctx, 0.02)
    assert text.count("**Not a result: random weights**") == 2 and "**Yes**" not in text and "**No**" not in text


def test_findings_tell_close_numbers_apart():
    from ipcv.book import findings

    assert findings._pair(0.9991, 0.9994) == ("0.9991", "0.9994")  # never "1.00 -> 1.00"
    assert findings._pair(0.5, 0.5) == ("0.50", "0.50")
    assert findings._span([0.991, 0.994]) == "0.991–0.994" and findings._span([0.5, 0.5]) == "0.50"


def _write(folder, name, frame):
    frame.to_csv(folder / f"{name}.csv", index=False)


def test_status_claims_follow_the_builds_results(tmp_path):
    empty = status.claims(tmp_path)
    assert (empty["reproduced in this build?"] == status.NOT_RUN).sum() >= 8  # nothing run: nothing claimed
    _write(tmp_path, "run", pd.DataFrame([dict(weights="trained DINOv2", device="cpu", trained=True)]))
    _write(tmp_path, "reintegration_images", _restore_tables(0.02)[1])
    rows = [(im, c, x) for im in IMAGES for c, x in ((claims.NGR, 0.5), (claims.ONE, 0.7), (claims.K_RANDOM, 0.6))]
    premise = pd.DataFrame(rows, columns=["image", "comparison", "cosine"])
    _write(tmp_path, "ngr_premise_images", premise)
    _write(tmp_path, "ngr_premise", premise.groupby("comparison", sort=False)["cosine"].median().reset_index())
    t = status.claims(tmp_path).set_index("paper")["reproduced in this build?"]
    assert (
        t["§1, §3.2, §3.4"].startswith("**Yes** (removed-token cosine, NGR − copy")
        and "8 images" in t["§1, §3.2, §3.4"]
    )
    assert t["§3.2, Figure 2"].startswith("**No**") and "0.50" in t["§3.2, Figure 2"]
    _write(tmp_path, "reintegration_images", _restore_tables(0.001)[1])
    assert status.claims(tmp_path).set_index("paper").loc["§1, §3.2, §3.4"].iloc[1].startswith("**Inconclusive**")
    rules = pd.DataFrame(
        [dict(keep_ratio=r, rule=rule, image=im, all_cos=0.9 - 0.05 * (rule == "random"), share=0.5)
         for r in (0.5, 0.2) for rule in ("difference", "random", "diversity") for im in IMAGES]
    )  # fmt: skip
    _write(tmp_path, "selection_rules_images", rules)
    said = status.claims(tmp_path).set_index("paper").loc["§3.1, ablation"].iloc[1]
    assert said.startswith("all-token cosine: **Yes**") and "saliency share: **No**" in said
    _write(tmp_path, "run", pd.DataFrame([dict(weights="random (untrained)", device="cpu", trained=False)]))
    t = status.claims(tmp_path).set_index("paper")["reproduced in this build?"]
    assert t["§1, §3.2, §3.4"].startswith("**Not a result: random weights**")
    assert t["§3.2, Figure 2"].startswith("**Not a result: random weights**")


def test_method_styles_stay_apart_in_grey_scale():
    from ipcv.book import plots

    styles = [plots.method_style(m) for m in ("IPCV", "ToMe", "ToFu", "DART (ViT)")]
    for key in ("marker", "ls", "color"):
        assert len({str(s[key]) for s in styles}) == len(styles), key
    assert plots.method_style("ToMe").get("mfc") == "none"  # drawn hollow: visible on top of ToFu
    spare = [plots.method_style(f"other {i}", i) for i in range(3)]
    assert len({s["marker"] for s in spare + styles}) == 7


def test_markdown_table_escapes_pipes():
    from ipcv.book import build as book

    text = book.markdown_table(pd.DataFrame({"a": ["x|y"], "b": ["{doc}`z`"]}))
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y | {doc}`z` |"]


def test_figure4_panels_plot_what_their_titles_say():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ipcv.book import accuracy, efficiency

    table = accuracy.paper_table("table4").rename(columns={"latency_pct": "total %"})
    acc = {(s, m): a for s, m, a in table[["setting", "method", "mmb_acc"]].itertuples(index=False)}
    bench = {"weights": "random (architecture of Qwen/Qwen2-VL-2B-Instruct); none", "device": "CPU: X (2 threads)"}
    fig = efficiency.figure4(table, acc, "paper", bench)
    (vit, llm), plotted = fig.axes[:2], lambda ax: {line.get_label() for line in ax.get_lines()}
    assert vit.get_title().startswith("(a) ViT-side") and llm.get_title().startswith("(b) LLM-side")
    assert plotted(vit) == {"IPCV", "ToMe", "ToFu", "DART (ViT)"}
    assert plotted(llm) == {"DART", "FastV", "V2Drop", "SparseVLM"}
    assert fig._suptitle.get_text() == "Latency: Qwen2-VL-2B architecture, random weights, CPU: X (2 threads)"
    plt.close(fig)


def test_tower_latency_one_table_per_file_from_cpu_time(monkeypatch, tmp_path):
    def row(keep, wall, cpu=None):
        r = dict(patches=1024, setting="vanilla" if keep == 1 else f"ipcv{keep}", keep=keep, times_s=wall,
                 time_ratio=0.0, flop_ratio=keep)  # fmt: skip
        return r if cpu is None else r | dict(cpu_s=cpu, cpu_time_ratio=sum(cpu) / 2 / 9.0)

    noisy = dict(benchmark="InternViT-300M, 448x448 tiles, vanilla vs IPCV", device="CPU: X", dtype="fp32",
                 repeats=2, rows=[row(1, [4.5, 4.8], [9.0, 9.0]), row(0.65, [3.3, 6.5], [6.5, 6.4])])  # fmt: skip
    old = dict(benchmark="Qwen2-VL-7B vision tower, vanilla vs IPCV", device="CPU: X", dtype="fp32", repeats=5,
               rows=[row(1, [8.0] * 5), row(0.5, [5.0] * 5) | dict(time_ratio=0.625)])  # fmt: skip
    monkeypatch.setattr(paper, "bench_results", lambda: {"vision_a": noisy, "vision_b": old, "prefill_x": {}})
    towers = paper.tower_latency()
    assert [t["file"] for t in towers] == ["data/bench/vision_a.json", "data/bench/vision_b.json"]
    assert (
        towers[0]["tower"] == "InternViT-300M, 448x448 tiles"
        and towers[0]["measure"] == "CPU time, median of 2 repeats"
    )
    assert towers[0]["table"]["time ratio"].tolist() == [1.0, 0.717]  # CPU time, not the noisy wall time
    assert (
        towers[1]["measure"] == "wall time, median of 5 repeats" and towers[1]["table"]["time ratio"].iloc[1] == 0.625
    )
    tables = status.tables(tmp_path)
    assert {"tower_latency_vision_a", "tower_latency_vision_b", "table4_ipcv_latency"} <= set(tables)
    assert set(tables["table4_ipcv_latency"].method) == {"Vanilla", "IPCV"}
    from ipcv.book import build as book

    page = book.tower_latency_page()
    assert "**InternViT-300M, 448x448 tiles: CPU time, median of 2 repeats.**" in page
    assert "From `data/bench/vision_a.json`" in page and "| 1024 | 0.65 | 0.717 | 0.650 | 6.45 |" in page


def test_status_shows_columns_in_words():
    t = status.by_keep_ratio(pd.DataFrame(dict(keep_ratio=[0.5, 0.2], B=[2.0, 2.0], above_norm=[1.0, 0.5])))
    assert t.columns.tolist() == ["quantity", "keep 0.5", "keep 0.2"]
    assert t.quantity.tolist() == ["$B$", "share with bound > norm"]
    assert status.readable(pd.DataFrame(columns=["all_cos", "keep_ratio", "odd_name"])).columns.tolist() == [
        "all-token cosine", "keep ratio", "odd name"]  # fmt: skip
    shown = paper.readable(paper.paper_table("table1"))
    assert shown.columns[:4].tolist() == ["keep % (ViT / LLM)", "method", "Avg. Acc. %", "Rel. Latency %"]
    assert shown.iloc[0, 0] == "100/100" and "35/35" in set(shown.iloc[:, 0])
