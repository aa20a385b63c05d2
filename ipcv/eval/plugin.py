"""lmms-eval's plugin entry point (``[project.entry-points."lmms_eval.models"]`` in pyproject.toml).

lmms-eval calls :func:`manifests` at start-up to learn the model ids ipcv adds; it imports the wrapper
classes (:mod:`ipcv.eval.harness`) only when one of them is used. One row per model family: a family
the library supports gets its entry here and its class in ``harness``.
"""

from __future__ import annotations

# model id for ``lmms-eval --model`` -> wrapper class in ipcv.eval.harness
MODELS: dict[str, str] = {
    "ipcv_qwen2_vl": "IPCVQwen2VL",
}


def manifests():
    """The ``ModelManifest`` of every ipcv wrapper (simple-mode models, like the wrappers they extend)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=model_id, simple_class_path=f"ipcv.eval.harness.{cls}")
        for model_id, cls in MODELS.items()
    ]
