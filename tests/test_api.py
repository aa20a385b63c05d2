"""Validation: every bad input gets an error naming the parameter, the value and what is allowed."""

from __future__ import annotations

import math

import pytest
import torch
from families import make_tower

import ipcv


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(keep_ratio=0.0), ValueError, r"keep_ratio=0\.0 .*\(0, 1\]"),
        (dict(keep_ratio=1.5), ValueError, r"keep_ratio=1\.5 .*\(0, 1\]"),
        (dict(keep_ratio=-0.1), ValueError, r"keep_ratio=-0\.1"),
        (dict(keep_ratio=float("nan")), ValueError, r"keep_ratio=nan"),
        (dict(keep_ratio="0.5"), TypeError, r"keep_ratio must be a real number"),
        (dict(keep_ratio=True), TypeError, r"keep_ratio must be a real number"),
        (dict(keep_ratio=0.5, prune_layer=0), ValueError, r"prune_layer=0 .*>= 1"),
        (dict(keep_ratio=0.5, prune_layer=2.0), TypeError, r"prune_layer must be an int"),
        (dict(keep_ratio=0.5, stabilize_layers=-1), ValueError, r"stabilize_layers=-1 .*>= 0"),
        (dict(keep_ratio=0.5, neighbors=0), ValueError, r"neighbors=0 .*>= 1"),
        (dict(keep_ratio=0.5, reintegrate=1), TypeError, r"reintegrate must be a bool"),
        (dict(keep_ratio=0.5, scope="frame"), ValueError, r"scope='frame' .*'segment', 'global'"),
    ],
)
def test_settings_validation(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ipcv.IPCV(**kwargs)


def test_settings_are_immutable_and_comparable():
    s = ipcv.IPCV(0.35)
    with pytest.raises(AttributeError):
        s.keep_ratio = 0.5
    assert s == ipcv.IPCV(0.35, prune_layer=3, stabilize_layers=7, neighbors=10)
    assert (s.prune_layer, s.stabilize_layers, s.neighbors, s.reintegrate, s.scope) == (3, 7, 10, True, "segment")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(prune_layer=6, stabilize_layers=0), r"prune_layer=6 is outside the allowed range \[1, 5\].*depth 6"),
        (dict(prune_layer=3, stabilize_layers=4), r"stabilize_layers=4 is outside the allowed range \[0, 3\]"),
    ],
)
def test_depth_validation_uses_the_model(kwargs, pattern):
    tower = make_tower(depth=6)
    with pytest.raises(ValueError, match=pattern):
        ipcv.compress(tower, vision=ipcv.IPCV(0.5, **kwargs))
    assert type(tower).__name__ == "Qwen2VisionTransformerPretrainedModel"  # nothing patched
    ipcv.compress(tower, vision=ipcv.IPCV(0.5, prune_layer=3, stabilize_layers=3))  # the edge is allowed


def test_too_deep_default_says_which_value_fits():
    tower = make_tower(depth=6)  # the defaults (prune 3 + stabilize 7) need 10 blocks
    with pytest.raises(
        ValueError, match=r"use stabilize_layers=3 or smaller, e\.g\. ipcv\.IPCV\(0\.35, prune_layer=3, "
    ):
        ipcv.compress(tower, vision=ipcv.IPCV(0.35))
    with pytest.raises(
        ValueError, match=r"prune_layer=8 .*use a smaller value, e\.g\. ipcv\.IPCV\(0\.35, prune_layer=2, "
    ):
        ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=8))
    ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=3, stabilize_layers=3))  # what the first message says
    ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=4))  # what the second says


def test_unsupported_model_names_class_and_supported_ones():
    with pytest.raises(
        TypeError, match=r"cannot compress a Linear; supported models: .*Qwen2VLForConditionalGeneration.*Dinov2Model"
    ):
        ipcv.compress(torch.nn.Linear(2, 2), vision=ipcv.IPCV(0.5))


def test_restore_on_an_unsupported_model_says_there_is_nothing_to_restore():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    with pytest.raises(
        TypeError,
        match=r"^ipcv\.restore: ipcv does not support a BertModel, so it has not compressed it and there is nothing to "
        r"restore; supported models: .*Qwen2VLForConditionalGeneration.*Dinov2Model",
    ) as e:
        ipcv.restore(BertModel(config))
    assert "cannot compress" not in str(e.value)
    tower = make_tower()
    assert ipcv.restore(tower) is tower  # a supported model that was never compressed: nothing to do, no error


@pytest.mark.parametrize("keep_ratio", [-1, 0, 0.0, -0.1, 1.5, 1.0000001, float("nan"), float("inf")])
def test_keep_count_rejects_a_keep_ratio_outside_0_1(keep_ratio):
    with pytest.raises(ValueError, match=r"^keep_count: keep_ratio=.* is outside the allowed range \(0, 1\]$"):
        ipcv.keep_count(100, keep_ratio)
    with pytest.raises(ValueError, match=r"^keep_count: keep_ratio="):
        ipcv.keep_count(0, keep_ratio)  # checked for an empty segment too


@pytest.mark.parametrize("keep_ratio", ["0.5", True, None])
def test_keep_count_rejects_a_keep_ratio_that_is_no_number(keep_ratio):
    with pytest.raises(ValueError, match=r"^keep_count: keep_ratio=.* is not a number in the allowed range \(0, 1\]$"):
        ipcv.keep_count(100, keep_ratio)


@pytest.mark.parametrize("n", [-1, -100, 2.5, 3.0, "3", True, None])
def test_keep_count_rejects_an_n_that_is_no_count(n):
    with pytest.raises(ValueError, match=r"^keep_count: n=.* is not allowed: it must be an integer >= 0"):
        ipcv.keep_count(n, 0.5)


def test_keep_count_follows_the_documented_formula_and_keeps_nothing_of_nothing():
    from ipcv.budgets import floor_count

    def documented(n: int, keep_ratio: float) -> int:  # K = max(1, min(n, floor(keep_ratio * n + 0.5))), n >= 1
        return max(1, min(n, math.floor(keep_ratio * n + 0.5)))

    for n in (1, 2, 3, 7, 10, 49, 256, 1023, 1024):
        for r in (1e-12, 0.001, 0.01, 0.05, 0.2, 0.25, 0.35, 0.5, 0.65, 0.999, 1.0):
            assert ipcv.keep_count(n, r) == documented(n, r), (n, r)
            assert 1 <= ipcv.keep_count(n, r) <= n
    assert ipcv.keep_count(1, 1e-12) == 1 and ipcv.keep_count(1, 1) == 1  # n = 1: that one token, never more
    assert ipcv.keep_count(10, 0.25) == 3 and ipcv.keep_count(1000, 0.0001) == 1  # 2.5 rounds up; 0.1 keeps one
    assert ipcv.keep_count(0, 0.5) == 0 and ipcv.keep_count(0, 1.0) == 0  # an empty segment keeps nothing
    assert floor_count(0, 0.5) == 0 and floor_count(1023, 0.5) == 511 and floor_count(10, 0.01) == 1
    with pytest.raises(ValueError, match=r"^floor_count: n=-1 "):
        floor_count(-1, 0.5)
    with pytest.raises(ValueError, match=r"^floor_count: keep_ratio=0 is outside the allowed range \(0, 1\]"):
        floor_count(10, 0)


def test_bad_method_arguments():
    tower = make_tower()
    with pytest.raises(TypeError, match="vision=0.5 is not a vision-side method"):
        ipcv.compress(tower, vision=0.5)
    with pytest.raises(ValueError, match="give a vision-side method"):
        ipcv.compress(tower)
    with pytest.raises(TypeError, match="language='DART' is not a language-side method"):
        ipcv.compress(tower, vision=ipcv.IPCV(0.5, stabilize_layers=2), language="DART")


def test_unsupported_attention_backend():
    tower = make_tower()
    tower.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="'flex_attention' is not supported"):
        ipcv.compress(tower, vision=ipcv.IPCV(0.5, stabilize_layers=2))
