"""Imports only go down, and no circle (checked on the source, so a lazy import inside a function counts too).

Every module of ``ipcv/`` belongs to a layer (:data:`LAYERS`, bottom first). A module may import modules of a
lower layer, and modules of its own package (``vision/merging.py`` -> ``vision/__init__.py``); never a module
of a higher layer, nor a sibling package on its own layer (``eval``, ``bench`` and ``analysis`` stand side by
side and do not import each other). The file-level import graph has no cycle. Besides: the pure maths
(``methods/``), the budgets, settings, schedules and the method table import no transformers; nothing in
``ipcv/`` builds a path from ``__file__``'s parents (data is found through :mod:`ipcv.paths`).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ipcv"

# bottom first; a name is a top-level module or package of ipcv
LAYERS: list[set[str]] = [
    {"budgets", "shapes", "clock", "paths", "assets"},
    {"trace", "methods", "settings", "paper"},
    {"vision", "language", "presets"},
    {"catalog"},
    {"method_strings", "models"},
    {"flops"},
    {"api"},
    {"__init__"},
    {"measure"},
    {"serving"},
    {"eval", "bench", "analysis"},
    {"book"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
NO_TRANSFORMERS = ("budgets", "shapes", "clock", "paths", "methods", "settings", "vision", "language", "catalog")


def _unit(path: Path) -> str:
    """The layer unit of a file: its top-level module or package name (``ipcv/__init__.py`` -> ``__init__``)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0]


def _resolve(path: Path, node: ast.ImportFrom) -> list[str]:
    """Dotted ipcv module names an ``ImportFrom`` reaches (the module, and each imported name that may be a
    submodule)."""
    package = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package[:-1]
    if node.level:
        base = package[: len(package) - node.level + 1]
        parts = base + (node.module.split(".") if node.module else [])
    else:
        parts = node.module.split(".") if node.module else []
    if not parts or parts[0] != "ipcv":
        return []
    module = ".".join(parts)
    submodules = [f"{module}.{a.name}" for a in node.names if _file_of(f"{module}.{a.name}") is not None]
    # `from pkg import sub` reaches the submodule; `from mod import name` reaches the module
    return submodules if len(submodules) == len(node.names) else [module, *submodules]


def imports(path: Path, source: str | None = None) -> tuple[set[str], set[str]]:
    """``(ipcv modules imported, other top-level packages imported)`` by ``path``, lazily or not."""
    ours, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            found = _resolve(path, node)
            if found:
                ours.update(found)
            elif node.module and not node.level:
                others.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                (ours if a.name.split(".")[0] == "ipcv" else others).add(
                    a.name if a.name.startswith("ipcv") else a.name.split(".")[0]
                )
    return ours, others


def _file_of(module: str) -> Path | None:
    parts = module.split(".")[1:]
    if not parts:
        return ROOT / "__init__.py"
    rel = Path(*parts)
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


FILES = sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _targets(path: Path) -> set[Path]:
    ours, _ = imports(path)
    return {f for f in map(_file_of, ours) if f is not None and f != path}


def test_every_module_has_a_layer():
    assert {_unit(p) for p in FILES} <= set(RANK), sorted({_unit(p) for p in FILES} - set(RANK))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_reaches_up_or_sideways(path):
    unit = _unit(path)
    bad = []
    for target in _targets(path):
        other = _unit(target)
        if other == unit:
            continue  # inside its own package
        if RANK[other] >= RANK[unit]:
            bad.append(f"{target.relative_to(ROOT)} (layer {RANK[other]}, {sorted(LAYERS[RANK[other]])})")
    assert not bad, f"ipcv/{path.relative_to(ROOT)} (layer {RANK[unit]}) imports {bad}, which do not sit below it"


def test_no_circle_between_files():
    graph = {p: _targets(p) for p in FILES}
    state: dict[Path, int] = {}

    def visit(p: Path, trail: list[Path]) -> None:
        state[p] = 1
        for q in graph.get(p, ()):
            if state.get(q) == 1:
                cycle = [*trail[trail.index(q) :], q] if q in trail else [p, q]
                raise AssertionError("import circle: " + " -> ".join(str(x.relative_to(ROOT)) for x in cycle))
            if q not in state:
                visit(q, [*trail, q])
        state[p] = 2

    for p in FILES:
        if p not in state:
            visit(p, [p])


@pytest.mark.parametrize(
    "path", [p for p in FILES if _unit(p) in NO_TRANSFORMERS], ids=lambda p: str(p.relative_to(ROOT))
)
def test_the_maths_settings_and_schedules_know_no_transformers(path):
    assert "transformers" not in imports(path)[1], f"ipcv/{path.relative_to(ROOT)} imports transformers"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_path_is_built_from_the_source_tree(path):
    text = path.read_text()
    assert "parents[" not in text and ".parent.parent" not in text, f"ipcv/{path.relative_to(ROOT)}: use ipcv.paths"


def test_the_checker_sees_lazy_upward_and_sideways_imports(tmp_path):
    probe = ROOT / "models" / "probe.py"
    source = "def f():\n    from ..api import compress\n    from .registry import ADAPTERS\n    import transformers\n"
    ours, others = imports(probe, source)
    assert {"ipcv.api", "ipcv.models.registry"} <= ours and "transformers" in others
    sideways = ROOT / "eval" / "probe.py"
    ours, _ = imports(sideways, "from ..bench.common import note\n")
    assert {_unit(f) for f in map(_file_of, ours) if f} == {"bench"} and RANK["bench"] == RANK["eval"]


def test_only_the_vllm_adapter_knows_vllm():
    """vLLM is imported by ipcv/serving/vllm_plugin.py and vllm_models.py only (and, lazily, by the benchmark
    that runs it); ipcv/serving/__init__.py, the switch, knows no vLLM."""
    users = {str(p.relative_to(ROOT)) for p in FILES if "vllm" in imports(p)[1]}
    assert users == {"serving/vllm_plugin.py", "serving/vllm_models.py", "bench/serving.py"}, users
