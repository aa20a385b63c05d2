"""Adapter for InternVL (InternVL2.5 / InternVL3 ``-hf`` checkpoints): the InternViT tower
(``InternVLVisionModel``, its block loop in ``InternVLVisionEncoder``) and the language decoder
(``Qwen2Model`` / ``LlamaModel`` under ``InternVLModel``, 1D RoPE).

Vision: dynamic tiling hands the tower a batch of 448x448 tiles ``[T, 1 + 1024, D]``; each tile is
one segment whose leading CLS token is always kept and never counted (the ViT encoder code of
:mod:`ipcv.models.vit`, with InternViT's layer names, LayerScale parameters ``lambda_1`` /
``lambda_2`` and optional qk-norm). The encoder's output is full length, so ``get_image_features``
drops CLS, pixel-shuffles the full grid and projects it as it always does; when the projector reads
an inner layer (``vision_feature_layer``) the compressed schedule ends at that layer.
Language: the shared decoder code (:mod:`ipcv.models._decoder`); every tile's run of image tokens
(``image_token_id``, ``(448 / 14 * downsample_ratio)^2 = 256`` each) is a span with its own budget.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.internvl import modeling_internvl as internvl

from ..shapes import EncoderShape
from ._decoder import DecoderFamily, contiguous_spans, language_adapter, positions_1d
from .base import Adapter, Harness, RealTower, inner_read_layer
from .configs import INTERNVIT_300M
from .vit import _make_forward, _Spec

_SPEC = _Spec(
    "layer", "layernorm_before", "attention", "q_proj", "k_proj", "v_proj", "projection_layer", "layernorm_after",
    "num_heads", "scale", "lambda_1", "lambda_2", 1, internvl.eager_attention_forward, "q_norm", "k_norm", False,
)  # fmt: skip


def _locate(model: nn.Module) -> nn.Module | None:
    if isinstance(model, internvl.InternVLForConditionalGeneration):
        model = model.model
    if isinstance(model, internvl.InternVLModel):
        model = model.vision_tower
    if isinstance(model, internvl.InternVLVisionModel):
        return model.encoder
    return None


def _shape(encoder: nn.Module) -> EncoderShape:
    """InternViT's blocks and patch embedding; pixel shuffle and projector belong to ``InternVLModel``
    and are not counted (like a ViT encoder's head)."""
    c = encoder.config
    D = c.hidden_size
    ph, pw = c.patch_size
    embed = 2 * c.num_channels * ph * pw * D
    return EncoderShape(len(encoder.layer), D, c.intermediate_size, embed, 0, 1, c.num_attention_heads)


def _read_layer(model: nn.Module) -> int | None:
    if isinstance(model, internvl.InternVLForConditionalGeneration):
        model = model.model
    if not isinstance(model, internvl.InternVLModel):
        return None
    return inner_read_layer(model.config.vision_feature_layer, len(model.vision_tower.encoder.layer))


def vision_segments(encoder: nn.Module, args: tuple, kwargs: dict) -> list[int]:
    """Tokens per segment (tile, CLS included) of one encoder call."""
    h = kwargs.get("hidden_states", args[0] if args else None)
    return [h.shape[1]] * h.shape[0]


# --- the language decoder -------------------------------------------------------------------------


def _locate_language(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    if isinstance(model, internvl.InternVLForConditionalGeneration):
        model = model.model
    if isinstance(model, internvl.InternVLModel):
        return model, model.language_model
    return None


def tokens_per_tile(config) -> int:
    """Image tokens one tile becomes in the LLM: ``(H / p) * (W / p) * downsample_ratio^2``."""
    v = config.vision_config
    return int(v.image_size[0] // v.patch_size[0] * (v.image_size[1] // v.patch_size[1]) * config.downsample_ratio**2)


def _layout(outer, args: tuple, kwargs: dict):
    ids = kwargs.get("input_ids", args[0] if args else None)
    return outer.config, ids


def _spans(layout, batch: int, length: int, device) -> torch.Tensor | None:
    """One span per tile: every run of image tokens cut into runs of :func:`tokens_per_tile`."""
    config, ids = layout
    if ids is None or ids.shape != (batch, length):
        return None
    return contiguous_spans(ids == config.image_token_id, tokens_per_tile(config))


LANGUAGE = language_adapter(
    DecoderFamily(locate=_locate_language, layout=_layout, spans=_spans, positions=positions_1d)
)


def random_tiles(patches: int, device, dtype) -> dict:
    """One call of an InternViT tower on ``patches // 1024`` random 448x448 tiles (benchmarks)."""
    if patches % 1024:
        raise ValueError(f"--patches {patches}: InternVL tiles are 448x448 (1024 patches each); use a multiple of 1024")
    return dict(pixel_values=torch.randn(patches // 1024, 3, 448, 448, device=device, dtype=dtype))


ADAPTER = Adapter(
    family="internvl",
    classes=("InternVLForConditionalGeneration", "InternVLModel", "InternVLVisionModel"),
    locate=_locate,
    depth=lambda encoder: len(encoder.layer),
    forward=_make_forward(_SPEC),
    shape=_shape,
    language=LANGUAGE,
    segments=vision_segments,
    read_layer=_read_layer,
    harness=Harness(
        "ipcv_internvl3", "IPCVInternVL3", "lmms_eval.models.chat.internvl_hf.InternVLHf", "chat", "internvl"
    ),
    tower=RealTower(
        "vision_internvit300m",
        "InternViT-300M (InternVL3-1B/2B/8B vision tower), 448x448 tiles",
        "random (architecture of OpenGVLab/InternVL3-8B-hf's vision tower, InternViT-300M-448px-V2.5); "
        "no accuracy is implied",
        lambda: internvl.InternVLVisionModel(internvl.InternVLVisionConfig(**INTERNVIT_300M)),
        random_tiles,
        lambda n: [1024 + 1] * (n // 1024),
        INTERNVIT_300M["num_hidden_layers"],
    ),  # fmt: skip
)
