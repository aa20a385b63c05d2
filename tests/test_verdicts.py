"""Verdicts that cannot flip on noise or on untrained weights (ipcv.analysis.verdicts, .claims, .weights)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ipcv.analysis import verdicts as v
from ipcv.analysis import weights
from ipcv.book import claims

IMAGES = [f"im{i}" for i in range(8)]


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    x = np.random.default_rng(1).normal(0.5, 0.1, 8)
    lo, hi = v.bootstrap_interval(x)
    assert lo < x.mean() < hi and hi - lo < 0.2
    assert (lo, hi) == v.bootstrap_interval(x)  # fixed seed: a rebuild writes the same words
    assert v.bootstrap_interval([0.3] * 5) == (pytest.approx(0.3), pytest.approx(0.3))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        v.bootstrap_interval([])


def test_exceeds_says_yes_no_or_inconclusive_by_the_interval():
    clear = [0.010, 0.012, 0.011, 0.009, 0.013, 0.010, 0.011, 0.012]
    assert v.exceeds(clear, 0.001, "d").outcome == v.YES
    assert v.exceeds([-x for x in clear], 0.001, "d").outcome == v.NO
    assert v.exceeds(clear, 0.011, "d").outcome == v.INCONCLUSIVE  # the threshold sits inside the interval
    noisy = [0.01, -0.012, 0.011, -0.009, 0.013, 0.0, 0.011, -0.012]  # mean +0.0015 > threshold, within noise
    out = v.exceeds(noisy, 0.001, "NGR − copy")
    assert out.outcome == v.INCONCLUSIVE and "interval contains the threshold" in out.markdown()
    assert out.markdown().startswith("**Inconclusive** (NGR − copy +0.001 [95 % interval -0.")
    assert "8 images, threshold +0.001]" in out.markdown()


def test_too_few_images_and_untrained_weights_give_no_verdict():
    one = v.exceeds([0.5], 0.001, "d")
    assert one.outcome == v.INCONCLUSIVE and "at least 3 are needed" in one.reason
    random = v.exceeds([0.5] * 8, 0.001, "d", trained=False)
    assert random.outcome == v.NOT_A_RESULT and random.word == "Not a result: random weights"
    assert v.within([0.0] * 8, 0.01, "d", trained=False).outcome == v.NOT_A_RESULT
    assert v.exact(True, False, "holds").markdown() == "**Not a result: random weights** (holds)"
    with pytest.raises(ValueError, match="NaN"):
        v.exceeds([0.1, float("nan"), 0.2], 0.001, "d")


def test_within_is_an_equivalence_test():
    assert v.within([0.001, -0.002, 0.0005, 0.001, 0.0], 0.01, "k").outcome == v.YES
    assert v.within([0.05, 0.06, 0.055, 0.05], 0.01, "k").outcome == v.NO
    assert v.within([0.0, 0.02, -0.01, 0.015, 0.009], 0.01, "k").outcome == v.INCONCLUSIVE
    with pytest.raises(ValueError, match="margin"):
        v.within([0.0] * 3, 0, "k")


def test_all_of_takes_the_weakest_outcome():
    yes, no = v.exceeds([0.01] * 5, 0.001, "a"), v.exceeds([-0.01] * 5, 0.001, "b")
    maybe = v.exceeds([0.01, -0.01, 0.012, -0.011, 0.0], 0.001, "c")
    assert v.all_of(yes, yes).outcome == v.YES
    assert v.all_of(yes, maybe).outcome == v.INCONCLUSIVE
    assert v.all_of(maybe, no).outcome == v.NO
    assert v.all_of(no, v.exceeds([0.01] * 5, 0.001, "d", trained=False)).outcome == v.NOT_A_RESULT
    assert len(v.all_of(yes, no).evidence) == 2
    with pytest.raises(ValueError):
        v.all_of()


def test_paired_differences_per_image():
    t = pd.DataFrame(dict(image=["a", "a", "b", "b", "a"], method=["NGR", "copy", "NGR", "copy", "NGR"],
                          cosine=[0.9, 0.8, 0.7, 0.75, 0.7]))  # fmt: skip
    assert v.paired(t, "method", "NGR", "copy", "cosine") == {"a": pytest.approx(0.0), "b": pytest.approx(-0.05)}
    with pytest.raises(KeyError, match="frozen"):
        v.paired(t, "method", "NGR", "frozen", "cosine")


# --------------------------------------------------------------------------- claims on per-image tables


def _restore(ngr_minus_copy, ratios=(0.5, 0.35)) -> pd.DataFrame:
    rows = []
    for r in ratios:
        for image, d in zip(IMAGES, ngr_minus_copy):
            rows += [(r, image, "NGR", 0.9 + d), (r, image, "copy", 0.9), (r, image, "frozen", 0.1)]
    return pd.DataFrame(rows, columns=["keep_ratio", "image", "method", "cosine"])


def test_ngr_vs_copy_follows_the_per_image_differences():
    assert claims.ngr_vs_copy(_restore([0.01] * 8), True).outcome == v.YES
    assert claims.ngr_vs_copy(_restore([-0.01] * 8), True).outcome == v.NO
    noise = list(np.random.default_rng(0).normal(0, 0.02, 8))
    assert claims.ngr_vs_copy(_restore(noise), True).outcome == v.INCONCLUSIVE
    assert claims.ngr_vs_copy(_restore([0.01] * 8), False).outcome == v.NOT_A_RESULT
    assert set(claims.ngr_vs_copy_at(_restore([0.01] * 8), True)) == {0.5, 0.35}


def test_baselines_at_equal_cost_interpolate_each_image():
    rows = []
    for image in IMAGES[:4]:
        rows += [("IPCV", 0.5, image, 0.6, 0.80), ("IPCV", 0.65, image, 0.75, 0.85),
                 ("ToMe", 0.5, image, 0.7, 0.90), ("ToMe", 0.2, image, 0.5, 0.70),
                 ("ToFu", 0.5, image, 0.55, 0.99)]  # fmt: skip
    t = pd.DataFrame(rows, columns=["method", "keep_ratio", "image", "flop_ratio", "all_cos"])
    per = claims.at_equal_cost(t, 0.6)
    assert per["ToMe"] == {i: pytest.approx(0.8) for i in IMAGES[:4]} and per["ToFu"] is None
    overall, each, flop = claims.baselines(t, True)
    assert flop == 0.6 and each["ToFu"] is None  # IPCV at its middle ratio, 0.5 of [0.65, 0.5]; ToFu never that cheap
    assert each["ToMe"].outcome == v.NO and overall.outcome == v.NO  # equal at equal cost: not closer


def test_premise_needs_both_controls():
    rows = []
    for image in IMAGES:
        rows += [(image, claims.NGR, 0.8), (image, claims.ONE, 0.5), (image, claims.K_RANDOM, 0.795)]
    t = pd.DataFrame(rows, columns=["image", "comparison", "cosine"])
    out = claims.premise(t, True)
    assert out.outcome == v.NO and len(out.evidence) == 2  # beats one random token, not the mean of k


def test_matters_little_and_later_pruning():
    rows = []
    for image in IMAGES:
        for k, cos in ((1, 0.90), (10, 0.95), (20, 0.951)):
            rows.append(("neighbours", k, image, cos, 0.9))
        for lp, cos in ((1, 0.8), (6, 0.9)):
            rows.append(("pruning block", lp, image, cos, 0.9))
    t = pd.DataFrame(rows, columns=["sweep", "value", "image", "all_cos", "copy_all_cos"])
    assert claims.matters_little(t, "neighbours", 10, True).outcome == v.NO  # k = 1 is 0.05 below the default
    assert claims.matters_little(t, "neighbours", 10, True, only=[20]).outcome == v.YES
    assert claims.matters_little(t, "neighbours", 3, True) is None  # the default was not run
    assert claims.later_pruning(t, True).outcome == v.YES
    by_k = claims.copy_by_k(t, True)
    assert by_k[1].outcome == v.NO and by_k[10].outcome == v.YES


def test_bound_is_exact_and_says_when_it_is_vacuous():
    summary = pd.DataFrame(dict(within=[True, True]))
    loose = pd.DataFrame(dict(above_norm=[1.0, 0.98]))
    out = claims.bound(summary, loose, True)
    assert out.outcome == v.YES and "up to 100% of the tokens" in out.markdown() and claims.vacuous(loose)
    assert claims.bound(pd.DataFrame(dict(within=[True, False])), loose, True).outcome == v.NO
    assert not claims.vacuous(pd.DataFrame(dict(above_norm=[0.1, 0.9])))


# --------------------------------------------------------------------------- weights: checked, not assumed


def test_untrained_models_are_recognised_and_trained_ones_are_not_mistaken():
    from transformers import CLIPVisionConfig, CLIPVisionModel, Dinov2Config, Dinov2Model

    small = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    for model in (Dinov2Model(Dinov2Config(**small)), CLIPVisionModel(CLIPVisionConfig(**small))):
        out = weights.check(model)
        assert not out.trained and out.moved == 0 and out.label.startswith("random (untrained): all ")
        with torch.no_grad():  # what training does to the norm layers
            for m in model.modules():
                if weights._is_norm(m) or weights._is_layer_scale(m):
                    for p in m.parameters(recurse=False):
                        p.add_(0.05 * torch.randn_like(p))
        out = weights.check(model)
        assert out.trained and out.moved == out.layers and out.label.startswith("trained: ")


def test_a_few_moved_norms_do_not_make_a_model_trained():
    from transformers import Dinov2Config, Dinov2Model

    model = Dinov2Model(Dinov2Config(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, intermediate_size=64))
    with torch.no_grad():
        model.layernorm.weight[0] += 0.1  # training moves single entries, not the whole scale at once
    out = weights.check(model)
    assert not out.trained and out.moved == 1 and "only 1 of" in out.detail


def test_a_model_without_norms_falls_back_to_the_linear_init():
    from types import SimpleNamespace

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    net.config = SimpleNamespace(initializer_range=0.02)
    for layer in net:
        torch.nn.init.normal_(layer.weight, std=0.02)
    assert not weights.check(net).trained
    for layer in net:
        torch.nn.init.normal_(layer.weight, std=0.2)
    assert weights.check(net).trained
    assert not weights.check(torch.nn.Sequential(torch.nn.Linear(4, 4))).trained  # nothing to compare with


def test_the_offline_dinov2_is_found_trained():
    pytest.importorskip("onnx")
    from ipcv.analysis import encoders

    enc = encoders.load_encoder("dinov2-small")
    assert enc.trained and "trained: 49 of 49 norm / LayerScale layers moved" in enc.label


def test_a_local_checkpoint_is_named_for_what_it_is(tmp_path):
    """A local directory is labelled by its path and by what the check finds, never as a released checkpoint."""
    from transformers import Dinov2Config, Dinov2Model

    from ipcv.analysis import encoders

    model = Dinov2Model(Dinov2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(tmp_path / "random")
    with torch.no_grad():
        for m in model.modules():
            if weights._is_norm(m) or weights._is_layer_scale(m):
                for p in m.parameters(recurse=False):
                    p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "moved")
    for name, trained in (("random", False), ("moved", True)):
        loaded = Dinov2Model.from_pretrained(tmp_path / name)
        label, ok = encoders.labelled(str(tmp_path / name), loaded)
        assert ok is trained and label.startswith(f"loaded from the local directory {tmp_path / name}, ")
        assert ("trained: " if trained else "random (untrained): ") in label and "released" not in label
