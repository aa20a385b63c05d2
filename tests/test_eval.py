"""ipcv.eval: method strings, the results store, and the whole pipeline through the real lmms-eval CLI on a
tiny random Qwen2-VL saved locally and two tiny local tasks (no hub anywhere). Random weights: these
are pipeline checks, never accuracy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ipcv
from ipcv.eval import store
from ipcv.measure import summarize
from ipcv.method_strings import format_method, parse_method

# --- method strings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, side, expected",
    [
        ("IPCV:0.35", "vision", ipcv.IPCV(0.35)),
        ("ipcv:0.35:prune_layer=4:stabilize_layers=3", "vision", ipcv.IPCV(0.35, prune_layer=4, stabilize_layers=3)),
        ("IPCV:0.5:reintegrate=false:scope=global", "vision", ipcv.IPCV(0.5, reintegrate=False, scope="global")),
        ("ToMe:0.5", "vision", ipcv.ToMe(0.5)),
        ("DARTViT:0.2", "vision", ipcv.DARTViT(0.2)),
        ("none", "vision", None),
        ("DART:0.35", "language", ipcv.DART(0.35)),
        ("FastV:0.2:layer=3", "language", ipcv.FastV(0.2, layer=3)),
        ("None", "language", None),
    ],
)
def test_parse_method(text, side, expected):
    assert parse_method(text, side) == expected
    assert parse_method(format_method(expected), side) == expected


def test_format_round_trip_keeps_tuples_and_floats():
    v = ipcv.V2Drop(1 / 3, layers=(2, 9, 20))
    assert parse_method(format_method(v), "language") == v


@pytest.mark.parametrize(
    "text, side, error, words",
    [
        ("Foo:0.3", "vision", ValueError, ["unknown vision-side method", "IPCV", "ToMe", "none"]),
        ("DART:0.3", "vision", ValueError, ["unknown vision-side method", "DARTViT"]),
        ("IPCV", "vision", ValueError, ["give the keep ratio"]),
        ("IPCV:abc", "vision", ValueError, ["not a number"]),
        ("IPCV:1.5", "vision", ValueError, ["keep_ratio=1.5", "(0, 1]"]),  # the settings class's own check
        ("IPCV:0.3:k=4", "vision", ValueError, ["not an option of IPCV", "neighbors"]),
        ("IPCV:0.3:prune_layer=0", "vision", ValueError, ["prune_layer=0"]),
        ("DART:0.3", "middle", ValueError, ["side='middle'"]),
    ],
)
def test_parse_method_errors(text, side, error, words):
    with pytest.raises(error) as e:
        parse_method(text, side)
    for w in words:
        assert w in str(e.value)


# --- store and aggregation -----------------------------------------------------------------------


def _row(task, vision="none", **extra):
    return {"model": "m", "vision": vision, "language": "none", "task": task, "limit": None, **extra}


def test_store_appends_once_per_key(tmp_path):
    path = tmp_path / "r.jsonl"
    assert store.append(path, [_row("a"), _row("b")]) == 2
    assert store.append(path, [_row("a", x=1), _row("c")]) == 1  # "a" is already there
    assert [r["task"] for r in store.load(path)] == ["a", "b", "c"]
    assert "x" not in store.load(path)[0]


def test_store_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    store.append(path, [_row("a")])
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt("killed while renaming")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.append(path, [_row("b")])
    assert path.read_bytes() == before  # the old store, whole


def test_store_names_a_line_that_is_not_a_row(tmp_path):
    path = tmp_path / "r.jsonl"
    store.append(path, [_row("a")])
    path.write_text(path.read_text() + "{cut short\n")
    with pytest.raises(ValueError, match="r.jsonl line 2 is not a JSON row"):
        store.load(path)
    with pytest.raises(ValueError, match="is a directory, not a results store"):
        store.load(tmp_path)


def test_summarize_sums_latency_and_averages_per_sample():
    calls = [
        dict(batch=1, new_tokens=3, prefill_s=1.0, total_s=2.0, vision_s=0.5, visual_in=[10],
             visual_per_layer=[10, 4], vision_tflops=1.0, llm_tflops=2.0, kv_mb=3.0),
        dict(batch=2, new_tokens=5, prefill_s=3.0, total_s=4.0, vision_s=1.0, visual_in=[20, 30],
             visual_per_layer=[50, 20], vision_tflops=4.0, llm_tflops=2.0, kv_mb=6.0),
    ]  # fmt: skip
    s = summarize(calls)
    assert s["samples"] == 3 and s["calls"] == 2
    assert s["latency_s"] == 6.0 and s["prefill_s"] == 4.0 and s["vision_s"] == 1.5
    assert s["visual_tokens_llm"] == pytest.approx(20.0)
    assert s["visual_tokens_per_layer"] == pytest.approx([20.0, 8.0])
    assert s["tflops"] == pytest.approx((5.0 + 4.0) / 3)
    assert s["kv_mb"] == pytest.approx(3.0)


# --- end to end through the lmms-eval CLI ----------------------------------------------------------

TASKS = ("ipcv_tiny_yesno", "ipcv_tiny_mc")
# the tiny tower has 6 blocks, its decoder 4 layers
SETTINGS = {
    "vanilla": "none,none",
    "ipcv_dart": "IPCV:0.35:stabilize_layers=2,DART:0.35",
    "tome": "ToMe:0.5,none",
    "keep1": "IPCV:1.0:stabilize_layers=2,DART:1.0",
}
PIXELS = dict(min_pixels=64 * 28 * 28 // 4, max_pixels=64 * 28 * 28)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tiny_qwen2_vl import save_tiny_qwen2_vl
    from tiny_tasks import write_tiny_tasks

    root = tmp_path_factory.mktemp("eval")
    return save_tiny_qwen2_vl(root / "model", layers=4), write_tiny_tasks(root / "tasks"), root


def _command(assets, store_path, settings):
    model, tasks, root = assets
    cmd = [sys.executable, "-m", "ipcv.eval", "custom", "--model", str(model), "--tasks", ",".join(TASKS)]
    cmd += ["--include-path", str(tasks), "--store", str(store_path), "--raw-dir", str(store_path.parent / "raw")]
    cmd += [
        "--model-args",
        f"device=cpu,device_map=cpu,max_pixels={PIXELS['max_pixels']},min_pixels={PIXELS['min_pixels']}",
    ]
    for name in settings:
        cmd += ["--setting", f"{name}={SETTINGS[name]}"]
    return cmd


def _env():
    return os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def sweep(assets):
    """One uninterrupted sweep over every setting: the store's rows by (setting, task)."""
    path = assets[2] / "full" / "results.jsonl"
    done = subprocess.run(_command(assets, path, SETTINGS), env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {(r["setting"], r["task"]): r for r in store.load(path)}


def _visual_tokens(assets, task) -> list[int]:
    """Hand count: LLM visual tokens of each document's image, from the processor's grid (t*h*w / 4)."""
    import pandas as pd
    from PIL import Image
    from transformers import AutoProcessor

    model, tasks, _ = assets
    processor = AutoProcessor.from_pretrained(model, **PIXELS)
    frame = pd.read_parquet(tasks / ("yesno.parquet" if task == "ipcv_tiny_yesno" else "mc.parquet"))
    counts = []
    for image in frame["image"]:
        import io

        grid = processor.image_processor(images=[Image.open(io.BytesIO(image["bytes"])).convert("RGB")])[
            "image_grid_thw"
        ]
        counts.append(int(grid.prod()) // 4)
    return counts


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_cell_is_one_row(sweep):
    assert set(sweep) == {(s, t) for s in SETTINGS for t in TASKS}
    for row in sweep.values():
        assert row["samples"] == row["ipcv"]["samples"] > 0
        assert row["device"].startswith("CPU") and row["versions"]["lmms_eval"].startswith("0.7")
        assert row["metrics"], row
    assert "pope_accuracy" in sweep["vanilla", "ipcv_tiny_yesno"]["metrics"]
    assert "mc_accuracy" in sweep["vanilla", "ipcv_tiny_mc"]["metrics"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_token_counts_match_hand_counts(sweep, assets):
    for task in TASKS:
        counts = _visual_tokens(assets, task)
        mean = sum(counts) / len(counts)
        vanilla, ours, tome = (sweep[s, task]["ipcv"] for s in ("vanilla", "ipcv_dart", "tome"))
        assert vanilla["visual_tokens_llm"] == pytest.approx(mean)
        assert vanilla["visual_tokens_per_layer"] == pytest.approx([mean] * 4)
        # IPCV reintegrates: the LLM receives every visual token; DART keeps keep_count(n, 0.35) of each
        # image from layer 2 on
        kept = sum(ipcv.keep_count(n, 0.35) for n in counts) / len(counts)
        assert ours["visual_tokens_per_layer"] == pytest.approx([mean, mean, kept, kept])
        assert tome["visual_tokens_per_layer"] == pytest.approx([mean] * 4)  # full-length output, no LLM pruner
        assert ours["kv_mb"] < vanilla["kv_mb"]
        assert ours["vision_tflops"] < vanilla["vision_tflops"] and tome["vision_tflops"] < vanilla["vision_tflops"]
        assert ours["llm_tflops"] < vanilla["llm_tflops"] == pytest.approx(tome["llm_tflops"])


@pytest.mark.slow
@pytest.mark.subprocess
def test_keep_one_answers_exactly_as_vanilla(sweep):
    for task in TASKS:
        assert sweep["keep1", task]["answers_sha256"] == sweep["vanilla", task]["answers_sha256"]
        assert sweep["keep1", task]["metrics"] == sweep["vanilla", task]["metrics"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_lmms_eval_results_carry_ipcv_throughput(sweep):
    raw = Path(sweep["ipcv_dart", TASKS[0]]["raw"])
    results = json.loads(next(raw.glob("lmms_eval/**/*_results.json")).read_text())
    throughput = results["throughput"]
    for key in ("avg_prefill_s", "avg_visual_tokens_llm", "avg_tflops", "avg_kv_mb"):
        assert throughput[key] > 0


def _comparable(row):
    return {
        k: row[k] for k in ("model", "vision", "language", "task", "limit", "metrics", "answers_sha256", "samples")
    } | {"tokens": row["ipcv"]["visual_tokens_per_layer"]}


@pytest.mark.slow
@pytest.mark.subprocess
def test_sweep_killed_and_resumed_ends_with_the_same_rows(sweep, assets):
    """SIGKILL the whole sweep (runner and lmms-eval) while its second setting runs, start it again: the
    store ends with exactly the rows of the uninterrupted sweep, none lost, none twice."""
    path = assets[2] / "killed" / "results.jsonl"
    names = ("vanilla", "tome")
    proc = subprocess.Popen(
        _command(assets, path, names), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 600
    while len(store.load(path)) < len(TASKS) and time.time() < deadline:  # vanilla's rows are in
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    time.sleep(3)  # the second lmms-eval run is under way
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {r["setting"] for r in store.load(path)} == {"vanilla"}
    again = subprocess.run(_command(assets, path, names), env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    rows = store.load(path)
    assert len(rows) == len({store.row_key(r) for r in rows}) == len(names) * len(TASKS)
    expected = sorted((_comparable(sweep[s, t]) for s in names for t in TASKS), key=lambda r: str(r))
    assert sorted((_comparable(r) for r in rows), key=lambda r: str(r)) == expected


# --- command-line errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["table9"], ["unknown sweep 'table9'", "table1", "fig5"]),
        (["custom", "--model", "/no/such/dir", "--tasks", "pope", "--setting", "a=none,none"], ["no such local"]),
        (["custom", "--model", "/tmp", "--tasks", "pope", "--setting", "a=IPCV:2,none"], ["keep_ratio=2.0", "(0, 1]"]),
        (["custom", "--model", "/tmp", "--tasks", "pope", "--setting", "a=IPCV:0.3"], ["NAME=VISION,LANGUAGE"]),
        (["table1", "--tasks", "gqa,mathvista"], ["mathvista not in sweep table1", "ocrbench"]),
        (["table1", "--family", "gpt"], ["--family 'gpt' is not allowed", "qwen2_vl"]),
        (["table1", "--protocol", "mine"], ["protocol='mine'", "official"]),
        (["custom", "--model", "/tmp", "--tasks", "pope", "--setting", "a=none,none"],
         ["--model /tmp cannot load", "has no config.json", "fix: give --model a local directory"]),
        (["custom", "--model", "/tmp", "--tasks", "pope", "--setting", "a=none,none", "--protocol", "official"],
         ["--protocol applies to the named sweeps"]),
        (["custom", "--model", "/tmp", "--tasks", "pope", "--setting", "a=none,none", "--setting", "a=ToMe:0.5,none"],
         ["the name 'a' is given twice"]),
        (["custom", "--model", "/tmp", "--tasks", "pope", "--setting", "a=none,none", "--setting", "b=none,none"],
         ["the same vision and language as --setting a"]),
        (["table1", "--setting", "a=none,none"], ["--setting is for custom only"]),
        (["table1", "--tasks", "gqa,,mme"], ["an empty task name"]),
        (["table1", "--tasks", "gqa,gqa"], ["gqa given more than once"]),
        (["table1", "--model-args", "pretrained=/m"], ["pretrained is set by ipcv.eval", "ipcv_log"]),
        (["table1", "--model-args", "device"], ["'device' is not key=value"]),
        (["list", "--model", "/m", "--limit", "3"], ["list takes only --protocol", "--model, --limit would be"]),
    ],
)  # fmt: skip
def test_command_line_errors_name_what_is_allowed(argv, words, capsys):
    from ipcv.eval.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    text = str(e.value) + capsys.readouterr().err
    for w in words:
        assert w in text, text


def test_unknown_task_is_refused_with_close_names(tmp_path):
    from ipcv.eval.__main__ import check_tasks

    with pytest.raises(SystemExit) as e:
        check_tasks(["popee"], None)
    assert "popee: not an lmms-eval task" in str(e.value) and "pope" in str(e.value)


def test_every_family_has_a_wrapper_of_the_harness_kind():
    from lmms_eval.api.model import lmms

    from ipcv.eval import harness, plugin

    manifests = {m.model_id: m for m in plugin.manifests()}
    rows = {h.model_id: (h.class_name, h.wrapper, h.kind) for h in plugin.harnesses().values()}
    assert set(manifests) == set(rows) and "ipcv_qwen2_vl" in manifests
    for model_id, (name, base, kind) in rows.items():
        cls = getattr(harness, name)
        assert issubclass(cls, harness._Compressed) and issubclass(cls, lmms)
        assert cls.__mro__[2].__name__ == base.rsplit(".", 1)[1]
        assert cls.is_simple == (kind == "simple")
        assert getattr(manifests[model_id], f"{kind}_class_path") == f"ipcv.eval.harness.{name}"
    with pytest.raises(AttributeError):
        harness.NoSuchWrapper  # noqa: B018


@pytest.mark.parametrize("protocol", ["paper", "official"])
def test_every_sweep_setting_is_exactly_its_preset(protocol):
    from ipcv import presets
    from ipcv.eval.__main__ import not_built
    from ipcv.eval.sweeps import SWEEPS, sweeps

    found = sweeps(protocol)
    assert tuple(found) == SWEEPS
    for sweep in found.values():
        # a sweep's cells are keyed by (vision, language): no two settings of a sweep may share them
        assert len({(s.vision, s.language) for s in sweep.settings}) == len(sweep.settings), sweep.name
        for s in sweep.settings:
            vision, language = parse_method(s.vision, "vision"), parse_method(s.language, "language")
            if s.table is not None:
                assert (vision, language) == presets.paper_settings(s.table, s.setting, s.method, protocol)
            # every switch is built (ToMe / ToFu's scope="global" included); output="reduced" only on the
            # mRoPE families, so Table 3's (InternVL3) ViT-side baseline rows are named as not runnable
            assert not_built(s) is None, s
            reduced = getattr(vision, "output", "full") == "reduced"
            unbuilt = reduced and sweep.family not in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
            assert (not_built(s, sweep.family) is not None) == unbuilt, (sweep.name, s)
            if unbuilt:
                assert sweep.name == "table3" and "mRoPE families" in not_built(s, sweep.family)
    assert [s.name for s in found["table4"].settings][:2] == ["vanilla/Vanilla", "vit65_llm65/DART (ViT)"]


def _commands(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if " -m lmms_eval " in line]


def test_dry_run_prints_one_lmms_eval_command_per_setting(assets, tmp_path, capsys):
    from ipcv.eval.__main__ import main

    model = str(assets[0])
    argv = ["custom", "--model", model, "--tasks", "pope,mme", "--setting", "a=IPCV:0.35,DART:0.35"]
    argv += ["--store", str(tmp_path / "r.jsonl"), "--raw-dir", str(tmp_path / "raw")]
    assert main([*argv, "--setting", "b=none,none", "--processes", "2", "--limit", "5", "--dry-run"]) == 0
    lines = _commands(capsys.readouterr().out)
    assert len(lines) == 2
    assert "-m accelerate.commands.launch --num_processes 2 -m lmms_eval --model ipcv_qwen2_vl" in lines[0]
    assert f"pretrained={model},vision=IPCV:0.35,language=DART:0.35,ipcv_log=" in lines[0]
    assert "--tasks pope,mme" in lines[0] and "--limit 5" in lines[0] and "vision=none,language=none" in lines[1]
    assert not (tmp_path / "raw").exists() and not (tmp_path / "r.jsonl").exists()  # nothing ran, nothing written


def test_dry_run_prints_every_cell_their_count_and_what_the_store_holds(assets, tmp_path, capsys):
    from ipcv.eval.__main__ import main

    model, tasks, _ = assets
    path = tmp_path / "r.jsonl"
    held = {"model": str(model), "vision": "none", "language": "none", "task": TASKS[0], "limit": None}
    store.append(path, [held, {**held, "model": "another"}])  # one of the sweep's cells, one row of another model
    argv = ["custom", "--model", str(model), "--tasks", ",".join(TASKS), "--include-path", str(tasks)]
    argv += ["--setting", "vanilla=none,none", "--setting", f"tome={SETTINGS['tome']}"]
    argv += ["--store", str(path), "--raw-dir", str(tmp_path / "raw"), "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"model: {model} (local directory {model}; model_type qwen2_vl)" in out
    assert f"[custom] vanilla: run 1 cells: {TASKS[1]}; in the store (skipped): {TASKS[0]}" in out
    assert f"[custom] tome: run 2 cells: {', '.join(TASKS)}" in out
    commands = _commands(out)
    assert len(commands) == 2 and f"--tasks {TASKS[1]} " in commands[0] and f"--tasks {','.join(TASKS)} " in commands[1]
    summary = (
        "[custom] 4 cells (2 settings x 2 tasks): 3 to run, 1 already in the store (skipped), 0 refused (not built); "
        f"the store {path} holds 2 rows"
    )
    assert summary in out
    assert len(store.load(path)) == 2 and not (tmp_path / "raw").exists()


def _bad_input(assets, tmp_path, what):
    """argv (without --dry-run) with one bad input, and the words the refusal must contain."""
    model, tasks, _ = assets
    argv = ["custom", "--model", str(model), "--tasks", ",".join(TASKS), "--include-path", str(tasks)]
    argv += ["--setting", "a=none,none", "--store", str(tmp_path / "r.jsonl"), "--raw-dir", str(tmp_path / "raw")]
    if what == "unknown task":
        argv[4] = "ipcv_tiny_yesno,ipcv_tiny_mcc"
        return argv, ["--tasks:", "ipcv_tiny_mcc: not an lmms-eval task; close: ipcv_tiny_mc"]
    if what == "missing model directory":
        argv[2] = str(tmp_path / "no-such-model")
        return argv, [f"--model {tmp_path / 'no-such-model'} cannot load", "no such local directory", "fix: give"]
    if what == "family mismatch":
        return [*argv, "--family", "llava"], [
            f"--family llava does not match --model {model}",
            "model_type 'qwen2_vl'",
            "use --family qwen2_vl",
        ]
    if what == "incomplete model directory":
        (tmp_path / "partial").mkdir()
        (tmp_path / "partial" / "config.json").write_text((model / "config.json").read_text())
        argv[2] = str(tmp_path / "partial")
        return argv, ["no weights (*.safetensors", "no image processor config", "no tokenizer files", "fix: give"]
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what", ["unknown task", "missing model directory", "family mismatch", "incomplete model directory"]
)
@pytest.mark.parametrize("dry", [True, False])
def test_dry_run_and_real_run_refuse_the_same_bad_input(assets, tmp_path, what, dry):
    from ipcv.eval.__main__ import main

    argv, words = _bad_input(assets, tmp_path, what)
    with pytest.raises(SystemExit) as e:
        main([*argv, "--dry-run"] if dry else argv)
    text = str(e.value)
    head = "a real run would stop before its first cell" if dry else "stopped before the first cell (none of 2 cells"
    for w in [head, *words]:
        assert w in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "raw").exists() and not (tmp_path / "r.jsonl").exists()


def _fake_checkpoint(path: Path, model_type: str) -> Path:
    """A directory with the files of a checkpoint (contents beside the point: nothing loads it)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    for name in ("model.safetensors", "processor_config.json", "tokenizer.json"):
        (path / name).write_text("{}")
    return path


def test_table3_refused_settings_are_named_as_the_real_run_names_them(tmp_path, capsys):
    """Table 3's ViT-side baselines with output="reduced" cannot run on InternVL3: the dry run lists
    them as refused (no command), with the real run's very lines; a real run whose other cells are all
    in the store starts no lmms-eval process and names the same three."""
    from ipcv.eval.__main__ import main
    from ipcv.eval.sweeps import sweeps

    model = _fake_checkpoint(tmp_path / "internvl", "internvl")
    argv = ["table3", "--model", str(model), "--store", str(tmp_path / "r.jsonl"), "--raw-dir", str(tmp_path / "raw")]
    assert main([*argv, "--dry-run"]) == 1
    out = capsys.readouterr().out
    refused = [line for line in out.splitlines() if ": not run: " in line]
    assert len(refused) == 3 and all("output='reduced' is built for the mRoPE families" in r for r in refused)
    assert {r.split(":")[0] for r in refused} == {f"[table3] vit40_llm40/{m}" for m in ("DART (ViT)", "ToMe", "ToFu")}
    sweep = sweeps()["table3"]
    runnable = len(sweep.settings) - 3
    assert len(_commands(out)) == runnable and not any("vit40_llm40/ToMe" in c for c in _commands(out))
    cells = len(sweep.settings) * len(sweep.tasks)
    assert f"[table3] {cells} cells ({len(sweep.settings)} settings x 8 tasks): {runnable * 8} to run, 0 already" in out
    assert "24 refused (not built)" in out

    refused_names = {r.split(":")[0].removeprefix("[table3] ") for r in refused}
    rows = [
        {"model": str(model), "vision": s.vision, "language": s.language, "task": t, "limit": None}
        for s in sweep.settings if s.name not in refused_names for t in sweep.tasks
    ]  # fmt: skip
    store.append(tmp_path / "r.jsonl", rows)
    assert main(argv) == 1
    real = [line for line in capsys.readouterr().out.splitlines() if ": not run: " in line]
    assert real == refused and not (tmp_path / "raw").exists()


def test_model_checks(tmp_path):
    from ipcv.eval.checks import ModelCannotLoad, check_model

    model = _fake_checkpoint(tmp_path / "q", "qwen2_5_vl")
    assert check_model(str(model), "qwen2_5_vl").source == "local directory"
    with pytest.raises(ValueError, match="use --family qwen2_5_vl"):
        check_model(str(model), "qwen2_vl")
    with pytest.raises(ValueError, match="ipcv.eval runs qwen2_vl \\(model_type qwen2_vl\\)"):
        check_model(str(_fake_checkpoint(tmp_path / "other", "mllama")), "qwen2_vl")
    sharded = _fake_checkpoint(tmp_path / "sharded", "qwen2_vl")
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(ModelCannotLoad, match="has no weight shards model-00002-of-00002.safetensors \\(listed in"):
        check_model(str(sharded), "qwen2_vl")
    (sharded / "model-00002-of-00002.safetensors").write_text("{}")
    assert check_model(str(sharded), "qwen2_vl").model_type == "qwen2_vl"
    (sharded / "config.json").write_text("{not json")
    with pytest.raises(ModelCannotLoad, match="config.json is not readable JSON"):
        check_model(str(sharded), "qwen2_vl")
    with pytest.raises(ModelCannotLoad, match="is a file, not a directory"):
        check_model(str(model / "config.json"), "qwen2_vl")


def _offline_env(tmp_path, how: str) -> dict:
    """No hub: offline mode set, or (no offline mode) a hub endpoint nothing listens on; an empty cache."""
    env = _env() | {"HF_HOME": str(tmp_path / "hf")}
    if how == "unreachable":
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.pop(name)
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    return env


@pytest.mark.parametrize("how", ["offline mode", "unreachable"])
@pytest.mark.subprocess
def test_a_model_that_cannot_load_stops_the_sweep_before_its_first_cell_in_seconds(assets, tmp_path, how):
    """A hub id with no hub and no cached copy: the sweep stops before any lmms-eval process starts, in
    seconds (not a minute of download retries per cell), with the loader's message and the fix."""
    _, tasks, _ = assets
    cmd = [
        sys.executable,
        "-m",
        "ipcv.eval",
        "custom",
        "--model",
        "ipcv-tests/no-such-model",
        "--tasks",
        ",".join(TASKS),
    ]
    cmd += ["--include-path", str(tasks), "--store", str(tmp_path / "r.jsonl"), "--raw-dir", str(tmp_path / "raw")]
    cmd += ["--setting", "a=none,none", "--setting", f"b={SETTINGS['tome']}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=_offline_env(tmp_path, how), capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert seconds < 30, (seconds, text)
    for w in [
        "stopped before the first cell (none of 4 cells ran)",
        "--model ipcv-tests/no-such-model cannot load:",
        "couldn't find them in the cached files",  # transformers' own message
        "HF_HUB_OFFLINE is set" if how == "offline mode" else "(the hub cannot be reached: ConnectError",
        "fix: give --model a local directory holding the checkpoint (config.json, *.safetensors, processor files), "
        "or run where the hub is reachable",
    ]:
        assert w in text, text
    assert "Traceback" not in text and "Retrying in" not in text
    assert not (tmp_path / "raw").exists() and not (tmp_path / "r.jsonl").exists()  # no lmms-eval process started


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_hub_model_in_the_cache_runs_offline_when_the_hub_cannot_be_reached(assets, tmp_path):
    """A hub id whose checkpoint is in the local cache, the hub unreachable: the check reads the cache and
    lmms-eval is told HF_HUB_OFFLINE=1 (so it reads the cache instead of retrying downloads)."""
    import shutil

    model, tasks, _ = assets
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--ipcv-tests--tiny"
    shutil.copytree(model, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    cmd = [sys.executable, "-m", "ipcv.eval", "custom", "--model", "ipcv-tests/tiny", "--tasks", ",".join(TASKS)]
    cmd += ["--include-path", str(tasks), "--store", str(tmp_path / "r.jsonl"), "--raw-dir", str(tmp_path / "raw")]
    cmd += ["--setting", "a=none,none", "--dry-run"]
    done = subprocess.run(cmd, env=_offline_env(tmp_path, "unreachable"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"read from the local cache {repo / 'snapshots' / revision}" in done.stdout
    assert [c.split()[0] for c in _commands(done.stdout)] == ["HF_HUB_OFFLINE=1"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_model_lmms_eval_cannot_load_stops_the_sweep_at_its_first_cell(assets, tmp_path):
    """A checkpoint whose files are all there but whose weights are cut short: lmms-eval starts once,
    cannot load it, and the sweep stops there (the second setting never starts), with the loader's
    message (not a traceback) and the fix."""
    import shutil

    model, tasks, _ = assets
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    with open(broken / "model.safetensors", "r+b") as f:
        f.truncate(100)
    raw = tmp_path / "raw"
    cmd = [sys.executable, "-m", "ipcv.eval", "custom", "--model", str(broken), "--tasks", ",".join(TASKS)]
    cmd += ["--include-path", str(tasks), "--store", str(tmp_path / "r.jsonl"), "--raw-dir", str(raw)]
    cmd += [
        "--model-args",
        "device=cpu,device_map=cpu",
        "--setting",
        "a=none,none",
        "--setting",
        f"b={SETTINGS['tome']}",
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    for w in [
        "[custom] a: lmms-eval could not load the model",
        f"--model {broken} cannot load:\n  SafetensorError: ",  # the loader's own message, one line
        "fix: give --model a local directory holding the checkpoint",
        "the sweep stops at this first cell whose model cannot load: 0 of 4 cells ran",
    ]:
        assert w in text, text
    assert "Traceback" not in text.split("could not load the model")[1]
    assert [d.name for d in raw.glob("*/*")] == ["none__none__None"]  # setting b never started
    assert not (tmp_path / "r.jsonl").exists()


def test_refuses_to_run_under_a_launcher(monkeypatch):
    from ipcv.eval.__main__ import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        main(["table1", "--dry-run"])


def test_every_family_of_the_sweeps_has_a_wrapper():
    from ipcv.eval import plugin
    from ipcv.eval.sweeps import sweeps

    families = plugin.harnesses()
    assert {s.family for s in sweeps().values()} <= set(families)
    # one vocabulary: the adapters' names
    assert set(families) == {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "llava", "llava_onevision", "llava_next"}
    ids = {h.model_id for h in families.values()}
    assert ids == {
        "ipcv_qwen2_vl", "ipcv_qwen2_5_vl", "ipcv_qwen3_vl", "ipcv_internvl3", "ipcv_llava", "ipcv_llava_onevision",
        "ipcv_llava_next",
    }  # fmt: skip


def test_modern_sweep_is_this_projects_grid_and_its_dry_run_lists_every_cell(assets, tmp_path, capsys):
    """``python -m ipcv.eval modern``: Table 1's tasks on Qwen2-VL-7B, every method at 35 / 20 / 10 % and IPCV
    with each pre-LLM method (ipcv.presets.modern_settings; named as this project's sweep, not the paper's);
    the dry run lists every cell."""
    from ipcv import presets
    from ipcv.eval.__main__ import main
    from ipcv.eval.sweeps import IMAGE_TASKS, QWEN2_VL_7B, sweeps

    sweep = sweeps()["modern"]
    assert (sweep.model, sweep.tasks) == (QWEN2_VL_7B, tuple(IMAGE_TASKS.values()))
    assert "not the paper's" in sweep.description
    expected = presets.modern_settings()
    assert [(s.name, s.vision, s.language) for s in sweep.settings] == [
        (n, format_method(v), format_method(lang)) for n, v, lang in expected
    ]
    names = {s.name for s in sweep.settings}
    for r in ("35%", "20%", "10%"):
        assert {f"{m} {r}" for m in ("IPCV", "ToMe", "DART", "FastV", *presets.PRE_LLM)} <= names
        assert {f"IPCV+{m} {r}" for m in presets.PRE_LLM} <= names
    assert set(presets.modern_not_run()) == {"V2Drop 10%", "SparseVLM 10%"} and not names & {"V2Drop 10%"}
    argv = [
        "modern",
        "--model",
        str(assets[0]),
        "--store",
        str(tmp_path / "r.jsonl"),
        "--raw-dir",
        str(tmp_path / "raw"),
    ]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    n = len(sweep.settings)
    assert f"[modern] {n * 9} cells ({n} settings x 9 tasks): {n * 9} to run" in out
    assert len(_commands(out)) == n and "language=VisionZip:0.1:layer=2" in out
