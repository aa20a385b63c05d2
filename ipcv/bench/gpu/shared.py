"""What the three parts of ``python -m ipcv.bench gpu`` share: the sizes (real and tiny), the floors of the
kernel check, the speed targets, the models and prompts, the attention implementations present.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.utils import is_flash_attn_2_available

import ipcv
from ipcv.models._attention import varlen_kernel
from ipcv.models.configs import (
    QWEN2_VL_2B_TEXT,
    QWEN2_VL_2B_TOKENS,
    QWEN2_VL_7B_TEXT,
    QWEN2_VL_7B_VISION,
    TINY_TEXT,
    TINY_TOKENS,
    TINY_VISION,
)

from ..efficiency import video_inputs
from ..prefill import inputs

SIZES = {
    # size: (check model (text, vision, tokens), latency model, inputs (name, kind, side, frames), tower patches)
    "real": (
        (QWEN2_VL_2B_TEXT, QWEN2_VL_7B_VISION | {"hidden_size": 1536}, QWEN2_VL_2B_TOKENS),
        (QWEN2_VL_7B_TEXT, QWEN2_VL_7B_VISION, QWEN2_VL_2B_TOKENS),
        (
            ("448x448 image", "image", 448, 1),
            ("1344x1344 image", "image", 1344, 1),
            ("16-frame video", "video", 448, 16),
        ),
        (1024, 4096, 16384),
    ),
    "tiny": (
        (TINY_TEXT, TINY_VISION, TINY_TOKENS),
        (TINY_TEXT, TINY_VISION, TINY_TOKENS),
        (("112x112 image", "image", 112, 1), ("224x224 image", "image", 224, 1), ("4-frame video", "video", 112, 4)),
        (64, 256),
    ),
}  # fmt: skip
# the smallest relative difference a check allows, whatever the unpatched model's own (per dtype)
FLOOR = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 5e-3}
WEIGHTS = {
    "real": "random (architectures of Qwen/Qwen2-VL-2B-Instruct for check, Qwen/Qwen2-VL-7B-Instruct for latency "
    "and tower); no accuracy is implied",
    "tiny": "random, tiny configs of the Qwen2-VL classes (checks the command on CPU: not a speed measurement)",
}
TARGETS = {  # what a real-size run on a CUDA GPU must show
    "tower_time_over_flop_ratio_4096": 1.10,
    "overhead_share_of_vanilla_tower_4096": 0.03,
    "ipcv_dart_35_35_total_ratio_448": 0.608,
}


# --- models and inputs --------------------------------------------------------------------------------


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(spec: tuple[dict, dict, dict], device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A Qwen2-VL model of ``spec`` (text, vision, token ids) built on ``device`` directly in ``dtype``
    (no float32 copy of a 7B model), random weights from the config's own initialisation."""
    text, vis, tokens = spec
    cfg = Qwen2VLConfig(text_config=text, vision_config=vis, **tokens)
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = Qwen2VLForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = cfg.text_config.eos_token_id
    return model.eval()


def set_attention(model, attn: str) -> str:
    """Vision tower on ``attn``; the decoder on eager when ``attn`` is eager, else sdpa. Returns the
    decoder's implementation."""
    ipcv.vision_attention(model, attn)
    llm = "eager" if attn == "eager" else "sdpa"
    text = model.model.language_model
    text.config._attn_implementation = llm
    return llm


def prompt(model, kind: str, side: int, frames: int) -> dict:
    """Inputs on the model's device, pixels in its dtype."""
    kw = inputs(model, side=side) if kind == "image" else video_inputs(model, side, frames)
    param = next(model.parameters())
    return {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in kw.items()}


def attention_implementations(device: torch.device) -> dict[str, str]:
    """The vision attention implementations this machine can run -> the kernel each uses."""
    out = {"eager": "eager (matmul + softmax)", "sdpa": "scaled_dot_product_attention, one call per image"}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out["varlen"] = varlen_kernel(device, dtype)
    if device.type == "cuda" and is_flash_attn_2_available():
        out["flash_attention_2"] = "flash-attn varlen"
    return out


def at_keep(settings, keep: float):
    return None if settings is None else dataclasses.replace(settings, keep_ratio=keep)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
