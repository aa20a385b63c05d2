"""python -m ipcv.bench gpu: its CPU variant (--device cpu --size tiny) runs every part on tiny configs of
the Qwen2-VL classes. Timings on a tiny CPU model mean nothing; checked here are the command's
structure, its JSON, the exactness and tolerance checks, token counts and the analytic columns."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import pytest
import torch

import ipcv
from ipcv import catalog
from ipcv.bench import gpu
from ipcv.bench.gpu.check import count_syncs, identical
from ipcv.bench.prefill import ratio_grid


def _args(tmp_path, **kw):
    base = dict(
        parts=["check", "latency", "tower"], device="cpu", size="tiny", dtype="fp32", attn="varlen",
        protocol="ours", repeats=1, new_tokens=2, out=tmp_path / "gpu.json",
    )  # fmt: skip
    return argparse.Namespace(**(base | kw))


@pytest.fixture(scope="module")
def printed(tmp_path_factory):
    """The tiny CPU run: its JSON and what it printed (stdout, and the progress lines on stderr)."""
    args = _args(tmp_path_factory.mktemp("gpu"))
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("IPCV_PROGRESS", "lines")
        gpu.main(args)
    return json.loads(args.out.read_text()), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bench(printed):
    return printed[0]


@pytest.mark.slow
def test_json_names_where_it_ran(bench):
    for key in ("device", "torch", "transformers", "date", "weights"):
        assert bench[key]
    assert bench["device"].startswith("CPU") and "tiny" in bench["weights"] and bench["size"] == "tiny"


@pytest.mark.slow
def test_check_keep_all_exact_and_kernels_agree(bench):
    check = bench["check"]
    assert set(check["attention_implementations"]) == {"eager", "sdpa", "varlen"}
    assert check["attention_implementations"]["varlen"] == "sdpa per segment"  # no CUDA: the reference path
    methods = set(ratio_grid(vit=(0.35,), llm=(0.35,))) - {"vanilla"}
    rows = check["rows"]
    assert {(r["dtype"], r["attention"], r["setting"]) for r in rows} == {
        (d, a, m) for d in ("fp32", "bf16") for a in ("eager", "sdpa", "varlen") for m in methods
    }
    assert all(r["keep1_exact"] and r["finite"] for r in rows)
    fp32 = [r for r in rows if r["dtype"] == "fp32" and r["attention"] != "eager"]
    assert all(r["same_decisions"] and r["within"] and r["rel"] < 1e-5 for r in fp32)
    assert check["failures"] == [] and all(r["ok"] for r in rows)


@pytest.mark.slow
def test_latency_rows_for_every_input(bench):
    lat = bench["latency"]
    assert [i["input"] for i in lat["inputs"]] == [x[0] for x in gpu.SIZES["tiny"][2]]
    names = set(ratio_grid(vit=(0.65, 0.5, 0.35, 0.2), llm=(0.35, 0.2, 0.05)))
    for inp in lat["inputs"]:
        rows = {r["setting"]: r for r in inp["rows"]}
        assert set(rows) | set(inp["refused"]) == names
        n = (inp["frames"] // 2 if inp["kind"] == "video" else 1) * (inp["side"] // 28) ** 2  # LLM visual tokens
        assert rows["vanilla"]["visual_tokens_llm"] == n and rows["vanilla"]["total_ratio"] == 1.0
        ipcv_row = rows["IPCV | ViT 35% / LLM 35%"]
        assert ipcv_row["flop_ratio"] < rows["DART | ViT 100% / LLM 35%"]["flop_ratio"] < 1
        assert ipcv_row["kv_cache_mb"] < rows["vanilla"]["kv_cache_mb"]
        assert all(r["peak_gib"] is None for r in rows.values())  # CPU: no peak is claimed
        assert all(r["prefill_s"] <= r["total_s"] for r in rows.values())


@pytest.mark.slow
def test_tower_part_and_targets(bench):
    assert [t["attention"] for t in bench["tower"]] == ["eager", "sdpa", "varlen"]
    for t in bench["tower"]:
        rows = {(r["patches"], r["setting"]): r for r in t["rows"]}
        assert {p for p, _ in rows} == set(gpu.SIZES["tiny"][3])
        assert all(rows[p, "ipcv0.35"]["flop_ratio"] < 1 for p in gpu.SIZES["tiny"][3])
    targets = {t["target"]: t for t in bench["targets"]}
    assert len(targets) == 3 and all(t["met"] is None for t in targets.values())  # a tiny CPU run judges none
    assert "--size real" in bench["targets_not_judged"] and "CUDA GPU" in bench["targets_not_judged"]


@pytest.mark.slow
def test_tiny_cpu_run_says_the_targets_are_not_checked(printed):
    _, out, _ = printed
    assert "MISSED" not in out and " met" not in out
    assert "speed targets (3): not checked on this run: they are judged only on a real-size run" in out


@pytest.mark.slow
def test_targets_are_judged_on_a_real_gpu_run(bench, capsys):
    assert gpu.not_judged("real", "cuda") is None
    assert gpu.not_judged("tiny", "cuda") and gpu.not_judged("tiny", "cpu")
    judged = gpu.targets(bench["tower"], bench["latency"], gpu.not_judged("real", "cuda"))
    assert [t["met"] for t in judged] == [t["value"] <= t["limit"] for t in judged]
    gpu.print_targets({"targets_not_judged": None, "targets": [judged[0] | {"value": 2.0, "limit": 1.1, "met": False}]})
    assert capsys.readouterr().out == f"target {judged[0]['target']}: 2.000 (limit 1.1) MISSED\n"


@pytest.mark.slow
def test_every_part_reports_its_progress(printed):
    _, _, err = printed
    lines = err.splitlines()
    checks = 2 * 3 * (len(ratio_grid(vit=(0.35,), llm=(0.35,))) - 1)  # dtypes x attentions x methods
    assert f"gpu check [1/{checks}] fp32 eager: " in err and f"gpu check [{checks}/{checks}] bf16 varlen: " in err
    assert any(line.startswith("gpu latency: building the tiny Qwen2-VL") for line in lines)
    for label, *_ in gpu.SIZES["tiny"][2]:
        assert any(line.startswith(f"gpu latency, {label} [1/") and "warm-up" in line for line in lines)
    for attn in ("eager", "sdpa", "varlen"):
        assert any(line.startswith(f"gpu tower, {attn}: 64 patches [") for line in lines)


def test_refuses_without_cuda_and_real_size_on_cpu(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device.*--device cpu --size tiny"):
            gpu.run(_args(tmp_path, device="cuda", size="real"))
    with pytest.raises(SystemExit, match="only --size tiny"):
        gpu.run(_args(tmp_path, size="real"))
    with pytest.raises(SystemExit, match="--attn flash_attention_2: not available here; use one of eager, sdpa"):
        gpu.run(_args(tmp_path, attn="flash_attention_2"))


def test_sync_counter_leaves_the_runner_as_it_was():
    runner = catalog.BY_SETTINGS[ipcv.IPCV]
    with count_syncs(torch.device("cpu")) as seen:
        assert catalog.BY_SETTINGS[ipcv.IPCV] is runner and seen == []
    assert catalog.BY_SETTINGS[ipcv.IPCV] is runner


@pytest.mark.slow
def test_status_claim_uses_only_real_gpu_runs(bench, tmp_path, monkeypatch):
    from ipcv.book import efficiency, status

    (tmp_path / "gpu_cpu.json").write_text(json.dumps(bench))  # a tiny CPU run is no GPU measurement
    assert efficiency.gpu_runs(tmp_path) == []
    monkeypatch.setattr(efficiency, "BENCH", tmp_path / "efficiency.json")  # the claim reads data/bench beside it
    assert "has not been run" in status._claim_table4()
    real = bench | {"size": "real", "device": "NVIDIA Test GPU"}
    (tmp_path / "gpu_nvidia.json").write_text(json.dumps(real))
    assert efficiency.gpu_runs(tmp_path) == [tmp_path / "gpu_nvidia.json"]
    row = next(r for r in bench["latency"]["inputs"][0]["rows"] if r["setting"] == "IPCV | ViT 35% / LLM 35%")
    claim = status._claim_table4()
    assert claim.startswith("**Measured on NVIDIA Test GPU**") and f"{100 * row['total_ratio']:.1f} %" in claim


@pytest.mark.slow
def test_parts_run_in_separate_calls_merge_into_one_file(bench):
    tower_only = {k: v for k, v in bench.items() if k not in ("check", "latency")}
    merged = gpu.merge(bench, tower_only)
    assert merged["check"] == bench["check"] and merged["latency"] == bench["latency"]
    assert len(merged["targets"]) == 3
    other = gpu.merge(bench | {"device": "another GPU"}, tower_only)
    assert "check" not in other  # another device's parts are never mixed in


def test_table4_rows_are_found_for_every_benchmark_name():
    from ipcv.bench.prefill import protocol_settings
    from ipcv.paper import table4, table4_key

    paper = table4()
    assert paper[table4_key("vanilla")]["latency_pct"] == 100.0
    assert paper[table4_key("IPCV | ViT 35% / LLM 35%")]["latency_pct"] == 60.8  # the paper's headline figure
    ours = ratio_grid(vit=(0.65, 0.5, 0.35, 0.2), llm=(0.35, 0.2, 0.05))
    assert {table4_key(n) for n in ours} == set(paper) == {table4_key(n) for n in protocol_settings("paper")}


def test_identical_is_bitwise_and_nan_aware():
    a = torch.tensor([1.0, float("nan"), -0.5])
    assert identical(a, a.clone()) and not identical(a, a + 1e-7 * torch.tensor([1.0, 0.0, 0.0]))
    assert not identical(a, torch.tensor([1.0, 2.0, -0.5])) and not identical(a, a[:2])
