"""Figures for the notebooks (seaborn on matplotlib); every axis says what it shows and in which unit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

PALETTE = "colorblind"


def setup() -> None:
    """The book's figure style."""
    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE, font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.autolayout": False})


def _dim_removed(image: np.ndarray, kept: np.ndarray, patch: int) -> np.ndarray:
    """Removed patches drawn grey and faded, kept patches in colour. kept: ``[h, w]`` bool."""
    mask = np.kron(kept, np.ones((patch, patch), dtype=bool))[: image.shape[0], : image.shape[1]]
    grey = image.mean(axis=2, keepdims=True).repeat(3, axis=2)
    faded = 0.35 * grey + 0.65 * 235
    return np.where(mask[..., None], image, faded).astype(np.uint8)


def kept_patches(
    images: Mapping[str, np.ndarray], kept: Mapping[str, Mapping[float, np.ndarray]], patch: int
) -> Figure:
    """The paper's Figure 6: which patches IPCV keeps, one row per image, one column per keep ratio.

    images: ``{name: [S, S, 3] uint8}`` as the encoder sees them. kept: ``{name: {ratio: [h, w] bool}}``.
    """
    names = list(images)
    ratios = list(next(iter(kept.values())))
    fig, axes = plt.subplots(len(names), len(ratios) + 1, figsize=(2.3 * (len(ratios) + 1), 2.3 * len(names)))
    axes = np.atleast_2d(axes)
    for row, name in enumerate(names):
        axes[row, 0].imshow(images[name])
        axes[row, 0].set_ylabel(name)
        for col, ratio in enumerate(ratios, start=1):
            m = kept[name][ratio]
            axes[row, col].imshow(_dim_removed(images[name], m, patch))
            if row == 0:
                axes[row, col].set_title(f"keep {100 * ratio:g}%")
            axes[row, col].set_xlabel(f"{int(m.sum())} of {m.size} patches", fontsize=8)
        if row == 0:
            axes[row, 0].set_title("input")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    return fig


def score_maps(images: Mapping[str, np.ndarray], scores: Mapping[str, np.ndarray], layer: int) -> Figure:
    """Each image beside its eq. 1 score map ``[h, w]`` (a colour bar in hidden-state units)."""
    names = list(images)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.6 * 2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, name in enumerate(names):
        r, c = divmod(i, cols)
        axes[r, 2 * c].imshow(images[name])
        axes[r, 2 * c].set_title(name, fontsize=9)
        im = axes[r, 2 * c + 1].imshow(scores[name], cmap="magma")
        axes[r, 2 * c + 1].set_title(f"score s_i, block {layer}", fontsize=9)
        cb = fig.colorbar(im, ax=axes[r, 2 * c + 1], fraction=0.046, pad=0.03)
        cb.set_label(f"||h(l={layer}) - h(l={layer - 1})||₂", fontsize=7)
        cb.ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def trajectories(examples: Sequence[tuple[np.ndarray, np.ndarray]], first_layer: int, titles: Sequence[str]) -> Figure:
    """The paper's Figure 2a: PCA paths ``[T, 2]`` of a removed token and of the mean of its
    neighbours, block ``first_layer`` to the final output, arrows in the direction of depth."""
    fig, axes = plt.subplots(1, len(examples), figsize=(4.2 * len(examples), 3.8), squeeze=False)
    colors = sns.color_palette(PALETTE, 2)
    for ax, (tok, nbr), title in zip(axes[0], examples, titles, strict=True):
        for path, color, label in ((tok, colors[0], "removed token"), (nbr, colors[1], "mean of its k neighbours")):
            ax.plot(path[:, 0], path[:, 1], "o-", color=color, ms=3, lw=1, label=label)
            for a, b in zip(path[:-1], path[1:], strict=True):
                ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="->", color=color, lw=1.2))
            ax.annotate(f"l={first_layer}", path[0], fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.annotate("out", path[-1], fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("principal component 1 (hidden-state units)")
        ax.set_ylabel("principal component 2 (hidden-state units)")
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def distributions(df: pd.DataFrame, value: str, hue: str, xlabel: str, title: str, ax=None) -> plt.Axes:
    """Histograms (density) of ``value`` per ``hue`` with a dashed line at each median."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    order = list(dict.fromkeys(df[hue]))
    colors = dict(zip(order, sns.color_palette(PALETTE, len(order)), strict=True))
    sns.histplot(df, x=value, hue=hue, hue_order=order, palette=colors, stat="density", common_norm=False,
                 element="step", bins=40, ax=ax)  # fmt: skip
    for name in order:
        ax.axvline(df.loc[df[hue] == name, value].median(), color=colors[name], ls="--", lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    return ax


def lines(
    df: pd.DataFrame, x: str, y: str, hue: str | None, xlabel: str, ylabel: str, title: str, ax=None, **kw
) -> plt.Axes:
    """``sns.lineplot`` with markers and labelled axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(df, x=x, y=y, hue=hue, marker="o", palette=PALETTE if hue else None, ax=ax, **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return ax


def saliency_panels(
    image: np.ndarray, maps: Mapping[str, np.ndarray], errors: Mapping[str, float] | None = None
) -> Figure:
    """An image and saliency maps ``[H, W]`` in [0, 1] from several token sets, side by side."""
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.5 * (len(maps) + 1), 2.9))
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items(), strict=True):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        sub = "" if not errors or name not in errors else f"\nmean |diff| {errors[name]:.3f}"
        ax.set_title(f"{name}{sub}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    cb = fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.02)
    cb.set_label("saliency (probability)", fontsize=8)
    return fig
