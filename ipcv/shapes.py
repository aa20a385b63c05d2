"""The sizes the analytic counts need: :class:`EncoderShape` (a vision encoder) and :class:`DecoderShape` (a
language decoder). Plain data, read off a model by its family's adapter (:mod:`ipcv.models`), used by
:mod:`ipcv.flops` and by the methods' own counts (:mod:`ipcv.vision`, :mod:`ipcv.language`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderShape:
    """What the FLOP count needs to know about an encoder.

    embed_flops_per_token: patch embedding; head_flops_per_token: work after the last block per
    input token (Qwen2-VL's 2x2 merger), 0 for ViT encoders whose head belongs to the caller.
    prefix_tokens: protected tokens per segment (CLS). heads: attention heads (the baselines'
    similarity metrics work on one head's width). window_tokens: tokens per attention window
    (Qwen2.5-VL), 0 when every block attends per segment; full_blocks: the blocks that attend per
    segment anyway. read_layer: the hidden state the model reads from this encoder when that is an
    inner one (LLaVA's ``vision_feature_layer=-2``): the compressed schedule ends there and the blocks
    from it on run on the full sequence; None: the last block's output. taps: inner blocks whose full-length
    output the model reads too (Qwen3-VL's DeepStack; :mod:`ipcv.vision.taps`), their heads counted in
    ``head_flops_per_token``, their rebuilding in the method's count.
    """

    depth: int
    dim: int
    mlp_dim: int
    embed_flops_per_token: int = 0
    head_flops_per_token: int = 0
    prefix_tokens: int = 0
    heads: int = 1
    window_tokens: int = 0
    full_blocks: tuple[int, ...] = ()
    read_layer: int | None = None
    taps: tuple[int, ...] = ()


@dataclass(frozen=True)
class DecoderShape:
    """What the decoder FLOP / KV-cache count needs to know (grouped-query attention, gated MLP)."""

    layers: int
    dim: int
    mlp_dim: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    mlp_matrices: int = 3
