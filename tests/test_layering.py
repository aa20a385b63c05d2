"""Imports only go down: the API sits above the registry, the registry above the adapters, and
nothing below reaches up (checked on the source, so a lazy import inside a function counts too)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ipcv"

# module -> the ipcv modules it must never import (directly or lazily)
ABOVE = {
    "flops.py": {"api", "bench", "analysis", "eval"},
    "engine.py": {"api", "models", "flops", "bench", "analysis", "eval"},
    "language.py": {"api", "models", "flops", "bench", "analysis", "eval"},
    "models/registry.py": {"api", "flops", "bench", "analysis", "eval"},
}
for p in (ROOT / "models").glob("*.py"):
    if p.name not in ("registry.py", "__init__.py", "pretrained.py"):
        ABOVE[f"models/{p.name}"] = {"api", "registry", "flops", "bench", "analysis", "eval"}


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Top-level ipcv module names (``api``, ``models``, ``registry`` ...) that ``path`` imports."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            parts = list(package[: len(package) - node.level + 1]) if node.level else []
            parts += (node.module or "").split(".") if node.module else []
            full = [p for p in parts if p]
            if full and full[0] == "ipcv":
                names.update(full[1:2])
                names.update(full[2:3])
                if not node.module or len(full) <= 2:
                    names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "ipcv":
                    names.update(parts[1:3])
    return names


@pytest.mark.parametrize("name", sorted(ABOVE))
def test_no_import_reaches_up(name):
    found = _imports(ROOT / name) & ABOVE[name]
    assert not found, f"ipcv/{name} imports {sorted(found)}, which sit above it"


def test_the_checker_sees_a_lazy_upward_import():
    source = "def f():\n    from ..api import find\n    from .registry import ADAPTERS\n"
    assert {"api", "registry"} <= _imports(ROOT / "models" / "probe.py", source)
