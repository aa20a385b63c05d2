"""Adapter for the AnyRes LLaVA families: LLaVA-NeXT (``LlavaNextForConditionalGeneration`` / ``LlavaNextModel``,
llava-v1.6 ``-hf`` checkpoints) and LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration`` /
``LlavaOnevisionModel``), with a CLIP or SigLIP tower and a Llama / Qwen2-style decoder (1D RoPE).

Vision: the image processor cuts each image into a base view (the whole image, resized) and the crops of its
best grid; the model runs every crop as one dense sequence of the tower (the ViT encoder code of
:mod:`ipcv.models.vit`, one segment per crop, CLIP's CLS protected and never counted), so the budget is one
equal ``K`` per crop and the crop batch stays dense. The projector reads ``hidden_states[vision_feature_layer]``
(-2 for LLaVA-NeXT, -1 for OneVision, whose SigLIP config already drops the last block): the compressed schedule
ends there, reintegrated (:mod:`ipcv.models._capture`), so ``pack_image_features`` gets the full ``h x w`` grid
of every crop, unpads it, downsamples it (OneVision's ``anyres_max_9``) and adds the newline column exactly as
it always does; OneVision's video frames (2x2 bilinear pooling after the projector) and its multi-image path
(one crop per image) run through the same encoder. The prompt's token count never depends on the features.

Rows and columns that ``unpad_image`` trims (the pixel padding of the best-fit grid) never reach the LLM: IPCV
and DART-ViT prune them first (ToMe / ToFu keep their official matching). The outer model's
``get_image_features`` is the only code that sees ``image_sizes`` (``generate()`` calls it before prefill,
outside the model's forward), so the patched outer class hands the encoder call its crops' trimmed tokens
(:func:`trimmed_tokens`) through a context variable.
The budget stays ``K`` per crop (the FLOPs of the schedule do not change): a crop spends ``K`` on its real
tokens first, and keeps all of them when it has fewer than ``K``.

Language: the shared decoder code (:mod:`ipcv.models._decoder`); each image (base, unpadded grid and newlines)
and each video frame (its pooled tokens; the video's newline goes with its last frame) is a span with its own
budget.
"""

from __future__ import annotations

import inspect
import math
from contextvars import ContextVar

import torch
from torch import nn
from transformers.models.clip import modeling_clip as clip
from transformers.models.llava_next import modeling_llava_next as next_
from transformers.models.llava_onevision import modeling_llava_onevision as ov
from transformers.models.siglip import modeling_siglip as siglip

from ._decoder import DecoderFamily, language_adapter, positions_1d
from .base import Adapter, Harness, RealTower, inner_read_layer
from .configs import SIGLIP_SO400M_OV
from .vit import _CLIP, _SIGLIP, _make_forward, _shaper

_TOWERS = ((clip.CLIPVisionModel, _CLIP), (siglip.SiglipVisionModel, _SIGLIP))
# family -> (whole model, base model, the host module that holds pack_image_features & co.)
_CLASSES = {
    "llava_next": (next_.LlavaNextForConditionalGeneration, next_.LlavaNextModel, next_),
    "llava_onevision": (ov.LlavaOnevisionForConditionalGeneration, ov.LlavaOnevisionModel, ov),
}
# [crops, tokens] bool of the current get_image_features call: tokens unpad_image trims (None: none known)
_TRIMMED: ContextVar[torch.Tensor | None] = ContextVar("ipcv_anyres_trimmed", default=None)


def _base(model: nn.Module, family: str) -> nn.Module | None:
    whole, base, _ = _CLASSES[family]
    if isinstance(model, whole):
        model = model.model
    return model if isinstance(model, base) else None


def _tower(model: nn.Module, family: str, spec) -> nn.Module | None:
    base = _base(model, family)
    if base is None:
        return None
    for cls, s in _TOWERS:
        if s is spec and isinstance(base.vision_tower, cls):
            return base.vision_tower.encoder
    return None


def _read_layer(model: nn.Module, family: str) -> int | None:
    base = _base(model, family)
    return inner_read_layer(base.config.vision_feature_layer, len(base.vision_tower.encoder.layers))


def _segments(encoder: nn.Module, args: tuple, kwargs: dict) -> list[int]:
    h = kwargs.get("inputs_embeds", args[0] if args else None)
    return [h.shape[1]] * h.shape[0]


# --- the AnyRes arithmetic, from the host library's own functions -------------------------------------------


def _host(config):
    return ov if config.model_type == "llava_onevision" else next_


def crop_side(config) -> int:
    """Tokens along one side of a crop (patches of the tower; CLIP's CLS aside)."""
    v = config.vision_config
    return v.image_size // v.patch_size


def crops_of(config, image_size, tiled: bool = True) -> int:
    """Crops the tower runs for an image of ``image_size`` (H, W): base + grid, or 1 untiled."""
    if not tiled:
        return 1
    size = [int(x) for x in image_size]
    return _host(config).image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)


def _unpadded(config, image_size) -> tuple[int, int, torch.Tensor]:
    """``(rows, cols, kept)`` of an image's crop grid: ``kept`` is the ``[rows*h, cols*w]`` bool map of the
    grid's tokens ``unpad_image`` keeps (computed by ``unpad_image`` itself on an index grid)."""
    size = [int(x) for x in image_size]
    host, h = _host(config), crop_side(config)
    rows, cols = host.get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
    index = torch.arange(rows * h * cols * h).view(1, rows * h, cols * h)
    kept = torch.zeros(rows * h * cols * h, dtype=torch.bool)
    kept[host.unpad_image(index, size).flatten()] = True
    return rows, cols, kept.view(rows * h, cols * h)


def image_tokens(config, image_size, tiled: bool = True) -> int:
    """LLM tokens of one image: the base crop's ``h*w``, then the unpadded grid (OneVision: bilinearly
    downsampled when ``sqrt(H*W / (max * h*w)) > 1.1``, ``vision_aspect_ratio="anyres_max_<max>"``) with one
    newline per row; untiled (OneVision's multi-image path): ``h*w + 1``."""
    h = crop_side(config)
    if not tiled:
        return h * h + 1
    _, _, kept = _unpadded(config, image_size)
    rows = int(kept.any(1).sum())
    cols = int(kept.any(0).sum())
    if config.model_type == "llava_onevision":
        most = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (most * h**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
    return h * h + rows * (cols + 1)


def frame_tokens(config) -> int:
    """LLM tokens of one OneVision video frame: the ``h x w`` grid pooled 2x2 (bilinear, ceil)."""
    h = crop_side(config)
    return math.ceil(h / 2) ** 2


def trimmed_tokens(config, image_size, tiled: bool = True) -> torch.Tensor:
    """``[crops, h*w]`` bool: the tokens of each crop of one image that ``unpad_image`` trims (the base crop
    and an untiled image: none)."""
    h = crop_side(config)
    if not tiled:
        return torch.zeros(1, h * h, dtype=torch.bool)
    rows, cols, kept = _unpadded(config, image_size)
    grid = (~kept).view(rows, h, cols, h).permute(0, 2, 1, 3).reshape(rows * cols, h * h)  # crop-major
    return torch.cat([torch.zeros(1, h * h, dtype=torch.bool), grid])


def _tiling(image_sizes, batch_num_images) -> list[bool]:
    if batch_num_images is None:
        return [True] * len(image_sizes)
    return [int(n) == 1 for n in batch_num_images for _ in range(int(n))]


# --- the outer model: hands the encoder the trimmed tokens of its call ---------------------------------------


def _with_trimmed(cls: type, name: str, tiles: bool):
    """``cls.<name>`` (``get_image_features`` / ``get_video_features``) with the tokens ``unpad_image`` will trim
    made known to the encoder call (``tiles``: images; False: video frames, nothing trimmed). Its signature is
    the original's (``generate()`` reads it to choose the arguments it passes)."""
    original = getattr(cls, name)
    signature = inspect.signature(original)

    def method(self, *args, **kwargs):
        trimmed = None
        if tiles:
            bound = signature.bind(self, *args, **kwargs).arguments
            sizes = bound.get("image_sizes")
            if sizes is not None:
                tiled = _tiling(sizes, bound.get("batch_num_images"))
                trimmed = torch.cat([trimmed_tokens(self.config, s, t) for s, t in zip(sizes, tiled)])
        token = _TRIMMED.set(trimmed)
        try:
            return getattr(type(self)._ipcv_base, name)(self, *args, **kwargs)
        finally:
            _TRIMMED.reset(token)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = original.__doc__
    method.__signature__ = signature
    return method


def _make_encoder_forward(spec):
    """The ViT encoder forward of :mod:`ipcv.models.vit`, with the call's trimmed tokens as pruning targets."""
    return _make_forward(spec, expendable=_expendable(spec))


def _expendable(spec):
    def expendable(batch: int, tokens: int, device) -> torch.Tensor | None:
        trimmed = _TRIMMED.get()
        if trimmed is None or trimmed.shape[0] != batch or trimmed.shape[1] + spec.prefix_tokens != tokens:
            return None
        if not bool(trimmed.any()):
            return None
        prefix = torch.zeros(batch, spec.prefix_tokens, dtype=torch.bool)
        return torch.cat([prefix, trimmed], 1).flatten().to(device)

    return expendable


# --- the language decoder ------------------------------------------------------------------------------------


def _locate_language(model: nn.Module, family: str) -> tuple[nn.Module, nn.Module] | None:
    base = _base(model, family)
    return None if base is None else (base, base.language_model)


def _image_lengths(config, kwargs: dict) -> list[int] | None:
    """LLM tokens of each image of the call, in prompt order: from the features ``generate()`` encoded before
    prefill, else from ``image_sizes``; None when unknown."""
    encoded = (kwargs.get("mm_encoder_outputs") or {}).get("image")
    if encoded is not None and encoded.pooler_output is not None:
        return [int(f.shape[0]) for f in encoded.pooler_output]
    sizes = kwargs.get("image_sizes")
    if sizes is None or kwargs.get("pixel_values") is None:
        return None
    tiled = _tiling(sizes, kwargs.get("batch_num_images"))
    return [image_tokens(config, s, t) for s, t in zip(sizes, tiled)]


def _layout(outer, args: tuple, kwargs: dict):
    ids = kwargs.get("input_ids", args[0] if args else None)
    return outer.config, ids, _image_lengths(outer.config, kwargs)


def _spans(layout, batch: int, length: int, device) -> torch.Tensor | None:
    """One span per image (its run of ``image_token_id``, cut by the images' token counts when known: two
    adjacent images are two spans) and one per video frame (``frame_tokens``; the video's trailing newline joins
    its last frame), numbered in prompt order."""
    config, ids, lengths = layout
    if ids is None or ids.shape != (batch, length):
        return None
    ids = ids.cpu()
    image = ids == config.image_token_id
    video_id = getattr(config, "video_token_id", None)
    video = ids == video_id if video_id is not None else torch.zeros_like(image)
    if not bool(image.any() | video.any()):
        return None
    if lengths is not None and sum(lengths) != int(image.sum()):
        lengths = None  # not this call's images: one span per run
    span = torch.full(ids.shape, -1, dtype=torch.long)
    cursor = 0
    for b in range(batch):
        pieces = []
        rows = image[b].nonzero().flatten()
        if lengths is None:
            pieces += _split_runs(rows)
        else:
            start = 0
            while start < rows.numel():
                pieces.append(rows[start : start + lengths[cursor]])
                start += lengths[cursor]
                cursor += 1
        per = frame_tokens(config)
        for run in _split_runs(video[b].nonzero().flatten()):
            frames = max(1, run.numel() // per)
            cuts = [per * f for f in range(1, frames)] + [run.numel()]
            pieces += [run[a:c] for a, c in zip([0] + cuts[:-1], cuts)]
        for i, piece in enumerate(sorted(pieces, key=lambda p: int(p[0]))):
            span[b, piece] = i
    return span


def _split_runs(rows: torch.Tensor) -> list[torch.Tensor]:
    """``rows`` (increasing positions) cut into contiguous runs."""
    if not rows.numel():
        return []
    cuts = ((rows.diff() > 1).nonzero().flatten() + 1).tolist()
    return [rows[a:c] for a, c in zip([0] + cuts, cuts + [rows.numel()])]


LANGUAGE = {
    family: language_adapter(
        DecoderFamily(
            locate=lambda m, f=family: _locate_language(m, f), layout=_layout, spans=_spans, positions=positions_1d
        ),
        outer_methods=tuple(
            (name, _with_trimmed(_CLASSES[family][1], name, name == "get_image_features"))
            for name in ("get_image_features", "get_video_features")
            if hasattr(_CLASSES[family][1], name)
        ),
    )
    for family in _CLASSES
}


def random_crops(patches: int, device, dtype) -> dict:
    """One call of OneVision's SigLIP tower on ``patches // 729`` random 384x384 crops (benchmarks)."""
    per = (SIGLIP_SO400M_OV["image_size"] // SIGLIP_SO400M_OV["patch_size"]) ** 2
    if patches % per:
        raise ValueError(
            f"--patches {patches}: OneVision crops are 384x384 ({per} patches each); use a multiple of {per}"
        )
    return dict(pixel_values=torch.randn(patches // per, 3, 384, 384, device=device, dtype=dtype))


def _so400m() -> nn.Module:
    return siglip.SiglipVisionModel(siglip.SiglipVisionConfig(**SIGLIP_SO400M_OV))


HARNESS = {
    "llava_onevision": Harness(
        "ipcv_llava_onevision", "IPCVLlavaOnevision", "lmms_eval.models.simple.llava_hf.LlavaHf", "simple",
        "llava_onevision",
    ),
    "llava_next": Harness(
        "ipcv_llava_next", "IPCVLlavaNext", "lmms_eval.models.simple.llava_hf.LlavaHf", "simple", "llava_next"
    ),
}  # fmt: skip

TOWER = RealTower(
    "vision_siglip_so400m_ov",
    "SigLIP-so400m (LLaVA-OneVision-7B vision tower, 26 blocks), 384x384 crops",
    "random (architecture of llava-hf/llava-onevision-qwen2-7b-ov-hf's vision tower, SigLIP-so400m-patch14-384 "
    "with its last block dropped); no accuracy is implied",
    _so400m,
    random_crops,
    lambda n: [729] * (n // 729),
    SIGLIP_SO400M_OV["num_hidden_layers"],
)

_NAMES = {"llava_next": "LlavaNext", "llava_onevision": "LlavaOnevision"}

ADAPTERS: list[Adapter] = [
    Adapter(
        family=family,
        classes=(f"{_NAMES[family]}ForConditionalGeneration ({name} tower)", f"{_NAMES[family]}Model ({name} tower)"),
        locate=lambda model, f=family, s=spec: _tower(model, f, s),
        depth=lambda encoder: len(encoder.layers),
        forward=_make_encoder_forward(spec),
        shape=_shaper(spec),
        language=LANGUAGE[family],
        segments=_segments,
        read_layer=lambda model, f=family: _read_layer(model, f),
        harness=HARNESS[family],
        tower=TOWER if family == "llava_onevision" else None,
    )
    for family in ("llava_onevision", "llava_next")
    for name, spec in (("SigLIP", _SIGLIP), ("CLIP", _CLIP))
]
