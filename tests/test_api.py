"""Validation: every bad input gets an error naming the parameter, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tower

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
