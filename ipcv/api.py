"""The public surface: ``compress``, ``restore``, ``compressed``, and the registry of model families.

Patching follows ToMe's pattern: the encoder module that owns the block loop gets its class swapped
for a subclass whose ``forward`` runs the compressed schedule; its settings live in one attribute,
``_ipcv_vision``. No weight is copied or changed, so ``restore`` (swapping the class back) gives a
model that computes exactly what it computed before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from . import schedules  # noqa: F401  (registers ToMe, ToFu, DARTViT in VISION_RUNNERS)
from .config import IPCV
from .engine import VISION_RUNNERS
from .models import qwen2_vl, vit
from .models._attention import check_attention
from .models.base import Adapter

ADAPTERS: list[Adapter] = [qwen2_vl.ADAPTER, *vit.ADAPTERS]

_SETTINGS = "_ipcv_vision"
_subclasses: dict[tuple[type, object], type] = {}


def supported_models() -> list[str]:
    """Names of the model classes ``compress`` accepts."""
    return [name for a in ADAPTERS for name in a.classes]


def _find(model: nn.Module) -> tuple[Adapter, nn.Module]:
    for adapter in ADAPTERS:
        target = adapter.locate(model)
        if target is not None:
            return adapter, target
    raise TypeError(f"ipcv cannot compress a {type(model).__name__}; supported models: {', '.join(supported_models())}")


def _patched_class(cls: type, forward) -> type:
    key = (cls, forward)
    if key not in _subclasses:
        _subclasses[key] = type(f"IPCV{cls.__name__}", (cls,), {"forward": forward, "_ipcv_base": cls})
    return _subclasses[key]


def compress(model: nn.Module, vision: IPCV | None = None, language: None = None) -> nn.Module:
    """Patch ``model`` in place so its vision encoder runs compressed; returns ``model``.

    Calling it again replaces the previous settings. Accepted models: see
    :func:`supported_models`; anything else raises TypeError.

    Args:
        vision: the vision-side method: ``ipcv.IPCV(...)`` or a baseline (``ipcv.ToMe``,
            ``ipcv.ToFu``, ``ipcv.DARTViT``); any settings class registered in
            :data:`ipcv.engine.VISION_RUNNERS`.
        language: LLM-side method; none is available in this release (must be None).
    """
    if language is not None:
        raise NotImplementedError(
            f"language={language!r}: LLM-side pruning methods are not part of this release of ipcv; pass language=None"
        )
    if vision is None:
        raise ValueError("compress: give a vision-side method, e.g. vision=ipcv.IPCV(0.35)")
    if type(vision) not in VISION_RUNNERS:
        raise TypeError(
            f"vision={vision!r} is not a vision-side method; use one of {', '.join(m.__name__ for m in VISION_RUNNERS)}"
        )
    adapter, target = _find(model)
    vision.check_depth(adapter.depth(target))
    check_attention(target.config, type(model).__name__)
    base = getattr(type(target), "_ipcv_base", type(target))
    target.__class__ = _patched_class(base, adapter.forward)
    setattr(target, _SETTINGS, vision)
    return model


def restore(model: nn.Module) -> nn.Module:
    """Remove every patch ``compress`` made; the model computes exactly what it did before."""
    _, target = _find(model)
    base = getattr(type(target), "_ipcv_base", None)
    if base is not None:
        target.__class__ = base
    target.__dict__.pop(_SETTINGS, None)
    return model


def settings(model: nn.Module) -> IPCV | None:
    """The vision-side settings ``model`` is compressed with, or None."""
    _, target = _find(model)
    return getattr(target, _SETTINGS, None)


@contextmanager
def compressed(model: nn.Module, vision: IPCV | None = None, language: None = None) -> Iterator[nn.Module]:
    """``with ipcv.compressed(model, vision=ipcv.IPCV(0.35)):`` compress inside the block only;
    on exit the model is back to what it was (uncompressed, or its earlier settings)."""
    previous = settings(model)
    compress(model, vision=vision, language=language)
    try:
        yield model
    finally:
        if previous is None:
            restore(model)
        else:
            compress(model, vision=previous)
