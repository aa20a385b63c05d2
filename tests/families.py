"""The tiny random models the tests run, one factory per model family, on the real transformers classes,
with their prompt batches and the hand count of what each batch holds.

- Qwen2-VL: :func:`make_tower` (the vision tower alone) and :func:`tiny_qwen2vl` (the whole model);
- Qwen2.5-VL (window attention in the tower): :func:`tiny_qwen2_5_vl`;
- Qwen3-VL (16-px patches, a learned position table, DeepStack taps, interleaved mRoPE): :func:`tiny_qwen3_vl`;
- InternVL (``-hf`` classes, a CLS token per tile): :func:`tiny_internvl`;
- LLaVA (a CLIP or SigLIP tower read at an inner layer, a Llama decoder): :func:`tiny_llava`;
- LLaVA-OneVision / LLaVA-NeXT (AnyRes crops, unpadding, newlines; OneVision's video and multi-image):
  :func:`tiny_anyres`;
- ViT-style encoders (DINOv2, CLIP vision, SigLIP vision): :func:`tiny_vit`.

:data:`FAMILIES` lists the four multimodal families as :class:`Family` records: the model the tests that
apply to every family run (``tests/test_generate.py`` through the ``family`` fixture of ``conftest.py``),
their prompt batches (:class:`Case`) and, per batch, the span and segment sizes the kept counts are
checked against (:func:`check_kept`). Random weights: whatever a model answers is a pipeline check, never
accuracy. Plain functions and constants: test modules import them from here, never from one another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLForConditionalGeneration,
)

import ipcv

# --- the methods every model-family test runs -----------------------------------------------------


# sized for tiny configs (decoders of a few layers, towers of 4-6 blocks)
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


def reduced_baselines(keep: float) -> dict[str, object]:
    """The ViT-side baselines with ``output="reduced"`` (the mRoPE families: the LLM gets the kept units only)."""
    return {
        "ToMe": ipcv.ToMe(keep, output="reduced"),
        "ToFu": ipcv.ToFu(keep, output="reduced"),
        "DARTViT": ipcv.DARTViT(keep, prune_layer=2, output="reduced"),
    }


@dataclass(frozen=True)
class Case:
    """One prompt batch: ``kw`` the model's inputs; ``spans`` per sample, the LLM visual tokens of each span
    (image, video frame or tile) in sequence order; ``segments`` per vision-tower call, the tokens of each
    segment entering block 0 (protected CLS tokens included)."""

    kw: dict
    spans: list[list[int]]
    segments: list[list[int]]


@dataclass(frozen=True)
class Family:
    """A multimodal family as the family-wide tests see it: ``make()`` its tiny model; ``cases`` the prompt
    batches those tests run; ``prefix`` the protected tokens (CLS) per vision segment; ``new_tokens`` how
    many tokens its generate tests decode."""

    name: str
    make: Callable[[], torch.nn.Module]
    cases: dict[str, Case]
    prefix: int
    new_tokens: int

    def __str__(self) -> str:
        return self.name


# --- the kept counts of a generate() run -----------------------------------------------------------


class KeptDiffers(AssertionError):
    """The kept counts of a run differ from the hand count."""


def check_kept(kept, expected):
    """``kept`` (a decoder record's ``[stage][sample][span]``) equals the hand count, else :class:`KeptDiffers`."""
    if kept != expected:
        raise KeptDiffers(f"kept {kept}, by hand {expected}")


# --- Qwen2-VL -------------------------------------------------------------------------------------

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
    """Qwen2-VL's vision tower alone."""
    torch.manual_seed(seed)
    tower = Qwen2VisionTransformerPretrainedModel(tiny_vision_config(attn, depth)).eval().to(dtype)
    # random init (std 0.02) barely moves the residual stream: make blocks matter
    with torch.no_grad():
        for p in tower.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    return tower


def pixels(grid, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    """Patch rows of the Qwen2-VL / Qwen2.5-VL towers for ``grid``."""
    g = torch.Generator().manual_seed(seed)
    L = sum(t * h * w for t, h, w in grid)
    return torch.randn(L, 3 * 2 * 14 * 14, generator=g).to(dtype)


def tiny_qwen2vl(attn: str = "eager", layers: int = 2, decoder_std: float | None = None):
    """The whole Qwen2-VL; ``decoder_std``: re-draw the decoder's matrices (embeddings aside) with this std,
    so that its layers matter (random init barely moves the residual stream)."""
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
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    if decoder_std is not None:
        with torch.no_grad():
            for name, p in model.model.language_model.named_parameters():
                if p.dim() > 1 and "embed" not in name:
                    p.normal_(0, decoder_std)
    return model


# the mRoPE families' token ids (Qwen2-VL's and Qwen2.5-VL's tiny configs)
IMAGE, VIDEO_TOKEN, START, END, PAD = 250, 251, 252, 253, 0


def qwen_sample(items, text=(5, 6)):
    """Token ids of one prompt: ``items`` = [("image" | "video", grid)], each between start/end."""
    ids = [1, *text[:1]]
    for kind, (t, h, w) in items:
        ids += [START] + [IMAGE if kind == "image" else VIDEO_TOKEN] * (t * h * w // 4) + [END]
    return ids + list(text[1:]) + [7]


def qwen_prompts(*samples):
    """Left-padded batch of ``samples`` (each a list of ("image" | "video", grid)) with their pixels."""
    rows = [qwen_sample(items, text=(5, 6, 8)[: 2 + i]) for i, items in enumerate(samples)]
    L = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    pad = torch.tensor([L - len(r) for r in rows])[:, None]
    kw = dict(input_ids=ids, attention_mask=(torch.arange(L) >= pad).long())
    kw["mm_token_type_ids"] = (ids == IMAGE).int() + 2 * (ids == VIDEO_TOKEN).int()
    for kind, key, grid_key in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        grids = [g for items in samples for k, g in items if k == kind]
        if grids:
            kw[key], kw[grid_key] = pixels(grids), torch.tensor(grids)
    return kw


def qwen_text_tokens(kw, b) -> int:
    """Text tokens of sample ``b`` of a Qwen batch (padding and visual placeholders excluded)."""
    ids, mask = kw["input_ids"][b], kw["attention_mask"][b].bool()
    return int(((ids != IMAGE) & (ids != VIDEO_TOKEN) & mask).sum())


def qwen_case(*samples) -> Case:
    """A Qwen2-VL / Qwen2.5-VL batch and its hand count: a frame of ``h x w`` patches is one span of
    ``h * w / 4`` LLM tokens (the 2x2 merge) and one tower segment of ``h * w`` patches; the images of the
    batch go through one tower call, then the videos through another."""
    spans = [[h * w // 4 for _, (t, h, w) in items for _ in range(t)] for items in samples]
    calls = [
        [h * w for items in samples for k, (t, h, w) in items if k == kind for _ in range(t)]
        for kind in ("image", "video")
    ]
    return Case(qwen_prompts(*samples), spans, [c for c in calls if c])


QWEN2_VL = Family(
    "qwen2_vl",
    lambda: tiny_qwen2vl("sdpa", layers=4, decoder_std=0.08),
    {
        "single": qwen_case([("image", [1, 8, 12])]),
        "two_images": qwen_case([("image", [1, 8, 12]), ("image", [1, 4, 6])]),
        "video": qwen_case([("video", [4, 6, 8])]),
        "padded": qwen_case([("image", [1, 8, 12])], [("image", [1, 4, 6]), ("image", [1, 4, 4])]),
    },
    prefix=0,
    new_tokens=16,
)


# the batches the ``output="reduced"`` tests run on both mRoPE families
REDUCED_CASES = {
    "single": qwen_case([("image", [1, 8, 12])]),
    "padded": qwen_case([("image", [1, 8, 12])], [("image", [1, 4, 6]), ("image", [1, 4, 4])]),
    "video": qwen_case([("video", [4, 6, 8])]),
    "mixed": qwen_case([("image", [1, 8, 12]), ("video", [2, 4, 6]), ("image", [1, 4, 4])]),
}


# --- Qwen2.5-VL -----------------------------------------------------------------------------------

QWEN2_5_FULL_BLOCKS = (2, 5)


def tiny_qwen2_5_vl(attn: str = "sdpa", seed: int = 0, layers: int = 4) -> Qwen2_5_VLForConditionalGeneration:
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=6, hidden_size=64, intermediate_size=96, num_heads=4, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=56,
            fullatt_block_indexes=list(QWEN2_5_FULL_BLOCKS),
        ),
        image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253,
    )  # fmt: skip
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    m = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random init barely moves the residual stream: make blocks and layers matter
        for name, p in m.named_parameters():
            if p.dim() > 1 and "embed_tokens" not in name:
                p.normal_(0, 0.15 if "visual" in name else 0.08)
    return m


QWEN2_5_VL = Family(
    "qwen2_5_vl",
    tiny_qwen2_5_vl,
    {  # a single image is sample 0 of "padded"
        "two_images": qwen_case([("image", [1, 8, 12]), ("image", [1, 4, 6])]),
        "video": qwen_case([("video", [2, 4, 8])]),
        "padded": qwen_case([("image", [1, 8, 12])], [("image", [1, 4, 6]), ("image", [1, 4, 4])]),
    },
    prefix=0,
    new_tokens=4,
)


# --- Qwen3-VL -------------------------------------------------------------------------------------

QWEN3_TAPS = (1, 3, 4)  # DeepStack taps of the tiny tower: before IPCV's prune layer 2, in AS, after it


def tiny_qwen3_vl(attn: str = "sdpa", seed: int = 0, layers: int = 4, taps=QWEN3_TAPS, moe: bool = False):
    """The whole Qwen3-VL: a 6-block tower (16-px patches, an 8x8 learned position table, DeepStack taps
    ``taps``), a 4-layer Qwen3 decoder with interleaved mRoPE (DeepStack injected after layers 0, 1, 2);
    ``moe``: Qwen3-VL-MoE (the same tower, a decoder of 4 experts, 2 per token)."""
    experts = dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1)
    cfg = (Qwen3VLMoeConfig if moe else Qwen3VLConfig)(
        text_config=dict(**(experts if moe else {}),
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
            pad_token_id=0, rope_parameters={
                "rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True, "rope_theta": 10000.0,
            },
        ),
        vision_config=dict(
            depth=6, hidden_size=64, intermediate_size=96, num_heads=4, out_hidden_size=64, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64,
            deepstack_visual_indexes=list(taps),
        ),
        image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253,
    )  # fmt: skip
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    m = (Qwen3VLMoeForConditionalGeneration if moe else Qwen3VLForConditionalGeneration)(cfg).eval()
    with torch.no_grad():  # random init barely moves the residual stream: make blocks and layers matter
        for name, p in m.named_parameters():
            if p.dim() > 1 and "embed_tokens" not in name:
                p.normal_(0, 0.15 if "visual" in name else 0.08)
    return m


def qwen3_pixels(grid, seed: int = 1) -> torch.Tensor:
    """Patch rows of the Qwen3-VL tower (16-px patches, 2 frames per temporal patch) for ``grid``."""
    L = sum(t * h * w for t, h, w in grid)
    return torch.randn(L, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(seed))


def qwen3_sample(items, text=(5, 6)):
    """Token ids of one Qwen3-VL prompt: an image between start/end; a video as its processor writes it, each
    temporal patch ``<t seconds>`` (two stand-in text tokens) then its own start, placeholders, end."""
    ids = [1, *text[:1]]
    for kind, (t, h, w) in items:
        if kind == "image":
            ids += [START] + [IMAGE] * (h * w // 4) + [END]
        else:
            for frame in range(t):
                ids += [30 + frame, 9, START] + [VIDEO_TOKEN] * (h * w // 4) + [END]
    return ids + list(text[1:]) + [7]


def qwen3_prompts(*samples):
    """Left-padded Qwen3-VL batch of ``samples`` (each a list of ("image" | "video", grid)) with its pixels."""
    rows = [qwen3_sample(items, text=(5, 6, 8)[: 2 + i]) for i, items in enumerate(samples)]
    L = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    pad = torch.tensor([L - len(r) for r in rows])[:, None]
    kw = dict(input_ids=ids, attention_mask=(torch.arange(L) >= pad).long())
    kw["mm_token_type_ids"] = (ids == IMAGE).int() + 2 * (ids == VIDEO_TOKEN).int()
    for kind, key, grid_key in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        grids = [g for items in samples for k, g in items if k == kind]
        if grids:
            kw[key], kw[grid_key] = qwen3_pixels(grids), torch.tensor(grids)
    return kw


def qwen3_case(*samples) -> Case:
    """A Qwen3-VL batch and its hand count: as Qwen2-VL's (a temporal patch of ``h x w`` patches is one span
    of ``h * w / 4`` LLM tokens and one tower segment of ``h * w`` patches; images in one tower call, videos
    in another)."""
    case = qwen_case(*samples)
    return Case(qwen3_prompts(*samples), case.spans, case.segments)


QWEN3_VL = Family(
    "qwen3_vl",
    tiny_qwen3_vl,
    {  # a single image is sample 0 of "padded"
        "two_images": qwen3_case([("image", [1, 8, 12]), ("image", [1, 4, 6])]),
        "video": qwen3_case([("video", [4, 4, 8])]),
        "padded": qwen3_case([("image", [1, 8, 12])], [("image", [1, 4, 6]), ("image", [1, 4, 4])]),
    },
    prefix=0,
    new_tokens=4,
)


# --- InternVL -------------------------------------------------------------------------------------

INTERNVL_IMAGE = 250
INTERNVL_SIZE, INTERNVL_PATCH = 56, 7  # 8x8 = 64 patches + CLS per tile; 16 LLM tokens per tile after pixel shuffle
PER_TILE = 16
INTERNVL_LAYERS, INTERNVL_DEPTH = 4, 6


def tiny_internvl(attn: str = "sdpa", qk_norm: bool = False, feature_layer: int = -1, seed: int = 0):
    cfg = InternVLConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=INTERNVL_DEPTH, num_attention_heads=4, intermediate_size=64,
            image_size=[INTERNVL_SIZE, INTERNVL_SIZE], patch_size=[INTERNVL_PATCH, INTERNVL_PATCH],
            use_qk_norm=qk_norm, norm_type="rms_norm" if qk_norm else "layer_norm",
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128,
            num_hidden_layers=INTERNVL_LAYERS, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
        ),
        image_token_id=INTERNVL_IMAGE, image_seq_length=PER_TILE, downsample_ratio=0.5,
        vision_feature_layer=feature_layer,
    )  # fmt: skip
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random init barely moves the residual stream: make blocks and layers matter
        for name, p in model.named_parameters():
            if "lambda" in name:
                p.uniform_(0.3, 0.8)  # LayerScale, per channel
            elif p.dim() > 1 and "embed_tokens" not in name:
                p.normal_(0, 0.2 if "vision_tower" in name else 0.08)
    return model


def internvl_prompt(tiles_per_image, text=(5, 6)):
    ids = [1, text[0]]
    for n in tiles_per_image:
        ids += [3] + [INTERNVL_IMAGE] * (PER_TILE * n) + [4]
    return ids + list(text[1:]) + [7]


def internvl_prompts(*samples, seed=3):
    """Left-padded batch; each sample a list of images given by their tile counts."""
    rows = [internvl_prompt(s, text=(5, 6, 8)[: 2 + i]) for i, s in enumerate(samples)]
    L = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    mask = (torch.arange(L) >= torch.tensor([L - len(r) for r in rows])[:, None]).long()
    tiles = sum(sum(s) for s in samples)
    size = INTERNVL_SIZE
    values = torch.randn(tiles, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return dict(input_ids=ids, attention_mask=mask, pixel_values=values)


def internvl_case(*samples) -> Case:
    """An InternVL batch and its hand count: each tile is one span of ``PER_TILE`` LLM tokens and one tower
    segment of CLS + 64 patches, all tiles of the batch in one tower call."""
    tiles = [sum(s) for s in samples]
    return Case(internvl_prompts(*samples), [[PER_TILE] * n for n in tiles], [[1 + 64] * sum(tiles)])


INTERNVL = Family(
    "internvl",
    tiny_internvl,
    {  # a single image is sample 0 of "padded"
        "several": internvl_case([2, 1]),  # two images: 2 tiles + 1 tile
        "padded": internvl_case([1], [2, 1]),
    },
    prefix=1,
    new_tokens=4,
)


# --- LLaVA ----------------------------------------------------------------------------------------

LLAVA_IMAGE = 250
LLAVA_SIZE, LLAVA_PATCH, LLAVA_DEPTH, LLAVA_LAYERS = 56, 8, 6, 4  # 49 patches


def tiny_llava(tower="clip", strategy="default", feature_layer=-2, attn="sdpa"):
    cfg = LlavaConfig(
        vision_config=dict(
            model_type=f"{tower}_vision_model", hidden_size=32, num_hidden_layers=LLAVA_DEPTH,
            num_attention_heads=4, intermediate_size=64, image_size=LLAVA_SIZE, patch_size=LLAVA_PATCH,
        ),
        text_config=dict(
            model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128,
            num_hidden_layers=LLAVA_LAYERS, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
        ),
        image_token_index=LLAVA_IMAGE, vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy,
    )  # fmt: skip
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = attn
    torch.manual_seed(0)
    m = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random init barely moves the residual stream: make blocks and layers matter
        for name, p in m.named_parameters():
            if p.dim() > 1 and "embed_tokens" not in name:
                p.normal_(0, 0.2 if "vision_tower" in name else 0.08)
    return m


def llava_per_image(tower="clip", strategy="default"):
    """LLM tokens per image: 49 patches, CLIP's CLS with ``"full"``, none with ``"default"``."""
    return 49 + (tower == "clip") - (strategy == "default")


def llava_prompts(*samples, n=49, seed=3):
    """Left-padded batch; each sample = its number of images."""
    rows = []
    for i, images in enumerate(samples):
        ids = [1, 5]
        for _ in range(images):
            ids += [LLAVA_IMAGE] * n + [6]
        rows.append(ids + [8] * i + [7])
    L = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    mask = (torch.arange(L) >= torch.tensor([L - len(r) for r in rows])[:, None]).long()
    values = torch.randn(sum(samples), 3, LLAVA_SIZE, LLAVA_SIZE, generator=torch.Generator().manual_seed(seed))
    return dict(input_ids=ids, attention_mask=mask, pixel_values=values)


def llava_case(*samples) -> Case:
    """A LLaVA batch (CLIP tower, "default" strategy) and its hand count: each image one span of 49 LLM
    tokens (CLS dropped) and one tower segment of CLS + 49 patches, all images in one tower call."""
    return Case(llava_prompts(*samples), [[49] * n for n in samples], [[1 + 49] * sum(samples)])


LLAVA = Family(
    "llava",
    tiny_llava,
    {  # a single image is sample 0 of "padded"
        "two_images": llava_case(2),
        "padded": llava_case(1, 2),
    },
    prefix=1,
    new_tokens=4,
)


# --- LLaVA-OneVision / LLaVA-NeXT (AnyRes) ------------------------------------------------------------------

ANYRES_IMAGE, ANYRES_VIDEO = 250, 251
ANYRES_CROP, ANYRES_PATCH, ANYRES_DEPTH, ANYRES_LAYERS = 32, 8, 6, 4  # 4x4 = 16 patches per crop
ANYRES_SIDE = ANYRES_CROP // ANYRES_PATCH
# OneVision: grids up to 4x4 crops (its anyres_max_9 downsample then applies); NeXT: its five default shapes
OV_PINPOINTS = [[32 * i, 32 * j] for i in range(1, 5) for j in range(1, 5)]
NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
# family -> image (H, W) -> (crops, LLM tokens, trimmed tokens per crop), by hand from the processor's
# arithmetic (unpad_image's new side is int(round(x, 7)), truncated):
#   (40, 70), NeXT: grid 64x64 = 2x2 crops, features 8x8; new height int(40 * 8 / 70) = 4, pad 2: rows 2..5
#             kept, 16 + 4 * (8 + 1) = 52 tokens; each detail crop loses 2 rows of 4
#   (40, 70), OneVision: grid 64x96 = 2x3 crops, features 8x12; new height int(40 * 12 / 70) = 6, pad 1:
#             16 + 6 * (12 + 1) = 94 tokens; each detail crop loses 1 row of 4
#   (12, 90), both: grid 32x96 = 1x3 crops, features 4x12; new height int(12 * 12 / 90) = 1, pad 1: rows 1..2
#             kept (the slice keeps 4 - 2 * 1), 16 + 2 * 13 = 42 tokens; each crop loses 2 rows of 4
#   (100, 120), OneVision: grid 128x128 = 4x4 crops, features 16x16; new height int(100 * 16 / 120) = 13, pad 1:
#             14 rows; sqrt(14 * 16 / (9 * 16)) = 1.247 > 1.1: downsampled to 11 x 12: 16 + 11 * 13 = 159 tokens;
#             the top and bottom rows of crops lose 1 row of 4 each
ANYRES_IMAGES = {
    "llava_onevision": {
        (40, 70): (7, 94, [0] + [4] * 6),
        (12, 90): (4, 42, [0, 8, 8, 8]),
        (100, 120): (17, 159, [0] + [4] * 4 + [0] * 8 + [4] * 4),
    },
    "llava_next": {(40, 70): (5, 52, [0, 8, 8, 8, 8]), (12, 90): (4, 42, [0, 8, 8, 8])},
}
FRAME_TOKENS = 4  # 4x4 pooled 2x2


def tiny_anyres(family="llava_onevision", tower=None, attn="sdpa", feature_layer=None, seed=0):
    """A tiny LLaVA-OneVision (SigLIP tower, strategy "full", layer -1) or LLaVA-NeXT (CLIP tower, "default",
    layer -2), crops of 32 px in 8-px patches, a Llama decoder."""
    onevision = family == "llava_onevision"
    tower = tower or ("siglip" if onevision else "clip")
    vision = dict(
        model_type=f"{tower}_vision_model", hidden_size=32, num_hidden_layers=ANYRES_DEPTH, num_attention_heads=4,
        intermediate_size=64, image_size=ANYRES_CROP, patch_size=ANYRES_PATCH,
    )  # fmt: skip
    if tower == "siglip":
        vision["vision_use_head"] = False  # as OneVision's config
    text = dict(
        model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=ANYRES_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
        pad_token_id=PAD,
    )  # fmt: skip
    common = dict(vision_config=vision, text_config=text, image_token_index=ANYRES_IMAGE)
    if feature_layer is not None:
        common["vision_feature_layer"] = feature_layer
    if onevision:
        cfg = LlavaOnevisionConfig(**common, video_token_index=ANYRES_VIDEO, image_grid_pinpoints=OV_PINPOINTS)
        cls = LlavaOnevisionForConditionalGeneration
    else:
        cfg = LlavaNextConfig(**common, image_grid_pinpoints=NEXT_PINPOINTS)
        cls = LlavaNextForConditionalGeneration
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    m = cls(cfg).eval()
    with torch.no_grad():  # random init barely moves the residual stream: make blocks and layers matter
        for name, p in m.named_parameters():
            if p.dim() > 1 and "embed_tokens" not in name:
                p.normal_(0, 0.2 if "vision_tower" in name else 0.08)
    return m


def anyres_prompts(*samples, family="llava_onevision", seed=3):
    """Left-padded batch; each sample a list of items: ``("image", (H, W))`` (tiled when it is the sample's only
    image, else OneVision's multi-image path: one crop) or ``("video", frames)``."""
    g = torch.Generator().manual_seed(seed)
    rows, images, sizes, counts, videos = [], [], [], [], []
    for i, items in enumerate(samples):
        ids = [1, 5]
        n_images = sum(kind == "image" for kind, _ in items)
        tiled = n_images == 1
        for kind, what in items:
            if kind == "image":
                crops, tokens, _ = ANYRES_IMAGES[family].get(tuple(what), (1, 0, None))
                if not tiled:
                    crops, tokens = 1, ANYRES_SIDE**2 + 1
                images.append(torch.randn(crops, 3, ANYRES_CROP, ANYRES_CROP, generator=g))
                sizes.append(list(what))
                ids += [ANYRES_IMAGE] * tokens + [6]
            else:
                videos.append(torch.randn(what, 3, ANYRES_CROP, ANYRES_CROP, generator=g))
                ids += [ANYRES_VIDEO] * (what * FRAME_TOKENS + 1) + [6]
        counts.append(n_images)
        rows.append(ids + [8] * i + [7])
    L = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    mask = (torch.arange(L) >= torch.tensor([L - len(r) for r in rows])[:, None]).long()
    kw = dict(input_ids=ids, attention_mask=mask)
    if images:
        most = max(x.shape[0] for x in images)
        kw["pixel_values"] = torch.stack([torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])]) for x in images])
        kw["image_sizes"] = torch.tensor(sizes)
        if family == "llava_onevision":
            kw["batch_num_images"] = torch.tensor([c for c in counts if c])
    if videos:
        kw["pixel_values_videos"] = torch.stack(videos)
    return kw


def anyres_case(*samples, family="llava_onevision") -> Case:
    """An AnyRes batch and its hand count: an image is one span of its LLM tokens (:data:`ANYRES_IMAGES`, or
    16 + 1 untiled), a video frame one span of 4 (the video's newline with its last frame); the tower runs the
    images' crops in one call (16 patches each, CLIP's CLS on top), then the frames in another."""
    prefix = 0 if family == "llava_onevision" else 1
    spans, crops, frames = [], [], []
    for items in samples:
        tiled = sum(kind == "image" for kind, _ in items) == 1
        sample = []
        for kind, what in items:
            if kind == "image":
                n, tokens, _ = ANYRES_IMAGES[family][tuple(what)] if tiled else (1, ANYRES_SIDE**2 + 1, None)
                sample.append(tokens)
                crops += [ANYRES_SIDE**2 + prefix] * n
            else:
                sample += [FRAME_TOKENS] * (what - 1) + [FRAME_TOKENS + 1]
                frames += [ANYRES_SIDE**2 + prefix] * what
        spans.append(sample)
    return Case(anyres_prompts(*samples, family=family), spans, [c for c in (crops, frames) if c])


LLAVA_ONEVISION = Family(
    "llava_onevision",
    tiny_anyres,
    {  # sample 0: one image, 7 crops, unpadded; sample 1: two images, one crop each
        "padded": anyres_case([("image", (40, 70))], [("image", (40, 70)), ("image", (12, 90))]),
        "video": anyres_case([("video", 3)]),
    },
    prefix=0,
    new_tokens=4,
)
# OneVision, one image of 17 crops, unpadded then downsampled (anyres_max_9); LLaVA-NeXT: a padded batch of two
# tiled images, 5 + 4 crops (tests/test_llava_onevision.py)
OV_DOWNSAMPLED = anyres_case([("image", (100, 120))])
NEXT_PADDED = anyres_case([("image", (40, 70))], [("image", (12, 90))], family="llava_next")

FAMILIES = [QWEN2_VL, QWEN2_5_VL, QWEN3_VL, INTERNVL, LLAVA, LLAVA_ONEVISION]
BY_NAME = {f.name: f for f in FAMILIES}


# --- ViT-style encoders (DINOv2, CLIP vision, SigLIP vision) --------------------------------------

VIT_SIZE, VIT_PATCH = 56, 8  # 7x7 = 49 patches
VIT_FAMILIES = ["dinov2", "clip", "clip_proj", "siglip"]


def _init_vit(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
            elif "lambda1" in name:  # LayerScale
                p.fill_(0.5)
    return model.eval()


def tiny_vit(family: str, attn: str = "eager"):
    """One of :data:`VIT_FAMILIES`."""
    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, image_size=VIT_SIZE, patch_size=VIT_PATCH)
    if family == "dinov2":
        cfg = Dinov2Config(**common, mlp_ratio=2)
        cls = Dinov2Model
    elif family == "clip":
        cfg = CLIPVisionConfig(**common, intermediate_size=64)
        cls = CLIPVisionModel
    elif family == "clip_proj":
        cfg = CLIPVisionConfig(**common, intermediate_size=64, projection_dim=16)
        cls = CLIPVisionModelWithProjection
    else:
        cfg = SiglipVisionConfig(**common, intermediate_size=64)
        cls = SiglipVisionModel
    cfg._attn_implementation = attn
    return _init_vit(cls(cfg))


def vit_images(batch=2, seed=3):
    return torch.randn(batch, 3, VIT_SIZE, VIT_SIZE, generator=torch.Generator().manual_seed(seed))


def vit_encoder(model):
    return model.vision_model.encoder if hasattr(model, "vision_model") else model.encoder


def vit_layers(model):
    enc = vit_encoder(model)
    return enc.layer if hasattr(enc, "layer") else enc.layers
