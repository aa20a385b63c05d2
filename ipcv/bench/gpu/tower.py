"""Part ``tower``: the 7B vision tower alone at growing patch counts, vanilla vs IPCV, per attention
implementation (see :mod:`ipcv.bench.gpu`).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from ipcv.models.configs import (
    TINY_VISION,
)

from .. import vision
from .shared import SIZES, WEIGHTS, _free, attention_implementations


def tower(args, device: torch.device) -> list[dict]:
    """:func:`ipcv.bench.vision.run` on the 7B tower, once per attention implementation."""
    family = vision.FAMILIES["qwen2_vl"]
    if args.size == "tiny":
        family = dataclasses.replace(
            family, name="vision_qwen2vl_tiny", title="tiny Qwen2-VL vision tower", weights=WEIGHTS["tiny"],
            build=lambda: Qwen2VisionTransformerPretrainedModel(Qwen2VLVisionConfig(**TINY_VISION)),
            depth=TINY_VISION["depth"],
        )  # fmt: skip
    out = []
    for attn in attention_implementations(device):
        if attn == "eager" and device.type == "cuda":
            continue  # eager materialises [H, L, L]: 16,384 patches would not fit, and nobody runs it on a GPU
        ns = argparse.Namespace(
            family="qwen2_vl", patches=list(SIZES[args.size][3]), keep=[0.65, 0.5, 0.35, 0.2], prune_layer=3,
            stabilize_layers=7, neighbors=10, repeats=args.repeats, device=str(device), dtype=args.dtype,
            attn="varlen" if attn == "varlen" else attn,
        )  # fmt: skip
        result = vision.run(ns, family, desc=f"gpu tower, {attn}")
        out.append({**result, "attention": attn, "kernel": attention_implementations(device)[attn]})
        _free(device)
    return out
