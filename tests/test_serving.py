"""The vLLM plugin's switch (ipcv.serving, no vLLM needed): IPCV_METHOD parsed with ipcv's method strings, and
what a serving engine cannot take refused with a reason. The plugin itself runs in tests/vllm/ (.venv-vllm)."""

from __future__ import annotations

import pytest

import ipcv
from ipcv.method_strings import parse_method
from ipcv.serving import ENV, method_from_env, serving_method


@pytest.mark.parametrize("text", [None, "", "none", " None "])
def test_unset_or_none_is_off(text):
    assert serving_method(text) is None
    assert method_from_env({} if text is None else {ENV: text}) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("IPCV:0.35", ipcv.IPCV(0.35)),
        ("IPCV:0.35:prune_layer=4", ipcv.IPCV(0.35, prune_layer=4)),
        ("tome:0.5", ipcv.ToMe(0.5)),
        ("ToFu:0.5:merge=average", ipcv.ToFu(0.5, merge="average")),
        ("DARTViT:0.35:prune_layer=2", ipcv.DARTViT(0.35, prune_layer=2)),
    ],
)
def test_length_preserving_vision_methods_are_served(text, expected):
    assert serving_method(text) == expected == method_from_env({ENV: text})


@pytest.mark.parametrize("text", ["IPCV:1.5", "IPCV:0.5:prune_layr=2", "Bogus:0.5", "IPCV", "IPCV:half"])
def test_a_bad_string_gets_the_parsers_own_error_with_the_variables_name(text):
    with pytest.raises(ValueError) as parsed:
        parse_method(text, "vision")
    with pytest.raises(ValueError) as served:
        serving_method(text)
    assert str(served.value) == f"{ENV}={text!r}: {parsed.value}"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("FastV:0.5", "FastV is an LLM-side method"),
        ("DART:0.35:layer=3", "DART is an LLM-side method"),
        ("ToMe:0.5:output=reduced", "output='reduced' hands the language model fewer visual tokens"),
        ("DARTViT:0.5:output=reduced", "placeholder count"),
        ("IPCV:0.35:scope=global", "scope='global' puts one budget over all patches"),
        ("ToFu:0.5:scope=global", "depend on the others in its batch"),
    ],
)
def test_what_a_serving_engine_cannot_take_is_refused_with_why(text, reason):
    with pytest.raises(ValueError, match=reason) as err:
        serving_method(text)
    assert str(err.value).startswith(f"{ENV}={text!r}: ")
