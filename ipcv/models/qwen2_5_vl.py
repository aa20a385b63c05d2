"""Adapter for Qwen2.5-VL: its vision tower (``Qwen2_5_VisionTransformerPretrainedModel``) and its
language decoder (``Qwen2_5_VLTextModel`` under ``Qwen2_5_VLModel``).

Vision: as Qwen2-VL's tower (packed patches, 2D rotary, fused ``qkv``, 2x2 ``merger``; the block ops
are :class:`ipcv.models.qwen2_vl._TowerCall`) with two differences. The packed sequence is reordered
by ``window_index`` before block 0 so that every attention window is contiguous, and every block
except those in ``fullatt_block_indexes`` attends within its window only. IPCV selects per image /
frame (eq. 2) in that order; windowed blocks then attend per window over the kept tokens (a window
whose tokens were all removed has no queries, and in stabilized blocks its keys are dropped too).
``last_hidden_state`` stays in window order, as the original returns it; the merger's output is put
back in image order. Language: the same mRoPE decoder code as Qwen2-VL (:mod:`ipcv.models._mrope`),
including a ViT-side baseline's ``output="reduced"``: its mask of kept merge units is computed from
the run's source map taken back to image order, so the rule is Qwen2-VL's
(:func:`ipcv.models.qwen2_vl.reduced_units`, ties to the earlier unit in raster order).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen25
from transformers.utils.generic import get_max_seqlen
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from ..shapes import EncoderShape
from ..vision.sources import collect_sources
from . import _mrope
from ._decoder import DecoderFamily, language_adapter
from .base import Adapter, Harness, RealTower, pop_output_flags
from .configs import QWEN2_5_VL_7B_VISION
from .qwen2_vl import (
    METRIC_KEY,
    SCORE_KEY,
    UNITS_KEY,
    Windows,
    _TowerCall,
    random_inputs,
    reduced_units,
    run_blocks,
    vision_segments,
    visionzip_scores,
)  # fmt: skip


def image_order_source(source: torch.Tensor, window_index: torch.Tensor, unit: int) -> torch.Tensor:
    """A source map of the window-ordered packed sequence (``source[i]``: the position whose final
    state position ``i`` holds) rewritten in image (raster) order. Window position ``w`` holds image
    patch ``window_index[w // unit] * unit + w % unit`` (the tower reorders whole merge units)."""
    image_of = (window_index.to(source.device)[:, None] * unit + torch.arange(unit, device=source.device)).flatten()
    window_of = torch.argsort(image_of)  # window position of each image-order patch
    return image_of[source[window_of]]


def tower_forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
    """Forward of a compressed Qwen2.5-VL vision tower: same inputs and outputs as the original
    (``last_hidden_state`` ``[L, hidden_size]`` full length in window order, ``pooler_output`` the
    merger's output in image order). With a baseline's ``output="reduced"`` the output also holds,
    under :data:`ipcv.models.qwen2_vl.UNITS_KEY`, the image-order mask of the merge units the LLM
    receives (see :func:`ipcv.models.qwen2_vl.tower_forward`)."""
    pop_output_flags(kwargs, type(self).__name__)
    position_ids = get_vision_position_ids(grid_thw, self.spatial_merge_size, kwargs=kwargs)
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, self.config, kwargs=kwargs)
    window_index, cu_window = get_vision_window_index(
        grid_thw, spatial_merge_size=self.spatial_merge_size, window_size=self.window_size,
        patch_size=self.patch_size, kwargs=kwargs,
    )  # fmt: skip
    max_window = get_max_seqlen(cu_window, self.config, kwargs=kwargs, kwarg_name="max_window_seqlen")
    hidden_states = self.patch_embed(hidden_states)
    L = hidden_states.shape[0]
    hidden_states = self.permute_input_for_window_attn(hidden_states, window_index, seq_len=L)
    cos, sin = self.rotary_pos_emb(hidden_states, position_ids)
    pe = tuple(self.permute_input_for_window_attn(t, window_index, seq_len=L) for t in (cos, sin))
    windows = Windows(cu_window.to(hidden_states.device), max_window, frozenset(self.fullatt_block_indexes))
    call = _TowerCall(self, cu_seqlens, max_seqlen, pe, kwargs, qwen25.eager_attention_forward, windows)
    seg_lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    with collect_sources() as sources:
        hidden_states = run_blocks(call, self, hidden_states, seg_lengths)
    image_order = torch.argsort(window_index)
    merged = self.merger(hidden_states)[image_order]
    out = BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=merged)
    if call.capture_layer is not None:  # per merge unit in window order -> image order
        score, metric = visionzip_scores(call, self, seg_lengths)
        out[SCORE_KEY], out[METRIC_KEY] = score[image_order], metric[image_order]
    if getattr(getattr(self, "_ipcv_vision", None), "output", "full") == "reduced":
        unit = self.spatial_merge_size**2
        source = image_order_source(sources[-1], window_index, unit) if sources else None
        out[UNITS_KEY] = reduced_units(source, seg_lengths, unit).to(hidden_states.device)
    return out


def _locate(model: nn.Module) -> nn.Module | None:
    if isinstance(model, qwen25.Qwen2_5_VLForConditionalGeneration):
        model = model.model
    if isinstance(model, qwen25.Qwen2_5_VLModel):
        model = model.visual
    if isinstance(model, qwen25.Qwen2_5_VisionTransformerPretrainedModel):
        return model
    return None


def _shape(tower: nn.Module) -> EncoderShape:
    """Blocks with a gated MLP (3 matrices: ``mlp_dim`` counts 3/2 of its width), windows of
    ``(window_size / patch_size)^2`` patches, patch embedding and the merger."""
    c = tower.config
    D, m = c.hidden_size, c.spatial_merge_size**2
    merger = 2 * (m * D * m * D + m * D * c.out_hidden_size) // m  # per input patch
    embed = 2 * c.in_channels * c.temporal_patch_size * c.patch_size**2 * D
    window = (c.window_size // c.patch_size) ** 2
    return EncoderShape(
        len(tower.blocks), D, 3 * c.intermediate_size // 2, embed, merger, 0, c.num_heads,
        window_tokens=window, full_blocks=tuple(c.fullatt_block_indexes),
    )  # fmt: skip


def _locate_language(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    if isinstance(model, qwen25.Qwen2_5_VLForConditionalGeneration):
        model = model.model
    if isinstance(model, qwen25.Qwen2_5_VLModel):
        return model, model.language_model
    return None


LANGUAGE = language_adapter(
    DecoderFamily(
        locate=_locate_language, layout=_mrope.layout, spans=_mrope.visual_spans, positions=_mrope.positions,
        reduce=partial(_mrope.reduced_call, units_key=UNITS_KEY),
        vision_scores=partial(_mrope.scored_call, keys=(SCORE_KEY, METRIC_KEY)),
    )
)  # fmt: skip

ADAPTER = Adapter(
    family="qwen2_5_vl",
    classes=("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel", "Qwen2_5_VisionTransformerPretrainedModel"),
    locate=_locate,
    depth=lambda tower: len(tower.blocks),
    forward=tower_forward,
    shape=_shape,
    language=LANGUAGE,
    segments=vision_segments,
    packs_segments=True,
    reduced_output=True,
    tower_scores=True,
    harness=Harness(
        "ipcv_qwen2_5_vl", "IPCVQwen2_5VL", "lmms_eval.models.chat.qwen2_5_vl.Qwen2_5_VL", "chat", "qwen2_5_vl"
    ),
    tower=RealTower(
        "vision_qwen2_5vl7b",
        "Qwen2.5-VL-7B vision tower (window attention, 4 full-attention blocks)",
        "random (architecture of Qwen/Qwen2.5-VL-7B-Instruct's vision tower); no accuracy is implied",
        lambda: qwen25.Qwen2_5_VisionTransformerPretrainedModel(qwen25.Qwen2_5_VLVisionConfig(**QWEN2_5_VL_7B_VISION)),
        random_inputs,
        lambda n: [n],
        QWEN2_5_VL_7B_VISION["depth"],
    ),  # fmt: skip
)
