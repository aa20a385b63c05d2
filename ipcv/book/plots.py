"""Figures for the notebooks (seaborn on matplotlib); every axis says what it shows and in which unit.

Figures are at most 8 inches wide (the width of the book's text column at 100 dpi) and stack
panels vertically, so that their text stays legible on the page. Legends sit outside the plot area
(:func:`legend_outside`), so that they never hide a curve whatever the data; axis labels, titles and
legends use words and typeset maths (mathtext), never the code's variable names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .names import column

PALETTE = "colorblind"
WIDTH = 8.0  # inches

# One look per compared method, kept apart by colour (Okabe-Ito, distinct for colour-blind readers),
# marker, line style and fill, so that every method stays distinguishable in grey-scale print and
# where two curves lie on top of each other (ToMe and ToFu: ToMe is drawn hollow and larger).
METHOD_STYLES: dict[str, dict] = {
    "IPCV": dict(color="#000000", marker="o", ls="-", ms=6, zorder=3),
    "ToMe": dict(color="#E69F00", marker="s", ls="--", ms=9, mfc="none", mew=1.6, zorder=4),
    "ToFu": dict(color="#0072B2", marker="^", ls=":", ms=5, zorder=5),
    "DART (ViT)": dict(color="#CC79A7", marker="D", ls="-.", ms=5, zorder=3),
    # the LLM-side methods (Table 4, Figure 4 b)
    "DART": dict(color="#009E73", marker="v", ls=(0, (5, 1, 1, 1)), ms=7, zorder=3),
    "FastV": dict(color="#D55E00", marker="P", ls=(0, (1, 2)), ms=7, zorder=4),
    "V2Drop": dict(color="#56B4E9", marker="X", ls=(0, (6, 3)), ms=7, zorder=5),
    "SparseVLM": dict(color="#882255", marker="h", ls=(0, (3, 1, 1, 1, 1, 1)), ms=7, zorder=6),
}
_SPARE_STYLES = [
    dict(color="#009E73", marker="v", ls=(0, (5, 1, 1, 1)), ms=6),
    dict(color="#D55E00", marker="P", ls=(0, (1, 2)), ms=6),
    dict(color="#56B4E9", marker="X", ls=(0, (6, 3)), ms=6),
]


def method_style(name: str, index: int = 0) -> dict:
    """Matplotlib keyword arguments of ``name``'s curve (a spare look for a method not listed)."""
    return dict(METHOD_STYLES.get(name) or _SPARE_STYLES[index % len(_SPARE_STYLES)])


def setup() -> None:
    """The book's figure style."""
    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE, font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "legend.fontsize": 8, "legend.title_fontsize": 8})


def legend_outside(ax, title: str | None = None, where: str = "right", ncol: int | None = None, names=None):
    """Move ``ax``'s legend out of the plot area: to its right (``where="right"``) or under its x label
    (``"below"``, entries side by side). ``names``: ``{label: shown label}`` for entries that are column
    names (seaborn writes the hue and style columns as entries). Returns the legend (None: nothing to show)."""
    handles, labels = ax.get_legend_handles_labels()
    old = ax.get_legend()
    if not handles:
        if old is not None:
            old.remove()
        return None
    if title is None and old is not None and old.get_title().get_text():
        title = column(old.get_title().get_text())
    labels = [(names or {}).get(label, label) for label in labels]
    if where == "below":
        kw = dict(loc="upper center", bbox_to_anchor=(0.5, _below(ax)), ncol=ncol or min(len(labels), 4))
    else:
        kw = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=ncol or 1)
    return ax.legend(handles, labels, title=title, frameon=False, borderaxespad=0.0, **kw)


def _below(ax) -> float:
    """Where a legend under ``ax`` starts, in axes coordinates: 0.7 inch below the axes, clear of the
    tick labels and the x label whatever the axes' height."""
    height = ax.get_position().height * ax.figure.get_size_inches()[1]
    return -0.7 / max(height, 0.5)


def _stack(n: int, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(n, 1, figsize=(WIDTH * 0.85, height * n), squeeze=False)
    return fig, axes[:, 0]


# --------------------------------------------------------------------------- images and patches


def _dim_removed(image: np.ndarray, kept: np.ndarray, patch: int) -> np.ndarray:
    """Removed patches drawn pale grey, kept patches in their own colours. kept: ``[h, w]`` bool."""
    mask = np.kron(kept, np.ones((patch, patch), dtype=bool))[: image.shape[0], : image.shape[1]]
    grey = image.mean(axis=2, keepdims=True).repeat(3, axis=2)
    faded = 0.2 * grey + 0.8 * 245
    return np.where(mask[..., None], image, faded).astype(np.uint8)


def kept_patches(
    images: Mapping[str, np.ndarray], kept: Mapping[str, Mapping[float, np.ndarray]], patch: int
) -> Figure:
    """The paper's Figure 6: which patches are kept, one row per image, one column per keep ratio.

    images: ``{name: [S, S, 3] uint8}`` as the encoder sees them. kept: ``{name: {ratio: [h, w] bool}}``.
    """
    names = list(images)
    ratios = list(next(iter(kept.values())))
    side = WIDTH / (len(ratios) + 1)
    fig, axes = plt.subplots(len(names), len(ratios) + 1, figsize=(WIDTH, side * 1.1 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        axes[row, 0].imshow(images[name])
        axes[row, 0].set_ylabel(name.replace("_", " "), fontsize=8)
        for col, ratio in enumerate(ratios, start=1):
            m = kept[name][ratio]
            axes[row, col].imshow(_dim_removed(images[name], m, patch))
            axes[row, col].set_xlabel(f"{int(m.sum())} of {m.size} patches", fontsize=7, labelpad=2)
            if row == 0:
                axes[row, col].set_title(f"keep {100 * ratio:g}%", fontsize=9)
        if row == 0:
            axes[row, 0].set_title("input", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout(h_pad=0.6, w_pad=0.3)
    return fig


def score_maps(images: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray], layer: int) -> Figure:
    """Eq. 1 scores ``[h, w]`` drawn over each image, one colour scale for all (hidden-state units)."""
    names = list(images)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, WIDTH / cols * rows + 0.6), squeeze=False)
    lo = min(float(s.min()) for s in scores.values())
    hi = max(float(s.max()) for s in scores.values())
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        img = images[name]
        ax.imshow(img.mean(axis=2), cmap="gray")
        im = ax.imshow(scores[name], cmap="magma", alpha=0.7, vmin=lo, vmax=hi,
                       extent=(0, img.shape[1], img.shape[0], 0), interpolation="nearest")  # fmt: skip
        ax.set_title(name.replace("_", " "), fontsize=9)
    cb = fig.colorbar(im, ax=list(axes.flat), orientation="horizontal", fraction=0.05, pad=0.04, aspect=40)
    cb.set_label(
        f"score $s_i = \\Vert h_{{i,{layer}}} - h_{{i,{layer - 1}}} \\Vert_2$ (hidden-state units)", fontsize=8
    )
    return fig


def saliency_panels(
    image: np.ndarray, maps: Mapping[str, np.ndarray], errors: Mapping[str, float] | None = None
) -> Figure:
    """An image and saliency maps ``[H, W]`` in [0, 1] from several token sets, side by side."""
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(WIDTH, WIDTH / n + 0.9))
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items(), strict=True):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        sub = "" if not errors or name not in errors else f"\nmean |diff| {errors[name]:.3f}"
        ax.set_title(f"{name}{sub}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    cb = fig.colorbar(im, ax=list(axes), orientation="horizontal", fraction=0.06, pad=0.05, aspect=40)
    cb.set_label("saliency (probability)", fontsize=8)
    return fig


# --------------------------------------------------------------------------- generic panels


def lines(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None,
    xlabel: str,
    ylabel: str,
    title: str,
    ax=None,
    legend: str = "right",
    **kw,
) -> plt.Axes:
    """``sns.lineplot`` with markers and labelled axes (mean and 95% CI when x repeats). The legend (hue
    and ``style`` named in words) goes outside the plot area, ``legend="right"`` or ``"below"``;
    ``"none"``: no legend."""
    if ax is None:
        _, ax = plt.subplots(figsize=(WIDTH * 0.85, 3.4))
    palette = sns.color_palette(PALETTE, df[hue].nunique()) if hue else None
    if "markers" not in kw:
        kw["marker"] = "o"
    sns.lineplot(df, x=x, y=y, hue=hue, palette=palette, ax=ax, **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    names = {c: column(c) for c in (hue, kw.get("style")) if c}
    if legend == "none":
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    else:
        legend_outside(ax, where=legend, names=names)
    return ax


def distributions(df: pd.DataFrame, value: str, hue: str, xlabel: str, title: str, ax=None, bins: int = 40) -> plt.Axes:
    """Histograms (density) of ``value`` per ``hue`` with a dashed line at each median."""
    if ax is None:
        _, ax = plt.subplots(figsize=(WIDTH * 0.85, 3.4))
    order = list(dict.fromkeys(df[hue]))
    colors = dict(zip(order, sns.color_palette(PALETTE, len(order)), strict=True))
    sns.histplot(df, x=value, hue=hue, hue_order=order, palette=colors, stat="density", common_norm=False,
                 element="step", bins=bins, ax=ax)  # fmt: skip
    for name in order:
        ax.axvline(df.loc[df[hue] == name, value].median(), color=colors[name], ls="--", lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    old = ax.get_legend()  # seaborn's histogram legend has no handles to hand on: keep it, moved under the axes
    if old is not None:
        old.set_title(column(hue))
        sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, _below(ax)), ncol=len(order), frameon=False)
    return ax


# --------------------------------------------------------------------------- one figure per section


def share_of_saliency(share: pd.DataFrame) -> Figure:
    """Share of the saliency mass on kept patches against the keep ratio, with the diagonal."""
    fig, ax = plt.subplots(figsize=(WIDTH * 0.6, 3.6))
    lines(share, "keep_ratio", "share", None, "keep ratio (share of patches kept)",
          "saliency mass on kept patches", "Kept patches vs saliency (mean, 95% CI)", ax=ax)  # fmt: skip
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="content-blind choice")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    return fig


def trajectories(examples: Sequence[tuple[np.ndarray, np.ndarray]], first_layer: int, titles: Sequence[str]) -> Figure:
    """The paper's Figure 2a: PCA paths ``[T, 2]`` of a removed token and of the mean of its
    neighbours, block ``first_layer`` to the final output, arrows in the direction of depth."""
    cols = min(2, len(examples))
    rows = -(-len(examples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, 3.6 * rows), squeeze=False)
    colors = sns.color_palette(PALETTE, 2)
    for ax in axes.flat[len(examples) :]:
        ax.axis("off")
    for ax, (tok, nbr), title in zip(axes.flat, examples, titles, strict=False):
        for path, color, label in ((tok, colors[0], "removed token"), (nbr, colors[1], "mean of its k neighbours")):
            ax.plot(path[:, 0], path[:, 1], "o", color=color, ms=3, label=label)
            for a, b in zip(path[:-1], path[1:], strict=True):
                ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color=color, lw=1.2))
        ax.annotate(f"block {first_layer}", tok[0], fontsize=7, xytext=(4, -10), textcoords="offset points")
        ax.annotate("output", tok[-1], fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_title(title.replace("_", " "), fontsize=9)  # image names: "hubble deep field"
        ax.set_xlabel("PC 1 (hidden-state units)", fontsize=8)
        ax.set_ylabel("PC 2 (hidden-state units)", fontsize=8)
    axes[0, 0].legend(loc="best")
    fig.tight_layout()
    return fig


def change_distributions(final: pd.DataFrame) -> Figure:
    """The paper's Figure 2b-c: L1 distance and cosine between changes, per comparison."""
    fig, axes = _stack(2)
    distributions(final, "l1", "comparison", "L1 distance between changes (hidden-state units)",
                  "(b) L1 distance between the changes, block $l_p$ to output", ax=axes[0])  # fmt: skip
    distributions(final, "cosine", "comparison", "cosine similarity between changes",
                  "(c) cosine similarity between the changes, block $l_p$ to output", ax=axes[1])  # fmt: skip
    axes[1].get_legend().remove()
    fig.tight_layout()
    return fig


def change_by_layer(by_layer: pd.DataFrame) -> Figure:
    """Median cosine and L1 between changes, per layer after the pruning block."""
    fig, axes = _stack(2, 3.0)
    xlabel = "layer $l$ (input of block $l$; the last is the output)"
    lines(by_layer, "layer", "cosine", "comparison", xlabel, "median cosine",
          "Cosine of the changes since block $l_p$", ax=axes[0], legend="below")  # fmt: skip
    lines(by_layer, "layer", "l1", "comparison", xlabel, "median L1 (hidden-state units)",
          "L1 distance of the changes since block $l_p$", ax=axes[1], legend="none")  # fmt: skip
    fig.tight_layout()
    return fig


def stabilization(drift: pd.DataFrame) -> Figure:
    """Kept tokens' final error and removed tokens' final cosine against the AS depth."""
    fig, axes = _stack(2, 3.0)
    xlabel = "AS depth $\\Delta l_{\\max}$ (blocks)"
    lines(drift, "stabilize_layers", "kept_rel_error", "keep_ratio", xlabel, "relative error",
          "Kept tokens against the unpruned run (final output)", ax=axes[0])  # fmt: skip
    lines(drift, "stabilize_layers", "removed_cos", "keep_ratio", xlabel, "cosine",
          "Removed tokens after reintegration (final output)", ax=axes[1], legend="none")  # fmt: skip
    fig.tight_layout()
    return fig


def sensitivity(sweeps: pd.DataFrame, labels: Mapping[str, str]) -> Figure:
    """The paper's Figure 5 as fidelity: one panel per sweep, IPCV and the copy restore (left
    axis) and the Qwen2-VL-7B tower's FLOP ratio (right axis, grey)."""
    fig, axes = _stack(len(labels), 2.9)
    names = {"all_cos": "IPCV (NGR)", "copy_all_cos": "copy nearest kept (ToMe-style)"}
    for ax, (sweep, xlabel) in zip(axes, labels.items(), strict=True):
        part = sweeps[sweeps.sweep == sweep]
        long = part.melt(["value"], list(names), "restore", "cosine").assign(restore=lambda d: d.restore.map(names))
        lines(long, "value", "cosine", "restore", xlabel, "cosine to unpruned", sweep, ax=ax, legend="none")
        twin = ax.twinx()
        twin.plot(part.value, part.flop_ratio, ls="--", color="grey", marker=".", label="FLOP ratio, Qwen2-VL-7B tower")
        twin.set_ylim(0, 1)
        twin.set_ylabel("FLOP ratio (Qwen2-VL-7B)", color="grey", fontsize=8)
        twin.grid(False)
    # one legend for all panels, above them: the restores (left axes) and the FLOP ratio (right axes)
    handles, shown = axes[0].get_legend_handles_labels()
    flop_handles, flop_labels = twin.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.legend(handles + flop_handles, shown + flop_labels, loc="upper center", bbox_to_anchor=(0.5, 1.0),
               ncol=3, frameon=False, fontsize=8)  # fmt: skip
    return fig


def pareto(df: pd.DataFrame, cost: str, cost_label: str) -> Figure:
    """Fidelity against cost, one line per method, each point labelled with its keep ratio
    (columns: method, keep_ratio, all_cos, saliency_mae and ``cost``). Where two methods' points lie on
    top of each other (ToMe and ToFu) their common keep ratio is written once; labels of successive
    methods go above and below their points, so that no two labels print over each other."""
    fig, axes = _stack(2, 3.3)
    has_saliency = df["saliency_mae"].notna().any()
    panels = [("all_cos", "mean cosine of output tokens", "Output tokens vs the unpruned encoder")]
    if has_saliency:
        panels.append(("saliency_mae", "saliency mean |diff| (probability)", "Saliency map vs the unpruned one"))
    else:
        axes[1].axis("off")
    for ax, (y, ylabel, title) in zip(axes, panels, strict=False):
        for i, (method, part) in enumerate(df.groupby("method", sort=False)):
            ax.plot(part[cost], part[y], label=method, lw=1.6, **method_style(method, i))
        ax.set_xlabel(cost_label)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (numbers: keep ratio)", fontsize=10)
        _label_points(ax, df, cost, y)
        legend_outside(ax, where="right")
    fig.tight_layout()
    return fig


def _label_points(ax, df: pd.DataFrame, x: str, y: str) -> None:
    """Each point's keep ratio beside it: above for the 1st, 3rd... method, below for the others; a
    label already written for the same ratio within 3 % of the axes is not written again."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    done: list[tuple[float, float, str]] = []
    for i, (_, part) in enumerate(df.groupby("method", sort=False)):
        for _, r in part.iterrows():
            text, fx, fy = f"{r.keep_ratio:g}", (r[x] - x0) / (x1 - x0), (r[y] - y0) / (y1 - y0)
            if any(t == text and abs(fx - a) < 0.03 and abs(fy - b) < 0.03 for a, b, t in done):
                continue
            done.append((fx, fy, text))
            above = i % 2 == 0
            ax.annotate(text, (r[x], r[y]), fontsize=7, xytext=(3, 4 if above else -10), textcoords="offset points")


# --------------------------------------------------------------------------- the primer's pipeline diagram


def pipeline(patches: int = 1024, settings=None) -> Figure:
    """IPCV's schedule in Qwen2-VL-7B's vision tower, drawn from the code that runs it: the query
    tokens entering each block (``ipcv.flops.encoder_flops(...).tokens_per_block``, the same
    schedule the engine follows), coloured by phase, with the steps of the method marked."""
    import ipcv
    from ipcv.flops import encoder_flops

    from ..analysis.flop_tables import encoder_shape, qwen2vl_7b_tower

    settings = settings or ipcv.IPCV(0.35)
    shape = encoder_shape(qwen2vl_7b_tower())
    tokens = encoder_flops(shape, [patches], settings).tokens_per_block
    lp, d = settings.prune_layer, settings.stabilize_layers
    phase = (
        ["all tokens"] * lp
        + ["AS: kept queries, keys/values of all"] * d
        + ["kept tokens only"] * (len(tokens) - lp - d)
    )
    colours = {
        "all tokens": "#0072B2",
        "AS: kept queries, keys/values of all": "#E69F00",
        "kept tokens only": "#009E73",
    }
    hatches = {"all tokens": "", "AS: kept queries, keys/values of all": "//", "kept tokens only": ".."}
    fig, ax = plt.subplots(figsize=(WIDTH, 3.6))
    for i, (n, p) in enumerate(zip(tokens, phase)):
        ax.bar(i, n, color=colours[p], hatch=hatches[p], edgecolor="white", width=0.85,
               label=p if p not in phase[:i] else None)  # fmt: skip
    top = max(tokens)
    ax.annotate(f"score (eq. 1) at block {lp},\nkeep top {settings.keep_ratio:g} per image (eq. 2)",
                xy=(lp - 0.5, top * 0.9), xytext=(lp + 1.5, top * 1.05), fontsize=8,
                arrowprops=dict(arrowstyle="->", lw=1, color="black"))  # fmt: skip
    ax.annotate("NGR restores every removed token\n(eq. 5-10), 2x2 merge, LLM", xy=(len(tokens) - 0.5, tokens[-1]),
                xytext=(len(tokens) - 11, top * 0.62), fontsize=8,
                arrowprops=dict(arrowstyle="->", lw=1, color="black"))  # fmt: skip
    ax.set_ylim(0, top * 1.3)
    ax.set_xlim(-0.7, len(tokens) - 0.3)
    ax.set_xlabel("vision block (Qwen2-VL-7B tower: 32 blocks)")
    ax.set_ylabel("query tokens per block")
    ax.set_title(f"IPCV({settings.keep_ratio:g}) on one {patches}-patch image: what each block computes", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, ncol=3, frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 09 the pre-LLM methods

PRE_LLM_COLOURS = {"VisionZip": "#E69F00", "DivPrune": "#0072B2", "CDPruner": "#009E73", "RandomKeep": "#CC79A7",
                   "Pool": "#D55E00", "": "#000000"}  # fmt: skip
PRE_LLM_MARKERS = {"VisionZip": "s", "DivPrune": "^", "CDPruner": "D", "RandomKeep": "v", "Pool": "P", "": "o"}


def pre_llm_costs(summary: pd.DataFrame, weights: str, cost_model: str) -> Figure:
    """Coverage and saliency share (notebook 09) against total FLOPs: one curve per method alone (solid) and
    behind IPCV (dashed, hollow), IPCV alone in black. summary: method, pre_llm, ipcv, keep_ratio, gflops,
    coverage, share (means over images)."""
    panels = [("coverage", "coverage of the unpruned tokens\n(mean best cosine)")]
    if summary["share"].notna().all():
        panels.append(("share", "saliency share kept"))
    fig, axes = _stack(len(panels), 3.4)
    for ax, (y, ylabel) in zip(axes, panels):
        for name, part in summary.groupby("method", sort=False):
            part = part.sort_values("gflops")
            method, paired = part["pre_llm"].iloc[0], bool(part["ipcv"].iloc[0])
            dashed = paired and method
            ax.plot(part["gflops"] / 1e3, part[y], label=name, color=PRE_LLM_COLOURS[method],
                    marker=PRE_LLM_MARKERS[method], ls="--" if dashed else "-", mfc="none" if dashed else None,
                    ms=6, lw=1.4)  # fmt: skip
        ax.set_xlabel(f"prefill TFLOPs, {cost_model}")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{weights}: points at keep 65 / 50 / 35 / 20 % (right to left)", fontsize=9)
    fig.tight_layout()
    legend_outside(axes[-1], where="below", ncol=2)
    return fig
