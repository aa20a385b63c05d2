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
