"""Adapter for Qwen2-VL: its vision tower (``Qwen2VisionTransformerPretrainedModel``) and its
language decoder (``Qwen2VLTextModel``, with ``Qwen2VLModel`` above it).

The only module that knows this model's internals. Vision: packed patches ``[L, 1280]``, attention
segments from ``cu_seqlens`` (one per image and per video frame), 2D rotary tables ``(cos, sin)``
indexed by token, the fused ``qkv`` projection and the 2x2 ``merger`` that follows the last block.
Language: visual tokens marked by ``image_token_id`` / ``video_token_id`` (or ``mm_token_type_ids``),
3D mRoPE position ids ``[3, B, L]`` (plus text ids as a 4th row from generate), the causal mask
built per KV-cache layer by ``create_causal_mask``, and the ``DynamicCache`` that generate() passes
from step to step.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen
from transformers.utils.generic import is_flash_attention_requested
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

from .. import trace as _trace
from ..engine import Plan, run_vision
from ..language import Slots, prunes_anything, run_language
from ._attention import nonempty_segments, segment_attention
from .base import Adapter, DecoderShape, EncoderShape, LanguageAdapter, pop_output_flags


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The tower's 2D rotary embedding (as ``apply_rotary_pos_emb_vision``) for one tensor ``[N, H, d]``."""
    dtype = x.dtype
    x = x.float()
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    return ((x * cos) + (qwen.rotate_half(x) * sin)).to(dtype)


class _TowerCall:
    """How one call of the tower runs its blocks (see :class:`ipcv.engine.BlockOps`)."""

    def __init__(self, tower, cu_seqlens, max_seqlen, position_embeddings, kwargs):
        self.tower = tower
        self.blocks = tower.blocks
        self.cu_seqlens = cu_seqlens
        self.max_seqlen = max_seqlen
        self.pe = position_embeddings
        self.kwargs = kwargs
        self._kept_inputs = None

    def full(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        return self.blocks[layer](
            h, cu_seqlens=self.cu_seqlens, max_seqlen=self.max_seqlen, position_embeddings=self.pe, **self.kwargs
        )

    def _kept(self, plan: Plan):
        if self._kept_inputs is None:
            counts = [c for c in plan.keep_counts if c]
            cu = torch.zeros(len(counts) + 1, dtype=self.cu_seqlens.dtype, device=plan.keep.device)
            cu[1:] = torch.tensor(counts, dtype=cu.dtype, device=cu.device).cumsum(0)
            max_len = max(counts) if is_flash_attention_requested(self.tower.config) else None
            cos, sin = self.pe
            self._kept_inputs = (cu, max_len, (cos[plan.keep], sin[plan.keep]))
        return self._kept_inputs

    def kept(self, layer: int, h_keep: torch.Tensor, plan: Plan) -> torch.Tensor:
        cu, max_len, pe = self._kept(plan)
        return self.blocks[layer](h_keep, cu_seqlens=cu, max_seqlen=max_len, position_embeddings=pe, **self.kwargs)

    def stabilized(self, layer: int, h_keep: torch.Tensor, h_full: torch.Tensor, plan: Plan) -> torch.Tensor:
        blk = self.blocks[layer]
        attn = blk.attn
        D, H = attn.dim, attn.num_heads
        q_lengths, kv_lengths, kv_rows = nonempty_segments(plan)
        cos, sin = self.pe
        _, _, (cos_q, sin_q) = self._kept(plan)
        if kv_rows is not None:
            h_full, cos, sin = h_full[kv_rows], cos[kv_rows], sin[kv_rows]
        W, b = attn.qkv.weight, attn.qkv.bias
        # queries for kept rows only (eq. 9); keys/values for every row of the full sequence (eq. 8)
        q = F.linear(blk.norm1(h_keep), W[:D], None if b is None else b[:D]).view(-1, H, D // H)
        k, v = F.linear(blk.norm1(h_full), W[D:], None if b is None else b[D:]).view(-1, 2, H, D // H).unbind(1)
        q, k = _rope(q, cos_q, sin_q), _rope(k, cos, sin)
        out = segment_attention(
            attn, self.tower.config, q, k, v, q_lengths, kv_lengths, attn.scaling, qwen.eager_attention_forward
        )
        h = h_keep + attn.proj(out.reshape(-1, D))
        return h + blk.mlp(blk.norm2(h))

    # --- token merging (ToMe / ToFu) and DART-ViT: a block split at the residual after attention ---

    def keys(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Keys of block ``layer``'s attention for ``h`` ``[N, D]``, before rotary: ``[N, H, d]``."""
        attn = self.blocks[layer].attn
        D, H = attn.dim, attn.num_heads
        W, b = attn.qkv.weight[D : 2 * D], None if attn.qkv.bias is None else attn.qkv.bias[D : 2 * D]
        return F.linear(self.blocks[layer].norm1(h), W, b).view(-1, H, D // H)

    def attention_part(
        self,
        layer: int,
        h: torch.Tensor,
        rows: torch.Tensor,
        seg_lengths: list[int],
        log_size: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h + attn(norm1(h))`` of block ``layer`` for the (possibly merged) tokens ``h`` ``[M, D]``.

        rows: ``[M]`` packed position of each token in the full sequence; its rotary angles are that
            position's (a merged token keeps the position of the token it was merged into).
        seg_lengths: tokens per segment (attention never crosses segments).
        log_size: ``[M]`` additive logit bias per key (proportional attention), or None.
        Returns: the residual stream after attention ``[M, D]`` and the keys averaged over heads,
            before rotary, ``[M, d]`` (ToMe's similarity metric).
        """
        blk = self.blocks[layer]
        attn = blk.attn
        D, H = attn.dim, attn.num_heads
        q, k, v = attn.qkv(blk.norm1(h)).view(-1, 3, H, D // H).unbind(1)
        metric = k.mean(1)
        cos, sin = self.pe
        cos, sin = cos[rows], sin[rows]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        out = segment_attention(
            attn, self.tower.config, q, k, v, seg_lengths, seg_lengths, attn.scaling, qwen.eager_attention_forward,
            key_bias=log_size,
        )  # fmt: skip
        return h + attn.proj(out.reshape(-1, D)), metric

    def mlp_part(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """``h + mlp(norm2(h))`` of block ``layer``, ``[M, D]``."""
        blk = self.blocks[layer]
        return h + blk.mlp(blk.norm2(h))


def tower_forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
    """Forward of a compressed Qwen2-VL vision tower: same inputs and outputs as the original
    (``last_hidden_state`` ``[L, embed_dim]`` full length, ``pooler_output`` the merger's output)."""
    pop_output_flags(kwargs, type(self).__name__)
    position_ids = get_vision_position_ids(grid_thw, self.spatial_merge_size, kwargs=kwargs)
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, self.config, kwargs=kwargs)
    hidden_states = self.patch_embed(hidden_states)
    position_embeddings = self.rotary_pos_emb(hidden_states, position_ids)
    call = _TowerCall(self, cu_seqlens, max_seqlen, position_embeddings, kwargs)
    seg_lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    hidden_states = run_vision(call, len(self.blocks), hidden_states, seg_lengths, self._ipcv_vision)
    return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=self.merger(hidden_states))


def _locate(model: nn.Module) -> nn.Module | None:
    if isinstance(model, qwen.Qwen2VisionTransformerPretrainedModel):
        return model
    if isinstance(model, qwen.Qwen2VLModel):
        return model.visual
    if isinstance(model, qwen.Qwen2VLForConditionalGeneration):
        return model.model.visual
    return None


def _shape(tower: nn.Module) -> EncoderShape:
    c = tower.config
    D, m = c.embed_dim, c.spatial_merge_size**2
    merger = 2 * (m * D * m * D + m * D * c.hidden_size) // m  # per input patch
    embed = 2 * c.in_channels * c.temporal_patch_size * c.patch_size**2 * D
    return EncoderShape(len(tower.blocks), D, int(D * c.mlp_ratio), embed, merger, 0, c.num_heads)


# --- the language decoder (LLM-side methods) ------------------------------------------------------
#
# Two classes are swapped: ``Qwen2VLModel`` (it sees input_ids / mm_token_type_ids and the grids, and
# hands them to the decoder through a ContextVar for the duration of its own call) and
# ``Qwen2VLTextModel`` (the layer loop). At prefill the decoder prunes (ipcv.language.run_language);
# the pruned layers' caches then hold only kept tokens, and the KV cache object itself carries
# what later decoding steps need to mask those shorter caches (``_CACHE_RECORD``): it is the object
# generate() passes from step to step, so nothing is kept on a module.

_VISUAL: ContextVar[_Visual | None] = ContextVar("ipcv_qwen2vl_visual", default=None)
_CACHE_RECORD = "_ipcv_pruned"


@dataclass(frozen=True)
class _Visual:
    """What the outer model knows about where visual tokens are, for one call."""

    config: object  # the Qwen2VLConfig (token ids, merge size)
    input_ids: torch.Tensor | None
    mm_token_type_ids: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    video_grid_thw: torch.Tensor | None


@dataclass
class _PrunedCache:
    """Carried by a pruned prompt's KV cache: ``stages[s] = (first layer, valid [B, N_s])``, the
    layers from that one on (to the next stage) cache ``N_s`` prompt slots, ``valid`` marking the real
    ones (False for fillers and padding)."""

    stages: list[tuple[int, torch.Tensor]]


def visual_spans(visual: _Visual | None, batch: int, length: int, device) -> torch.Tensor | None:
    """``[B, L]`` long: visual span of each prompt position (-1 text), or None without visual tokens.

    A span is one image, or one frame of a video (one temporal slice of its LLM grid,
    ``(h / m) * (w / m)`` tokens). Tokens are found from ``input_ids`` (``image_token_id`` /
    ``video_token_id``) or else ``mm_token_type_ids`` (1 image, 2 video), and split into spans in
    order with the grids; without grids every contiguous run of visual tokens is one span.
    """
    if visual is None:
        return None
    config = visual.config
    if visual.input_ids is not None and visual.input_ids.shape == (batch, length):
        kinds = ((visual.input_ids == config.image_token_id, visual.image_grid_thw),
                 (visual.input_ids == config.video_token_id, visual.video_grid_thw))  # fmt: skip
    elif visual.mm_token_type_ids is not None and visual.mm_token_type_ids.shape == (batch, length):
        t = visual.mm_token_type_ids
        kinds = ((t == 1, visual.image_grid_thw), (t == 2, visual.video_grid_thw))
    else:
        return None
    m2 = config.vision_config.spatial_merge_size**2
    span = torch.full((batch, length), -1, dtype=torch.long)
    count = [0] * batch
    for mask, grid in kinds:
        mask = mask.cpu()
        if not bool(mask.any()):
            continue
        frames = [] if grid is None else [int(h * w) // m2 for t, h, w in grid.tolist() for _ in range(int(t))]
        frames = iter(frames)
        for b in range(batch):
            rows = mask[b].nonzero().flatten()
            if grid is None:  # contiguous runs
                ids = torch.cat([torch.zeros(1, dtype=torch.long), (rows.diff() > 1).long().cumsum(0)])
            else:
                ids = torch.empty(rows.numel(), dtype=torch.long)
                start, k = 0, 0
                while start < rows.numel():
                    n = next(frames)
                    ids[start : start + n] = k
                    start, k = start + n, k + 1
            span[b, rows] = ids + count[b]
            count[b] += int(ids.max()) + 1 if rows.numel() else 0
    for b in range(batch):  # number the spans of each sample in prompt order
        rows = (span[b] >= 0).nonzero().flatten()
        if rows.numel():
            starts = torch.cat([torch.ones(1, dtype=torch.bool), span[b, rows].diff() != 0])
            span[b, rows] = starts.long().cumsum(0) - 1
    return span.to(device) if any(count) else None


def _visual_of(outer, args: tuple, kwargs: dict) -> _Visual:
    names = ("input_ids", "attention_mask", "position_ids", "past_key_values", "inputs_embeds")
    bound = dict(zip(names, args)) | kwargs
    return _Visual(
        outer.config,
        bound.get("input_ids"),
        bound.get("mm_token_type_ids"),
        bound.get("image_grid_thw"),
        bound.get("video_grid_thw"),
    )


def lm_forward(self, *args, **kwargs):
    """Forward of ``Qwen2VLModel`` under an LLM-side method: the original, with the visual token
    layout of this call made visible to the decoder."""
    token = _VISUAL.set(_visual_of(self, args, kwargs))
    try:
        return type(self)._ipcv_base.forward(self, *args, **kwargs)
    finally:
        _VISUAL.reset(token)


def observe_outer(outer: nn.Module) -> list:
    """Hooks (for :func:`ipcv.stats`) that make the visual token layout of an *uncompressed*
    ``Qwen2VLModel`` call visible to the decoder's token count; returns their handles."""
    tokens = threading.local()

    def pre(module, args, kwargs):
        if getattr(type(module), "forward", None) is not lm_forward:  # a patched one does it itself
            tokens.__dict__.setdefault("stack", []).append(_VISUAL.set(_visual_of(module, args, kwargs)))

    def post(module, args, kwargs, output):
        stack = tokens.__dict__.get("stack")
        if getattr(type(module), "forward", None) is not lm_forward and stack:
            _VISUAL.reset(stack.pop())

    return [outer.register_forward_pre_hook(pre, with_kwargs=True),
            outer.register_forward_hook(post, with_kwargs=True, always_call=True)]  # fmt: skip


class _DecoderCall:
    """How one prefill call of the decoder runs its layers (see :class:`ipcv.language.DecoderOps`)."""

    def __init__(self, model, mask, position_embeddings, text_position_ids, cache, use_cache, kwargs):
        self.model = model
        self.layers = model.layers
        self.num_layers = len(model.layers)
        attn = model.layers[0].self_attn
        self.scaling = attn.scaling
        self.head_dim = attn.head_dim
        self.mask = mask
        self.pe = position_embeddings
        self.text_pos = text_position_ids
        self.cache = cache
        self.use_cache = use_cache
        self.kwargs = kwargs
        self.stages: list[tuple[int, torch.Tensor]] = []

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.layers[i](
            h, attention_mask=self.mask, position_embeddings=self.pe, position_ids=self.text_pos,
            past_key_values=self.cache, use_cache=self.use_cache, **self.kwargs,
        )  # fmt: skip

    def _project(self, proj, x: torch.Tensor, cos, sin) -> torch.Tensor:
        B, N, _ = x.shape
        y = proj(x).view(B, N, -1, self.head_dim).transpose(1, 2)
        return qwen.apply_rotary_pos_emb(y, y, cos, sin)[0]

    def keys(self, i: int, h: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        cos, sin = self.pe
        return self._project(layer.self_attn.k_proj, layer.input_layernorm(h), cos, sin)

    def queries(self, i: int, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        cos, sin = (t.gather(1, rows[..., None].expand(-1, -1, t.shape[-1])) for t in self.pe)
        x = h.gather(1, rows[..., None].expand(-1, -1, h.shape[-1]))
        return self._project(layer.self_attn.q_proj, layer.input_layernorm(x), cos, sin)

    def norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.norm(h)

    def select(self, layer: int, index: torch.Tensor, slots) -> None:
        self.pe = tuple(t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for t in self.pe)
        if self.text_pos is not None:
            self.text_pos = self.text_pos.gather(1, index)
        B, N = index.shape
        shape_only = torch.empty(B, N, 0, dtype=self.pe[0].dtype, device=index.device)  # mask size and dtype
        self.mask = create_causal_mask(
            config=self.model.config, inputs_embeds=shape_only, attention_mask=slots.valid,
            past_key_values=self.cache, position_ids=None, layer_idx=layer,
        )  # fmt: skip
        self.stages.append((layer, slots.valid))


def _positions(inputs_embeds, position_ids, past_length):
    """The original forward's handling of ``position_ids``: ``([3, B, L] mRoPE ids, [B, L] text ids or None)``."""
    if position_ids is None:
        position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length
        position_ids = position_ids.view(1, 1, -1).expand(3, inputs_embeds.shape[0], -1)
    elif position_ids.ndim == 2:
        position_ids = position_ids[None, ...].expand(3, position_ids.shape[0], -1)
    if position_ids.ndim == 3 and position_ids.shape[0] == 4:
        return position_ids[1:], position_ids[0]
    return position_ids, None


def _record_plain(model, inputs_embeds, attention_mask, cache, method: str = "vanilla") -> None:
    """Token counts of a decoder call that pruned nothing (into the active trace, if any)."""
    record = _trace.active()
    if record is None:
        return
    B, q = inputs_embeds.shape[:2]
    n_layers = len(model.layers)
    if attention_mask is not None and attention_mask.ndim == 2:
        new = attention_mask[:, -q:].sum(1).tolist()
        total = attention_mask.sum(1).tolist()
    else:
        past = 0 if cache is None else cache.get_seq_length() - q
        new, total = [q] * B, [past + q] * B
    spans = visual_spans(_VISUAL.get(), B, q, inputs_embeds.device)
    visual = [0] * B if spans is None else (spans >= 0).sum(1).tolist()
    record.decoder.append(_trace.DecoderRecord(method, [new] * n_layers, [visual] * n_layers, [total] * n_layers))


def text_forward(
    self,
    input_ids: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.LongTensor | None = None,
    past_key_values=None,
    inputs_embeds: torch.Tensor | None = None,
    use_cache: bool | None = None,
    **kwargs,
) -> BaseModelOutputWithPast:
    """Forward of a ``Qwen2VLTextModel`` under an LLM-side method (``self._ipcv_language``).

    Prefill of a prompt with visual tokens (empty cache): layers run on the pruned token set from
    each pruning layer on; returns ``last_hidden_state`` ``[B, L, D]`` full length (a pruned
    position holds its state at pruning time, after the final norm) and a cache whose pruned layers
    hold only kept tokens. Decoding with such a cache: every layer attends over its own cache, with
    the original 3D mRoPE positions of the new tokens. Anything else: the original forward.
    """
    settings = self._ipcv_language
    base = type(self)._ipcv_base
    pop_output_flags(kwargs, type(self).__name__)
    pruned = getattr(past_key_values, _CACHE_RECORD, None) if past_key_values is not None else None
    past = past_key_values.get_seq_length() if past_key_values is not None else 0
    if inputs_embeds is None and input_ids is not None:
        inputs_embeds = self.embed_tokens(input_ids)
    if isinstance(attention_mask, dict):
        raise ValueError(
            f"{type(self).__name__} is compressed by ipcv: a prepared (dict) attention mask is not supported"
        )
    span = None
    if pruned is None and past == 0 and inputs_embeds is not None:
        span = visual_spans(_VISUAL.get(), *inputs_embeds.shape[:2], inputs_embeds.device)
    slots = None
    if span is not None:
        valid = torch.ones_like(span, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        pos = torch.arange(span.shape[1], device=span.device).expand_as(span)
        slots = Slots(pos, valid, span.masked_fill(~valid, -1))
        if not prunes_anything(settings, slots):
            slots = None
    if pruned is None and slots is None:
        out = base.forward(
            self, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
        )  # fmt: skip
        _record_plain(self, inputs_embeds, attention_mask, out.past_key_values)
        return out

    if use_cache is None:
        use_cache = self.config.use_cache
    if use_cache and past_key_values is None:
        past_key_values = DynamicCache(config=self.config)
    if past_key_values is not None and not all(isinstance(layer, DynamicLayer) for layer in past_key_values.layers):
        raise ValueError(f"{type(self).__name__} is compressed by ipcv: only a DynamicCache can hold pruned layers")
    position_ids, text_position_ids = _positions(inputs_embeds, position_ids, past)
    mask = create_causal_mask(
        config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
        past_key_values=past_key_values, position_ids=text_position_ids,
    )  # fmt: skip
    position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

    if pruned is None:  # prefill: prune
        call = _DecoderCall(self, mask, position_embeddings, text_position_ids, past_key_values, use_cache, kwargs)
        h = run_language(call, inputs_embeds, slots, settings)
        if past_key_values is not None:
            setattr(past_key_values, _CACHE_RECORD, _PrunedCache(call.stages))
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h), past_key_values=past_key_values)

    # decoding after a pruned prefill: each group of layers attends over its own, shorter cache
    B, q = inputs_embeds.shape[:2]
    if pruned.stages[0][1].shape[0] != B:
        raise ValueError(
            f"{type(self).__name__} is compressed by ipcv: the cache was pruned for batch size "
            f"{pruned.stages[0][1].shape[0]}, got {B} (beam search and cache reordering are not supported)"
        )
    masks, layer_mask, counts = [mask], [0] * len(self.layers), []
    base_count = attention_mask.sum(1) if attention_mask is not None else torch.full((B,), past + q)
    for s, (first, valid) in enumerate(pruned.stages):
        tail = past_key_values.layers[first].get_seq_length() + q - valid.shape[1]
        extra = attention_mask[:, -tail:].bool() if attention_mask is not None else valid.new_ones(B, tail)
        full = torch.cat([valid, extra], dim=1)
        masks.append(create_causal_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=full,
            past_key_values=past_key_values, position_ids=None, layer_idx=first,
        ))  # fmt: skip
        end = pruned.stages[s + 1][0] if s + 1 < len(pruned.stages) else len(self.layers)
        for i in range(first, end):
            layer_mask[i] = s + 1
        counts.append(full.sum(1))
    h = inputs_embeds
    for i, decoder_layer in enumerate(self.layers):
        h = decoder_layer(
            h, attention_mask=masks[layer_mask[i]], position_embeddings=position_embeddings,
            position_ids=text_position_ids, past_key_values=past_key_values, use_cache=use_cache, **kwargs,
        )  # fmt: skip
    record = _trace.active()
    if record is not None:
        new = attention_mask[:, -q:].sum(1).tolist() if attention_mask is not None else [q] * B
        cache = [(base_count if k == 0 else counts[k - 1]).tolist() for k in layer_mask]
        record.decoder.append(
            _trace.DecoderRecord(type(settings).__name__, [new] * len(self.layers), [[0] * B] * len(self.layers), cache)
        )
    return BaseModelOutputWithPast(last_hidden_state=self.norm(h), past_key_values=past_key_values)


def _locate_language(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(Qwen2VLModel, Qwen2VLTextModel)`` of a model with a language decoder, else None."""
    if isinstance(model, qwen.Qwen2VLForConditionalGeneration):
        model = model.model
    if isinstance(model, qwen.Qwen2VLModel):
        return model, model.language_model
    return None


def vision_segments(tower: nn.Module, args: tuple, kwargs: dict) -> list[int]:
    """Tokens per segment (image / frame) of one tower call, from its ``grid_thw`` argument."""
    grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
    return [int(h * w) for t, h, w in grid.tolist() for _ in range(int(t))]


def decoder_shape(text_model: nn.Module) -> DecoderShape:
    c = text_model.config
    head_dim = c.hidden_size // c.num_attention_heads
    return DecoderShape(
        layers=c.num_hidden_layers, dim=c.hidden_size, mlp_dim=c.intermediate_size, heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads, head_dim=head_dim, vocab=c.vocab_size, mlp_matrices=3,
    )  # fmt: skip


def _record_hook(decoder, args, kwargs, output) -> None:
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = torch.empty(*ids.shape, 0)
    _record_plain(decoder, embeds, kwargs.get("attention_mask"), output.past_key_values)


LANGUAGE = LanguageAdapter(
    locate=_locate_language,
    outer_forward=lm_forward,
    decoder_forward=text_forward,
    shape=decoder_shape,
    record_plain=_record_hook,
    observe_outer=observe_outer,
)


ADAPTER = Adapter(
    family="qwen2_vl",
    classes=(
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLModel",
        "Qwen2VisionTransformerPretrainedModel",
    ),
    locate=_locate,
    depth=lambda tower: len(tower.blocks),
    forward=tower_forward,
    shape=_shape,
    language=LANGUAGE,
    segments=vision_segments,
)
