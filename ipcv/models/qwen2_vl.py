"""Adapter for Qwen2-VL: its vision tower (``Qwen2VisionTransformerPretrainedModel``) and its
language decoder (``Qwen2VLTextModel``, with ``Qwen2VLModel`` above it).

The only module that knows this model's internals. Vision: packed patches ``[L, 1280]``, attention
segments from ``cu_seqlens`` (one per image and per video frame), 2D rotary tables ``(cos, sin)``
indexed by token, the fused ``qkv`` projection and the 2x2 ``merger`` that follows the last block.
Language: the shared decoder code (:mod:`ipcv.models._decoder`) with the mRoPE layout of
:mod:`ipcv.models._mrope` (shared with Qwen2.5-VL); this file only says where the decoder is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen
from transformers.utils.generic import is_flash_attention_requested
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

from ..catalog import run_vision
from ..methods.visionzip import column_attention
from ..shapes import EncoderShape
from ..vision import Plan
from ..vision.sources import collect_sources
from . import _mrope
from ._attention import cumulative, nonempty_segments, segment_attention
from ._decoder import DecoderFamily, decoder_shape, language_adapter
from .base import Adapter, Harness, RealTower, pop_output_flags
from .configs import QWEN2_VL_7B_VISION

__all__ = ["ADAPTER", "LANGUAGE", "decoder_shape", "reduced_units", "tower_forward", "vision_segments"]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The tower's 2D rotary embedding (as ``apply_rotary_pos_emb_vision``) for one tensor ``[N, H, d]``."""
    dtype = x.dtype
    x = x.float()
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    return ((x * cos) + (qwen.rotate_half(x) * sin)).to(dtype)


@dataclass(frozen=True)
class Windows:
    """Qwen2.5-VL's window attention for one call: ``cu`` ``[W + 1]`` window boundaries in the
    (window-ordered) packed sequence; blocks whose index is in ``full_blocks`` attend per image."""

    cu: torch.Tensor
    max_len: int | None
    full_blocks: frozenset[int]

    def window_of(self, rows: torch.Tensor) -> torch.Tensor:
        """``[N]`` window id of each packed position ``rows``."""
        return torch.bucketize(rows, self.cu[1:].to(rows.device, rows.dtype), right=True)

    def counts(self, rows: torch.Tensor) -> list[int]:
        """Tokens per window among the packed positions ``rows`` (every window, empty ones as 0)."""
        return torch.bincount(self.window_of(rows), minlength=len(self.cu) - 1).tolist()


@dataclass(frozen=True)
class _Segments:
    """Attention segments of one block for the stabilized layout (see ``nonempty_segments``)."""

    keep: torch.Tensor
    keep_counts: list[int]
    seg_lengths: list[int]


class _TowerCall:
    """How one call of the tower runs its blocks (see :class:`ipcv.vision.BlockOps`).

    Attention segments: one per image / frame (``cu_seqlens``), except in Qwen2.5-VL's windowed
    blocks (``windows``), where they are the windows, which may hold few or no kept tokens.
    """

    def __init__(self, tower, cu_seqlens, max_seqlen, position_embeddings, kwargs, eager, windows=None):
        self.tower = tower
        self.blocks = tower.blocks
        self.cu_seqlens = cu_seqlens
        self.max_seqlen = max_seqlen
        self.pe = position_embeddings
        self.kwargs = kwargs
        self.eager = eager
        self.windows: Windows | None = windows
        self._kept_inputs: dict[bool, tuple] = {}
        self.capture_layer: int | None = None  # the block whose full-length input is kept (VisionZip)
        self.captured: torch.Tensor | None = None

    def _windowed(self, layer: int) -> bool:
        return self.windows is not None and layer not in self.windows.full_blocks

    def full(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        if layer == self.capture_layer:  # VisionZip's scoring block: keep its (full-length) input
            self.captured = h
        cu, max_len = (
            (self.windows.cu, self.windows.max_len) if self._windowed(layer) else (self.cu_seqlens, self.max_seqlen)
        )
        return self.blocks[layer](h, cu_seqlens=cu, max_seqlen=max_len, position_embeddings=self.pe, **self.kwargs)

    def _kept(self, plan: Plan, windowed: bool = False):
        """cu_seqlens, max_seqlen and rotary tables of the kept tokens (per image, or per window)."""
        if windowed not in self._kept_inputs:
            counts = self.windows.counts(plan.keep) if windowed else plan.keep_counts
            counts = [c for c in counts if c]
            cu = cumulative(counts, plan.keep.device).to(self.cu_seqlens.dtype)
            max_len = max(counts) if is_flash_attention_requested(self.tower.config) else None
            cos, sin = self.pe
            self._kept_inputs[windowed] = (cu, max_len, (cos[plan.keep], sin[plan.keep]))
        return self._kept_inputs[windowed]

    def kept(self, layer: int, h_keep: torch.Tensor, plan: Plan) -> torch.Tensor:
        cu, max_len, pe = self._kept(plan, self._windowed(layer))
        return self.blocks[layer](h_keep, cu_seqlens=cu, max_seqlen=max_len, position_embeddings=pe, **self.kwargs)

    def stabilized(self, layer: int, h_keep: torch.Tensor, h_full: torch.Tensor, plan: Plan) -> torch.Tensor:
        blk = self.blocks[layer]
        attn = blk.attn
        D, H = attn.dim, attn.num_heads
        segments = plan
        if self._windowed(layer):  # windows: kept queries per window, every token of the window as keys
            lengths = (self.windows.cu[1:] - self.windows.cu[:-1]).tolist()
            segments = _Segments(plan.keep, self.windows.counts(plan.keep), lengths)
        q_lengths, kv_lengths, kv_rows = nonempty_segments(segments)
        cos, sin = self.pe
        _, _, (cos_q, sin_q) = self._kept(plan)
        if kv_rows is not None:
            h_full, cos, sin = h_full[kv_rows], cos[kv_rows], sin[kv_rows]
        W, b = attn.qkv.weight, attn.qkv.bias
        # queries for kept rows only (eq. 9); keys/values for every row of the full sequence (eq. 8)
        q = F.linear(blk.norm1(h_keep), W[:D], None if b is None else b[:D]).view(-1, H, D // H)
        k, v = F.linear(blk.norm1(h_full), W[D:], None if b is None else b[D:]).view(-1, 2, H, D // H).unbind(1)
        q, k = _rope(q, cos_q, sin_q), _rope(k, cos, sin)
        out = segment_attention(attn, self.tower.config, q, k, v, q_lengths, kv_lengths, attn.scaling, self.eager)
        h = h_keep + attn.proj(out.reshape(-1, D))
        return h + blk.mlp(blk.norm2(h))

    # --- token merging (ToMe / ToFu) and DART-ViT: a block split at the residual after attention ---

    def keys(self, layer: int, h: torch.Tensor, rotated: bool = False) -> torch.Tensor:
        """Keys of block ``layer``'s attention for the full sequence ``h`` ``[L, D]``, before the 2D rotary
        embedding (``rotated``: after it, as the block's attention uses them): ``[L, H, d]``."""
        attn = self.blocks[layer].attn
        D, H = attn.dim, attn.num_heads
        W, b = attn.qkv.weight[D : 2 * D], None if attn.qkv.bias is None else attn.qkv.bias[D : 2 * D]
        k = F.linear(self.blocks[layer].norm1(h), W, b).view(-1, H, D // H)
        return _rope(k, *self.pe) if rotated else k

    def attention_part(
        self,
        layer: int,
        h: torch.Tensor,
        rows: torch.Tensor,
        seg_lengths: list[int],
        log_size: torch.Tensor | None = None,
        rotated: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h + attn(norm1(h))`` of block ``layer`` for the (possibly merged) tokens ``h`` ``[M, D]``.

        rows: ``[M]`` packed position of each token in the full sequence; its rotary angles are that
            position's (a merged token keeps the position of the token it was merged into).
        seg_lengths: tokens per segment (attention never crosses segments; in a windowed block it
            never crosses windows either).
        log_size: ``[M]`` additive logit bias per key (proportional attention), or None.
        rotated: take the metric from the keys after the 2D rotary embedding (as the IPCV authors'
            ToMe / ToFu ports do) instead of before it.
        Returns: the residual stream after attention ``[M, D]`` and the keys averaged over heads,
            before rotary (``rotated``: after it), ``[M, d]`` (ToMe's similarity metric).
        """
        blk = self.blocks[layer]
        attn = blk.attn
        D, H = attn.dim, attn.num_heads
        q, k, v = attn.qkv(blk.norm1(h)).view(-1, 3, H, D // H).unbind(1)
        metric = k.mean(1)
        cos, sin = self.pe
        cos, sin = cos[rows], sin[rows]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if rotated:
            metric = k.mean(1)
        if self._windowed(layer):  # rows increase, so the tokens of one window are contiguous
            seg_lengths = [c for c in self.windows.counts(rows) if c]
        out = segment_attention(
            attn, self.tower.config, q, k, v, seg_lengths, seg_lengths, attn.scaling, self.eager, key_bias=log_size
        )
        return h + attn.proj(out.reshape(-1, D)), metric

    def mlp_part(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """``h + mlp(norm2(h))`` of block ``layer``, ``[M, D]``."""
        blk = self.blocks[layer]
        return h + blk.mlp(blk.norm2(h))


SCORE_KEY, METRIC_KEY = "ipcv_visionzip_score", "ipcv_visionzip_metric"
"""Keys of VisionZip's ``[U]`` attention score and ``[U, d]`` merging metric per merge unit (LLM token), in
image order, that a tower under a language-side VisionZip adds to its ``BaseModelOutputWithPooling``."""


def run_blocks(call: _TowerCall, tower, h: torch.Tensor, seg_lengths: list[int]) -> torch.Tensor:
    """All blocks of one tower call: under the vision-side method ``tower._ipcv_vision``, or every block on
    the full sequence when there is none (the tower is patched only for a language-side VisionZip's
    scores). ``call.capture_layer`` is set to VisionZip's scoring block when one is asked for."""
    settings = getattr(tower, "_ipcv_vision", None)
    layer = getattr(tower, "_ipcv_scores", None)
    if layer is not None:
        call.capture_layer = layer % len(tower.blocks)
    if settings is None:
        for i in range(len(tower.blocks)):
            h = call.full(i, h)
        return h
    return run_vision(call, len(tower.blocks), h, seg_lengths, settings)


def visionzip_scores(call: _TowerCall, tower, seg_lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's score and metric per merge unit of one tower call, in the tower's packed order.

    The scoring block's queries and keys are recomputed from its full-length input (``call.captured``);
    per image / frame, each patch's score is the attention it receives averaged over the queries and
    summed over heads (:func:`ipcv.methods.visionzip.column_attention`), and the metric is its keys
    before the rotary, averaged over heads. A merge unit sums its patches' scores and averages their
    metrics. ValueError if the block did not see every patch (a vision-side method pruned before it) or
    attends within windows."""
    layer = call.capture_layer
    if call.captured is None or call.captured.shape[0] != sum(seg_lengths):
        raise ValueError(
            f"VisionZip(layer={layer}): the vision-side method "
            f"{type(getattr(tower, '_ipcv_vision', None)).__name__} does not run "
            f"tower block {layer} on every patch, so its attention over the image is not there; choose a "
            "VisionZip layer before the vision-side method's first reduced block (e.g. its prune_layer - 1)"
        )
    if call._windowed(layer):
        raise ValueError(
            f"VisionZip(layer={layer}): tower block {layer} attends within windows; use a full-attention block "
            f"({sorted(call.windows.full_blocks)})"
        )
    blk = tower.blocks[layer]
    attn = blk.attn
    D, H = attn.dim, attn.num_heads
    q, k, _ = attn.qkv(blk.norm1(call.captured)).view(-1, 3, H, D // H).unbind(1)
    metric = k.float().mean(1)
    cos, sin = call.pe
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    scores, start = [], 0
    for n in seg_lengths:
        scores.append(column_attention(q[start : start + n], k[start : start + n], attn.scaling))
        start += n
    unit = tower.spatial_merge_size**2
    score = torch.cat(scores).view(-1, unit).sum(1)
    return score, metric.view(-1, unit, metric.shape[-1]).mean(1)


UNITS_KEY = "ipcv_units"
"""Key of the ``[U]`` bool mask of kept merge units (all images / frames of the call, in order) that a
tower with ``output="reduced"`` adds to its ``BaseModelOutputWithPooling``."""


def reduced_units(source: torch.Tensor | None, seg_lengths: list[int], unit: int) -> torch.Tensor:
    """Which 2x2 merge units (LLM tokens) of one tower call the LLM receives under ``output="reduced"``.

    The rule (ours; the paper does not say how its ViT-side runs made whole merge units): a patch
    *survives* if the final state at its position is its own (``source[i] == i``: a kept token of
    DART-ViT, a token that others were merged into under ToMe / ToFu). In each image / frame with
    ``s`` surviving patches, the ``round(s / unit)`` merge units (half up, at least one if ``s > 0``,
    at most all) with the most surviving patches are kept, a tie going to the earlier unit. So the
    LLM receives as many tokens per image / frame as there are surviving patches divided by the
    unit size, and at keep 1.0 every unit.

    Args:
        source: ``[L]`` source map of the call (:func:`ipcv.vision.sources.collect_sources`), or None
            when the runner removed nothing (every patch survives).
        seg_lengths: patches per image / frame (each a multiple of ``unit``). unit: patches per merge
            unit (``spatial_merge_size ** 2``).
    Returns: ``[sum(seg_lengths) // unit]`` bool, True for a kept unit.
    """
    L = sum(seg_lengths)
    if source is None:
        return torch.ones(L // unit, dtype=torch.bool)
    alive = (source.cpu() == torch.arange(L)).view(L // unit, unit).sum(1)
    keep = torch.zeros(L // unit, dtype=torch.bool)
    start = 0
    for n in seg_lengths:
        u = n // unit
        per_unit = alive[start : start + u]
        s = int(per_unit.sum())
        k = min(u, max(int(s > 0), (2 * s + unit) // (2 * unit)))
        order = torch.sort(per_unit, descending=True, stable=True).indices[:k]
        keep[start + order] = True
        start += u
    return keep


def tower_forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
    """Forward of a compressed Qwen2-VL vision tower: same inputs and outputs as the original
    (``last_hidden_state`` ``[L, embed_dim]`` full length, ``pooler_output`` the merger's output).

    With a baseline's ``output="reduced"`` the output also holds, under :data:`UNITS_KEY`, the mask of
    the merge units the LLM receives (:func:`reduced_units`). ``pooler_output`` stays full length:
    transformers splits it per image by ``grid_thw`` and checks it against the placeholder count,
    also when generate() encodes the images before prefill (``mm_encoder_outputs``); the outer
    model's forward drops the other units before the first decoder layer (see
    :func:`ipcv.models._mrope.reduced_call`)."""
    pop_output_flags(kwargs, type(self).__name__)
    position_ids = get_vision_position_ids(grid_thw, self.spatial_merge_size, kwargs=kwargs)
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, self.config, kwargs=kwargs)
    hidden_states = self.patch_embed(hidden_states)
    position_embeddings = self.rotary_pos_emb(hidden_states, position_ids)
    call = _TowerCall(self, cu_seqlens, max_seqlen, position_embeddings, kwargs, qwen.eager_attention_forward)
    seg_lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    with collect_sources() as sources:
        hidden_states = run_blocks(call, self, hidden_states, seg_lengths)
    out = BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=self.merger(hidden_states))
    if call.capture_layer is not None:
        out[SCORE_KEY], out[METRIC_KEY] = visionzip_scores(call, self, seg_lengths)
    if getattr(getattr(self, "_ipcv_vision", None), "output", "full") == "reduced":
        units = reduced_units(sources[-1] if sources else None, seg_lengths, self.spatial_merge_size**2)
        out[UNITS_KEY] = units.to(hidden_states.device)
    return out


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


# --- the language decoder (LLM-side methods): ipcv.models._decoder, with the mRoPE layout of _mrope ---


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


LANGUAGE = language_adapter(
    DecoderFamily(
        locate=_locate_language, layout=_mrope.layout, spans=_mrope.visual_spans, positions=_mrope.positions,
        reduce=partial(_mrope.reduced_call, units_key=UNITS_KEY),
        vision_scores=partial(_mrope.scored_call, keys=(SCORE_KEY, METRIC_KEY)),
    )
)  # fmt: skip


def square_grid(patches: int) -> list[list[int]]:
    """``grid_thw`` of one square image of ``patches`` patches (ValueError unless it is the square of an even
    number: the 2x2 merger needs an even side)."""
    side = math.isqrt(patches)
    if side * side != patches or side % 2:
        raise ValueError(f"--patches {patches}: must be the square of an even number (e.g. 1024, 4096)")
    return [[1, side, side]]


def random_inputs(patches: int, device, dtype) -> dict:
    """One call of a Qwen tower on a square image of ``patches`` patches, random pixels (benchmarks)."""
    grid = torch.tensor(square_grid(patches), device=device)
    return dict(hidden_states=torch.randn(patches, 3 * 2 * 14 * 14, device=device, dtype=dtype), grid_thw=grid)


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
    packs_segments=True,
    reduced_output=True,
    tower_scores=True,
    harness=Harness("ipcv_qwen2_vl", "IPCVQwen2VL", "lmms_eval.models.simple.qwen2_vl.Qwen2_VL", "simple", "qwen2_vl"),
    tower=RealTower(
        "vision_qwen2vl7b",
        "Qwen2-VL-7B vision tower",
        "random (architecture of Qwen/Qwen2-VL-7B-Instruct's vision tower); no accuracy is implied",
        lambda: qwen.Qwen2VisionTransformerPretrainedModel(qwen.Qwen2VLVisionConfig(**QWEN2_VL_7B_VISION)),
        random_inputs,
        lambda n: [n],
        QWEN2_VL_7B_VISION["depth"],
    ),  # fmt: skip
)
