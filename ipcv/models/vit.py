"""Adapter for Hugging Face ViT-style encoders: DINOv2, CLIP vision and SigLIP vision.

These encoders take a batch ``[B, N, D]`` of images of equal size; the adapter packs it to
``[B*N, D]`` with one segment per image and protects the leading CLS token (DINOv2, CLIP; SigLIP
has none). Position embeddings are added before the first block, so kept tokens need no position
bookkeeping. Only this file knows the attribute names of their layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.clip import modeling_clip as clip
from transformers.models.dinov2 import modeling_dinov2 as dinov2
from transformers.models.siglip import modeling_siglip as siglip

from ..catalog import run_vision
from ..shapes import EncoderShape
from ..vision import Plan
from . import _capture
from ._attention import nonempty_segments, segment_attention
from .base import Adapter


@dataclass(frozen=True)
class _Spec:
    """Attribute names of one family's encoder layer."""

    layers: str
    norm1: str
    attn: str
    q: str
    k: str
    v: str
    out: str
    norm2: str
    heads: str
    scaling: str
    layer_scale1: str | None  # a module (DINOv2's LayerScale) or a parameter (InternViT's lambda_1)
    layer_scale2: str | None
    prefix_tokens: int
    eager: object
    q_norm: str | None = None  # InternViT-6B's qk-norm over the whole width, before the heads split
    k_norm: str | None = None
    layer_mask_arg: bool = True  # the layer's forward takes an attention mask after the states


_DINOV2 = _Spec(
    "layer", "norm1", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "norm2",
    "num_attention_heads", "scaling", "layer_scale1", "layer_scale2", 1, dinov2.eager_attention_forward,
)  # fmt: skip
_CLIP = _Spec(
    "layers", "layer_norm1", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm2",
    "num_heads", "scale", None, None, 1, clip.eager_attention_forward,
)  # fmt: skip
_SIGLIP = _Spec(
    "layers", "layer_norm1", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm2",
    "num_heads", "scale", None, None, 0, siglip.eager_attention_forward,
)  # fmt: skip


class _EncoderCall:
    """How one call of the encoder runs its layers (see :class:`ipcv.vision.BlockOps`)."""

    def __init__(self, layers: nn.ModuleList, spec: _Spec, batch: int, tokens: int, kwargs: dict):
        self.layers, self.spec, self.B, self.N, self.kwargs = layers, spec, batch, tokens, kwargs

    def _plain(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The unmodified layer on a batch ``[B, n, D]``."""
        if self.spec.layer_mask_arg:
            return self.layers[layer](x, None, **self.kwargs)
        return self.layers[layer](x)

    def full(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        return self._plain(layer, h.view(self.B, self.N, -1)).reshape(h.shape)

    def kept(self, layer: int, h_keep: torch.Tensor, plan: Plan) -> torch.Tensor:
        counts = plan.keep_counts
        if len(set(counts)) == 1:  # same count in every image: the unmodified layer, batched
            return self._plain(layer, h_keep.view(self.B, counts[0], -1)).reshape(h_keep.shape)
        lengths = [c for c in counts if c]
        return self._layer(layer, h_keep, h_keep, lengths, lengths)

    def stabilized(self, layer: int, h_keep: torch.Tensor, h_full: torch.Tensor, plan: Plan) -> torch.Tensor:
        q_lengths, kv_lengths, kv_rows = nonempty_segments(plan)
        return self._layer(layer, h_keep, h_full if kv_rows is None else h_full[kv_rows], q_lengths, kv_lengths)

    def _layer(self, layer: int, h_q, h_kv, q_lengths, kv_lengths) -> torch.Tensor:
        """One layer with queries (and MLP) for ``h_q`` rows and keys/values from ``h_kv`` rows."""
        h, _ = self._attend(layer, h_q, h_kv, q_lengths, kv_lengths)
        return self.mlp_part(layer, h)

    def _attend(self, layer: int, h_q, h_kv, q_lengths, kv_lengths, key_bias=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``h_q + attn`` with keys/values from ``h_kv``; also returns the keys ``[Lk, H, d]``."""
        s, blk = self.spec, self.layers[layer]
        attn = getattr(blk, s.attn)
        norm1 = getattr(blk, s.norm1)
        H = getattr(attn, s.heads)
        x_q = norm1(h_q)
        x_kv = x_q if h_kv is h_q else norm1(h_kv)
        q = self._qk(attn, s.q, s.q_norm, x_q).view(x_q.shape[0], H, -1)
        k = self._qk(attn, s.k, s.k_norm, x_kv).view(x_kv.shape[0], H, -1)
        v = getattr(attn, s.v)(x_kv).view(x_kv.shape[0], H, -1)
        scaling = getattr(attn, s.scaling)
        out = segment_attention(attn, attn.config, q, k, v, q_lengths, kv_lengths, scaling, s.eager, key_bias)
        out = getattr(attn, s.out)(out.reshape(h_q.shape[0], -1))
        return h_q + _scaled(blk, s.layer_scale1, out), k

    @staticmethod
    def _qk(attn, proj: str, norm: str | None, x: torch.Tensor) -> torch.Tensor:
        y = getattr(attn, proj)(x)
        return getattr(attn, norm)(y) if norm else y

    # --- token merging (ToMe / ToFu) and DART-ViT: a layer split at the residual after attention ---

    def keys(self, layer: int, h: torch.Tensor, rotated: bool = False) -> torch.Tensor:
        """Keys of layer ``layer``'s attention for ``h`` ``[N, D]``: ``[N, H, d]`` (``rotated`` changes nothing:
        these encoders have no rotary embedding)."""
        s, blk = self.spec, self.layers[layer]
        attn = getattr(blk, s.attn)
        return self._qk(attn, s.k, s.k_norm, getattr(blk, s.norm1)(h)).view(h.shape[0], getattr(attn, s.heads), -1)

    def attention_part(
        self,
        layer: int,
        h: torch.Tensor,
        rows: torch.Tensor,
        seg_lengths: list[int],
        log_size: torch.Tensor | None = None,
        rotated: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h + attn(norm1(h))`` of layer ``layer`` for tokens ``h`` ``[M, D]`` in segments of
        ``seg_lengths``; ``rows`` is unused (positions were added before the first layer);
        ``log_size`` ``[M]`` is an additive logit bias per key; ``rotated`` changes nothing (these
        encoders have no rotary embedding). Returns the residual stream ``[M, D]`` and the keys
        averaged over heads ``[M, d]``."""
        out, k = self._attend(layer, h, h, seg_lengths, seg_lengths, log_size)
        return out, k.mean(1)

    def mlp_part(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """``h + mlp(norm2(h))`` (with LayerScale where the family has it), ``[M, D]``."""
        s, blk = self.spec, self.layers[layer]
        return h + _scaled(blk, s.layer_scale2, blk.mlp(getattr(blk, s.norm2)(h)))


def _scaled(blk: nn.Module, name: str | None, x: torch.Tensor) -> torch.Tensor:
    """LayerScale of a block: a module (DINOv2) is called, a parameter (InternViT) multiplies."""
    if name is None:
        return x
    scale = getattr(blk, name)
    return scale * x if isinstance(scale, torch.Tensor) else scale(x)


def _make_forward(spec: _Spec, expendable=None):
    """The compressed forward of an encoder with ``spec``'s layers. ``expendable``: ``(B, N, device) -> [B*N]
    bool or None``, the tokens of this call its caller discards after the encoder (pruned first, see
    :func:`ipcv.catalog.run_vision`); None: none."""

    def encoder_forward(self, hidden_states=None, attention_mask=None, inputs_embeds=None, **kwargs):
        """Forward of a compressed ViT encoder: ``[B, N, D]`` in, ``[B, N, D]`` out (full length).

        Each image (tile) is a segment; its leading CLS token (if the family has one) is always kept
        and never counted. When the caller reads an inner layer (``vision_feature_layer``) that layer
        is where the compressed schedule ends (:mod:`ipcv.models._capture`).
        """
        owner = type(self).__name__
        flags = _capture.pop_flags(kwargs)
        h = hidden_states if hidden_states is not None else inputs_embeds
        if attention_mask is not None:
            raise ValueError(
                f"{owner} is compressed by ipcv: an attention_mask is not supported "
                "(images of one batch must have the same number of patches)"
            )
        B, N, D = h.shape
        protected = torch.zeros(B, N, dtype=torch.bool, device=h.device)
        protected[:, : spec.prefix_tokens] = True
        layers = getattr(self, spec.layers)
        call = _EncoderCall(layers, spec, B, N, kwargs)
        with _capture.detached(owner, len(layers), flags) as capture:
            settings = self._ipcv_vision
            _capture.check_read_layer(settings, capture, owner)
            states = {0: h}
            out = h.reshape(B * N, D)
            if capture.layer > 0:
                dropped = None if expendable is None else expendable(B, N, h.device)
                out = run_vision(call, capture.layer, out, [N] * B, settings, protected.flatten(), dropped)
            states[capture.layer] = out.view(B, N, D)
            for layer in range(capture.layer, len(layers)):  # after the layer read: full length, as before
                out = call.full(layer, out)
            states[len(layers)] = out.view(B, N, D)
            capture.deliver(states)
        return BaseModelOutput(last_hidden_state=out.view(B, N, D))

    return encoder_forward


def _locator(model_types: tuple[type, ...], path: tuple[str, ...]):
    def locate(model: nn.Module) -> nn.Module | None:
        if not isinstance(model, model_types):
            return None
        for name in path:
            model = getattr(model, name)
        return model

    return locate


def _shaper(spec: _Spec):
    def shape(enc: nn.Module) -> EncoderShape:
        c = enc.config
        D = c.hidden_size
        if getattr(c, "use_swiglu_ffn", False):  # gate, up and down projections: 3*D*F multiply-adds
            f = (int(int(D * c.mlp_ratio) * 2 / 3) + 7) // 8 * 8
            mlp = 3 * f // 2
        else:
            mlp = getattr(c, "intermediate_size", None) or int(D * c.mlp_ratio)
        embed = 2 * c.num_channels * c.patch_size**2 * D
        return EncoderShape(len(getattr(enc, spec.layers)), D, mlp, embed, 0, spec.prefix_tokens, c.num_attention_heads)

    return shape


def _adapter(family, spec, classes: dict[type, tuple[str, ...]]) -> list[Adapter]:
    return [
        Adapter(
            family=family,
            classes=(cls.__name__,),
            locate=_locator((cls,), path),
            depth=lambda enc, s=spec: len(getattr(enc, s.layers)),
            forward=_make_forward(spec),
            shape=_shaper(spec),
        )
        for cls, path in classes.items()
    ]


ADAPTERS: list[Adapter] = [
    *_adapter("dinov2", _DINOV2, {dinov2.Dinov2Model: ("encoder",)}),
    *_adapter(
        "clip",
        _CLIP,
        {clip.CLIPVisionModel: ("encoder",), clip.CLIPVisionModelWithProjection: ("vision_model", "encoder")},
    ),
    *_adapter("siglip", _SIGLIP, {siglip.SiglipVisionModel: ("encoder",)}),
]
