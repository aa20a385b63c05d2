"""The settings classes of every compression method, by side, and the types of the public API.

- :mod:`~ipcv.settings.vision`: :class:`IPCV`, :class:`ToMe`, :class:`ToFu`, :class:`DARTViT`;
- :mod:`~ipcv.settings.language`: :class:`DART`, :class:`FastV`, :class:`V2Drop`, :class:`SparseVLM` (inside the
  decoder) and the pre-LLM :class:`VisionZip`, :class:`DivPrune`, :class:`CDPruner`, :class:`RandomKeep`,
  :class:`Pool` (at its input).

Which runner and which analytic count go with each class is said once, in :mod:`ipcv.catalog`.
"""

from __future__ import annotations

from typing import TypeAlias

from .language import DART, CDPruner, DivPrune, FastV, Pool, RandomKeep, SparseVLM, V2Drop, VisionZip
from .vision import IPCV, DARTViT, ToFu, ToMe

VisionMethod: TypeAlias = IPCV | ToMe | ToFu | DARTViT
"""Any vision-side method's settings (``compress(model, vision=...)``)."""
LanguageMethod: TypeAlias = DART | FastV | V2Drop | SparseVLM | VisionZip | DivPrune | CDPruner | RandomKeep | Pool
"""Any LLM-side method's settings (``compress(model, language=...)``)."""

__all__ = [
    "CDPruner", "DART", "IPCV", "DARTViT", "DivPrune", "FastV", "LanguageMethod", "Pool", "RandomKeep", "SparseVLM",
    "ToFu", "ToMe", "V2Drop", "VisionMethod", "VisionZip",
]  # fmt: skip
