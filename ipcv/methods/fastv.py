"""Attention-weight scores for LLM-side pruning (FastV; SparseVLM's raters), as pure functions.

The decoder's own attention backend (sdpa, flash) returns no weights; these functions compute the
softmax weights of a few query rows explicitly from that layer's queries and keys, so only the
rows a method needs are ever materialised. Nothing here knows transformers.
"""

from __future__ import annotations

import torch


def attention_probs(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor, scaling: float) -> torch.Tensor:
    """Softmax attention weights of some query rows.

    Args:
        q: ``[B, H, Q, d]`` queries (after rotary); k: ``[B, Hkv, N, d]`` keys (after rotary),
            ``H`` a multiple of ``Hkv`` (grouped-query attention).
        allowed: ``[B, Q, N]`` bool, which keys each query may attend to (causal and padding).
        scaling: logit scale (``d ** -0.5``).
    Returns: ``[B, H, Q, N]`` float32; a row with no allowed key is all zeros.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(groups, dim=1)
    logits = (q.float() @ k.transpose(-1, -2)) * scaling
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    probs = logits.softmax(-1)
    return probs.nan_to_num(0.0)


def last_token_scores(q_last: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor, scaling: float) -> torch.Tensor:
    """FastV's score: the attention each token receives from the last token, averaged over heads.

    Args: q_last ``[B, H, d]``; k ``[B, Hkv, N, d]``; key_valid ``[B, N]`` bool (padding excluded).
    Returns: ``[B, N]`` float32.
    """
    return attention_probs(q_last[:, :, None], k, key_valid[:, None], scaling).mean(1)[:, 0]
