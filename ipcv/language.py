"""LLM-side pruning of visual tokens at prefill (DART, FastV, V2Drop, SparseVLM inside the decoder; VisionZip,
DivPrune, CDPruner, RandomKeep and Pool at its input, layer 0), independent of any model family.

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

Each method is a selection function (``select_<method>``, one pruning stage) and an overhead count
(``<method>_overhead``, its own work at one stage, for :func:`ipcv.costs`); :mod:`ipcv.catalog` pairs them
with the settings classes. Every per-call value lives in local variables and in the :class:`Slots` passed
around.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from . import trace as _trace
from .budgets import dart_per_pivot, progressive_counts
from .methods.cdpruner import cdpruner_keep
from .methods.dart import dart_keep, pivot_scores
from .methods.divprune import divprune_keep
from .methods.fastv import attention_probs, last_token_scores
from .methods.ipcv import feature_difference_scores
from .methods.pool import pool_cells, pool_states
from .methods.random_keep import random_keep
from .methods.sparsevlm import rater_scores, recycle, recycled_clusters
from .methods.visionzip import contextual_states, split_counts, visionzip_merge
from .settings import DART, CDPruner, DivPrune, FastV, Pool, RandomKeep, SparseVLM, V2Drop, VisionZip
from .shapes import DecoderShape


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
    blocks: list[list[int]] | None = None
    raters: list[torch.Tensor] | None = None  # per sample, prompt positions of SparseVLM's raters

    def __post_init__(self) -> None:
        if self.sizes is None:
            self.sizes = [[int(r.numel()) for r in self.spans(b)] for b in range(self.valid.shape[0])]
        if self.blocks is None:  # at the prompt: spans with no token between them are one visual block
            self.blocks = []
            for b in range(self.valid.shape[0]):
                ids, prev_end = [], -2
                for rows in self.spans(b):
                    first = int(self.pos[b, rows[0]])
                    if not ids:
                        ids.append(0)
                    else:
                        ids.append(ids[-1] if first == prev_end + 1 else ids[-1] + 1)
                    prev_end = int(self.pos[b, rows[-1]])
                self.blocks.append(ids)

    def text(self, b: int) -> torch.Tensor:
        """Slots of sample ``b`` holding attended text tokens, increasing."""
        return (self.valid[b] & (self.span[b] < 0)).nonzero().flatten()

    def spans(self, b: int) -> list[torch.Tensor]:
        """Slots of each visual span of sample ``b`` (in span order), each increasing."""
        span = self.span[b]
        return [(span == s).nonzero().flatten() for s in range(int(span.max()) + 1)]

    def units(self, b: int, mode: str) -> list[tuple[torch.Tensor, int]]:
        """``(slots, prompt size)`` of each budget unit of sample ``b``: every span (``mode="each"``),
        all visual slots as one unit (``"all"``), or only the first visual block, a video's frames
        together (``"first"``; the other spans are not pruned)."""
        spans = self.spans(b)
        if mode == "each" or not spans:
            return list(zip(spans, self.sizes[b]))
        if mode == "all":
            return [(torch.cat(spans), sum(self.sizes[b]))]
        first = [i for i, k in enumerate(self.blocks[b]) if k == self.blocks[b][0]]
        return [(torch.cat([spans[i] for i in first]), sum(self.sizes[b][i] for i in first))]

    def budgets(self, b: int, settings, stage: int, num_layers: int | None = None) -> list[tuple[torch.Tensor, int]]:
        """``(slots, tokens to keep)`` of each budget unit (:meth:`units`, ``settings.spans``) of sample
        ``b`` at pruning stage ``stage``. ``budget="progressive"`` counts from the unit's current
        size (which includes recycled tokens), every other budget from its prompt size."""
        out = []
        for rows, n in self.units(b, settings.spans):
            if getattr(settings, "budget", None) == "progressive":
                k = progressive_counts(rows.numel(), settings.ratios()[stage : stage + 1], settings.rounding)[0]
            else:
                k = settings.counts(n, num_layers)[stage]
            out.append((rows, min(k, rows.numel())))
        return out

    def spared(self, b: int, mode: str) -> torch.Tensor:
        """Visual slots of sample ``b`` outside every budget unit (``mode="first"``: the spans after the
        first visual block), which are kept whole."""
        spans = self.spans(b)
        if mode != "first" or not spans:
            return self.text(b)[:0]
        block = self.blocks[b]
        rest = [rows for rows, k in zip(spans, block) if k != block[0]]
        return torch.cat(rest) if rest else self.text(b)[:0]

    def visual_after_first(self, b: int) -> int:
        """Prompt position just after the first visual block of sample ``b`` (0 if it has none)."""
        spans = self.spans(b)
        if not spans:
            return 0
        first = [i for i, k in enumerate(self.blocks[b]) if k == self.blocks[b][0]]
        return int(self.pos[b, spans[first[-1]][-1]]) + 1


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

    def grid(self, b: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(row, column)`` ``[n]`` long of the prompt slots ``rows`` of sample ``b`` on their image's
        grid (from 3D mRoPE positions, before any pruning), or None when the positions are 1D."""

    def vision_scores(self, b: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(score [n], metric [n, d])`` the vision tower computed for the visual prompt slots ``rows`` of
        sample ``b`` (VisionZip's attention score and merging metric), or None when the tower gave none."""


@dataclass
class Selection:
    """What one pruning stage keeps, per sample: ``keep[b]`` visual slots kept (any order) and,
    optionally, ``replace[b] = (slots, states)``: kept slots whose state is replaced (SparseVLM's
    recycled cluster tokens)."""

    keep: list[torch.Tensor]
    replace: list[tuple[torch.Tensor, torch.Tensor] | None]


def _top(scores: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    return rows[scores[rows].float().topk(k).indices] if k < rows.numel() else rows


# --- the methods' selections at one pruning stage (paired with their settings in ipcv.catalog) ------------


def _guide_text(slots: Slots, b: int, text_from: str) -> torch.Tensor:
    """Text slots of sample ``b`` that may be text pivots / raters: all of them (``"all"``) or those
    after the first visual block (``"after_image"``, the official code's question tokens)."""
    text = slots.text(b)
    if text_from == "all":
        return text
    return text[slots.pos[b, text] >= slots.visual_after_first(b)]


def select_dart(ops: DecoderOps, settings: DART, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """DART: pivots by key L1 norm (layer ``layer - 1``'s keys of its input, or layer ``layer``'s),
    the sample's top text tokens as steering pivots, cosine on the (normed) input states of
    ``layer`` (:func:`ipcv.methods.dart.dart_keep`)."""
    if settings.key_layer == "previous":
        keys = ops.keys(layer - 1, h_prev)
    else:
        keys = ops.keys(layer, h)
    scores = pivot_scores(keys.transpose(1, 2).flatten(0, 1)).view(h.shape[:2])
    states = ops.norm(h) if settings.normalize else h
    official = settings.pivot_order == "official"
    keep = []
    for b in range(h.shape[0]):
        text = _guide_text(slots, b, settings.text_from)
        guide_rows = _top(scores[b], text, settings.text_pivots) if settings.text_pivots else text[:0]
        guides = states[b, guide_rows] if settings.text_pivots else None
        kept = []
        for rows, n in slots.units(b, settings.spans):
            k = min(settings.counts(n)[0], rows.numel())
            per = None
            if settings.budget == "per_pivot" and k < rows.numel():
                per = dart_per_pivot(n, settings.keep_ratio, settings.pivots)
            local = dart_keep(
                states[b, rows], scores[b, rows], k, settings.pivots - settings.text_pivots, guides,
                positions=slots.pos[b, rows] if official else None,
                guide_positions=slots.pos[b, guide_rows] if official else None, per_pivot=per,
            )  # fmt: skip
            kept.append(rows[local])
        keep.append(torch.cat(kept) if kept else slots.text(b)[:0])
    return Selection(keep, [None] * len(keep))


def _last_valid(valid: torch.Tensor) -> torch.Tensor:
    n = valid.shape[1]
    return (torch.arange(n, device=valid.device) * valid).argmax(1)  # [B]


def select_fastv(ops: DecoderOps, settings: FastV, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """FastV: the attention the last prompt token pays each token in layer ``layer - 1``."""
    last = _last_valid(slots.valid)[:, None]
    q = ops.queries(layer - 1, h_prev, last)[:, :, 0]
    scores = last_token_scores(q, ops.keys(layer - 1, h_prev), slots.valid, ops.scaling)
    return _per_span_top(settings, stage, scores, slots, ops.num_layers)


def select_v2drop(ops: DecoderOps, settings: V2Drop, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """V2Drop: keep the tokens that layer ``layer - 1`` changed most: largest ``||h_l - h_{l-1}||``
    (``score="l2"``) or lowest cosine similarity of ``h_l`` and ``h_{l-1}`` (``"cosine"``)."""
    if settings.score == "l2":
        scores = feature_difference_scores(h, h_prev)
    else:
        scores = -torch.nn.functional.cosine_similarity(h.float(), h_prev.float(), dim=-1)
    return _per_span_top(settings, stage, scores, slots, ops.num_layers)


def _per_span_top(settings, stage: int, scores: torch.Tensor, slots: Slots, num_layers: int | None = None) -> Selection:
    keep = []
    for b in range(scores.shape[0]):
        kept = [_top(scores[b], rows, k) for rows, k in slots.budgets(b, settings, stage, num_layers)]
        keep.append(torch.cat(kept) if kept else slots.text(b)[:0])
    return Selection(keep, [None] * len(keep))


def select_sparsevlm(
    ops: DecoderOps, settings: SparseVLM, stage: int, layer: int, h, h_prev, slots: Slots
) -> Selection:
    """SparseVLM: rater-weighted attention of layer ``layer - 1`` (text rows only), top tokens per
    span, and the best deleted ones recycled into cluster tokens (see :class:`ipcv.SparseVLM`)."""
    B, N = slots.valid.shape
    texts = [_guide_text(slots, b, "after_image") for b in range(B)]
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
        if texts[b].numel():
            text_probs = probs[b, :, : texts[b].numel()][:, :, visual]  # [H, T, V]
            if settings.raters == "attention":
                scores[visual] = rater_scores(text_probs)
            elif settings.raters == "all":
                scores[visual] = text_probs.mean((0, 1))
            else:  # the raters chosen from the prompt's embeddings
                is_rater = torch.isin(slots.pos[b, texts[b]], slots.raters[b])
                scores[visual] = text_probs.mean(0)[is_rater].mean(0)
        else:
            scores[visual] = 1.0
        kept, centre_rows, merged = [], [], []
        for span_rows, k in slots.budgets(b, settings, stage, ops.num_layers):
            top_k = k
            m, c = recycled_clusters(span_rows.numel() - k, settings.recycle, settings.recycle_rule)
            if settings.recycle_in_budget:
                if c >= k:
                    m = c = 0
                top_k = k - c
            top = _top(scores, span_rows, top_k)
            kept.append(top)
            if c:
                left = torch.ones(N, dtype=torch.bool, device=h.device)
                left[top] = False
                deleted = span_rows[left[span_rows]]
                pool = _top(scores, deleted, m)
                centres, states = recycle(h[b, pool], c, settings.cluster_neighbors)
                kept.append(pool[centres])
                centre_rows.append(pool[centres])
                merged.append(states)
        keep.append(torch.cat(kept))
        replace.append((torch.cat(centre_rows), torch.cat(merged)) if centre_rows else None)
    return Selection(keep, replace)


def embedding_raters(h0: torch.Tensor, slots: Slots, b: int) -> torch.Tensor:
    """SparseVLM's raters of sample ``b`` (prompt positions): the text tokens after the first visual
    block whose relevance ``softmax_text(V @ T^T)`` averaged over that block's visual tokens ``V`` is
    above the mean, from the prompt's input embeddings ``h0`` ``[N, D]``. If none is above the mean
    (all equal), every such text token rates."""
    text = _guide_text(slots, b, "after_image")
    units = slots.units(b, "first")
    if not text.numel() or not units:
        return slots.pos[b, text]
    visual = units[0][0]
    relevance = (h0[visual].float() @ h0[text].float().T).softmax(-1).mean(0)  # [T]
    chosen = relevance > relevance.mean()
    return slots.pos[b, text[chosen] if bool(chosen.any()) else text]


# --- the pre-LLM methods (one stage at layer 0's input: h is the prompt's input embeddings) ---------------


def select_random(ops: DecoderOps, settings: RandomKeep, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """RandomKeep: ``keep_count(n)`` of each budget unit, seeded per unit (:func:`random_keep`)."""
    keep = []
    for b in range(h.shape[0]):
        kept = [
            rows[random_keep(rows.numel(), k, settings.seed, u).to(rows.device)]
            for u, (rows, k) in enumerate(slots.budgets(b, settings, stage))
        ]
        keep.append(torch.cat(kept) if kept else slots.text(b)[:0])
    return Selection(keep, [None] * len(keep))


def select_divprune(ops: DecoderOps, settings: DivPrune, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """DivPrune: the greedy max-min diverse subset of each unit's input embeddings (:func:`divprune_keep`)."""
    keep = []
    for b in range(h.shape[0]):
        kept = [rows[divprune_keep(h[b, rows], k)] for rows, k in slots.budgets(b, settings, stage)]
        keep.append(torch.cat(kept) if kept else slots.text(b)[:0])
    return Selection(keep, [None] * len(keep))


def select_cdpruner(ops: DecoderOps, settings: CDPruner, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """CDPruner: the DPP's greedy MAP over each unit's input embeddings, conditioned on the embeddings of
    the sample's instruction tokens (``settings.text_from``) (:func:`cdpruner_keep`)."""
    keep = []
    for b in range(h.shape[0]):
        text = h[b, _guide_text(slots, b, settings.text_from)]
        kept = [
            rows[cdpruner_keep(h[b, rows], h[b, rows], text, k, settings.theta)]
            for rows, k in slots.budgets(b, settings, stage)
        ]
        keep.append(torch.cat(kept) if kept else slots.text(b)[:0])
    return Selection(keep, [None] * len(keep))


def span_grid(ops: DecoderOps, b: int, rows: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """``(h, w, order)`` of one visual span: its grid and ``order`` ``[h w]``, the span's slots in row-major
    grid order (3D mRoPE positions; 1D positions: a square span in prompt order). ValueError if the span's
    tokens do not fill a grid."""
    n = rows.numel()
    found = ops.grid(b, rows)
    if found is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"Pool: a visual span of {n} tokens with 1D positions is not a square grid, so its 2D layout is "
                "unknown; Pool needs the 3D mRoPE positions (Qwen2-VL, Qwen2.5-VL) or square images / tiles"
            )
        return side, side, rows
    r, c = found
    r, c = r - r.min(), c - c.min()
    hh, ww = int(r.max()) + 1, int(c.max()) + 1
    cell = r * ww + c
    if hh * ww != n or torch.unique(cell).numel() != n:
        raise ValueError(f"Pool: a visual span of {n} tokens does not fill its {hh} x {ww} grid of mRoPE positions")
    return hh, ww, rows[cell.argsort()]


def select_pool(ops: DecoderOps, settings: Pool, stage: int, layer: int, h, h_prev, slots: Slots) -> Selection:
    """Pool: each span's grid averaged over the pooled cells (:func:`pool_cells`); a pooled token takes
    the slot (so the position) of its cell's top-left token."""
    keep, replace = [], []
    for b in range(h.shape[0]):
        kept, states = [], []
        for rows, _ in slots.units(b, settings.spans):
            hh, ww, order = span_grid(ops, b, rows)
            cells = pool_cells(hh, ww, settings.keep_ratio)
            kept.append(order[torch.stack([c[0] for c in cells]).to(order.device)])
            states.append(pool_states(h[b, order], cells))
        keep.append(torch.cat(kept) if kept else slots.text(b)[:0])
        replace.append((keep[-1], torch.cat(states).to(h.dtype)) if kept else None)
    return Selection(keep, replace)


def select_visionzip(
    ops: DecoderOps, settings: VisionZip, stage: int, layer: int, h, h_prev, slots: Slots
) -> Selection:
    """VisionZip: per unit, the dominant tokens by the tower's attention score and the contextual tokens
    (target + mean of the tokens merged into it, at the target's slot) (:func:`visionzip_merge`)."""
    keep, replace = [], []
    for b in range(h.shape[0]):
        kept, centre, merged = [], [], []
        for rows, k in slots.budgets(b, settings, stage):
            found = ops.vision_scores(b, rows)
            if found is None:
                raise ValueError(
                    "VisionZip: the vision tower gave no attention scores for these visual tokens; VisionZip needs "
                    "the image / video features computed by this compressed model's own tower in the same call "
                    "(pass pixel values, or features from this model's get_image_features / get_video_features)"
                )
            score, metric = found
            dominant, targets, groups = visionzip_merge(score, metric, *split_counts(k, settings.contextual_share))
            kept += [rows[dominant], rows[targets]]
            if targets.numel():
                centre.append(rows[targets])
                merged.append(contextual_states(h[b, rows], targets, groups))
        keep.append(torch.cat(kept) if kept else slots.text(b)[:0])
        replace.append((torch.cat(centre), torch.cat(merged).to(h.dtype)) if centre else None)
    return Selection(keep, replace)


# --- each method's own work at one pruning stage, for ipcv.costs (norms, softmax and top-k not counted) -------
# Arguments: the decoder's shape, n tokens and vis visual tokens entering the layer before the pruning layer
# (one sample), vis_after visual tokens left after the stage.


def dart_overhead(settings: DART, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """The keys DART recomputes (``2 n D kv``) and the cosine similarities of its ``pivots`` pivots to the
    visual tokens (``2 D pivots vis``)."""
    return 2 * n * shape.dim * shape.kv_heads * shape.head_dim + 2 * shape.dim * settings.pivots * vis


def fastv_overhead(settings: FastV, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """The keys FastV recomputes, the last token's query and its attention row over all heads."""
    D = shape.dim
    return 2 * n * D * shape.kv_heads * shape.head_dim + 2 * D * D + 2 * n * shape.heads * shape.head_dim


def v2drop_overhead(settings: V2Drop, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """The change of every visual token across the layer (difference and norm, ``3 vis D``)."""
    return 3 * vis * shape.dim


def sparsevlm_overhead(settings: SparseVLM, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """The keys it recomputes, the raters' queries and attention rows, and the DPC-kNN distances among the
    deleted tokens."""
    D, text, deleted = shape.dim, n - vis, vis - vis_after
    return 2 * n * D * shape.kv_heads * shape.head_dim + 2 * text * D * D + 2 * text * n * D + 2 * deleted**2 * D


def random_overhead(settings: RandomKeep, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """Drawing the random permutation: one random number per visual token (``vis``); no multiply-adds."""
    return vis


def pool_overhead(settings: Pool, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """Averaging every visual token into its cell: one add per token and dimension (``vis D``)."""
    return vis * shape.dim


def divprune_overhead(settings: DivPrune, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """The cosine distance matrix of the visual tokens (``2 vis^2 D``, counted as if all were one span: an
    upper bound for several) and the greedy's min-updates (``vis`` per kept token)."""
    return 2 * vis * vis * shape.dim + vis * vis_after


def cdpruner_overhead(settings: CDPruner, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """The similarity kernel (``2 vis^2 D``, as one span), the relevance to the ``n - vis`` text tokens
    (``2 vis (n - vis) D``) and the greedy MAP's Cholesky rows (step ``i`` costs ``2 i vis``: ``vis k^2``)."""
    text = n - vis
    return 2 * vis * vis * shape.dim + 2 * vis * text * shape.dim + vis * vis_after * vis_after


def visionzip_overhead(settings: VisionZip, shape: DecoderShape, n: int, vis: int, vis_after: int) -> int:
    """The contextual merge at the LLM's input: the cosine similarity of the non-target remaining tokens to
    the targets (``2 rest targets d`` with the tower's head dim taken as the LLM's, at most ``2 vis^2 D /
    heads``) and the averaging (``vis D``). The tower's own extra attention is counted on the vision side
    (:func:`visionzip_tower_overhead`)."""
    _, contextual = split_counts(vis_after, settings.contextual_share)
    return 2 * vis * contextual * shape.head_dim + vis * shape.dim


def prunes_anything(settings, slots: Slots) -> bool:
    """Whether ``settings`` removes any token of these slots (False: the plain decoder is exact)."""
    budget = getattr(settings, "budget", None)
    for b in range(slots.valid.shape[0]):
        for _, n in slots.units(b, settings.spans):
            if budget == "average":
                if settings.keep_ratio < 1.0:
                    return True
            elif budget == "progressive":
                if progressive_counts(n, settings.ratios(), settings.rounding)[-1] < n:
                    return True
            elif settings.counts(n)[-1] < n:
                return True
    return False


def _apply(
    h: torch.Tensor, slots: Slots, sel: Selection, frozen: torch.Tensor, spans: str = "each"
) -> tuple[torch.Tensor, torch.Tensor, Slots]:
    """Kept slots (all text + the selected visual ones) of every sample, left-filled to one length;
    the states of removed tokens are written to ``frozen`` ``[B, L, D]`` at their prompt positions."""
    B = h.shape[0]
    keeps = []
    for b in range(B):
        keep = torch.zeros(slots.valid.shape[1], dtype=torch.bool, device=h.device)
        keep[slots.text(b)] = True
        keep[sel.keep[b]] = True
        keep[slots.spared(b, spans)] = True
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
    new = Slots(
        slots.pos.gather(1, index),
        valid,
        slots.span.gather(1, index).masked_fill(~valid, -1),
        slots.sizes,
        slots.blocks,
        slots.raters,
    )
    return h.gather(1, index[..., None].expand(-1, -1, h.shape[-1])), index, new


def run_language(
    ops: DecoderOps, h: torch.Tensor, slots: Slots, settings, select: Callable[..., Selection]
) -> torch.Tensor:
    """Run all decoder layers of one prefill call under the LLM-side method ``settings``, whose selection at
    each pruning stage is ``select`` (``select_<method>``; :func:`ipcv.catalog.run_language` picks it).

    Args:
        h: ``[B, L, D]`` input of layer 0 (the prompt's embeddings); slots: the prompt's
            :class:`Slots` (``pos = arange(L)``).
    Returns: ``[B, L, D]`` output of the last layer (before the final norm), full length: kept
        tokens hold their final state, a pruned token the state it had when it was pruned.
    """
    stages = {layer: s for s, layer in enumerate(settings.stage_layers())}
    if isinstance(settings, SparseVLM) and settings.raters == "embeddings":
        slots.raters = [embedding_raters(h[b], slots, b) for b in range(h.shape[0])]
    frozen = torch.zeros_like(h)
    record = _trace.active()
    prompt = (slots.valid.sum(1).tolist(), (slots.span >= 0).sum(1).tolist())
    tokens, visual, kept = [], [], []
    h_prev = None
    for i in range(ops.num_layers):
        if i in stages:
            sel = select(ops, settings, stages[i], i, h, h_prev, slots)
            h, index, slots = _apply(h, slots, sel, frozen, settings.spans)
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
            _trace.DecoderRecord(
                type(settings).__name__, tokens, visual, tokens, kept, sorted(stages), settings, prompt
            )
        )
    return frozen
