"""``python -m ipcv.bench``'s arguments: a bad one exits 2 with the benchmark's usage line and one message
naming it and what is allowed, no traceback, before any model is built; and the progress display."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from ipcv.bench import __main__ as cli
from ipcv.bench import common, efficiency, gpu, knn_memory, prefill, vision
from ipcv.bench.gpu import shared as gpu_shared


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch):
    """A benchmark's run and every model builder fail the test if they are reached."""

    def ran(*args, **kwargs):
        raise AssertionError("a benchmark ran (or built a model) before its arguments were checked")

    for module in (vision, knn_memory, prefill, efficiency, gpu):
        monkeypatch.setattr(module, "main", ran)
    monkeypatch.setattr(vision, "build_tower", ran)
    monkeypatch.setattr(prefill, "build_model", ran)
    monkeypatch.setattr(efficiency, "build_model", ran)
    monkeypatch.setattr(gpu_shared, "build", ran)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")

BAD = [
    (["knn-memory", "--keep", "2"], r"argument --keep: 2 is outside the allowed range \(0, 1\] of a keep ratio"),
    (["knn-memory", "--keep", "0"], r"argument --keep: 0 is outside the allowed range \(0, 1\]"),
    (["knn-memory", "--keep", "-0.35"], r"argument --keep: -0.35 is outside the allowed range \(0, 1\]"),
    (["knn-memory", "--keep", "nan"], r"argument --keep: nan is outside the allowed range \(0, 1\]"),
    (
        ["knn-memory", "--keep", "half"],
        r"argument --keep: 'half' is not a number \(allowed: a keep ratio in \(0, 1\]\)",
    ),
    (["knn-memory", "--patches", "0"], r"argument --patches: 0 is not allowed: it must be an integer >= 1"),
    (["knn-memory", "--dim", "-8"], r"argument --dim: -8 is not allowed: it must be an integer >= 1"),
    (
        ["knn-memory", "--neighbors", "2.5"],
        r"argument --neighbors: '2.5' is not an integer \(allowed: an integer >= 1\)",
    ),
    (["knn-memory", "--device", "gpu0"], r"--device 'gpu0': not a device name \(use cpu, cuda or cuda:N\)"),
    (["vision", "--keep", "0.5", "1.5"], r"argument --keep: 1.5 is outside the allowed range \(0, 1\]"),
    (["vision", "--patches", "1000"], r"--patches 1000: must be the square of an even number"),
    (["vision", "--family", "internvl", "--patches", "1000"], r"--patches 1000: .*use a multiple of 1024"),
    (["vision", "--prune-layer", "0"], r"argument --prune-layer: 0 is not allowed: it must be an integer >= 1"),
    (["vision", "--prune-layer", "32"], r"--prune-layer 32: outside the allowed range \[1, 31\] \(Qwen2-VL-7B"),
    (["vision", "--stabilize-layers", "30"], r"--stabilize-layers 30: outside the allowed range \[0, 29\] for --pru"),
    (["vision", "--family", "internvl", "--prune-layer", "20"], r"--stabilize-layers 7: .*\[0, 4\] for --prune-l"),
    (["vision", "--stabilize-layers", "-1"], r"argument --stabilize-layers: -1 is not allowed: .* integer >= 0"),
    (["vision", "--neighbors", "0"], r"argument --neighbors: 0 is not allowed: it must be an integer >= 1"),
    (["vision", "--repeats", "0"], r"argument --repeats: 0 is not allowed: it must be an integer >= 1"),
    (["vision", "--attn", "flash"], r"argument --attn: invalid choice: 'flash'"),
    (["vision", "--attn", "flash_attention_2"], r"--attn flash_attention_2: needs a CUDA device"),
    (["prefill", "--side", "100"], r"--side 100: not allowed; use a multiple of 28 \(>= 28\)"),
    (["prefill", "--side", "0"], r"--side 0: not allowed; use a multiple of 28"),
    (["prefill", "--repeats", "-1"], r"argument --repeats: -1 is not allowed: it must be an integer >= 0"),
    (["prefill", "--attn", "varlen"], r"argument --attn: invalid choice: 'varlen'"),
    (["efficiency", "--repeats", "0"], r"argument --repeats: 0 is not allowed: it must be an integer >= 1"),
    (["efficiency", "--new-tokens", "0"], r"argument --new-tokens: 0 is not allowed: it must be an integer >= 1"),
    (["efficiency", "--only", "IPVC"], r"--only IPVC: matches no setting; .* METHOD one of IPCV, ToMe"),
    (["gpu", "--device", "cpu"], r"--device cpu: only --size tiny is allowed, got --size real"),
    (["gpu", "--device", "cpu", "--size", "tiny", "--repeats", "0"], r"argument --repeats: 0 is not allowed"),
    (["gpu", "--device", "cpu", "--size", "tiny", "--new-tokens", "-2"], r"argument --new-tokens: -2 is not all"),
    (["gpu", "--device", "cpu", "--size", "tiny", "--attn", "flash_attention_2"], r"--attn flash_attention_2: not av"),
    pytest.param(["gpu"], r"--device cuda: no CUDA device here .*--device cpu --size tiny", marks=NO_CUDA),
    pytest.param(["vision", "--device", "cuda"], r"--device 'cuda': no CUDA device here", marks=NO_CUDA),
]


@pytest.mark.parametrize("argv, message", BAD, ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_a_bad_argument_exits_2_with_usage_and_one_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"usage: python -m ipcv.bench {argv[0]} ")
    last = lines[-1]
    assert last.startswith(f"python -m ipcv.bench {argv[0]}: error: ")
    assert sum(line.startswith("python -m ipcv.bench") for line in lines) == 1  # one message
    assert re.search(message, last), last
    assert "Traceback" not in err


def test_the_defaults_and_the_small_options_of_the_tests_pass_the_checks():
    for argv in (
        ["vision"],
        [
            "vision",
            "--family",
            "internvl",
            "--patches",
            "1024",
            "2048",
            "--prune-layer",
            "7",
            "--stabilize-layers",
            "3",
        ],
        ["vision", "--patches", "64", "--keep", "1", "--prune-layer", "1", "--stabilize-layers", "31"],
        ["knn-memory"],
        ["knn-memory", "--patches", "3", "--dim", "8", "--keep", "1.0"],
        ["prefill"],
        ["prefill", "--repeats", "0", "--side", "112", "--protocol", "official"],
        ["efficiency", "--only", "IPCV", "DART |"],
        ["gpu", "--device", "cpu", "--size", "tiny"],
    ):
        args = cli.parse(argv)
        assert args.command == argv[0]


@pytest.mark.subprocess
def test_as_a_command_a_bad_argument_prints_no_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "ipcv.bench", "knn-memory", "--keep", "2"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("usage: python -m ipcv.bench knn-memory")
    assert done.stderr.strip().splitlines()[-1] == (
        "python -m ipcv.bench knn-memory: error: argument --keep: 2 is outside the allowed range (0, 1] of a keep ratio"
    )
    assert "Traceback" not in done.stderr


# --- progress ------------------------------------------------------------------------------------------


def test_progress_lines_say_what_runs_and_how_far_along(monkeypatch, capsys):
    monkeypatch.setenv(common.PROGRESS_ENV, "lines")
    with common.Progress(3, "bench: part") as p:
        for name in ("vanilla", "ipcv0.5", "ipcv0.2"):
            p.step(f"{name} timed")
            p.write(f"result of {name}")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["result of vanilla", "result of ipcv0.5", "result of ipcv0.2"]
    lines = err.splitlines()
    assert [line.split(" (")[0] for line in lines[:3]] == [
        "bench: part [1/3] vanilla timed", "bench: part [2/3] ipcv0.5 timed", "bench: part [3/3] ipcv0.2 timed",
    ]  # fmt: skip
    assert "elapsed" in lines[0] and "left)" in lines[1] and lines[3].startswith("bench: part: 3 step(s) done in ")


def test_progress_says_where_a_run_stopped(monkeypatch, capsys):
    monkeypatch.setenv(common.PROGRESS_ENV, "lines")
    with pytest.raises(RuntimeError), common.Progress(4, "bench") as p:
        p.step("a")
        p.step("b")
        raise RuntimeError("b failed")
    assert capsys.readouterr().err.splitlines()[-1].startswith("bench: stopped at step 2 in ")


def test_progress_bar_and_off(monkeypatch, capsys):
    monkeypatch.setenv(common.PROGRESS_ENV, "bar")
    with common.Progress(2, "bench: bar") as p:
        p.step("first")
        p.step("second")
    err = capsys.readouterr().err
    assert "bench: bar" in err and "2/2" in err and "second" in err
    monkeypatch.setenv(common.PROGRESS_ENV, "off")
    with common.Progress(2, "bench: quiet") as p:
        p.step("first")
    common.note("building")
    assert capsys.readouterr() == ("", "")


def test_progress_default_is_lines_in_a_log_and_off_in_a_notebook(monkeypatch, tmp_path):
    monkeypatch.delenv(common.PROGRESS_ENV, raising=False)
    with open(tmp_path / "log", "w") as log:
        monkeypatch.setattr(sys, "stderr", log)  # a file, not a terminal
        assert common.progress_mode() == "lines"

    class OutStream:  # ipykernel's stream type
        __module__ = "ipykernel.iostream"

        def isatty(self):
            return False

    monkeypatch.setattr(sys, "stderr", OutStream())
    assert common.progress_mode() == "off"
