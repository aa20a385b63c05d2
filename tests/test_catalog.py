"""The one table of methods (ipcv.catalog): every registry is derived from it, and no method is counted as free."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import ipcv
from ipcv import catalog, language
from ipcv.method_strings import SIDES, format_method, parse_method
from ipcv.shapes import DecoderShape, EncoderShape
from ipcv.trace import DecoderRecord


def test_every_registry_is_the_table():
    names = [m.name for m in catalog.METHODS]
    assert names == [
        "IPCV", "ToMe", "ToFu", "DARTViT", "DART", "FastV", "V2Drop", "SparseVLM",
        "VisionZip", "DivPrune", "CDPruner", "RandomKeep", "Pool",
    ]  # fmt: skip
    assert [n for n in ipcv.__all__ if n in names] == names  # ipcv.__all__ opens with the table, in its order
    assert all(getattr(ipcv, m.name) is m.settings for m in catalog.METHODS)
    for side in ("vision", "language"):
        assert list(SIDES[side]) == [m.name for m in catalog.METHODS if m.side == side]  # the method strings
    assert set(typing.get_args(ipcv.VisionMethod)) == set(catalog.VISION)
    assert set(typing.get_args(ipcv.LanguageMethod)) == set(catalog.LANGUAGE)


def test_a_row_without_a_count_or_with_a_wrong_side_is_refused_at_construction():
    run = catalog.BY_NAME["IPCV"].run
    with pytest.raises(TypeError, match="count must be callable"):
        catalog.Method(ipcv.IPCV, "vision", run, None)
    with pytest.raises(ValueError, match="side='both' is not allowed"):
        catalog.Method(ipcv.IPCV, "both", run, catalog.BY_NAME["IPCV"].count)
    with pytest.raises(TypeError, match="settings dataclass"):
        catalog.Method(dict, "vision", run, run)


def test_method_of_names_the_side_and_its_methods():
    assert catalog.method_of(ipcv.DART(0.5), "language").name == "DART"
    with pytest.raises(TypeError, match=r"is not a vision-side method; use one of IPCV, ToMe, ToFu, DARTViT"):
        catalog.method_of(ipcv.DART(0.5), "vision")
    with pytest.raises(TypeError, match="is not a compression method"):
        catalog.method_of(0.5)


@pytest.mark.parametrize("row", [m for m in catalog.METHODS if m.side == "vision"], ids=lambda m: m.name)
def test_every_vision_method_is_counted_by_its_own_count(row):
    """A compressed call costs fewer block FLOPs than vanilla and some overhead of its own (never 0)."""
    from ipcv.flops import encoder_flops

    shape = EncoderShape(depth=12, dim=64, mlp_dim=128, heads=4)
    settings = row.settings(0.5)
    vanilla, pruned = encoder_flops(shape, [64, 64]), encoder_flops(shape, [64, 64], settings)
    assert pruned.blocks < vanilla.blocks and pruned.overhead > 0
    assert pruned.tokens_per_block == tuple(sum(b.q_lengths) for b in row.count(settings, [64, 64], 0, 12, 64, 4)[0])


@pytest.mark.parametrize("row", [m for m in catalog.METHODS if m.side == "language"], ids=lambda m: m.name)
def test_every_language_method_is_counted_by_its_own_overhead(row):
    from ipcv.flops import decoder_overhead

    shape = DecoderShape(layers=24, dim=64, mlp_dim=128, heads=4, kv_heads=2, head_dim=16, vocab=100)
    settings = row.settings(0.5)
    layers = settings.stage_layers()
    tokens = [[40]] * 24
    visual = [[32]] * layers[0] + [[16]] * (24 - layers[0])
    if layers[0] == 0:  # a pre-LLM method: its stage sees the unpruned prompt (40 tokens, 32 visual)
        tokens, visual = [[24]] * 24, [[16]] * 24
    record = DecoderRecord(
        row.name, tokens, visual, tokens, [[[16]]] * len(layers), list(layers), settings, ([40], [32])
    )
    assert decoder_overhead(shape, record) > 0
    assert decoder_overhead(shape, dataclasses.replace(record, settings=None)) == 0  # no LLM-side method ran


def test_darts_overhead_follows_its_own_pivots():
    shape = DecoderShape(layers=8, dim=64, mlp_dim=128, heads=4, kv_heads=2, head_dim=16, vocab=100)
    few, many = (language.dart_overhead(ipcv.DART(0.5, pivots=p, text_pivots=1), shape, 40, 32, 16) for p in (2, 8))
    assert many - few == 2 * 64 * (8 - 2) * 32  # the pivot / visual-token similarities: 2 D pivots vis


@pytest.mark.parametrize("row", catalog.METHODS, ids=lambda m: m.name)
def test_every_method_string_round_trips(row):
    settings = row.settings(0.35)
    assert parse_method(format_method(settings), row.side) == settings


def test_pre_llm_overheads_are_their_own_work():
    """DivPrune's distance matrix and CDPruner's kernel grow with the square of the visual tokens, the DPP's
    Cholesky rows with the kept count; a stage at layer 0 is charged on the unpruned prompt."""
    from ipcv.flops import decoder_overhead, tower_score_flops

    shape = DecoderShape(layers=8, dim=64, mlp_dim=128, heads=4, kv_heads=2, head_dim=16, vocab=100)
    div = language.divprune_overhead(ipcv.DivPrune(0.5), shape, 80, 64, 32)
    assert div == 2 * 64 * 64 * 64 + 64 * 32
    cdp = language.cdpruner_overhead(ipcv.CDPruner(0.5), shape, 80, 64, 32)
    assert cdp == 2 * 64 * 64 * 64 + 2 * 64 * 16 * 64 + 64 * 32 * 32
    assert language.pool_overhead(ipcv.Pool(0.25), shape, 80, 64, 16) == 64 * 64
    record = DecoderRecord(
        "DivPrune", [[48]] * 8, [[32]] * 8, [[48]] * 8, [[[32]]], [0], ipcv.DivPrune(0.5), ([80], [64])
    )
    assert decoder_overhead(shape, record) == 2 * 64 * 64 * 64 + 64 * 32  # charged on the 64 visual tokens entering
    enc = EncoderShape(depth=4, dim=32, mlp_dim=64, heads=4)
    assert tower_score_flops(enc, [16, 4]) == 4 * 20 * 32 * 32 + 2 * 32 * (256 + 16)
