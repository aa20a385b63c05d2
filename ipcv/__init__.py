"""ipcv: Information-Preserving Compression for MLLM visual encoders (IPCV), on transformers' own
model classes.

    import ipcv
    ipcv.compress(model, vision=ipcv.IPCV(0.35))   # patch in place
    ipcv.compress(model, vision=ipcv.IPCV(0.35), language=ipcv.DART(0.35))   # both sides
    ipcv.restore(model)                            # bit-exact undo
"""

from . import presets
from .api import compress, compressed, restore, settings, stats, supported_models, vision_attention
from .budgets import keep_count
from .catalog import METHODS
from .flops import costs
from .settings import (
    DART,
    IPCV,
    CDPruner,
    DARTViT,
    DivPrune,
    FastV,
    LanguageMethod,
    Pool,
    RandomKeep,
    SparseVLM,
    ToFu,
    ToMe,
    V2Drop,
    VisionMethod,
    VisionZip,
)  # fmt: skip
from .trace import trace

__version__ = "0.1.0"

_API = ["compress", "compressed", "costs", "keep_count", "presets", "restore", "settings", "stats",
        "supported_models", "trace", "vision_attention", "VisionMethod", "LanguageMethod"]  # fmt: skip
# every method of the one table (ipcv.catalog.METHODS) is public under its settings class's name
__all__ = [*(m.name for m in METHODS), *_API]
if any(globals().get(m.name) is not m.settings for m in METHODS):
    raise ImportError("ipcv: a method of ipcv.catalog.METHODS is not exported under its name")
