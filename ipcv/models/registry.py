"""The registry of model families: which adapter handles a model, and what each family can do.

It sits above the adapters and below everything that works on whole models (:mod:`ipcv.flops`,
:mod:`ipcv.api`, :mod:`ipcv.eval`, :mod:`ipcv.bench`). A new family is one adapter file plus one line in
:data:`ADAPTERS`; everything else (what ``compress`` accepts, the lmms-eval ids, the benchmarks' towers) is
read from the adapters. One family may have several adapters (LLaVA with a CLIP or a SigLIP tower, the
ViT classes): they share its name.
"""

from __future__ import annotations

from torch import nn

from . import internvl, llava, llava_anyres, qwen2_5_vl, qwen2_vl, qwen3_vl, vit
from .base import Adapter

ADAPTERS: list[Adapter] = [
    qwen2_vl.ADAPTER,
    qwen2_5_vl.ADAPTER,
    qwen3_vl.ADAPTER,
    internvl.ADAPTER,
    *llava.ADAPTERS,
    *llava_anyres.ADAPTERS,
    *vit.ADAPTERS,
]


def supported_models() -> list[str]:
    """Names of the model classes ``ipcv.compress`` accepts."""
    return [name for a in ADAPTERS for name in a.classes]


def families() -> dict[str, Adapter]:
    """``{family: its first adapter}``, in registry order (the capabilities a family's adapters share)."""
    out: dict[str, Adapter] = {}
    for a in ADAPTERS:
        out.setdefault(a.family, a)
    return out


def family(name: str) -> Adapter:
    """The adapter of family ``name``; ValueError naming the families if there is none."""
    found = families().get(name)
    if found is None:
        raise ValueError(f"family={name!r} is not allowed: use one of {', '.join(families())}")
    return found


def find(model: nn.Module) -> tuple[Adapter, nn.Module]:
    """``(adapter, encoder module it patches)`` for ``model``; TypeError naming the supported classes if none."""
    for adapter in ADAPTERS:
        target = adapter.locate(model)
        if target is not None:
            return adapter, target
    raise TypeError(f"ipcv cannot compress a {type(model).__name__}; supported models: {', '.join(supported_models())}")
