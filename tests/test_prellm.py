"""ipcv.analysis.prellm (notebook 09): the pre-LLM methods on a ViT's final tokens, the two measures, the FLOP
model and the verdicts, on tiny random models and hand-made tensors; each checked by an independent route."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from families import VIT_SIZE, tiny_vit

import ipcv
from ipcv import paths
from ipcv.analysis import encoders, flop_tables, hidden, prellm
from ipcv.book import claims


def photos(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (60, 70, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def vit():
    model = tiny_vit("dinov2", "eager")
    enc = encoders.vit_encoder(model, "tiny random DINOv2", trained=False)
    batch = enc.prepare(photos(), ["a", "b", "c"], VIT_SIZE)
    return enc, batch, hidden.run_unpruned(enc, batch)


def test_cls_attention_is_the_models_own_attention_row(vit):
    enc, batch, un = vit
    with torch.inference_mode():
        out = enc.model(**batch.kwargs, output_attentions=True)
    for block in (enc.depth - 1, 2):
        scores, metric = prellm.cls_attention(enc, batch, un.states[block], block)
        expected = out.attentions[block][:, :, 0, 1:].sum(1)  # [B, n]: the CLS row, summed over heads
        torch.testing.assert_close(scores, expected.float(), rtol=1e-5, atol=1e-6)
        assert metric.shape == (3, batch.seg_lengths[0] - 1, enc.model.config.hidden_size // 4)


def _tokens(n: int = 16, d: int = 6, seed: int = 0) -> prellm.ImageTokens:
    g = torch.Generator().manual_seed(seed)
    return prellm.ImageTokens(torch.randn(1, d, generator=g), torch.randn(n, d, generator=g), (4, 4))


def test_visionzip_is_the_official_llava_rule_on_fixed_tensors():
    """Transcribed from the official LLaVA rule: the CLS token plus the top (k_d - 1) patches by CLS attention,
    then k_c targets at a stride over the rest, each the target plus the mean of the rest assigned to it."""
    x = _tokens()
    g = torch.Generator().manual_seed(1)
    scores, metric = torch.rand(16, generator=g), torch.randn(16, 3, generator=g)
    s = prellm.compress("VisionZip", 0.5, x, 0, (scores, metric))  # k = 8: 1 contextual (round(8 * 10/64))
    dominant = 7  # and 1 contextual token
    top = scores.topk(dominant - 1).indices.sort().values
    rest = torch.tensor([i for i in range(16) if i not in top.tolist()])
    target = rest[0]  # one target: stride over the rest starts at its first token
    merged = x.patches[target] + x.patches[rest[1:]].mean(0)
    expected = torch.cat([x.prefix, x.patches[top], merged[None]])
    torch.testing.assert_close(s.states, expected)
    assert s.tokens == 8 and s.weights[0].sum() == 0  # the CLS token stands for no patch
    torch.testing.assert_close(s.weights[1:].sum(1), torch.ones(7))
    assert s.weights[-1, target] == 0.5 and s.weights[-1, rest[1:]].sum() == pytest.approx(0.5)


@pytest.mark.parametrize("method", ["DivPrune", "CDPruner", "RandomKeep"])
def test_selections_keep_the_settings_count_and_are_the_library_maths(method):
    x = _tokens()
    s = prellm.compress(method, 0.35, x, 2)
    k = ipcv.keep_count(16, 0.35)
    assert s.tokens == k and torch.equal(s.weights.sum(1), torch.ones(k))
    idx = s.weights.argmax(1)
    torch.testing.assert_close(s.states, x.patches[idx])
    if method == "RandomKeep":  # the seeded draw of span 2
        assert torch.equal(idx, ipcv.methods.random_keep.random_keep(16, k, 0, 2))


def test_cdpruner_without_instruction_is_the_plain_dpp():
    x = _tokens()
    s = prellm.compress("CDPruner", 0.5, x, 0)
    from ipcv.methods.cdpruner import dpp_greedy_map, similarity_kernel

    assert torch.equal(s.weights.argmax(1), dpp_greedy_map(similarity_kernel(x.patches), 8).sort().values)


def test_pool_averages_its_cells_and_spreads_its_weight():
    x = _tokens()
    s = prellm.compress("Pool", 0.25, x, 0)  # 4 x 4 -> 2 x 2: the plain 2x2 average
    torch.testing.assert_close(s.states[0], x.patches[[0, 1, 4, 5]].mean(0))
    assert s.tokens == 4 and (s.weights[0, [0, 1, 4, 5]] == 0.25).all()


def test_measures_by_hand():
    x = _tokens()
    full = prellm.TokenSet(x.patches, torch.eye(16))
    sal = torch.arange(1.0, 17.0)
    assert prellm.measures(x.patches, full, sal) == pytest.approx(dict(coverage=1.0, share=1.0))
    half = prellm.TokenSet(x.patches[:8], torch.eye(16)[:8])
    m = prellm.measures(x.patches, half, sal)
    cos = torch.nn.functional.cosine_similarity(x.patches[8:, None], x.patches[None, :8], dim=-1).max(1).values
    assert m["coverage"] == pytest.approx(float((8 + cos.sum()) / 16), abs=1e-6)
    assert m["share"] == pytest.approx(float(sal[:8].sum() / sal.sum()))
    assert np.isnan(prellm.measures(x.patches, half, None)["share"])


def test_compare_rows_and_ipcv_pairing(vit):
    enc, batch, un = vit
    runs = {r: hidden.run_compressed(enc, batch, ipcv.IPCV(r, 2, 2, 3), states=False) for r in (0.5, 0.2)}
    table = prellm.compare(enc, batch, un, runs, [0.5, 0.2])
    assert len(table) == 3 * 2 * (1 + 2 * len(prellm.METHODS))
    assert set(table.method) == {prellm.IPCV_ALONE} | {prellm.label(m, p) for m in prellm.METHODS for p in (0, 1)}
    alone = table[table.method == "Random (seed 0)"]
    assert (alone.tokens == [ipcv.keep_count(49, r) for r in (0.5, 0.5, 0.5, 0.2, 0.2, 0.2)]).all()
    assert table.coverage.between(-1, 1 + 1e-6).all() and table.share.isna().all()  # no saliency head
    # behind IPCV the same selection maths reads IPCV's restored tokens, so the two rows differ
    paired = table[table.method == "IPCV + DivPrune"].coverage.to_numpy()
    assert not np.allclose(paired, table[table.method == "DivPrune"].coverage.to_numpy())


def test_the_flop_model_is_the_benchs_count():
    """The vanilla prefill and IPCV's tower of the committed prefill bench (ipcv.costs on a real run of the
    Qwen2-VL-2B architecture) against the analytic model on the meta-device architecture."""
    bench = json.loads((paths.data_dir() / "bench" / "prefill_qwen2vl2b_cpu.json").read_text())
    rows = {r["setting"]: r for r in bench["rows"]}
    model = flop_tables.qwen2vl_2b()
    vanilla = flop_tables.prefill_costs(model, 1024, 256, 256)
    assert vanilla["gflops"] / 1e3 == pytest.approx(rows["vanilla"]["tflops"], rel=1e-9)
    assert vanilla["kv_cache_mb"] == pytest.approx(rows["vanilla"]["kv_cache_mb"], rel=1e-9)
    ipcv_row = next(r for r in bench["rows"] if r["vision"].startswith("IPCV(keep_ratio=0.35"))
    tower = flop_tables.prefill_costs(model, 1024, 256, 256, ipcv.IPCV(0.35))["vision_gflops"]
    assert tower / 1e3 == pytest.approx(ipcv_row["vision_tflops"], rel=1e-9)
    c = prellm.costs(model, [0.35])
    div = c[c.method == "DivPrune"].iloc[0]
    assert div.kept == 90 and div.overhead_gflops * 1e9 == 2 * 256 * 256 * 1536 + 256 * 90  # its own count
    assert c[c.method == "IPCV + DivPrune"].gflops.iloc[0] < div.gflops


def _table(diff: float, gflops_ours: float) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for image in "abcdefgh":
        for r, cost in ((0.5, 10.0), (0.2, 8.0)):
            base = 0.9 + 0.01 * rng.standard_normal()
            rows.append(dict(pre_llm="DivPrune", ipcv=False, keep_ratio=r, image=image, coverage=base, share=0.5,
                             gflops=cost))  # fmt: skip
            rows.append(dict(pre_llm="DivPrune", ipcv=True, keep_ratio=r, image=image, coverage=base + diff,
                             share=0.5, gflops=gflops_ours))  # fmt: skip
    return pd.DataFrame(rows)


def test_verdicts_follow_the_differences():
    assert claims.pairing(_table(0.02, 9.0), True)["DivPrune"]["coverage"].outcome == "yes"
    assert claims.pairing(_table(-0.02, 9.0), True)["DivPrune"]["coverage"].outcome == "no"
    assert claims.pairing(_table(0.02, 9.0), False)["DivPrune"]["coverage"].outcome == "not a result"
    verdict, ratios = claims.at_equal_flops(_table(0.02, 9.0), ("DivPrune", True), ("DivPrune", False), True)
    assert verdict.outcome == "yes" and ratios == [0.5, 0.2]
    assert claims.at_equal_flops(_table(0.02, 5.0), ("DivPrune", True), ("DivPrune", False), True) == (None, [])


def test_the_measured_prefill_table_reads_a_bench_file(tmp_path):
    """The reader of ``prefill --protocol modern``'s file, on the committed prefill bench (the same writer)."""
    from ipcv.book import efficiency

    source = paths.data_dir() / "bench" / "prefill_qwen2vl2b_cpu.json"
    table, caption = efficiency.modern_prefill(source)
    bench = json.loads(source.read_text())
    assert table["setting"].tolist() == [r["setting"] for r in bench["rows"]]
    assert table["FLOPs %"].iloc[0] == pytest.approx(100.0)
    assert bench["weights"] in caption and bench["device"] in caption
    assert efficiency.modern_prefill(tmp_path / "missing.json") is None
    once = tmp_path / "once.json"
    once.write_text(json.dumps({**bench, "repeats": 1}))
    assert efficiency.modern_prefill(once)[1].startswith("Timed 1 time(s) per setting: the time columns are single")
    assert not caption.startswith("Timed") or bench["repeats"] < efficiency.FEW_REPEATS
