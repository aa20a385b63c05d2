"""The settings behind every row of the IPCV paper's Tables 1-6, in two protocols.

    vision, language = ipcv.presets.paper_settings("table4", "vit35_llm35", "IPCV")
    ipcv.compress(model, vision=vision, language=language)

``protocol="paper"`` is what the authors ran (their evaluation scripts and the Qwen2-VL ports of the
baselines in the first commit of their release, github Perkzi/IPCV): LLM-side pruning at decoder
layer 3 (DART and FastV: the script's ``pruned_layer=3``) on the first visual block only, budgets rounded as
``int(n * (1 - reduction))``, IPCV's, DART(ViT)'s and the ToMe / ToFu ports' one budget over all
images (``scope="global"``), the ViT-side baselines handing the LLM only their kept / merged tokens and
no LLM-side pruner behind them. ``protocol="official"`` runs each compared method as its own official
code defines it, at the row's ratios (DART and FastV at layer 2, V2Drop and SparseVLM with their
layer-averaged budgets, ToMe with its even schedule per image). DART(ViT) has no official code of its
own: both protocols use the authors' version; ToFu has none either: the official protocol uses
:class:`ipcv.ToFu`'s defaults (our reading of its paper). What the two protocols still cannot
reproduce is listed in the book ("Differences from the official code and from the paper's runs").

A row is ``(table, setting, method)`` with ``setting`` and ``method`` exactly as in
``data/paper/*.csv``; ``setting`` ``vitV_llmL`` means the ViT keeps V % of its patches and the LLM
L % of the visual tokens. The ViT-side baselines' rows use ``output="reduced"`` (the LLM receives only
the kept merge units), which :func:`ipcv.compress` runs on Qwen2-VL and Qwen2.5-VL (other families:
NotImplementedError).
"""

from __future__ import annotations

import math

from .settings import (
    DART,
    IPCV,
    CDPruner,
    DARTViT,
    DivPrune,
    FastV,
    Pool,
    RandomKeep,
    SparseVLM,
    ToFu,
    ToMe,
    V2Drop,
    VisionZip,
)

PROTOCOLS: tuple[str, ...] = ("paper", "official")

# (setting, method) of every row, in table order (checked against data/paper/*.csv by the tests)
_ROWS: dict[str, tuple[tuple[str, str], ...]] = {
    "table1": (
        ("vanilla", "Vanilla"),
        *(
            (s, m)
            for s in ("vit50_llm50", "vit35_llm35", "vit20_llm20")
            for m in ("DART (ViT)", "ToMe", "ToFu", "IPCV")
        ),
        *((s, m) for s in ("vit100_llm20", "vit100_llm5") for m in ("DART", "FastV", "V2Drop", "SparseVLM")),
    ),
    "table2": (
        ("vanilla", "Vanilla"),
        *(("vit50_llm50", m) for m in ("DART (ViT)", "ToMe", "ToFu", "IPCV")),
        *(("vit100_llm20", m) for m in ("DART", "FastV", "V2Drop", "SparseVLM")),
    ),
    "table3": (
        ("vanilla", "Vanilla"),
        *(("vit40_llm40", m) for m in ("DART (ViT)", "ToMe", "ToFu", "IPCV+FastV")),
        *(("vit100_llm5", m) for m in ("DART", "FastV", "V2Drop", "SparseVLM")),
    ),
    "table4": (
        ("vanilla", "Vanilla"),
        *(
            (s, m)
            for s in ("vit65_llm65", "vit50_llm50", "vit35_llm35", "vit20_llm20")
            for m in ("DART (ViT)", "ToMe", "ToFu", "IPCV")
        ),
        *(
            (s, m)
            for s in ("vit100_llm35", "vit100_llm20", "vit100_llm5")
            for m in ("DART", "FastV", "V2Drop", "SparseVLM")
        ),
    ),
    "table5": (
        ("vanilla", "Vanilla"),
        *(("vit35_llm35", m) for m in ("IPCV+DART", "IPCV+FastV", "IPCV+V2Drop", "IPCV+SparseVLM")),
    ),
    "table6": (
        ("vanilla", "Vanilla"),
        *(("vit35_llm35", m) for m in ("IPCV", "IPCV (w/o AS)", "IPCV (w/o Reint.)", "IPCV (w/o AS & Reint.)")),
    ),
}
TABLES: tuple[str, ...] = tuple(_ROWS)
INTERNVL_TABLES: tuple[str, ...] = ("table3",)  # InternVL3-38B; every other table is Qwen2-VL-7B-Instruct

# The authors' runs (their evaluation script and baseline ports)
PAPER_LLM_LAYER = 3  # the evaluation script's pruned_layer: DART and FastV (alone and after IPCV)
# FastV: every Qwen2-VL and InternVL3 evaluation script of the release passes pruned_layer=3, and their FastV
# port prunes the input of decoder layer pruned_layer with layer pruned_layer - 1's attention (an eager layer
# swapped in there), i.e. FastV(layer=3). Table 4's KV column fits layer 2 better (43.1 / 29.9 / 16.8 % of
# vanilla at 35 / 20 / 5 % against the table's 42.0 / 29.5 / 17.0 %; layer 3: 45.3 / 32.6 / 20.0 %), so the
# table's FastV rows may come from another run than the published script; the presets follow the script (see
# the book's differences page). DART fits layer 3 (45.5 / 32.7 / 19.9 % against 45.6 / 33.0 / 20.8 %).
PAPER_FASTV_LAYER = PAPER_LLM_LAYER
# per model family (the adapters' names, ipcv.models.registry): IPCV's l_p (and the ViT baselines' first pruned
# block), its AS depth, and its budget scope (the authors' Qwen2-VL code takes one top-K over the call; their
# InternVL3 rows run per 448x448 tile, see the book's page on differences)
PAPER_VIT_LAYER = {"qwen2_vl": 3, "internvl": 7}
PAPER_AS = {"qwen2_vl": 7, "internvl": 3}
PAPER_IPCV_SCOPE = {"qwen2_vl": "global", "internvl": "segment"}
PAPER_NEIGHBORS = 10
TOME_RELEASE_MIN_KEEP = 0.8  # the authors' ToMe/ToFu ports: a block removes at most 20 % of its tokens


def paper_rows(table: str) -> list[tuple[str, str]]:
    """``(setting, method)`` of every row of ``table`` (``"table1"`` .. ``"table6"``), in table order."""
    _check(table, TABLES, "table")
    return list(_ROWS[table])


def _check(value: object, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"paper_settings: {name}={value!r} is not allowed: use one of {allowed}")


def _ratios(setting: str) -> tuple[float, float]:
    vit, llm = setting.split("_")
    return int(vit[3:]) / 100, int(llm[3:]) / 100


def tofu_release_prune_layers(keep_ratio: float, start_layer: int) -> int:
    """Leading blocks that prune in the authors' ToFu runs: from ``start_layer`` on, the first half of
    the ``ceil(log(keep) / log(0.8))`` merging blocks prune (block ``i`` prunes while
    ``i - start_layer < total / 2``), the rest merge."""
    if keep_ratio >= 1.0:
        return start_layer
    total = math.ceil(math.log(keep_ratio) / math.log(TOME_RELEASE_MIN_KEEP))
    return start_layer + math.ceil(total / 2)


def _llm(method: str, keep: float, protocol: str):
    """One LLM-side pruner at ``keep`` in ``protocol``."""
    if protocol == "official":
        common = dict(spans="first")
        if method == "DART":
            return DART(keep, budget="per_pivot", **common)
        if method == "FastV":
            return FastV(keep, **common)
        if method == "V2Drop":
            return V2Drop(keep, **common)
        if method == "SparseVLM":
            return SparseVLM(keep, **common)
    else:
        common = dict(spans="first", rounding="floor")
        if method == "DART":
            return DART(
                keep, layer=PAPER_LLM_LAYER, key_layer="previous", text_from="after_image", pivot_order="official",
                budget="per_pivot", **common,
            )  # fmt: skip
        if method == "FastV":
            return FastV(keep, layer=PAPER_FASTV_LAYER, **common)
        if method == "V2Drop":  # the authors' port: layers 3, 17, 22; keep, keep, then one token; cosine score
            return V2Drop(
                keep, layers=(3, 17, 22), budget="progressive", stage_ratios=(keep, keep, 0.0), score="cosine",
                **common,
            )  # fmt: skip
        if method == "SparseVLM":  # the authors' port: layers 3, 7, 16 keeping keep, 0.5, 0.5 of the current count
            return SparseVLM(
                keep, layers=(3, 7, 16), budget="progressive", stage_ratios=(keep, 0.5, 0.5), recycle=0.05,
                recycle_rule="at_least_one", raters="all", **common,
            )  # fmt: skip
    raise AssertionError(method)


def _ipcv(keep: float, family: str, protocol: str, **ablation) -> IPCV:
    scope = PAPER_IPCV_SCOPE[family] if protocol == "paper" else "segment"
    values = dict(
        prune_layer=PAPER_VIT_LAYER[family], stabilize_layers=PAPER_AS[family], neighbors=PAPER_NEIGHBORS, scope=scope
    )
    return IPCV(keep, **(values | ablation))


def _vit_baseline(method: str, keep: float, family: str, protocol: str):
    start = PAPER_VIT_LAYER[family]
    if method == "DART (ViT)":  # no official code besides the authors' own
        return DARTViT(
            keep, prune_layer=start, pivots=4, key_layer="previous", budget="per_pivot4", output="reduced",
            scope="global", metric="rotated_keys", frame_bounds="release",
        )  # fmt: skip
    if protocol == "official":  # ToMe's own schedule, per image, the reduced token set goes on
        return ToMe(keep, output="reduced") if method == "ToMe" else ToFu(keep, output="reduced")
    # the authors' ports: one matching over the call, their schedule, unweighted means, keys after the
    # rotary embedding, no proportional attention
    release = dict(
        output="reduced", scope="global", schedule="release", start_layer=start, merge="mean",
        proportional_attention=False, metric="rotated_keys",
    )  # fmt: skip
    if method == "ToMe":
        return ToMe(keep, **release)
    return ToFu(keep, prune_layers=tofu_release_prune_layers(keep, start), **release)


_ABLATIONS = {
    "IPCV": {},
    "IPCV (w/o AS)": {"stabilize_layers": 0},
    "IPCV (w/o Reint.)": {"reintegrate": False},
    "IPCV (w/o AS & Reint.)": {"stabilize_layers": 0, "reintegrate": False},
}


def paper_settings(table: str, setting: str, method: str, protocol: str = "paper") -> tuple[object, object]:
    """``(vision, language)`` settings of one row of the paper's tables, for :func:`ipcv.compress`.

    Args:
        table: ``"table1"`` .. ``"table6"``.
        setting, method: the row's ``setting`` and ``method`` exactly as in ``data/paper/<table>.csv``
            (``"vit35_llm35"``, ``"IPCV"``; ``"vit100_llm20"``, ``"SparseVLM"``; ``"vanilla"``,
            ``"Vanilla"``); :func:`paper_rows` lists them.
        protocol: ``"paper"`` (what the authors ran) or ``"official"`` (each method's official
            definition at the row's ratios); see the module docstring.
    Returns: ``(vision, language)``, either None where that side is not compressed (``Vanilla`` gives
        ``(None, None)``; the ViT-side baselines run without an LLM-side pruner; LLM-side rows keep the
        whole ViT).
    Raises: ValueError naming the allowed values for an unknown table, row or protocol.
    """
    _check(table, TABLES, "table")
    _check(protocol, PROTOCOLS, "protocol")
    rows = _ROWS[table]
    _check(setting, tuple(dict.fromkeys(s for s, _ in rows)), f"setting (of {table})")
    _check(method, tuple(m for s, m in rows if s == setting), f"method (of {table}, {setting})")
    if method == "Vanilla":
        return None, None
    family = "internvl" if table in INTERNVL_TABLES else "qwen2_vl"
    vit, llm = _ratios(setting)
    if method in _ABLATIONS or method.startswith("IPCV+"):
        vision = _ipcv(vit, family, protocol, **_ABLATIONS.get(method, {}))
        partner = method.split("+", 1)[1] if "+" in method else "DART"  # the paper pairs IPCV with DART
        return vision, _llm(partner, llm, protocol)
    if method in ("DART (ViT)", "ToMe", "ToFu"):
        return _vit_baseline(method, vit, family, protocol), None
    return None, _llm(method, llm, protocol)


# --- this project's 2026 comparison (not a table of the paper) ------------------------------------------

MODERN_RATIOS: tuple[float, ...] = (0.35, 0.2, 0.1)
"""The keep ratios of the 2026 comparison: 35 / 20 / 10 % of the tokens on the method's side."""
PRE_LLM = ("VisionZip", "DivPrune", "CDPruner", "RandomKeep", "Pool")


def pre_llm_method(method: str, keep: float, ipcv: IPCV | None = None):
    """A pre-LLM method at ``keep`` with the library's defaults; behind ``ipcv``, VisionZip scores the tower
    block before IPCV's first pruned one (its default, the last block, no longer sees every patch)."""
    if method == "VisionZip":
        return VisionZip(keep) if ipcv is None else VisionZip(keep, layer=ipcv.prune_layer - 1)
    return {"DivPrune": DivPrune, "CDPruner": CDPruner, "RandomKeep": RandomKeep, "Pool": Pool}[method](keep)


MODERN_DECODER_LAYERS = 28  # Qwen2-VL-7B-Instruct's decoder, the sweep's model


def modern_not_run(ratios: tuple[float, ...] = MODERN_RATIOS) -> dict[str, str]:
    """The settings :func:`modern_settings` leaves out, with the reason: V2Drop's and SparseVLM's
    layer-averaged budget (their default) cannot go below ``3 / 28`` on a 28-layer decoder (layers 0-2 keep
    every token), so they have no 10 % row."""
    out = {}
    for r in ratios:
        for cls in (V2Drop, SparseVLM):
            try:
                cls(r).check_depth(MODERN_DECODER_LAYERS)
            except ValueError as e:
                out[f"{cls.__name__} {round(100 * r)}%"] = str(e)
    return out


def modern_settings(ratios: tuple[float, ...] = MODERN_RATIOS) -> list[tuple[str, object, object]]:
    """``(name, vision, language)`` of every setting of this project's "2026 comparison" sweep (never the
    paper's): vanilla; at each ratio every method of the library alone with its defaults (the ViT-side
    ones with the output full length, the LLM-side and pre-LLM ones with the whole ViT; a budget a method
    cannot reach on Qwen2-VL-7B is left out, see :func:`modern_not_run`); and IPCV in the ViT paired with
    each pre-LLM method at its input, both at the ratio (``ViT r / LLM r``, as the paper's IPCV+DART rows).
    ``name`` is ``"<method> <r %>"`` or ``"IPCV+<method> <r %>"``."""
    out: list[tuple[str, object, object]] = [("vanilla", None, None)]
    skipped = modern_not_run(ratios)
    for r in ratios:
        pct = f"{round(100 * r)}%"
        for cls in (IPCV, ToMe, ToFu, DARTViT):
            out.append((f"{cls.__name__} {pct}", cls(r), None))
        for cls in (DART, FastV, V2Drop, SparseVLM):
            if f"{cls.__name__} {pct}" not in skipped:
                out.append((f"{cls.__name__} {pct}", None, cls(r)))
        for m in PRE_LLM:
            out.append((f"{m} {pct}", None, pre_llm_method(m, r)))
        for m in PRE_LLM:
            v = IPCV(r)
            out.append((f"IPCV+{m} {pct}", v, pre_llm_method(m, r, v)))
    return out


__all__ = [
    "MODERN_RATIOS", "PRE_LLM", "PROTOCOLS", "TABLES", "modern_not_run", "modern_settings", "paper_rows",
    "paper_settings",
    "pre_llm_method",
    "tofu_release_prune_layers",
]  # fmt: skip
