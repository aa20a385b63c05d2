"""Tiny random configurations of the real transformers classes."""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLForConditionalGeneration,
)

import ipcv

torch.set_num_threads(2)

# grids (t, h, w) in patches; h and w multiples of the 2x2 merge
SINGLE = [[1, 8, 12]]
SEVERAL = [[1, 8, 12], [1, 4, 6], [1, 10, 4]]
VIDEO = [[4, 6, 8]]
MIXED = [[1, 8, 12], [3, 4, 4]]


def tiny_vision_config(attn: str = "eager", depth: int = 6) -> Qwen2VLVisionConfig:
    cfg = Qwen2VLVisionConfig(
        depth=depth, embed_dim=64, num_heads=4, hidden_size=48, mlp_ratio=2, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
    )  # fmt: skip
    cfg._attn_implementation = attn
    return cfg


def make_tower(attn: str = "eager", depth: int = 6, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    tower = Qwen2VisionTransformerPretrainedModel(tiny_vision_config(attn, depth)).eval().to(dtype)
    # random init (std 0.02) barely moves the residual stream: make blocks matter
    with torch.no_grad():
        for p in tower.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    return tower


def pixels(grid, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    L = sum(t * h * w for t, h, w in grid)
    return torch.randn(L, 3 * 2 * 14 * 14, generator=g).to(dtype)


@pytest.fixture
def tower():
    return make_tower()


def tiny_qwen2vl(attn: str = "eager", layers: int = 2) -> Qwen2VLForConditionalGeneration:
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=6, embed_dim=64, num_heads=4, hidden_size=64, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, in_channels=3,
        ),
        image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253,
    )  # fmt: skip
    cfg._attn_implementation = attn
    cfg.vision_config._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(cfg).eval()


# the methods every model-family test runs, sized for tiny configs (decoders of a few layers, towers of 4-6 blocks)
def family_languages(keep):
    return {
        "DART": ipcv.DART(keep),
        "FastV": ipcv.FastV(keep),
        "V2Drop": ipcv.V2Drop(keep, layers=(1, 3), budget="last"),
        "SparseVLM": ipcv.SparseVLM(keep, layers=(1, 2), budget="last", recycle_in_budget=True),
    }


def family_visions(keep):
    return {
        "IPCV": ipcv.IPCV(keep, prune_layer=2, stabilize_layers=2, neighbors=3),
        "ToMe": ipcv.ToMe(keep),
        "ToFu": ipcv.ToFu(keep),
        "DARTViT": ipcv.DARTViT(keep, prune_layer=2),
    }
