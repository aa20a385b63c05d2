"""Architectures of released checkpoints at their real sizes (read from their ``config.json``) and the tiny
configs of the same classes used by the CPU variants: plain dicts for transformers' config classes, no weights.
The benchmarks build random-weight models from them (latency does not depend on weight values), the adapters
name the tower each family is timed with (:attr:`ipcv.models.base.Adapter.tower`)."""

from __future__ import annotations

# Qwen/Qwen2-VL-7B-Instruct vision_config (the 2B model has the same tower, hidden_size 1536)
QWEN2_VL_7B_VISION = dict(
    depth=32, embed_dim=1280, num_heads=16, hidden_size=3584, mlp_ratio=4, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
)  # fmt: skip
# Qwen/Qwen2.5-VL-7B-Instruct vision_config (3B and 72B share the tower, out_hidden_size differs)
QWEN2_5_VL_7B_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu",
)  # fmt: skip
# OpenGVLab/InternVL3-{1B,2B,8B}-hf vision_config: InternViT-300M-448px-V2.5
INTERNVIT_300M = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, image_size=[448, 448],
    patch_size=[14, 14], norm_type="layer_norm", use_qk_norm=False, layer_scale_init_value=0.1,
    use_absolute_position_embeddings=True, use_mean_pooling=True, hidden_act="gelu",
)  # fmt: skip
# llava-hf/llava-onevision-qwen2-7b-ov-hf vision_config: SigLIP-so400m-patch14-384 without its last block
SIGLIP_SO400M_OV = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16, image_size=384,
    patch_size=14, num_channels=3, vision_use_head=False, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
)  # fmt: skip
# Qwen/Qwen2-VL-2B-Instruct config.json (text part and token ids); its vision tower is the 7B one
# with a 1536-wide merger output
QWEN2_VL_2B_TEXT = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    bos_token_id=151643, eos_token_id=151645,
)  # fmt: skip
QWEN2_VL_2B_TOKENS = dict(
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653
)
# Qwen/Qwen2-VL-7B-Instruct config.json, text part (its tower: QWEN2_VL_7B_VISION, merger out 3584)
QWEN2_VL_7B_TEXT = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    bos_token_id=151643, eos_token_id=151645,
)  # fmt: skip
# --size tiny (the CPU variant): the same classes, small widths, enough layers for every method's defaults
TINY_TEXT = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=24, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    bos_token_id=1, eos_token_id=2,
)  # fmt: skip
TINY_VISION = dict(
    depth=12, embed_dim=64, num_heads=4, hidden_size=64, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2, in_channels=3,
)  # fmt: skip
TINY_TOKENS = dict(image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503)
# Qwen/Qwen3-VL-8B-Instruct vision_config (depth 27, hidden 1152, DeepStack taps 8/16/24, as families-2026.md
# §1.2 reads it from third-party copies of the 8B-class config; the hub was not reachable). out_hidden_size 4096
# is the width of the 8B's text model (Qwen3-8B), not read from its config.json: it sizes only the mergers.
QWEN3_VL_8B_VISION = dict(
    depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
    spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=2304,
    deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh",
)  # fmt: skip
