"""LLM-side pruning of visual tokens at prefill (DART, FastV, V2Drop, SparseVLM), independent of any
model family.

An adapter (``ipcv/models/*``) hands :func:`run_language` a per-call :class:`DecoderOps` that runs one
decoder layer on the current token set and computes that layer's keys / queries on demand; this
module runs the layer loop and, at each pruning layer of the method, decides which tokens stay:

    layers 0 .. l1-1        every prompt token
    at l1 (, l2, ...)       each visual span keeps settings.counts(n)[stage] of its n tokens
    layers l1 ..            kept tokens only (text tokens are never pruned)

A *visual span* is one image or one video frame (one temporal slice of the LLM grid): each gets its
own budget, in every sample of the batch. Samples of a padded batch may keep different numbers of
tokens; the token set stays rectangular ``[B, N]`` with the shorter samples padded on the left by
*filler* slots that no token attends to (``Slots.valid`` False), the same way left padding is.

The registry :data:`LANGUAGE_RUNNERS` maps each settings class to its selection function; every
per-call value lives in local variables and in the :class:`Slots` passed around.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from . import trace as _trace
from .config import DART, FastV, SparseVLM, V2Drop
from .methods.dart import dart_keep, pivot_scores
from .methods.fastv import attention_probs, last_token_scores
from .methods.ipcv import feature_difference_scores
from .methods.sparsevlm import rater_scores, recycle, recycled_clusters


@dataclass
class Slots:
    """The current token set of one prefill call: ``B`` samples x ``N`` slots, in prompt order.

    pos: ``[B, N]`` long, prompt position of each slot (fillers: 0). valid: ``[B, N]`` bool, a real
    token that is attended to (False for padding and fillers). span: ``[B, N]`` long, visual span
    of the slot (numbered per sample from 0), -1 for text, padding and fillers. sizes: per sample,
    the prompt's token count of each span (budgets are shares of these).
    """

    pos: torch.Tensor
    valid: torch.Tensor
    span: torch.Tensor
    sizes: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if self.sizes is None:
            self.sizes = [[int(r.numel()) for r in self.spans(b)] for b in range(self.valid.shape[0])]

    def text(self, b: int) -> torch.Tensor:
        """Slots of sample ``b`` holding attended text tokens, increasing."""
        return (self.valid[b] & (self.span[b] < 0)).nonzero().flatten()

    def spans(self, b: int) -> list[torch.Tensor]:
        """Slots of each visual span of sample ``b`` (in span order), each increasing."""
        span = self.span[b]
        return [(span == s).nonzero().flatten() for s in range(int(span.max()) + 1)]

    def budgets(self, b: int, settings, stage: int) -> list[tuple[torch.Tensor, int]]:
        """``(slots, tokens to keep)`` of each visual span of sample ``b`` at pruning stage ``stage``."""
        return [(rows, settings.counts(n)[stage]) for rows, n in zip(self.spans(b), self.sizes[b])]


class DecoderOps(Protocol):
    """One decoder call's way to run its layers (created per call by an adapter)."""

    num_layers: int
    scaling: float

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Decoder layer ``i`` on the current slots ``h`` ``[B, N, D]`` (its mask and positions)."""

    def keys(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s keys for its input ``h``, after rotary: ``[B, Hkv, N, d]``."""

    def queries(self, i: int, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s queries for the slots ``rows`` ``[B, Q]`` of ``h``, after rotary: ``[B, H, Q, d]``."""

    def norm(self, h: torch.Tensor) -> torch.Tensor:
        """The decoder's final norm."""

    def select(self, layer: int, index: torch.Tensor, slots: Slots) -> None:
        """From layer ``layer`` on, run on the slots ``index`` ``[B, N']`` of the current ones
        (``slots`` is the new token set): gather positions, rebuild the attention mask."""


@dataclass
class Selection:
    """What one pruning stage keeps, per sample: ``keep[b]`` visual slots kept (any order) and,
    optionally, ``replace[b] = (slots, states)``: kept slots whose state is replaced (SparseVLM's
    recycled cluster tokens)."""

    keep: list[torch.Tensor]
    replace: list[tuple[torch.Tensor, torch.Tensor] | None]


def _top(scores: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    return rows[scores[rows].float().topk(k).indices] if k < rows.numel() else rows


# --- the methods' selections (registered in LANGUAGE_RUNNERS) -------------------------------------


def select_dart(ops: DecoderOps, settings: DART, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """DART: pivots by key L1 norm of layer ``layer`` (:func:`ipcv.methods.dart.dart_keep`), the
    sample's top text tokens as steering pivots, cosine on the (normed) input states."""
    scores = pivot_scores(ops.keys(layer, h).transpose(1, 2).flatten(0, 1)).view(h.shape[:2])
    states = ops.norm(h) if settings.normalize else h
    keep = []
    for b in range(h.shape[0]):
        text = slots.text(b)
        guides = states[b, _top(scores[b], text, settings.text_pivots)] if settings.text_pivots else None
        kept = []
        for rows, k in slots.budgets(b, settings, stage):
            local = dart_keep(states[b, rows], scores[b, rows], k, settings.pivots - settings.text_pivots, guides)
            kept.append(rows[local])
        keep.append(torch.cat(kept) if kept else text[:0])
    return Selection(keep, [None] * len(keep))


def _last_valid(valid: torch.Tensor) -> torch.Tensor:
    n = valid.shape[1]
    return (torch.arange(n, device=valid.device) * valid).argmax(1)  # [B]


def select_fastv(ops: DecoderOps, settings: FastV, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """FastV: the attention the last prompt token pays each token in layer ``layer - 1``."""
    last = _last_valid(slots.valid)[:, None]
    q = ops.queries(layer - 1, h_prev, last)[:, :, 0]
    scores = last_token_scores(q, ops.keys(layer - 1, h_prev), slots.valid, ops.scaling)
    return _per_span_top(settings, stage, scores, slots)


def select_v2drop(ops: DecoderOps, settings: V2Drop, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """V2Drop: keep the tokens that layer ``layer - 1`` changed most (``||h_l - h_{l-1}||``)."""
    return _per_span_top(settings, stage, feature_difference_scores(h, h_prev), slots)


def _per_span_top(settings, stage: int, scores: torch.Tensor, slots: Slots) -> Selection:
    keep = []
    for b in range(scores.shape[0]):
        kept = [_top(scores[b], rows, k) for rows, k in slots.budgets(b, settings, stage)]
        keep.append(torch.cat(kept) if kept else slots.text(b)[:0])
    return Selection(keep, [None] * len(keep))


def select_sparsevlm(
    ops: DecoderOps, settings: SparseVLM, stage: int, layer: int, h, h_prev, slots: Slots
) -> Selection:
    """SparseVLM: rater-weighted attention of layer ``layer - 1`` (text rows only), top tokens per
    span, and the best deleted ones recycled into cluster tokens (see :class:`ipcv.SparseVLM`)."""
    B, N = slots.valid.shape
    texts = [slots.text(b) for b in range(B)]
    T = max(1, max(t.numel() for t in texts))
    rows = torch.zeros(B, T, dtype=torch.long, device=h.device)
    for b, t in enumerate(texts):
        rows[b, : t.numel()] = t
    causal = torch.arange(N, device=h.device)[None, None, :] <= rows[:, :, None]
    probs = attention_probs(
        ops.queries(layer - 1, h_prev, rows), ops.keys(layer - 1, h_prev), causal & slots.valid[:, None], ops.scaling
    )
    keep, replace = [], []
    for b in range(B):
        spans = slots.spans(b)
        if not spans:
            keep.append(texts[b][:0])
            replace.append(None)
            continue
        visual = torch.cat(spans)
        scores = torch.zeros(N, device=h.device)
        scores[visual] = rater_scores(probs[b, :, : texts[b].numel()][:, :, visual]) if texts[b].numel() else 1.0
        kept, centre_rows, merged = [], [], []
        for span_rows, k in slots.budgets(b, settings, stage):
            m, c = recycled_clusters(span_rows.numel() - k, settings.recycle)
            if c >= k:
                m = c = 0
            top = _top(scores, span_rows, k - c)
            kept.append(top)
            if c:
                left = torch.ones(N, dtype=torch.bool, device=h.device)
                left[top] = False
                deleted = span_rows[left[span_rows]]
                pool = _top(scores, deleted, m)
                centres, states = recycle(h[b, pool], c)
                kept.append(pool[centres])
                centre_rows.append(pool[centres])
                merged.append(states)
        keep.append(torch.cat(kept))
        replace.append((torch.cat(centre_rows), torch.cat(merged)) if centre_rows else None)
    return Selection(keep, replace)


# The registry of LLM-side methods: settings class -> selection at one pruning stage.
LANGUAGE_RUNNERS: dict[type, Callable[..., Selection]] = {
    DART: select_dart,
    FastV: select_fastv,
    V2Drop: select_v2drop,
    SparseVLM: select_sparsevlm,
}


def prunes_anything(settings, slots: Slots) -> bool:
    """Whether ``settings`` removes any token of these slots (False: the plain decoder is exact)."""
    return any(settings.counts(n)[-1] < n for sizes in slots.sizes for n in sizes)


def _apply(
    h: torch.Tensor, slots: Slots, sel: Selection, frozen: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, Slots]:
    """Kept slots (all text + the selected visual ones) of every sample, left-filled to one length;
    the states of removed tokens are written to ``frozen`` ``[B, L, D]`` at their prompt positions."""
    B = h.shape[0]
    keeps = []
    for b in range(B):
        keep = torch.zeros(slots.valid.shape[1], dtype=torch.bool, device=h.device)
        keep[slots.text(b)] = True
        keep[sel.keep[b]] = True
        removed = (slots.valid[b] & ~keep).nonzero().flatten()
        frozen[b, slots.pos[b, removed]] = h[b, removed]
        keeps.append(keep.nonzero().flatten())
    if any(r is not None for r in sel.replace):
        h = h.clone()
        for b, r in enumerate(sel.replace):
            if r is not None:
                h[b, r[0]] = r[1]
    n = max(k.numel() for k in keeps)
    index = torch.zeros(B, n, dtype=torch.long, device=h.device)
    valid = torch.zeros(B, n, dtype=torch.bool, device=h.device)
    for b, k in enumerate(keeps):
        index[b, n - k.numel() :] = k
        valid[b, n - k.numel() :] = True
    new = Slots(slots.pos.gather(1, index), valid, slots.span.gather(1, index).masked_fill(~valid, -1), slots.sizes)
    return h.gather(1, index[..., None].expand(-1, -1, h.shape[-1])), index, new


def run_language(ops: DecoderOps, h: torch.Tensor, slots: Slots, settings) -> torch.Tensor:
    """Run all decoder layers of one prefill call under the LLM-side method ``settings``.

    Args:
        h: ``[B, L, D]`` input of layer 0 (the prompt's embeddings); slots: the prompt's
            :class:`Slots` (``pos = arange(L)``).
    Returns: ``[B, L, D]`` output of the last layer (before the final norm), full length: kept
        tokens hold their final state, a pruned token the state it had when it was pruned.
    """
    stages = {layer: s for s, layer in enumerate(settings.stage_layers())}
    select = LANGUAGE_RUNNERS[type(settings)]
    frozen = torch.zeros_like(h)
    record = _trace.active()
    tokens, visual, kept = [], [], []
    h_prev = None
    for i in range(ops.num_layers):
        if i in stages:
            sel = select(ops, settings, stages[i], i, h, h_prev, slots)
            h, index, slots = _apply(h, slots, sel, frozen)
            ops.select(i, index, slots)
            kept.append([[int(r.numel()) for r in slots.spans(b)] for b in range(h.shape[0])])
        tokens.append(slots.valid.sum(1).tolist())
        visual.append((slots.span >= 0).sum(1).tolist())
        h_prev = h
        h = ops.layer(i, h)
    B = h.shape[0]
    rows = torch.arange(B, device=h.device)[:, None].expand_as(slots.pos)
    frozen[rows[slots.valid], slots.pos[slots.valid]] = h[slots.valid]
    if record is not None:
        record.decoder.append(
            _trace.DecoderRecord(type(settings).__name__, tokens, visual, tokens, kept, sorted(stages))
        )
    return frozen
