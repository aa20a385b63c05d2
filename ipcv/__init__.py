"""ipcv: Information-Preserving Compression for MLLM visual encoders (IPCV), on transformers' own
model classes.

    import ipcv
    ipcv.compress(model, vision=ipcv.IPCV(0.35))   # patch in place
    ipcv.compress(model, vision=ipcv.IPCV(0.35), language=ipcv.DART(0.35))   # both sides
    ipcv.restore(model)                            # bit-exact undo
"""

from . import presets
from .api import compress, compressed, restore, settings, stats, supported_models, vision_attention
from .config import DART, IPCV, DARTViT, FastV, SparseVLM, ToFu, ToMe, V2Drop, keep_count
from .flops import costs
from .trace import trace

__version__ = "0.1.0"

__all__ = [
    "DART",
    "IPCV",
    "DARTViT",
    "FastV",
    "SparseVLM",
    "V2Drop",
    "ToFu",
    "ToMe",
    "compress",
    "compressed",
    "costs",
    "keep_count",
    "presets",
    "restore",
    "settings",
    "stats",
    "supported_models",
    "trace",
    "vision_attention",
]
