"""ipcv inside vLLM's own Qwen2-VL and Qwen2.5-VL: subclasses of vLLM's model classes whose vision tower runs its
blocks through :func:`ipcv.catalog.run_vision` (registered by :func:`ipcv.serving.vllm_plugin.register`).

The model classes add nothing but the tower swap: vLLM's multimodal processor (it hangs off the class), weight
loading, language model, scheduler, mRoPE and paged KV cache are inherited unchanged. The towers are vLLM's
``Qwen2VisionTransformer`` / ``Qwen2_5_VisionTransformer`` with one method overridden, ``forward``: the same
input normalisation, patch embedding, rotary tables and ``cu_seqlens`` (vLLM's ``prepare_encoder_metadata``),
window order (Qwen2.5-VL) and merger, and between them the blocks run under the method's schedule.

The block operations (:class:`ipcv.vision.BlockOps`) for vLLM's blocks:

- ``full`` and ``kept`` call vLLM's block itself (its attention backend, ``MMEncoderAttention``), ``kept`` with
  the kept tokens' rotary rows and ``cu_seqlens`` / ``max_seqlen`` (and FlashInfer's sequence lengths) made the
  way vLLM makes them for the per-image (or, in Qwen2.5-VL's windowed blocks, per-window) kept counts;
- ``stabilized`` (IPCV's eq. 8-9: kept queries, every token's keys / values) and the baselines' ``attention_part``
  (ToMe's proportional attention adds a per-key bias) need attention with different query and key lengths, or
  a bias, which ``MMEncoderAttention`` does not take: they use the block's own weights, norms, rotary op
  (``ApplyRotaryEmb``) and MLP with PyTorch's ``scaled_dot_product_attention`` per segment.

Counters: every tower call records the patches of each image / frame and how many of them the last block
computed (``tower.ipcv_calls``, the last 1000 calls; with :data:`ipcv.serving.STATS_ENV` set, one JSON line per
call in that file, from whichever process runs the tower).
"""

from __future__ import annotations

import collections
import json
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from vllm.model_executor.layers.attention.mm_encoder_attention import MMEncoderAttention
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VisionTransformer, Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen2_vl import Qwen2VisionTransformer, Qwen2VLForConditionalGeneration

from ..catalog import run_vision
from ..method_strings import format_method
from ..models._attention import nonempty_segments
from ..models.qwen2_vl import Windows
from ..vision import Plan
from . import STATS_ENV, method_from_env
from .vllm_plugin import check_engine

log = logging.getLogger("ipcv.serving")

__all__ = ["IPCVQwen2VLForConditionalGeneration", "IPCVQwen2_5_VLForConditionalGeneration"]


def attend(q, k, v, q_lengths, kv_lengths, scale, key_bias=None) -> torch.Tensor:
    """Bidirectional attention of packed queries ``[Lq, H, d]`` on packed keys / values ``[Lk, H, d]``, segment by
    segment (``q_lengths`` / ``kv_lengths``); ``key_bias`` ``[Lk]`` is added to every query's logit on that key.
    Returns ``[Lq, H, d]``."""
    Lq, H, d = q.shape
    bias = None if key_bias is None else key_bias.to(q.dtype)

    def sdpa(qs, ks, vs, bs, batch=1):  # [batch * l, H, d] -> [batch * l, H, d]
        qb, kb, vb = (x.reshape(batch, -1, H, d).transpose(1, 2) for x in (qs, ks, vs))
        mask = None if bs is None else bs.view(batch, 1, 1, -1)
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
        return out.transpose(1, 2).reshape(-1, H, d)

    if len(set(q_lengths)) == 1 and len(set(kv_lengths)) == 1:
        return sdpa(q, k, v, bias, len(q_lengths))
    biases = [None] * len(q_lengths) if bias is None else bias.split(list(kv_lengths))
    parts = zip(q.split(list(q_lengths)), k.split(list(kv_lengths)), v.split(list(kv_lengths)), biases)
    return torch.cat([sdpa(*p) for p in parts], dim=0)


class _Segments:
    """Attention segments of one stabilized block in a windowed layout (as ``Plan`` for ``nonempty_segments``)."""

    def __init__(self, keep, keep_counts, seg_lengths):
        self.keep, self.keep_counts, self.seg_lengths = keep, keep_counts, seg_lengths


class _TowerCall:
    """One call of a vLLM Qwen tower (:class:`ipcv.vision.BlockOps`).

    tower: the tower (for its blocks and its attention metadata helpers). full: the block keyword arguments
    of vLLM's own metadata for per-image blocks; windowed: those of windowed blocks (Qwen2.5-VL) or None.
    cos, sin: ``[L, d/2]`` rotary rows of the packed sequence. windows: :class:`ipcv.models.qwen2_vl.Windows`
    on raw positions (Qwen2.5-VL) or None.
    """

    def __init__(self, tower, full, cos, sin, windowed=None, windows=None):
        self.tower = tower
        self.blocks = tower.blocks
        self.full_kwargs = full
        self.windowed_kwargs = windowed
        self.cos, self.sin = cos, sin
        self.windows = windows
        self._kept_kwargs: dict[bool, dict] = {}
        self.counts: list[int] | None = None  # tokens per segment in the latest block that ran on fewer

    def _windowed(self, layer: int) -> bool:
        return self.windows is not None and layer not in self.windows.full_blocks

    def _block(self, layer: int, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
        return self.blocks[layer](h.unsqueeze(1), **kwargs).squeeze(1)

    def full(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        return self._block(layer, h, self.windowed_kwargs if self._windowed(layer) else self.full_kwargs)

    def _kept(self, plan: Plan, windowed: bool) -> dict:
        if windowed not in self._kept_kwargs:
            counts = self.windows.counts(plan.keep) if windowed else plan.keep_counts
            kwargs = self.tower.ipcv_segments([c for c in counts if c], plan.keep.device)
            kwargs["rotary_pos_emb_cos"] = self.cos[plan.keep]
            kwargs["rotary_pos_emb_sin"] = self.sin[plan.keep]
            self._kept_kwargs[windowed] = kwargs
        return self._kept_kwargs[windowed]

    def kept(self, layer: int, h_keep: torch.Tensor, plan: Plan) -> torch.Tensor:
        self.counts = list(plan.keep_counts)
        return self._block(layer, h_keep, self._kept(plan, self._windowed(layer)))

    def _heads(self, attn) -> tuple[int, int, int]:
        H, d = attn.num_attention_heads_per_partition, attn.hidden_size_per_attention_head
        return H * d, H, d

    def _rotate(self, attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """vLLM's own rotary op on ``[N, H, d]``."""
        return attn.apply_rotary_emb(x.unsqueeze(0).contiguous(), cos, sin).squeeze(0)

    def _residual_mlp(self, blk, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        o, _ = blk.attn.proj(attn_out)
        h = h + o
        return h + blk.mlp(blk.norm2(h))

    def stabilized(self, layer: int, h_keep: torch.Tensor, h_full: torch.Tensor, plan: Plan) -> torch.Tensor:
        self.counts = list(plan.keep_counts)
        blk = self.blocks[layer]
        attn = blk.attn
        D, H, d = self._heads(attn)
        segments = plan
        if self._windowed(layer):  # kept queries per window, every token of the window as keys
            lengths = (self.windows.cu[1:] - self.windows.cu[:-1]).tolist()
            segments = _Segments(plan.keep, self.windows.counts(plan.keep), lengths)
        q_lengths, kv_lengths, kv_rows = nonempty_segments(segments)
        cos, sin = self.cos, self.sin
        cos_q, sin_q = cos[plan.keep], sin[plan.keep]
        # queries for kept rows only (eq. 9); keys / values for every row of the full sequence (eq. 8)
        sliced = _plain_weight(attn.qkv)
        if sliced is not None:
            W, b = sliced
            if kv_rows is not None:  # segments (windows) without a kept token have no query: drop their keys
                h_full = h_full[kv_rows]
            q = F.linear(blk.norm1(h_keep), W[:D], None if b is None else b[:D]).view(-1, H, d)
            k, v = F.linear(blk.norm1(h_full), W[D:], None if b is None else b[D:]).view(-1, 2, H, d).unbind(1)
        else:  # packed (vLLM's CPU GEMMs) or quantized weights: the layer itself, so queries of every row too
            qkv, _ = attn.qkv(blk.norm1(h_full))
            q, k, v = qkv.view(-1, 3, H, d).unbind(1)
            q = q[plan.keep]
            if kv_rows is not None:
                k, v = k[kv_rows], v[kv_rows]
        if kv_rows is not None:
            cos, sin = cos[kv_rows], sin[kv_rows]
        q, k = self._rotate(attn, q, cos_q, sin_q), self._rotate(attn, k, cos, sin)
        out = attend(q, k, v, q_lengths, kv_lengths, d**-0.5)
        return self._residual_mlp(blk, h_keep, out.reshape(-1, D))

    # --- token merging (ToMe / ToFu) and DART-ViT: a block split at the residual after attention ---

    def keys(self, layer: int, h: torch.Tensor, rotated: bool = False) -> torch.Tensor:
        """As :meth:`ipcv.models.qwen2_vl._TowerCall.keys` (``rotated``: after the 2D rotary), with vLLM's
        block weights; ``h`` is the full sequence."""
        blk = self.blocks[layer]
        D, H, d = self._heads(blk.attn)
        sliced = _plain_weight(blk.attn.qkv)
        if sliced is None:
            qkv, _ = blk.attn.qkv(blk.norm1(h))
            k = qkv.view(-1, 3, H, d)[:, 1]
        else:
            W, b = sliced
            k = F.linear(blk.norm1(h), W[D : 2 * D], None if b is None else b[D : 2 * D]).view(-1, H, d)
        return self._rotate(blk.attn, k, self.cos, self.sin) if rotated else k

    def attention_part(self, layer, h, rows, seg_lengths, log_size=None, rotated=False):
        """As :meth:`ipcv.models.qwen2_vl._TowerCall.attention_part`, with vLLM's block weights."""
        self.counts = list(seg_lengths)
        blk = self.blocks[layer]
        attn = blk.attn
        D, H, d = self._heads(attn)
        qkv, _ = attn.qkv(blk.norm1(h))
        q, k, v = qkv.view(-1, 3, H, d).unbind(1)
        metric = k.mean(1)
        cos, sin = self.cos[rows], self.sin[rows]
        q, k = self._rotate(attn, q, cos, sin), self._rotate(attn, k, cos, sin)
        if rotated:
            metric = k.mean(1)
        if self._windowed(layer):  # rows increase, so the tokens of one window are contiguous
            seg_lengths = [c for c in self.windows.counts(rows) if c]
        out = attend(q, k, v, seg_lengths, seg_lengths, d**-0.5, key_bias=log_size)
        o, _ = attn.proj(out.reshape(-1, D))
        return h + o, metric

    def mlp_part(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        blk = self.blocks[layer]
        return h + blk.mlp(blk.norm2(h))


def _plain_weight(layer) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(weight, bias)`` of a linear layer whose weight is a plain unquantized matrix (so its rows can be
    sliced), else None: vLLM's CPU build packs the weights for its own GEMM kernels and drops the matrix."""
    W = getattr(layer, "weight", None)
    if not isinstance(getattr(layer, "quant_method", None), UnquantizedLinearMethod):
        return None
    if W is None or W.dim() != 2 or W.shape[0] != layer.output_size_per_partition:
        return None
    return W, getattr(layer, "bias", None)


def _segment_lengths(grid: list[list[int]]) -> list[int]:
    return [int(h) * int(w) for t, h, w in grid for _ in range(int(t))]


def _grid(grid_thw) -> list[list[int]]:
    return [[int(v) for v in row] for row in (grid_thw if isinstance(grid_thw, list) else grid_thw.tolist())]


def _cumulative(counts: list[int]) -> np.ndarray:
    return np.concatenate([np.zeros(1, dtype=np.int32), np.cumsum(counts, dtype=np.int32)])


class _Counters:
    """What a compressed tower records per call (module docstring)."""

    def _ipcv_record(self, seg_lengths: list[int], kept: list[int] | None) -> None:
        kept = list(seg_lengths) if kept is None else [int(c) for c in kept]
        row = {"method": format_method(self.ipcv_method), "segments": seg_lengths, "kept": kept}
        self.ipcv_calls.append(row)
        log.debug("ipcv: %s kept %s of %s patches per image / frame", row["method"], kept, seg_lengths)
        path = os.environ.get(STATS_ENV)
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def _ipcv_refuse_graph(self, grid_thw, encoder_metadata) -> None:
        if grid_thw is None:
            raise RuntimeError(
                "ipcv: the vision tower was called without grid_thw (a CUDA-graph replay of the encoder), which "
                "the compressed tower does not support: leave compilation_config.cudagraph_mm_encoder off"
            )


class IPCVQwen2VisionTransformer(Qwen2VisionTransformer, _Counters):
    """vLLM's Qwen2-VL tower with its blocks run under ``self.ipcv_method``."""

    def ipcv_segments(self, counts: list[int], device) -> dict:
        cu = torch.from_numpy(_cumulative(counts)).to(device)
        return {"cu_seqlens": cu, "max_seqlen": self.compute_attn_mask_seqlen(cu)}

    def forward(self, x, grid_thw, *, encoder_metadata=None):
        self._ipcv_refuse_graph(grid_thw, encoder_metadata)
        x = self.input_norm(x.to(device=self.device), self.dtype)
        x = self.patch_embed(x)
        grid = _grid(grid_thw)
        meta = encoder_metadata if encoder_metadata is not None else self.prepare_encoder_metadata(grid)
        cos, sin = meta["rotary_pos_emb_cos"], meta["rotary_pos_emb_sin"]
        full = {k: meta[k] for k in ("cu_seqlens", "rotary_pos_emb_cos", "rotary_pos_emb_sin", "max_seqlen")}
        call = _TowerCall(self, full, cos, sin)
        seg_lengths = _segment_lengths(grid)
        h = run_vision(call, len(self.blocks), x, seg_lengths, self.ipcv_method)
        self._ipcv_record(seg_lengths, call.counts)
        return self.merger(h.unsqueeze(1))


class IPCVQwen2_5_VisionTransformer(Qwen2_5_VisionTransformer, _Counters):
    """vLLM's Qwen2.5-VL tower (window attention, ``fullatt_block_indexes``) with its blocks run under
    ``self.ipcv_method``. The packed sequence is in window order, as in vLLM (and transformers): each image /
    frame stays contiguous, so IPCV selects per image, and windowed blocks attend per window over what is kept."""

    def ipcv_segments(self, counts: list[int], device) -> dict:
        cu_np = _cumulative(counts)
        backend = self.attn_backend
        cu = MMEncoderAttention.maybe_recompute_cu_seqlens(
            backend, cu_np, self.hidden_size, self.tp_size, device, fp8_padded_hidden_size=self.fp8_padded_hidden_size
        )
        max_len = torch.tensor(MMEncoderAttention.compute_max_seqlen(backend, cu_np), dtype=torch.int32)
        lengths = MMEncoderAttention.maybe_compute_seq_lens(backend, cu_np, device)
        return {"cu_seqlens": cu, "max_seqlen": max_len, "sequence_lengths": lengths}

    def _raw_windows(self, grid: list[list[int]], device) -> torch.Tensor:
        """``[W + 1]`` window boundaries in the window-ordered packed sequence, as plain offsets (vLLM's metadata
        may hold a backend's own layout of them)."""
        parts, last = [torch.zeros(1, dtype=torch.int32)], 0
        for t, h, w in grid:
            _, cu = self.get_window_index_thw(t, h, w)
            cu = cu + last
            last = int(cu[-1])
            parts.append(cu)
        return torch.unique_consecutive(torch.cat(parts)).to(device)

    def forward(self, x, grid_thw, *, encoder_metadata=None):
        self._ipcv_refuse_graph(grid_thw, encoder_metadata)
        h = self.input_norm(x.to(device=self.device), self.dtype)
        h = self.patch_embed(h)
        grid = _grid(grid_thw)
        meta = encoder_metadata if encoder_metadata is not None else self.prepare_encoder_metadata(grid)
        L = h.shape[0]
        h = h.reshape(L // self.spatial_merge_unit, self.spatial_merge_unit, -1)[meta["window_index"]].reshape(L, -1)
        cos, sin = meta["rotary_pos_emb_cos"], meta["rotary_pos_emb_sin"]
        rope = {"rotary_pos_emb_cos": cos, "rotary_pos_emb_sin": sin}
        full = dict(
            rope, cu_seqlens=meta["cu_seqlens"], max_seqlen=meta["max_seqlen_full"],
            sequence_lengths=meta.get("sequence_lengths_full"),
        )  # fmt: skip
        windowed = dict(
            rope, cu_seqlens=meta["cu_window_seqlens"], max_seqlen=meta["max_seqlen_window"],
            sequence_lengths=meta.get("sequence_lengths_window"),
        )  # fmt: skip
        windows = Windows(self._raw_windows(grid, h.device), None, frozenset(self.fullatt_block_indexes))
        call = _TowerCall(self, full, cos, sin, windowed, windows)
        seg_lengths = _segment_lengths(grid)
        h = run_vision(call, len(self.blocks), h, seg_lengths, self.ipcv_method)
        self._ipcv_record(seg_lengths, call.counts)
        h = h.unsqueeze(1)
        if h.dtype == torch.float16:  # as vLLM's forward: Qwen2.5-VL-3B overflows in float16
            from vllm.model_executor.models.qwen2_5_vl import cast_overflow_tensors

            h = cast_overflow_tensors(h)
        return self.merger(h)[meta["reverse_indices"], :]


def _compress_tower(model, vllm_config, tower_class) -> None:
    settings = method_from_env()
    if settings is None:  # registered by a process that had the switch on; this one does not
        return
    check_engine(vllm_config, settings)
    tower = model.visual
    tower.__class__ = tower_class  # a subclass that only overrides forward: same parameters, same weights
    tower.ipcv_method = settings
    tower.ipcv_calls = collections.deque(maxlen=1000)
    log.info("ipcv: vision tower of %s runs %s", type(model).__name__, format_method(settings))


class IPCVQwen2VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """vLLM's Qwen2-VL with ipcv's compressed vision tower (everything else inherited)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        _compress_tower(self, vllm_config, IPCVQwen2VisionTransformer)


class IPCVQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with ipcv's compressed vision tower (everything else inherited)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        _compress_tower(self, vllm_config, IPCVQwen2_5_VisionTransformer)
