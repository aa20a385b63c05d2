"""The LLM side shared by every MLLM family: a decoder of transformers' Llama/Qwen2 kind (pre-norm
layers, ``rotary_emb``, ``create_causal_mask``, ``DynamicCache``) under an LLM-side method.

A family says three things (:class:`DecoderFamily`): where its decoder is, where the visual tokens of
one call are (``layout`` from the outer model's call, ``spans`` from that layout), and how its
``position_ids`` become rotary positions (1D RoPE or Qwen's 3D mRoPE). Everything else lives here
once: two classes are swapped, the outer model (it sees ``input_ids`` and the grids, and hands the
layout to the decoder through a ContextVar for the duration of its own call) and the decoder (the
layer loop). At prefill the decoder prunes (:func:`ipcv.language.run_language`); the pruned layers'
caches then hold only kept tokens, and the KV cache object itself carries what later decoding steps
need to mask those shorter caches (``_CACHE_RECORD``): it is the object generate() passes from step to
step, so nothing is kept on a module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

from .. import trace as _trace
from ..catalog import run_language
from ..language import Slots, prunes_anything
from ..shapes import DecoderShape
from .base import LanguageAdapter, pop_output_flags

# spans(batch, length, device) -> [B, L] visual span per position (-1 text) or None, for the current call
_SPANS: ContextVar[Callable | None] = ContextVar("ipcv_visual_spans", default=None)
_CACHE_RECORD = "_ipcv_pruned"
# (drop [B, L] bool, method name): prompt positions a ViT-side baseline's output="reduced" removes
# before the first decoder layer, for the current outer call (see DecoderFamily.reduce)
_DROP: ContextVar[tuple[torch.Tensor, str] | None] = ContextVar("ipcv_reduced_drop", default=None)
# (score [B, L], metric [B, L, d]): VisionZip's tower attention score and merging metric of each prompt position
# (NaN for text), for the current outer call (see DecoderFamily.vision_scores)
_VISION_SCORES: ContextVar[tuple[torch.Tensor, torch.Tensor] | None] = ContextVar("ipcv_vision_scores", default=None)


@dataclass(frozen=True)
class DecoderFamily:
    """What the shared LLM-side code needs to know about one family.

    locate: ``(outer, decoder)`` of an accepted model, or None.
    layout: ``(outer, args, kwargs) -> layout`` of one outer call (token ids, grids ...).
    spans: ``(layout, batch, length, device) -> [B, L]`` long visual span of each prompt position
        (-1 text), or None when the call has no visual tokens. A span is one image, tile or frame:
        each gets its own budget.
    positions: ``(inputs_embeds, position_ids, past_length) -> (rotary ids, text ids [B, L] or None)``:
        what the decoder's ``rotary_emb`` takes and what its layers / mask take as ``position_ids``.
    reduce: ``(outer, args, kwargs) -> (args, kwargs, drop [B, L] bool or None)``: for a ViT-side
        baseline with ``output="reduced"``, the outer call's arguments to run and the prompt positions
        the LLM does not receive (removed before layer 0); None for a family without it.
    output: ``decoder -> class`` of the decoder's own output (a mixture-of-experts decoder's carries
        ``router_logits``, which the outer model reads; the pruned layer loop leaves them None); None:
        ``BaseModelOutputWithPast``.
    vision_scores: ``(outer, args, kwargs) -> (args, kwargs, (score [B, L], metric [B, L, d]) or None)``: the
        tower's attention score and merging metric of each visual prompt position, for a language-side
        :class:`ipcv.VisionZip` (see :data:`_VISION_SCORES`); None for a family whose tower gives none.
    """

    locate: Callable[[nn.Module], tuple[nn.Module, nn.Module] | None]
    layout: Callable[[nn.Module, tuple, dict], object]
    spans: Callable[[object, int, int, torch.device], torch.Tensor | None]
    positions: Callable[[torch.Tensor, torch.Tensor | None, int], tuple[torch.Tensor, torch.Tensor | None]]
    reduce: Callable[[nn.Module, tuple, dict], tuple[tuple, dict, torch.Tensor | None]] | None = None
    output: Callable[[nn.Module], type] | None = None  # decoder -> the output class its forward returns
    vision_scores: Callable[[nn.Module, tuple, dict], tuple[tuple, dict, tuple | None]] | None = None


@dataclass
class _PrunedCache:
    """Carried by a pruned prompt's KV cache: ``stages[s] = (first layer, valid [B, N_s])``, the
    layers from that one on (to the next stage) cache ``N_s`` prompt slots, ``valid`` marking the real
    ones (False for fillers and padding)."""

    stages: list[tuple[int, torch.Tensor]]


def positions_1d(inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None, past_length: int):
    """1D RoPE: ``([B, L] ids, the same ids)``; defaults to ``past_length + arange(L)``."""
    B, L = inputs_embeds.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(L, device=inputs_embeds.device) + past_length
    return (position_ids.expand(B, L),) * 2


def contiguous_spans(visual: torch.Tensor, span_length: int | None = None) -> torch.Tensor | None:
    """``[B, L]`` span ids from a ``[B, L]`` bool mask of visual tokens: every contiguous run is one
    span, cut into spans of ``span_length`` tokens when given (tiles of one image); -1 elsewhere.
    None if there is no visual token."""
    visual = visual.cpu()
    if not bool(visual.any()):
        return None
    span = torch.full(visual.shape, -1, dtype=torch.long)
    for b in range(visual.shape[0]):
        rows = visual[b].nonzero().flatten()
        if not rows.numel():
            continue
        starts = torch.cat([torch.ones(1, dtype=torch.bool), rows.diff() > 1])
        run = starts.long().cumsum(0) - 1
        if span_length:
            offset = torch.arange(rows.numel()) - torch.nonzero(starts).flatten()[run]
            key = run * (rows.numel() + 1) + offset // span_length
            run = torch.cat([torch.ones(1, dtype=torch.bool), key.diff() != 0]).long().cumsum(0) - 1
        span[b, rows] = run
    return span


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


@dataclass(frozen=True)
class DeepStack:
    """Qwen3-VL's DeepStack injection for one prefill call (``Qwen3VLTextModel._deepstack_process``): after
    decoder layer ``i < len(embeds)`` every visual token gets ``embeds[i][row]`` added, ``row`` its place
    among the prompt's visual tokens (row-major over ``visual_pos_masks``).

    rows: ``[B, N]`` long, that row for each current slot (-1: text, padding, filler); embeds: ``[V, D]`` per
    injected layer. A pruning stage gathers ``rows`` with the slots it keeps (:meth:`select`), so a pruned
    visual token takes its deepstack rows with it and a kept one keeps its own: the slicing of
    ``visual_pos_masks`` and of every deepstack embedding is one gather, never out of step.
    """

    rows: torch.Tensor
    embeds: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, visual_pos_masks, deepstack_visual_embeds, shape) -> DeepStack | None:
        """From the decoder's ``visual_pos_masks`` ``[B, L]`` and ``deepstack_visual_embeds`` (None: none)."""
        if deepstack_visual_embeds is None:
            return None
        if visual_pos_masks is None:
            raise ValueError("deepstack_visual_embeds were given without visual_pos_masks (where to add them)")
        mask = visual_pos_masks.bool()
        if tuple(mask.shape) != tuple(shape):
            raise ValueError(f"visual_pos_masks has shape {tuple(mask.shape)}, the prompt {tuple(shape)}")
        n = int(mask.sum())
        for i, e in enumerate(deepstack_visual_embeds):
            if e.shape[0] != n:
                raise ValueError(
                    f"deepstack_visual_embeds[{i}] has {e.shape[0]} rows, visual_pos_masks marks {n} visual tokens"
                )
        rows = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        rows[mask] = torch.arange(n, device=mask.device)
        return cls(rows, tuple(deepstack_visual_embeds))

    def inject(self, i: int, h: torch.Tensor) -> torch.Tensor:
        if i >= len(self.embeds):
            return h
        rows = self.rows.to(h.device)
        mask = rows >= 0
        e = self.embeds[i].to(h.device, h.dtype)
        h = h.clone()
        h[mask, :] = h[mask, :] + e[rows[mask]]
        return h

    def select(self, index: torch.Tensor, valid: torch.Tensor) -> DeepStack:
        rows = self.rows.to(index.device).gather(1, index).masked_fill(~valid.to(index.device), -1)
        return DeepStack(rows, self.embeds)


class _DecoderCall:
    """How one prefill call of the decoder runs its layers (see :class:`ipcv.language.DecoderOps`)."""

    def __init__(self, model, mask, position_embeddings, text_position_ids, cache, use_cache, kwargs, rotary_ids=None):
        self.model = model
        self.rotary_ids = rotary_ids  # the prompt's rotary position ids ([3, B, L] mRoPE or [B, L]), unpruned
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
        self.deepstack: DeepStack | None = None

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        h = self.layers[i](
            h, attention_mask=self.mask, position_embeddings=self.pe, position_ids=self.text_pos,
            past_key_values=self.cache, use_cache=self.use_cache, **self.kwargs,
        )  # fmt: skip
        return h if self.deepstack is None else self.deepstack.inject(i, h)

    def _project(self, proj, norm, x: torch.Tensor, cos, sin) -> torch.Tensor:
        """``[B, N, D]`` -> ``[B, heads, N, d]`` through ``proj`` (and the per-head ``norm`` of
        Qwen3-style decoders, or None), with the layer's rotary embedding (the decoders'
        ``apply_rotary_pos_emb``: cos/sin ``[B, N, d]`` broadcast over heads)."""
        B, N, _ = x.shape
        y = proj(x).view(B, N, -1, self.head_dim)
        if norm is not None:
            y = norm(y)
        y = y.transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return (y * cos) + (_rotate_half(y) * sin)

    def keys(self, i: int, h: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        attn = layer.self_attn
        cos, sin = self.pe
        return self._project(attn.k_proj, getattr(attn, "k_norm", None), layer.input_layernorm(h), cos, sin)

    def queries(self, i: int, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        attn = layer.self_attn
        cos, sin = (t.gather(1, rows[..., None].expand(-1, -1, t.shape[-1])) for t in self.pe)
        x = h.gather(1, rows[..., None].expand(-1, -1, h.shape[-1]))
        return self._project(attn.q_proj, getattr(attn, "q_norm", None), layer.input_layernorm(x), cos, sin)

    def norm(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.norm(h)

    def grid(self, b: int, rows: torch.Tensor):
        """``(row, column)`` of the prompt positions ``rows`` from the 3D mRoPE ids, or None (1D positions)."""
        ids = self.rotary_ids
        if ids is None or ids.ndim != 3 or ids.shape[0] != 3:
            return None
        return ids[1, b, rows], ids[2, b, rows]

    def vision_scores(self, b: int, rows: torch.Tensor):
        """VisionZip's ``(score, metric)`` of the prompt positions ``rows`` of sample ``b``, from the tower's
        output of this call (:data:`_VISION_SCORES`), or None."""
        found = _VISION_SCORES.get()
        if found is None:
            return None
        score, metric = found
        if score.shape[:2] != self.rotary_ids.shape[-2:] or not bool(score[b, rows].isfinite().all()):
            return None
        return score[b, rows], metric[b, rows]

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
        if self.deepstack is not None:
            self.deepstack = self.deepstack.select(index, slots.valid)


def _run_reduced(call: _DecoderCall, h: torch.Tensor, attention_mask, reduced) -> torch.Tensor:
    """All layers of one prefill call on the prompt without the positions ``drop`` ``[B, L]`` marks
    (every layer's cache holds only the rest, left-filled to one length per batch); positions,
    rotary angles and the causal mask are those of the full prompt, gathered. Returns ``[B, L, D]``
    full length (before the final norm): a dropped position holds its input embedding."""
    drop, name = reduced
    B, L, _ = h.shape
    valid = torch.ones(B, L, dtype=torch.bool, device=h.device) if attention_mask is None else attention_mask.bool()
    keep = valid & ~drop.to(h.device)
    rows = [keep[b].nonzero().flatten() for b in range(B)]
    n = max(r.numel() for r in rows)
    index = torch.zeros(B, n, dtype=torch.long, device=h.device)
    kept = torch.zeros(B, n, dtype=torch.bool, device=h.device)
    for b, r in enumerate(rows):
        index[b, n - r.numel() :] = r
        kept[b, n - r.numel() :] = True
    call.select(0, index, Slots(index, kept, torch.full_like(index, -1)))
    x = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
    for i in range(call.num_layers):
        x = call.layer(i, x)
    out = h.clone()
    batch = torch.arange(B, device=h.device)[:, None].expand_as(index)
    out[batch[kept], index[kept]] = x[kept]
    record = _trace.active()
    if record is not None:
        spans_of = _SPANS.get()
        span = None if spans_of is None else spans_of(B, L, h.device)
        visual = torch.zeros_like(keep) if span is None else (span.to(h.device) >= 0) & keep
        tokens = kept.sum(1).tolist()
        per_span = []
        for b in range(B):
            if span is None or not bool((span[b] >= 0).any()):
                per_span.append([])
                continue
            s = span[b].to(h.device)
            per_span.append(torch.bincount(s[keep[b] & (s >= 0)], minlength=int(s.max()) + 1).tolist())
        n_layers = call.num_layers
        record.decoder.append(
            _trace.DecoderRecord(
                f"{name}(reduced)", [tokens] * n_layers, [visual.sum(1).tolist()] * n_layers, [tokens] * n_layers,
                [per_span], [0],
            )
        )  # fmt: skip
    return out


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
    spans_of = _SPANS.get()
    spans = None if spans_of is None else spans_of(B, q, inputs_embeds.device)
    visual = [0] * B if spans is None else (spans >= 0).sum(1).tolist()
    record.decoder.append(_trace.DecoderRecord(method, [new] * n_layers, [visual] * n_layers, [total] * n_layers))


def _record_hook(decoder, args, kwargs, output) -> None:
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = torch.empty(*ids.shape, 0)
    _record_plain(decoder, embeds, kwargs.get("attention_mask"), output.past_key_values)


def decoder_shape(text_model: nn.Module) -> DecoderShape:
    """Sizes of a Llama/Qwen2-style decoder (grouped-query attention, gated MLP) for the FLOP count."""
    c = text_model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return DecoderShape(
        layers=c.num_hidden_layers, dim=c.hidden_size, mlp_dim=c.intermediate_size, heads=c.num_attention_heads,
        kv_heads=c.num_key_value_heads, head_dim=head_dim, vocab=c.vocab_size, mlp_matrices=3,
    )  # fmt: skip


def language_adapter(family: DecoderFamily, outer_methods: tuple = ()) -> LanguageAdapter:
    """The :class:`LanguageAdapter` of a family: its outer and decoder forwards, built once
    (``outer_methods``: see :attr:`LanguageAdapter.outer_methods`)."""

    def spans_of(outer, args, kwargs):
        return partial(family.spans, family.layout(outer, args, kwargs))

    def lm_forward(self, *args, **kwargs):
        """Forward of the outer model under an LLM-side method: the original, with the visual token
        layout of this call made visible to the decoder."""
        drop = None
        if family.reduce is not None:
            args, kwargs, drop = family.reduce(self, args, kwargs)
        scores = None
        if family.vision_scores is not None:
            args, kwargs, scores = family.vision_scores(self, args, kwargs)
        token = _SPANS.set(spans_of(self, args, kwargs))
        name = type(getattr(getattr(self, "visual", None), "_ipcv_vision", None)).__name__
        dropped = _DROP.set(None if drop is None else (drop, name))
        scored = _VISION_SCORES.set(scores)
        try:
            return type(self)._ipcv_base.forward(self, *args, **kwargs)
        finally:
            _VISION_SCORES.reset(scored)
            _DROP.reset(dropped)
            _SPANS.reset(token)

    def observe_outer(outer: nn.Module) -> list:
        """Hooks (for :func:`ipcv.stats`) that make the visual token layout of an *uncompressed*
        outer call visible to the decoder's token count; returns their handles."""
        tokens = threading.local()

        def pre(module, args, kwargs):
            if getattr(type(module), "forward", None) is not lm_forward:  # a patched one does it itself
                tokens.__dict__.setdefault("stack", []).append(_SPANS.set(spans_of(module, args, kwargs)))

        def post(module, args, kwargs, output):
            stack = tokens.__dict__.get("stack")
            if getattr(type(module), "forward", None) is not lm_forward and stack:
                _SPANS.reset(stack.pop())

        return [outer.register_forward_pre_hook(pre, with_kwargs=True),
                outer.register_forward_hook(post, with_kwargs=True, always_call=True)]  # fmt: skip

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
        """Forward of the decoder under an LLM-side method (``self._ipcv_language``).

        Prefill of a prompt with visual tokens (empty cache): layers run on the pruned token set
        from each pruning layer on; returns ``last_hidden_state`` ``[B, L, D]`` full length (a
        pruned position holds its state at pruning time, after the final norm) and a cache whose
        pruned layers hold only kept tokens. Decoding with such a cache: every layer attends over
        its own cache, with the original positions of the new tokens. Anything else: the original
        forward.
        """
        settings = getattr(self, "_ipcv_language", None)  # None: only a ViT-side output="reduced"
        base = type(self)._ipcv_base
        pop_output_flags(kwargs, type(self).__name__)
        # Qwen3-VL's DeepStack (other decoders never get these): handed back to the original forward, or
        # injected by the pruned layer loop with the kept slots (DeepStack)
        deepstack_kwargs = {k: kwargs.pop(k) for k in ("visual_pos_masks", "deepstack_visual_embeds") if k in kwargs}
        pruned = getattr(past_key_values, _CACHE_RECORD, None) if past_key_values is not None else None
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds = self.embed_tokens(input_ids)
        if isinstance(attention_mask, dict):
            raise ValueError(
                f"{type(self).__name__} is compressed by ipcv: a prepared (dict) attention mask is not supported"
            )
        span = None
        spans = _SPANS.get()
        if pruned is None and past == 0 and inputs_embeds is not None and spans is not None:
            span = spans(*inputs_embeds.shape[:2], inputs_embeds.device)
        slots = None
        if span is not None:
            span = span.to(inputs_embeds.device)
            valid = torch.ones_like(span, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            pos = torch.arange(span.shape[1], device=span.device).expand_as(span)
            slots = Slots(pos, valid, span.masked_fill(~valid, -1))
            if settings is None or not prunes_anything(settings, slots):
                slots = None
        reduced = _DROP.get() if pruned is None and past == 0 and inputs_embeds is not None else None
        if reduced is not None and reduced[0].shape != inputs_embeds.shape[:2]:
            reduced = None
        if pruned is None and slots is None and reduced is None:
            out = base.forward(
                self, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
                inputs_embeds=inputs_embeds, use_cache=use_cache, **deepstack_kwargs, **kwargs,
            )  # fmt: skip
            _record_plain(self, inputs_embeds, attention_mask, out.past_key_values)
            return out
        output_type = BaseModelOutputWithPast if family.output is None else family.output(self)
        deepstack = None
        if deepstack_kwargs.get("deepstack_visual_embeds") is not None:
            deepstack = DeepStack.of(
                deepstack_kwargs.get("visual_pos_masks"), deepstack_kwargs["deepstack_visual_embeds"],
                inputs_embeds.shape[:2],
            )  # fmt: skip
        if deepstack is not None and pruned is not None:
            raise ValueError(
                f"{type(self).__name__} is compressed by ipcv: deepstack_visual_embeds are injected at prefill only, "
                "not in a decoding step after a pruned prefill"
            )

        if use_cache is None:
            use_cache = self.config.use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if past_key_values is not None and not all(isinstance(x, DynamicLayer) for x in past_key_values.layers):
            raise ValueError(f"{type(self).__name__} is compressed by ipcv: only a DynamicCache can hold pruned layers")
        position_ids, text_position_ids = family.positions(inputs_embeds, position_ids, past)
        mask = create_causal_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            past_key_values=past_key_values, position_ids=text_position_ids,
        )  # fmt: skip
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        if reduced is not None:  # prefill of a ViT-side output="reduced": drop the units before layer 0
            call = _DecoderCall(self, mask, position_embeddings, text_position_ids, past_key_values, use_cache, kwargs)
            call.deepstack = deepstack
            h = _run_reduced(call, inputs_embeds, attention_mask, reduced)
            if past_key_values is not None:
                setattr(past_key_values, _CACHE_RECORD, _PrunedCache(call.stages))
            return output_type(last_hidden_state=self.norm(h), past_key_values=past_key_values)
        if pruned is None:  # prefill: prune
            call = _DecoderCall(
                self, mask, position_embeddings, text_position_ids, past_key_values, use_cache, kwargs, position_ids
            )
            call.deepstack = deepstack
            h = run_language(call, inputs_embeds, slots, settings)
            if past_key_values is not None:
                setattr(past_key_values, _CACHE_RECORD, _PrunedCache(call.stages))
            return output_type(last_hidden_state=self.norm(h), past_key_values=past_key_values)

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
                _trace.DecoderRecord(
                    type(settings).__name__ if settings is not None else "reduced",
                    [new] * len(self.layers),
                    [[0] * B] * len(self.layers),
                    cache,
                )  # fmt: skip
            )
        return output_type(last_hidden_state=self.norm(h), past_key_values=past_key_values)

    return LanguageAdapter(
        locate=family.locate,
        outer_forward=lm_forward,
        decoder_forward=text_forward,
        shape=decoder_shape,
        record_plain=_record_hook,
        observe_outer=observe_outer,
        outer_methods=tuple(outer_methods),
    )
