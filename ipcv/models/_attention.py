"""Segment-wise attention with different query and key/value sets, through transformers' own
attention functions (eager, sdpa, flash_attention_*), shared by the adapters."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import is_flash_attention_requested

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
    """``[S + 1]`` int32 cumulative lengths (cu_seqlens) of segments."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    out[1:] = torch.tensor(list(lengths), dtype=torch.int32, device=device).cumsum(0)
    return out


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
