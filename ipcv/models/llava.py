"""Adapter for LLaVA (``LlavaForConditionalGeneration`` / ``LlavaModel``, e.g. llava-1.5 / llava-hf
checkpoints) with a CLIP or SigLIP vision tower and a Llama / Qwen2-style decoder (1D RoPE).

Vision: the ViT encoder code of :mod:`ipcv.models.vit` (one segment per image, CLIP's CLS kept and
never counted). The projector reads ``hidden_states[vision_feature_layer]`` (-2 for llava-1.5: the
output of the second-to-last block), so the compressed schedule ends at that layer, reintegrated:
the layer the projector reads is full length (:mod:`ipcv.models._capture`); the last block then runs
on the full sequence as in the original. ``vision_feature_select_strategy`` ("default" drops CLS,
"full" keeps it) is applied by the model as always. A list of several feature layers is refused.
Language: the shared decoder code (:mod:`ipcv.models._decoder`); each image's run of
``image_token_id`` tokens is a span with its own budget.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.clip import modeling_clip as clip
from transformers.models.llava import modeling_llava as llava
from transformers.models.siglip import modeling_siglip as siglip

from ._decoder import DecoderFamily, contiguous_spans, language_adapter, positions_1d
from .base import Adapter, Harness, inner_read_layer
from .vit import _CLIP, _SIGLIP, _make_forward, _shaper

_TOWERS = ((clip.CLIPVisionModel, _CLIP), (siglip.SiglipVisionModel, _SIGLIP))


def _tower(model: nn.Module, spec) -> nn.Module | None:
    if isinstance(model, llava.LlavaForConditionalGeneration):
        model = model.model
    if isinstance(model, llava.LlavaModel):
        for cls, s in _TOWERS:
            if s is spec and isinstance(model.vision_tower, cls):
                return model.vision_tower.encoder
    return None


def _read_layer(model: nn.Module) -> int | None:
    if isinstance(model, llava.LlavaForConditionalGeneration):
        model = model.model
    return inner_read_layer(model.config.vision_feature_layer, len(model.vision_tower.encoder.layers))


def _segments(encoder: nn.Module, args: tuple, kwargs: dict) -> list[int]:
    h = kwargs.get("inputs_embeds", args[0] if args else None)
    return [h.shape[1]] * h.shape[0]


def _locate_language(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    if isinstance(model, llava.LlavaForConditionalGeneration):
        model = model.model
    if isinstance(model, llava.LlavaModel):
        return model, model.language_model
    return None


def tokens_per_image(config) -> int:
    """LLM tokens of one image: the tower's tokens (patches, plus CLIP's CLS), less the first one
    under the "default" strategy."""
    v = config.vision_config
    n = (v.image_size // v.patch_size) ** 2 + (1 if v.model_type == "clip_vision_model" else 0)
    return n - (1 if config.vision_feature_select_strategy == "default" else 0)


def _layout(outer, args: tuple, kwargs: dict):
    return outer.config, kwargs.get("input_ids", args[0] if args else None)


def _spans(layout, batch: int, length: int, device) -> torch.Tensor | None:
    config, ids = layout
    if ids is None or ids.shape != (batch, length):
        return None
    return contiguous_spans(ids == config.image_token_id, tokens_per_image(config))


LANGUAGE = language_adapter(
    DecoderFamily(locate=_locate_language, layout=_layout, spans=_spans, positions=positions_1d)
)

HARNESS = Harness("ipcv_llava", "IPCVLlava", "lmms_eval.models.simple.llava_hf.LlavaHf", "simple", "llava")

ADAPTERS: list[Adapter] = [
    Adapter(
        family="llava",
        classes=(f"LlavaForConditionalGeneration ({name} tower)", f"LlavaModel ({name} tower)"),
        locate=lambda model, s=spec: _tower(model, s),
        depth=lambda encoder: len(encoder.layers),
        forward=_make_forward(spec),
        shape=_shaper(spec),
        language=LANGUAGE,
        segments=_segments,
        read_layer=_read_layer,
        harness=HARNESS,
    )
    for name, spec in (("CLIP", _CLIP), ("SigLIP", _SIGLIP))
]
