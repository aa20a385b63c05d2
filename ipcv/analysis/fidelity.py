"""How close a compressed run stays to the unpruned one: per-token measures, baselines, summaries.

The two baselines of the reintegration step are read off the trace, never recomputed:

- ``copy`` (ToMe-style unmerge): each removed token takes the final state of its nearest kept
  token, ``final[keep[neighbors[:, 0]]]`` (eq. 3's first neighbour).
- ``frozen`` (IPCV without reintegration): each removed token keeps its state at the pruning
  block, ``h_{i, l_p}``; blocks before ``l_p`` are unmodified, so that is the unpruned run's
  ``states[l_p][rem]``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..methods.ipcv import Neighbors, ngr
from .encoders import Batch
from .hidden import Compressed, Unpruned, downstream

METHODS = ("NGR", "copy", "frozen")


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N]`` cosine similarity of matching rows of ``a`` and ``b`` ``[N, D]``."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N]`` ``||a_i - b_i||_2 / ||b_i||_2``: error of ``a`` against the reference ``b``."""
    a, b = a.float(), b.float()
    return (a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)


def copy_baseline(final: torch.Tensor, keep: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """``[R, D]``: each removed token replaced by its nearest kept token's final state."""
    return final[keep[neighbors[:, 0]]]


def removed_estimates(un: Unpruned, c: Compressed) -> dict[str, torch.Tensor]:
    """``{method: [R, D]}`` final states of the removed tokens: NGR (eq. 10), copy, frozen."""
    return {
        "NGR": c.final[c.rem],
        "copy": copy_baseline(c.final, c.keep, c.neighbors),
        "frozen": un.states[c.settings.prune_layer][c.rem],
    }


def with_removed(final: torch.Tensor, rem: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``[L, D]`` copy of ``final`` whose removed rows are ``removed`` ``[R, D]``."""
    out = final.clone()
    out[rem] = removed
    return out


def restoration_rows(un: Unpruned, c: Compressed, batch: Batch) -> pd.DataFrame:
    """One row per (removed token, method): cosine and relative error against the unpruned
    final state. Columns: keep_ratio, image, method, cosine, rel_error."""
    target = un.final[c.rem]
    image = np.asarray(batch.names)[batch.segment_ids()[c.rem].numpy()]
    frames = []
    for method, est in removed_estimates(un, c).items():
        frames.append(
            pd.DataFrame(
                dict(
                    keep_ratio=c.settings.keep_ratio,
                    image=image,
                    method=method,
                    cosine=row_cosine(est, target).numpy(),
                    rel_error=relative_error(est, target).numpy(),
                )  # fmt: skip
            )
        )
    return pd.concat(frames, ignore_index=True)


def saliency_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two saliency maps ``[B, 1, H, W]`` (values in [0, 1])."""
    return float((a.float() - b.float()).abs().mean())


def kept_drift(un: Unpruned, c: Compressed, exclude: torch.Tensor | None = None) -> pd.DataFrame:
    """Per block ``l >= l_p``: how far the kept tokens' output is from the unpruned run.

    Needs a run with ``states=True``. exclude: ``[L]`` bool rows left out (e.g. CLS).
    Columns: block (0-based), cosine (mean), rel_error (mean).
    """
    keep = c.keep if exclude is None else c.keep[~exclude[c.keep]]
    sel = torch.isin(c.keep, keep)
    rows = []
    for layer in sorted(c.states):
        a, b = c.states[layer][sel], un.states[layer + 1][keep]
        rows.append(
            dict(block=layer, cosine=float(row_cosine(a, b).mean()), rel_error=float(relative_error(a, b).mean()))
        )
    return pd.DataFrame(rows)


def delta_agreement(
    un: Unpruned, c: Compressed, batch: Batch, layers: list[int] | None = None, seed: int = 0
) -> pd.DataFrame:
    """The premise of NGR (the paper's Figure 2b-c), measured in the *unpruned* run.

    For each token IPCV removes and each layer ``l`` (``states`` index, ``l_p < l <= depth``), its
    change ``d_i = h_{i,l} - h_{i,l_p}`` is compared with three changes of kept tokens of the same
    image: the mean over its ``k`` NGR neighbours (from the trace), one random kept token, and the
    mean over ``k`` random kept tokens (prefix tokens such as CLS are never drawn).

    Returns columns: layer, image, comparison, l1 (``||d_i - d||_1``), cosine.
    """
    lp = c.settings.prune_layer
    depth = un.states.shape[0] - 1
    layers = list(range(lp + 1, depth + 1)) if layers is None else layers
    g = torch.Generator().manual_seed(seed)
    seg = batch.segment_ids()
    prefix = batch.is_prefix()
    rem_seg = seg[c.rem]
    k = c.neighbors.shape[1]
    one = torch.empty(len(c.rem), dtype=torch.long)
    many = torch.empty(len(c.rem), k, dtype=torch.long)
    for s in range(len(batch.names)):  # random kept, non-prefix rows of the same image
        pool = c.keep[(seg[c.keep] == s) & ~prefix[c.keep]]
        idx = (rem_seg == s).nonzero().flatten()
        one[idx] = pool[torch.randint(len(pool), (len(idx),), generator=g)]
        for i in idx.tolist():
            many[i] = pool[torch.randperm(len(pool), generator=g)[:k]]
    comparisons = {"NGR neighbours (mean of k)": c.neighbor_rows, "one random kept token": one[:, None],
                   "k random kept tokens (mean)": many}  # fmt: skip
    image = np.asarray(batch.names)[rem_seg.numpy()]
    frames = []
    for layer in layers:
        delta = un.states[layer] - un.states[lp]  # [L, D]
        d_i = delta[c.rem]
        for name, rows in comparisons.items():
            d = delta[rows].mean(dim=1)
            frames.append(
                pd.DataFrame(
                    dict(
                        layer=layer,
                        image=image,
                        comparison=name,
                        l1=(d_i - d).abs().sum(-1).numpy(),
                        cosine=row_cosine(d_i, d).numpy(),
                    )
                )  # fmt: skip
            )
    return pd.concat(frames, ignore_index=True)


def trajectories(un: Unpruned, c: Compressed, removed: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For positions ``removed`` into ``c.rem``: the unpruned path ``[T, D]`` of that token from
    ``l_p`` to the final output, and the path of the mean of its NGR neighbours."""
    lp = c.settings.prune_layer
    path = un.states[lp:]  # [T, L, D]
    return [(path[:, c.rem[i]], path[:, c.neighbor_rows[i]].mean(dim=1)) for i in removed]


def pca_2d(*paths: torch.Tensor) -> list[np.ndarray]:
    """Project paths ``[T_j, D]`` onto the two principal axes of all their points together."""
    x = torch.cat(paths).double()
    mean = x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    return [((p.double() - mean) @ v[:2].T).numpy() for p in paths]


def summarize(df: pd.DataFrame, by: list[str], values: list[str], how: str = "mean") -> pd.DataFrame:
    """``df.groupby(by)[values].agg(how)`` with the group keys as columns, in first-seen order."""
    return df.groupby(by, sort=False)[values].agg(how).reset_index()


def quantile_picks(values: torch.Tensor, n: int) -> list[int]:
    """Positions of ``n`` entries of ``values`` at evenly spaced quantiles between 25% and 75%
    (representative examples, neither the best nor the worst)."""
    order = values.argsort()
    qs = torch.linspace(0.25, 0.75, n) if n > 1 else torch.tensor([0.5])
    return [int(order[int(q * (len(order) - 1))]) for q in qs]


def ngr_on_unpruned(un: Unpruned, c: Compressed) -> torch.Tensor:
    """``[R, D]``: NGR (the library's :func:`ipcv.methods.ipcv.ngr`, eq. 4-5) at the final output
    with the kept tokens' changes taken from the *unpruned* run: the error NGR's approximation
    alone would make, without the drift pruning causes in the kept tokens."""
    k = c.neighbors.shape[1]
    nb = Neighbors(c.neighbors, torch.full(c.neighbors.shape, 1.0 / k))
    lp = c.settings.prune_layer
    return ngr(un.states[lp][c.rem], un.final[c.keep], un.states[lp][c.keep], nb)


def fidelity_row(un: Unpruned, c: Compressed, prefix: torch.Tensor | None = None) -> dict[str, float]:
    """Summary of one compressed run against the unpruned one.

    all_cos: mean cosine of the downstream tokens (``enc.finish``: DINOv2's normed tokens,
    Qwen2-VL's merged LLM tokens). removed_cos / kept_cos: mean cosine of the final states
    of removed / kept tokens (prefix rows such as CLS left out of kept). saliency_mae: mean
    absolute difference of the saliency maps (NaN without a saliency head).
    """
    kept = c.keep if prefix is None else c.keep[~prefix[c.keep]]
    return dict(
        all_cos=float(row_cosine(c.output, un.output).mean()),
        removed_cos=float(row_cosine(c.final[c.rem], un.final[c.rem]).mean()),
        kept_cos=float(row_cosine(c.final[kept], un.final[kept]).mean()),
        saliency_mae=saliency_error(c.saliency, un.saliency) if c.saliency is not None else float("nan"),
    )


def downstream_rows(enc, batch: Batch, un: Unpruned, c: Compressed) -> pd.DataFrame:
    """Per method (NGR, copy, frozen): the full final sequence with that method's removed tokens,
    passed through the encoder's own final norm / merger / saliency head, against the unpruned run.

    Columns: keep_ratio, method, all_cos, saliency_mae.
    """
    rows = []
    for method, est in removed_estimates(un, c).items():
        out, sal = downstream(enc, batch, with_removed(c.final, c.rem, est))
        rows.append(
            dict(
                keep_ratio=c.settings.keep_ratio,
                method=method,
                all_cos=float(row_cosine(out, un.output).mean()),
                saliency_mae=saliency_error(sal, un.saliency) if sal is not None else float("nan"),
            )  # fmt: skip
        )
    return pd.DataFrame(rows)


def output_fidelity(un: Unpruned, out) -> dict[str, float]:
    """All-token cosine and saliency error of any method's :class:`~ipcv.analysis.hidden.Output`
    (or :class:`~ipcv.analysis.hidden.Compressed`) against the unpruned run."""
    return dict(
        all_cos=float(row_cosine(out.output, un.output).mean()),
        saliency_mae=saliency_error(out.saliency, un.saliency) if out.saliency is not None else float("nan"),
    )


# --------------------------------------------------------------------------- per image (the unit of the verdicts)


def image_of_rows(batch: Batch, n_rows: int) -> np.ndarray:
    """``[n_rows]`` image name of each row of a packed output: the blocks' ``[L, D]`` sequence, or a
    downstream that merges tokens evenly inside each image (Qwen2-VL's 2x2 merger: ``L / 4`` rows)."""
    lengths = np.asarray(batch.seg_lengths)
    if n_rows != batch.length:
        if batch.length % n_rows or (lengths % (batch.length // n_rows)).any():
            raise ValueError(f"{n_rows} output rows do not split evenly over images of {batch.seg_lengths} tokens")
        lengths = lengths // (batch.length // n_rows)
    return np.repeat(np.asarray(batch.names), lengths)


def per_image_mean(values: torch.Tensor, images: np.ndarray) -> dict[str, float]:
    """``{image: mean of values}`` for a per-row measure ``[N]`` and each row's image ``[N]``, in first-seen order."""
    frame = pd.DataFrame(dict(image=images, value=values.float().numpy()))
    return frame.groupby("image", sort=False)["value"].mean().to_dict()


def image_cosines(batch: Batch, un: Unpruned, out) -> dict[str, float]:
    """``{image: mean cosine of its downstream tokens}``: :func:`fidelity_row`'s ``all_cos`` per image."""
    return per_image_mean(row_cosine(out.output, un.output), image_of_rows(batch, len(un.output)))


def downstream_image_rows(enc, batch: Batch, un: Unpruned, c: Compressed) -> pd.DataFrame:
    """:func:`downstream_rows`' ``all_cos`` per image. Columns: keep_ratio, method, image, all_cos."""
    rows = []
    for method, est in removed_estimates(un, c).items():
        out, _ = downstream(enc, batch, with_removed(c.final, c.rem, est))
        images = image_of_rows(batch, len(out))
        for image, cos in per_image_mean(row_cosine(out, un.output), images).items():
            rows.append(dict(keep_ratio=c.settings.keep_ratio, method=method, image=image, all_cos=cos))
    return pd.DataFrame(rows)
