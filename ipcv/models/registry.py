"""The registry of model families: which adapter handles a model.

It sits above the adapters and below everything that works on whole models (:mod:`ipcv.flops`,
:mod:`ipcv.api`); adding a family is one adapter file plus one entry in :data:`ADAPTERS`.
"""

from __future__ import annotations

from torch import nn

from . import internvl, llava, qwen2_5_vl, qwen2_vl, vit
from .base import Adapter

ADAPTERS: list[Adapter] = [
    qwen2_vl.ADAPTER,
    qwen2_5_vl.ADAPTER,
    internvl.ADAPTER,
    *llava.ADAPTERS,
    *vit.ADAPTERS,
]


def supported_models() -> list[str]:
    """Names of the model classes ``ipcv.compress`` accepts."""
    return [name for a in ADAPTERS for name in a.classes]


def find(model: nn.Module) -> tuple[Adapter, nn.Module]:
    """``(adapter, encoder module it patches)`` for ``model``; TypeError naming the supported classes if none."""
    for adapter in ADAPTERS:
        target = adapter.locate(model)
        if target is not None:
            return adapter, target
    raise TypeError(f"ipcv cannot compress a {type(model).__name__}; supported models: {', '.join(supported_models())}")
