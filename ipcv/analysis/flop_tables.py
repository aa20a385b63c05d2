"""FLOPs of vision encoders under IPCV, including the real Qwen2-VL-7B tower built on the meta device.

The meta device holds shapes and no values: the tower has Qwen2-VL-7B's exact architecture and
costs no memory, so its FLOP counts are real while nothing about accuracy can come from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn

import ipcv
from ipcv.flops import block_flops, vision_flops
from ipcv.models.configs import QWEN2_VL_7B_VISION
from ipcv.shapes import EncoderShape


def qwen2vl_7b_tower(device: str | torch.device = "meta") -> nn.Module:
    """Qwen2-VL-7B's vision tower (depth 32, width 1280, 16 heads; 675.8 M parameters), random
    weights; on the meta device by default (shapes only, no memory, cannot run)."""
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    with torch.device(device):
        return Qwen2VisionTransformerPretrainedModel(Qwen2VLVisionConfig(**QWEN2_VL_7B_VISION)).eval()


def encoder_shape(model: nn.Module) -> EncoderShape:
    """The sizes :mod:`ipcv.flops` counts with, for any model :func:`ipcv.compress` accepts."""
    from ipcv.models.registry import find

    adapter, target = find(model)
    return adapter.shape(target)


def flop_table(model: nn.Module, seg_lengths: Sequence[int], settings: Mapping[str, ipcv.IPCV | None]) -> pd.DataFrame:
    """FLOPs of one call per named setting (``None`` = vanilla), with the ratio to vanilla.

    Columns: setting, gflops, blocks_gflops, overhead_gflops (IPCV's score, kNN and NGR),
    ratio (total / vanilla total).
    """
    vanilla = vision_flops(model, seg_lengths).total
    rows = []
    for name, s in settings.items():
        f = vision_flops(model, seg_lengths, s)
        rows.append(
            dict(setting=name, gflops=f.total / 1e9, blocks_gflops=f.blocks / 1e9,
                 overhead_gflops=f.overhead / 1e9, ratio=f.total / vanilla)
        )  # fmt: skip
    return pd.DataFrame(rows)


def stabilized_block_flops(shape: EncoderShape, seg_lengths: Sequence[int], kept: Sequence[int], queries: str) -> int:
    """FLOPs of one Attention Stabilization block (eq. 8-9).

    ``queries="kept"`` (this library): queries, output projection and MLP for the kept rows,
    keys/values for all rows. ``queries="all"`` (the authors' release): attention run with all
    ``L`` rows as queries, then sliced to the kept rows before the MLP; the same result, paying
    the query and output projections and the attention products of the removed rows.
    """
    if queries == "kept":
        return block_flops(shape, kept, seg_lengths)
    if queries == "all":
        removed = sum(seg_lengths) - sum(kept)
        return block_flops(shape, seg_lengths, seg_lengths) - 2 * 2 * removed * shape.dim * shape.mlp_dim
    raise ValueError(f"queries={queries!r}: use 'kept' or 'all'")


# --------------------------------------------------------------------------- the whole Qwen2-VL-2B at prefill

#: text tokens around the image in the prefill bench's prompt (``ipcv.bench.prefill``: 15 + 10 + start / end)
PREFILL_TEXT = 27


def qwen2vl_2b(device: str | torch.device = "meta") -> nn.Module:
    """Qwen2-VL-2B-Instruct's architecture (:mod:`ipcv.models.configs`: the 7B vision tower with a 1536-wide
    merger, the 28-layer 1.5B decoder), random weights, on the meta device by default (shapes only)."""
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration

    from ipcv.models.configs import QWEN2_VL_2B_TEXT, QWEN2_VL_2B_TOKENS, QWEN2_VL_7B_VISION

    cfg = Qwen2VLConfig(
        text_config=QWEN2_VL_2B_TEXT, vision_config=QWEN2_VL_7B_VISION | {"hidden_size": 1536}, **QWEN2_VL_2B_TOKENS
    )
    with torch.device(device):
        return Qwen2VLForConditionalGeneration(cfg).eval()


def model_shapes(model: nn.Module):
    """``(EncoderShape, DecoderShape)`` of a whole model, as :func:`ipcv.costs` reads them."""
    from ipcv.models.registry import find

    adapter, tower = find(model)
    return adapter.model_shape(model, tower), adapter.language.shape(adapter.language.locate(model)[1])


def prefill_costs(
    model: nn.Module, patches: int, visual: int, kept: int, vision=None, language=None, text: int = PREFILL_TEXT
) -> dict[str, float]:
    """Analytic prefill of one image of ``patches`` patches (``visual`` LLM tokens after the merger, of which
    the LLM receives ``kept``) and ``text`` text tokens, batch 1, under ``vision`` (a ViT-side method or None)
    and ``language`` (a pre-LLM method or None), by :mod:`ipcv.flops`' counts: the tower (patch embedding,
    blocks, merger, the method's own work), a second attention score of one block for VisionZip, the pre-LLM
    method's own work (its ``<method>_overhead``), the decoder's layers with causal attention and the LM head
    for one token. The KV cache after prefill is in MB at 2 bytes per value.
    Keys: vision_gflops, overhead_gflops (pre-LLM method's own work), decoder_gflops, gflops, kv_cache_mb."""
    from ipcv.catalog import method_of
    from ipcv.flops import decoder_layer_flops, encoder_flops, tower_score_flops

    eshape, dshape = model_shapes(model)
    tower = encoder_flops(eshape, [patches], vision).total
    if language is not None and getattr(language, "tower_layer", None) is not None:
        tower += tower_score_flops(eshape, [patches])
    n = text + visual
    overhead = 0 if language is None else method_of(language, "language").count(language, dshape, n, visual, kept)
    tokens = text + kept
    decoder = dshape.layers * decoder_layer_flops(dshape, tokens, tokens) + 2 * dshape.dim * dshape.vocab
    kv = tokens * dshape.layers * 2 * dshape.kv_heads * dshape.head_dim * 2 / 1e6
    return dict(vision_gflops=tower / 1e9, overhead_gflops=overhead / 1e9, decoder_gflops=decoder / 1e9,
                gflops=(tower + overhead + decoder) / 1e9, kv_cache_mb=kv)  # fmt: skip
