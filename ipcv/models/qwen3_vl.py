"""Adapter for Qwen3-VL (and Qwen3-VL-MoE, whose tower is the same code): its vision tower
(``Qwen3VLVisionModel``) with DeepStack, and its language decoder (``Qwen3VLTextModel`` under ``Qwen3VLModel``).

Vision: 16-px patches packed ``[L, 1152]`` in 2x2 merge-unit order, a learned position table (4-tap bilinear
interpolation, added once before block 0) and 2D axial rotary tables indexed by token, full attention in one
segment per image / temporal patch (``cu_seqlens``), the fused ``qkv`` block of Qwen2-VL (so the block ops are
:class:`ipcv.models.qwen2_vl._TowerCall`). The per-call metadata transformers may receive precomputed in the
kwargs (``interp_indices`` / ``interp_weights``, ``position_ids``, ``cu_seqlens`` / ``max_seqlen``) is popped by
its own helpers here, before any block runs; the kept rows get their rotary rows gathered and their
``cu_seqlens`` recomputed per segment by the block ops, so no stale full-length table reaches a pruned block.

DeepStack: after blocks ``deepstack_visual_indexes`` (8 / 16 / 24 on the 8B-class towers) a
``deepstack_merger_list`` merger reads the *full* sequence through a 2x2 view. Those blocks are taps
(:mod:`ipcv.vision.taps`): the runner rebuilds the full, original-order sequence there its own way (IPCV:
``IPCV(taps="ngr")`` NGR from the kept neighbours, or ``"frozen"``; the baselines as their final output), so
every deepstack feature has the vanilla row count and merge order.

Language: the shared decoder (:mod:`ipcv.models._decoder`) with the mRoPE spans of :mod:`ipcv.models._mrope`
(interleaved mRoPE is the model's own ``rotary_emb``, called on the full prompt and gathered per kept slot); the
DeepStack injection after decoder layers 0 .. 2 follows the kept slots (:class:`ipcv.models._decoder.DeepStack`),
so pruning at or before an injection layer slices ``visual_pos_masks`` and every deepstack embedding alike.
A video's temporal patch is one span and one tower segment; its timestamp text stays in the prompt.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.qwen3_vl import modeling_qwen3_vl as q3
from transformers.models.qwen3_vl_moe import modeling_qwen3_vl_moe as q3moe
from transformers.vision_utils import (
    get_vision_attention_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
)

from ..catalog import run_vision
from ..shapes import EncoderShape
from ..vision.sources import collect_sources
from ..vision.taps import collect_taps
from . import _mrope
from ._decoder import DecoderFamily, language_adapter
from .base import Adapter, Harness, RealTower, pop_output_flags
from .configs import QWEN3_VL_8B_VISION
from .qwen2_vl import UNITS_KEY, _TowerCall, reduced_units, square_grid, vision_segments

__all__ = ["ADAPTER", "LANGUAGE", "tower_forward"]

TOWERS = (q3.Qwen3VLVisionModel, q3moe.Qwen3VLMoeVisionModel)
MODELS = (q3.Qwen3VLModel, q3moe.Qwen3VLMoeModel)
WHOLE = (q3.Qwen3VLForConditionalGeneration, q3moe.Qwen3VLMoeForConditionalGeneration)


def tower_forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs):
    """Forward of a compressed Qwen3-VL vision tower: same inputs and outputs as the original
    (``BaseModelOutputWithDeepstackFeatures``: ``last_hidden_state`` ``[L, D]`` full length, ``pooler_output``
    the merger's output, ``deepstack_features`` one ``[L / 4, out_hidden_size]`` per tap, each read from the
    full sequence the runner rebuilt at that block). With a baseline's ``output="reduced"`` it also holds the
    mask of the merge units the LLM receives (:data:`ipcv.models.qwen2_vl.UNITS_KEY`, Qwen2-VL's rule); the
    deepstack features stay full length and the decoder drops the same units' rows."""
    pop_output_flags(kwargs, type(self).__name__)
    interp_indices, interp_weights = get_vision_interpolation_indices_and_weights(
        grid_thw, num_grid_per_side=self.num_grid_per_side, mode=self.interpolation_mode,
        align_corners=self.interpolation_align_corners, spatial_merge_size=self.config.spatial_merge_size,
        kwargs=kwargs,
    )  # fmt: skip
    position_ids = get_vision_position_ids(grid_thw, self.spatial_merge_size, kwargs=kwargs)
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, self.config, kwargs=kwargs)
    hidden_states = self.patch_embed(hidden_states)
    pos_embeds = (self.pos_embed(interp_indices) * interp_weights[:, :, None]).sum(1)
    hidden_states = hidden_states + pos_embeds.to(hidden_states.dtype)
    position_embeddings = self.rotary_pos_emb(hidden_states, position_ids)
    call = _TowerCall(self, cu_seqlens, max_seqlen, position_embeddings, kwargs, q3.eager_attention_forward)
    seg_lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    taps = list(self.deepstack_visual_indexes)
    readers = {layer: self.deepstack_merger_list[k] for k, layer in enumerate(taps)}
    with collect_sources() as sources, collect_taps(readers) as features:
        hidden_states = run_vision(call, len(self.blocks), hidden_states, seg_lengths, self._ipcv_vision)
    missing = [layer for layer in taps if layer not in features]
    if missing:
        raise RuntimeError(f"{type(self).__name__}: the runner gave no full sequence at DeepStack blocks {missing}")
    out = q3.BaseModelOutputWithDeepstackFeatures(
        last_hidden_state=hidden_states, pooler_output=self.merger(hidden_states),
        deepstack_features=[features[layer] for layer in taps],
    )  # fmt: skip
    if getattr(self._ipcv_vision, "output", "full") == "reduced":
        units = reduced_units(sources[-1] if sources else None, seg_lengths, self.spatial_merge_size**2)
        out[UNITS_KEY] = units.to(hidden_states.device)
    return out


def _locate(model: nn.Module) -> nn.Module | None:
    if isinstance(model, WHOLE):
        model = model.model
    if isinstance(model, MODELS):
        model = model.visual
    return model if isinstance(model, TOWERS) else None


def _shape(tower: nn.Module) -> EncoderShape:
    """Blocks with a plain 2-matrix MLP; the patch embedding (a Conv3d, plus the 4-tap weighted sum of the
    learned position table: a multiply and an add per tap and channel); after the blocks the merger and one
    DeepStack merger per tap, each ``LayerNorm, Linear(4D, 4D), GELU, Linear(4D, out)`` on every 2x2 unit
    (counted per input patch)."""
    c = tower.config
    D, m = c.hidden_size, c.spatial_merge_size**2
    taps = tuple(int(t) for t in c.deepstack_visual_indexes)
    merger = 2 * (m * D * m * D + m * D * c.out_hidden_size) // m
    embed = 2 * c.in_channels * c.temporal_patch_size * c.patch_size**2 * D + 2 * 4 * D
    return EncoderShape(
        len(tower.blocks), D, c.intermediate_size, embed, (1 + len(taps)) * merger, 0, c.num_heads, taps=taps
    )


# --- the language decoder: ipcv.models._decoder, the mRoPE spans of _mrope, Qwen3-VL's position handling ---


def _locate_language(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    if isinstance(model, WHOLE):
        model = model.model
    if isinstance(model, MODELS):
        return model, model.language_model
    return None


def positions(inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None, past_length: int):
    """``Qwen3VLTextModel.forward``'s handling of ``position_ids``: ``([3, B, L] mRoPE ids, [B, L] text ids or
    None)``; a missing or 2D ``position_ids`` becomes 4 rows (text, t, h, w), as there."""
    B, L = inputs_embeds.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(L, device=inputs_embeds.device) + past_length
        position_ids = position_ids.view(1, 1, -1).expand(4, B, -1)
    elif position_ids.ndim == 2:
        position_ids = position_ids[None, ...].expand(4, position_ids.shape[0], -1)
    if position_ids.ndim == 3 and position_ids.shape[0] == 4:
        return position_ids[1:], position_ids[0]
    return position_ids, None


def _output_type(decoder: nn.Module) -> type:
    """The MoE decoder returns ``MoeModelOutputWithPast`` (its outer model reads ``router_logits``)."""
    return q3moe.MoeModelOutputWithPast if isinstance(decoder, q3moe.Qwen3VLMoeTextModel) else BaseModelOutputWithPast


LANGUAGE = language_adapter(
    DecoderFamily(
        locate=_locate_language, layout=_mrope.layout, spans=_mrope.visual_spans, positions=positions,
        reduce=partial(_mrope.reduced_call, units_key=UNITS_KEY), output=_output_type,
    )
)  # fmt: skip


def random_inputs(patches: int, device, dtype) -> dict:
    """One call of a Qwen3-VL tower on a square image of ``patches`` 16-px patches, random pixels (benchmarks)."""
    grid = torch.tensor(square_grid(patches), device=device)
    return dict(hidden_states=torch.randn(patches, 3 * 2 * 16 * 16, device=device, dtype=dtype), grid_thw=grid)


def _build_8b_tower() -> nn.Module:
    return q3.Qwen3VLVisionModel(q3.Qwen3VLVisionConfig(**QWEN3_VL_8B_VISION))


ADAPTER = Adapter(
    family="qwen3_vl",
    classes=(
        "Qwen3VLForConditionalGeneration", "Qwen3VLModel", "Qwen3VLVisionModel",
        "Qwen3VLMoeForConditionalGeneration", "Qwen3VLMoeModel", "Qwen3VLMoeVisionModel",
    ),
    locate=_locate,
    depth=lambda tower: len(tower.blocks),
    forward=tower_forward,
    shape=_shape,
    language=LANGUAGE,
    segments=vision_segments,
    packs_segments=True,
    reduced_output=True,
    harness=Harness("ipcv_qwen3_vl", "IPCVQwen3VL", "lmms_eval.models.chat.qwen3_vl.Qwen3_VL", "chat", "qwen3_vl"),
    tower=RealTower(
        "vision_qwen3vl8b",
        "Qwen3-VL-8B vision tower (full attention, DeepStack taps 8/16/24)",
        "random (architecture of Qwen/Qwen3-VL-8B-Instruct's vision tower); no accuracy is implied",
        _build_8b_tower,
        random_inputs,
        lambda n: [n],
        QWEN3_VL_8B_VISION["depth"],
    ),
)  # fmt: skip
