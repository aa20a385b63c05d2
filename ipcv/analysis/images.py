"""Real photographs that need no download (scikit-image's bundled data) and patch-grid helpers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Bundled with scikit-image (no download): people, animals, objects, text, a telescope image.
BUNDLED: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "page",
    "hubble_deep_field",
)
IMAGE_SETS: dict[str, tuple[str, ...]] = {"bundled": BUNDLED, "smoke": ("astronaut",)}


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any scikit-image array (grey, bool, RGBA, float in [0, 1]) as ``[H, W, 3]`` uint8 RGB."""
    x = np.asarray(image)
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    elif x.dtype != np.uint8:
        x = np.clip(np.round(x.astype(np.float64) * (255.0 if x.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    if x.shape[-1] == 4:
        x = x[:, :, :3]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"cannot make an RGB image of an array of shape {np.asarray(image).shape}")
    return np.ascontiguousarray(x)


def image_names(images: str | Sequence[str]) -> list[str]:
    """Names of an image set (``"bundled"``, ``"smoke"``) or a list of scikit-image names."""
    if isinstance(images, str):
        if images in IMAGE_SETS:
            return list(IMAGE_SETS[images])
        return [images]
    return [str(n) for n in images]


def load_images(images: str | Sequence[str] = "bundled") -> dict[str, np.ndarray]:
    """The named photographs of ``skimage.data`` as ``{name: [H, W, 3] uint8}`` (no download).

    Raises:
        ValueError: a name that ``skimage.data`` does not bundle (those need a download).
    """
    import skimage.data

    out = {}
    for name in image_names(images):
        loader = getattr(skimage.data, name, None) if not name.startswith("_") else None
        if not callable(loader) or name in ("download_all", "lbp_frontal_face_cascade_filename"):
            raise ValueError(f"skimage.data has no image {name!r}; bundled ones include {', '.join(BUNDLED)}")
        try:
            image = loader()
        except ModuleNotFoundError as e:  # scikit-image asks for pooch: the file is not bundled
            raise ValueError(f"skimage.data.{name} is not bundled (it needs a download): {e}") from None
        if not isinstance(image, np.ndarray):
            raise ValueError(f"skimage.data.{name} is not a single image")
        out[name] = to_rgb(image)
    return out


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8: the geometry the encoders see (whole image stretched, bilinear,
    antialiased, as :func:`ipcv.models.preprocess`), for drawing patches over it."""
    x = torch.from_numpy(to_rgb(image)).permute(2, 0, 1)[None].float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def to_grid(values: np.ndarray | torch.Tensor, raster: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Per-patch values in token order ``[n]`` as an image-shaped ``[h, w]`` array.

    ``raster[j]`` is the row-major grid position (``row * w + col``) of the j-th patch token
    (identity for ViTs; Qwen2-VL orders its patches by 2x2 merge window).
    """
    h, w = grid_hw
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if v.shape[0] != h * w or len(raster) != h * w:
        raise ValueError(f"{v.shape[0]} values / {len(raster)} positions for a {h}x{w} grid")
    out = np.empty((h * w,) + v.shape[1:], dtype=v.dtype)
    out[np.asarray(raster)] = v
    return out.reshape((h, w) + v.shape[1:])
