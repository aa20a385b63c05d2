"""lmms-eval's plugin entry point (``[project.entry-points."lmms_eval.models"]`` in pyproject.toml).

lmms-eval calls :func:`manifests` at start-up to learn the model ids ipcv adds; it imports a wrapper
class (built in :mod:`ipcv.eval.harness`) only when that model is used. The rows come from the adapters
(:attr:`ipcv.models.base.Adapter.harness`): a family is evaluated through lmms-eval by saying so there.
"""

from __future__ import annotations

from ..models.base import Harness


def harnesses() -> dict[str, Harness]:
    """``--family`` -> how lmms-eval runs it, for every family whose adapter has a harness row (the adapters
    are imported only when this is called, not when lmms-eval reads the entry point)."""
    from ..models.registry import families

    return {name: a.harness for name, a in families().items() if a.harness is not None}


def manifests():
    """The ``ModelManifest`` of every ipcv wrapper, of the same kind as the wrapper it extends."""
    from lmms_eval.models.registry_v2 import ModelManifest

    out = []
    for h in harnesses().values():
        path = f"ipcv.eval.harness.{h.class_name}"
        out.append(ModelManifest(model_id=h.model_id, **{f"{h.kind}_class_path": path}))
    return out
