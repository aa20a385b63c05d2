"""ipcv: Information-Preserving Compression for MLLM visual encoders (IPCV), on transformers' own
model classes.

    import ipcv
    ipcv.compress(model, vision=ipcv.IPCV(0.35))   # patch in place
    ipcv.restore(model)                            # bit-exact undo
"""

from .api import compress, compressed, restore, settings, supported_models
from .config import IPCV, DARTViT, ToFu, ToMe, keep_count
from .trace import trace

__version__ = "0.1.0"

__all__ = [
    "IPCV",
    "DARTViT",
    "ToFu",
    "ToMe",
    "compress",
    "compressed",
    "keep_count",
    "restore",
    "settings",
    "supported_models",
    "trace",
]
