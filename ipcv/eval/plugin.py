"""lmms-eval's plugin entry point (``[project.entry-points."lmms_eval.models"]`` in pyproject.toml).

lmms-eval calls :func:`manifests` at start-up to learn the model ids ipcv adds; it imports a wrapper
class (built in :mod:`ipcv.eval.harness`) only when that model is used. This table is the one place a
model family is added: its lmms-eval id, the class name, the lmms-eval wrapper it extends and that
wrapper's kind ("simple" or "chat", as lmms-eval registers it).
"""

from __future__ import annotations

# lmms-eval --model id -> (class in ipcv.eval.harness, lmms-eval wrapper it subclasses, kind)
MODELS: dict[str, tuple[str, str, str]] = {
    "ipcv_qwen2_vl": ("IPCVQwen2VL", "lmms_eval.models.simple.qwen2_vl.Qwen2_VL", "simple"),
    "ipcv_qwen2_5_vl": ("IPCVQwen2_5VL", "lmms_eval.models.chat.qwen2_5_vl.Qwen2_5_VL", "chat"),
    "ipcv_internvl3": ("IPCVInternVL3", "lmms_eval.models.chat.internvl_hf.InternVLHf", "chat"),
    "ipcv_llava": ("IPCVLlava", "lmms_eval.models.simple.llava_hf.LlavaHf", "simple"),
}


def manifests():
    """The ``ModelManifest`` of every ipcv wrapper, of the same kind as the wrapper it extends."""
    from lmms_eval.models.registry_v2 import ModelManifest

    out = []
    for model_id, (cls, _, kind) in MODELS.items():
        path = f"ipcv.eval.harness.{cls}"
        out.append(ModelManifest(model_id=model_id, **{f"{kind}_class_path": path}))
    return out
