"""Segment-wise attention with different query and key/value sets, through transformers' own
attention functions (eager, sdpa, flash_attention_*), shared by the adapters."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import is_flash_attention_requested

from ..methods.packed import device_index, offsets

SUPPORTED_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


def attention_name(config) -> str:
    return getattr(config, "_attn_implementation", None) or "eager"


def check_attention(config, owner: str) -> None:
    name = attention_name(config)
    if name not in ("eager", "sdpa") and not is_flash_attention_requested(config):
        raise ValueError(
            f"{owner}: attention implementation {name!r} is not supported by ipcv; use one of {SUPPORTED_ATTENTION}"
        )


def cumulative(lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    """``[S + 1]`` int32 cumulative lengths (cu_seqlens) of segments, computed on the host and copied
    to the device without blocking (:func:`ipcv.methods.packed.device_index`)."""
    return device_index(offsets([*lengths, 0]), device, torch.int32)


def segment_attention(
    module: nn.Module,
    config,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lengths: Sequence[int],
    kv_lengths: Sequence[int],
    scaling: float,
    eager: Callable,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional attention of packed queries on packed keys/values, segment by segment.

    Args:
        module: the attention module (passed to transformers' attention function).
        eager: the model family's own ``eager_attention_forward``.
        q: ``[Lq, H, d]``; k, v: ``[Lk, H, d]``; q_lengths / kv_lengths: per segment (same count),
            no zero-length query segment.
        key_bias: ``[Lk]`` added to the logits of every query on that key (ToMe's proportional
            attention, ``log(size)``), passed as an additive float mask ``[B, 1, 1, l]``. Flash
            attention takes no such mask: with a bias, a flash-configured model runs this attention
            with sdpa (same result, no varlen kernel).
    Returns: ``[Lq, H, d]``.
    """
    flash = is_flash_attention_requested(config) and key_bias is None
    name = "sdpa" if key_bias is not None and is_flash_attention_requested(config) else attention_name(config)
    fn = ALL_ATTENTION_FUNCTIONS.get_interface(name, eager)
    Lq, H, d = q.shape
    bias = None if key_bias is None else key_bias.to(q.dtype)

    def attend(qb, kb, vb, mask=None, **extra):  # [B, H, l, d] in, [B, l, H, d] out
        out, _ = fn(module, qb, kb, vb, attention_mask=mask, scaling=scaling, dropout=0.0, is_causal=False, **extra)
        return out

    def one(x):  # [L, H, d] -> [1, H, L, d]
        return x.transpose(0, 1).unsqueeze(0)

    def mask_of(b, batch=1):  # [batch * l] -> [batch, 1, 1, l]
        return None if b is None else b.view(batch, 1, 1, -1)

    if flash:  # one varlen call with separate query / key boundaries
        out = attend(
            one(q), one(k), one(v),
            cu_seq_lens_q=cumulative(q_lengths, q.device), cu_seq_lens_k=cumulative(kv_lengths, q.device),
            max_length_q=max(q_lengths), max_length_k=max(kv_lengths),
        )  # fmt: skip
        return out.reshape(Lq, H, d)
    if len(set(q_lengths)) == 1 and len(set(kv_lengths)) == 1:  # all segments alike: one batched call
        S = len(q_lengths)
        qb, kb, vb = (x.view(S, -1, H, d).transpose(1, 2) for x in (q, k, v))
        return attend(qb, kb, vb, mask_of(bias, S)).reshape(Lq, H, d)
    biases = [None] * len(q_lengths) if bias is None else bias.split(list(kv_lengths))
    splits = zip(q.split(list(q_lengths)), k.split(list(kv_lengths)), v.split(list(kv_lengths)), biases)
    return torch.cat([attend(one(qs), one(ks), one(vs), mask_of(bs))[0] for qs, ks, vs, bs in splits], dim=0)


def nonempty_segments(plan) -> tuple[list[int], list[int], torch.Tensor | None]:
    """Query lengths, key/value lengths and the key/value rows to use in a stabilized block.

    Segments with no kept token (possible only with ``scope="global"``) have no query; their
    keys/values are dropped. Returns (q_lengths, kv_lengths, kv_rows or None when all are used).
    """
    pairs = [(c, n) for c, n in zip(plan.keep_counts, plan.seg_lengths)]
    if all(c > 0 for c, _ in pairs):
        return list(plan.keep_counts), list(plan.seg_lengths), None
    rows, start = [], 0
    for c, n in pairs:
        if c:
            rows.append(torch.arange(start, start + n, device=plan.keep.device))
        start += n
    q_lengths = [c for c, _ in pairs if c]
    kv_lengths = [n for c, n in pairs if c]
    return q_lengths, kv_lengths, torch.cat(rows)


# --- a varlen kernel without the flash-attn package: PyTorch's own, through transformers' attention interface ---

VARLEN = "ipcv_flash_varlen"
"""Name under which :func:`register_varlen` puts :func:`varlen_attention_forward` in transformers'
attention registry. It contains "flash" on purpose: transformers' vision towers hand an
implementation whose name says flash the packed ``cu_seqlens`` (one varlen call per block) instead
of splitting the sequence per image in Python."""


@functools.cache
def torch_varlen():
    """PyTorch's varlen attention (``torch.nn.attention.varlen.varlen_attn``, PyTorch >= 2.9), or None
    (looked up once: this runs in every block)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """Which kernel :func:`varlen_attention_forward` runs for tensors of ``device`` / ``dtype``."""
    if device.type in ("cuda", "meta") and dtype in (torch.float16, torch.bfloat16) and torch_varlen() is not None:
        return "torch varlen_attn (flash / cuDNN)"
    return "sdpa per segment"


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Bidirectional attention over packed segments, transformers' attention-function signature.

    ``query`` / ``key`` / ``value`` ``[1, H, L, d]`` hold every segment end to end; ``cu_seq_lens_q`` /
    ``cu_seq_lens_k`` ``[S + 1]`` are their boundaries (query and key segments may differ in length:
    IPCV's stabilized blocks). On CUDA in bf16 / fp16 one call of PyTorch's varlen kernel serves all
    segments and nothing waits for the device; elsewhere (CPU, float32) each segment runs through
    ``scaled_dot_product_attention``, which reads the boundaries back (the reference path).
    Returns ``([1, L, H, d], None)``. Only for vision towers: a call without boundaries, with a mask,
    causal, or with dropout is refused.
    """
    if cu_seq_lens_q is None or cu_seq_lens_k is None or max_length_q is None or max_length_k is None:
        raise ValueError(
            f"attn_implementation={VARLEN!r} serves vision towers only (packed bidirectional segments with "
            "cu_seqlens); set it on the vision tower (ipcv.vision_attention), not on a language model"
        )
    if attention_mask is not None or is_causal or dropout:
        raise ValueError(
            f"attn_implementation={VARLEN!r}: attention_mask, is_causal=True and dropout are not supported "
            f"(got mask={attention_mask is not None}, is_causal={is_causal}, dropout={dropout})"
        )
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [L, H, d]
    if varlen_kernel(q.device, q.dtype).startswith("torch"):
        cu_q, cu_k = cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32)
        return _torch_varlen(q, k, v, cu_q, cu_k, int(max_length_q), int(max_length_k), scaling).unsqueeze(0), None
    bq, bk = cu_seq_lens_q.tolist(), cu_seq_lens_k.tolist()
    outs = [
        torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[c:e].transpose(0, 1), v[c:e].transpose(0, 1), scale=scaling,
            enable_gqa=k.shape[1] != q.shape[1],
        ).transpose(0, 1)
        for a, b, c, e in zip(bq[:-1], bq[1:], bk[:-1], bk[1:])
    ]  # fmt: skip
    return torch.cat(outs).unsqueeze(0), None


@functools.cache
def _parameters(fn) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def _torch_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scaling: float | None) -> torch.Tensor:
    """PyTorch's varlen kernel across its releases: ``scale`` and ``enable_gqa`` arrived after 2.9, so
    without them the queries are pre-scaled and grouped key/value heads repeated."""
    fn = torch_varlen()
    params = _parameters(fn)
    kwargs = {}
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
    if scaling is not None:
        if "scale" in params:
            kwargs["scale"] = scaling
        else:  # the kernel's own scale is 1 / sqrt(d)
            q = q * (scaling * q.shape[-1] ** 0.5)
    return fn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)


def register_varlen() -> str:
    """Put :func:`varlen_attention_forward` in transformers' attention registry under :data:`VARLEN`
    (idempotent) and return that name."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    return VARLEN


def set_attention(target: nn.Module, implementation: str) -> str:
    """Set the attention implementation of ``target`` and every sub-module's config (transformers reads
    ``config._attn_implementation`` at call time) to ``implementation`` (``"varlen"``: registered first);
    returns the one it had. ValueError for flash attention without the flash-attn package."""
    name = implementation
    if implementation == "varlen":
        name = register_varlen()
    elif implementation.startswith("flash"):
        from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

        available = is_flash_attn_2_available() if implementation.endswith("2") else is_flash_attn_3_available()
        if not available:
            raise ValueError(
                f"implementation={implementation!r} needs the flash-attn package (and a CUDA GPU); use 'varlen' "
                "(PyTorch's own varlen kernel) or 'sdpa'"
            )
    configs = {id(m.config): m.config for m in target.modules() if hasattr(m, "config")}
    configs.setdefault(id(target.config), target.config)
    previous = target.config._attn_implementation or "eager"
    for config in configs.values():
        config._attn_implementation = name
    return "varlen" if previous == VARLEN else previous


def check_decoder(decoder: nn.Module, owner: str, language: object) -> None:
    """Refuse a decoder an LLM-side method cannot run on: an unsupported attention implementation, or
    sliding-window layers."""
    check_attention(decoder.config, owner)
    if "sliding_attention" in getattr(decoder.config, "layer_types", ()):
        raise ValueError(f"language={language!r}: sliding-window decoder layers are not supported")
