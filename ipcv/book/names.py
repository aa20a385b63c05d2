"""What the book calls the columns of the notebooks' tables: words, and typeset maths (MyST ``$...$``)
for the paper's symbols, instead of the variable names the code uses (``all_cos``, ``keep_ratio``).

Used for every table a reader sees: the notebooks' tables (:func:`ipcv.analysis.report.show_table`) and
the status page's copies of the notebooks' summaries (:func:`ipcv.analysis.status.tables`).
"""

from __future__ import annotations

COLUMNS: dict[str, str] = {
    # settings
    "keep_ratio": "keep ratio",
    "stabilize_layers": "AS depth $\\Delta l_{\\max}$",
    "prune_layer": "pruning block $l_p$",
    "neighbors": "neighbours $k$",
    # fidelity to the unpruned encoder (ipcv.analysis.fidelity)
    "cosine": "cosine",
    "rel_error": "relative error",
    "l1": "L1 distance",
    "all_cos": "all-token cosine",
    "kept_cos": "kept-token cosine",
    "removed_cos": "removed-token cosine",
    "kept_rel_error": "kept-token relative error",
    "copy_all_cos": "copy restore: all-token cosine",
    "saliency_mae": "saliency mean abs. diff.",
    "flop_ratio": "FLOP ratio",
    "qwen_flop_ratio": "FLOP ratio, Qwen2-VL-7B tower",
    "gflops": "GFLOPs",
    "ratio": "FLOP ratio",
    # token selection (notebook 01)
    "all_top_k": "top-$K$ in every image",
    "score_kept": "mean score, kept",
    "score_removed": "mean score, removed",
    "share": "saliency share on kept patches",
    "per_image": "kept, budget per image",
    "one_top_k": "kept, one top-$K$ per call",
    # the error bound (notebook 05)
    "B": "$B$",
    "d_H": "$d_H$",
    "L_proof": "$L_{\\text{proof}}$",
    "L_matched": "$L_{\\text{matched}}$",
    "bound": "bound $2B(L_{\\text{proof}}+1)$",
    "max_error": "largest NGR error",
    "within": "every token within",
    "identity": "identity residual",
    "identity_residual": "identity residual",
    "median_error": "median NGR error",
    "median_norm": "median token norm",
    "median_slack": "median bound / error",
    "min_slack": "smallest bound / error",
    "lemma_slack": "Lemma E.3: median bound / error",
    "above_norm": "share with bound > norm",
}


def column(name: str) -> str:
    """The book's name of column ``name`` (:data:`COLUMNS`; otherwise the name without underscores)."""
    return COLUMNS.get(name, str(name).replace("_", " "))
