"""Token selection (eq. 1-2) as recorded in traces: which tokens, how many per image or frame."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

import ipcv

from .encoders import Batch, Encoder
from .fidelity import image_cosines
from .hidden import Compressed, Unpruned, run_compressed


def kept_mask(length: int, keep: torch.Tensor) -> torch.Tensor:
    """``[length]`` bool, True at the kept rows."""
    mask = torch.zeros(length, dtype=torch.bool)
    mask[keep] = True
    return mask


def selection_table(batch: Batch, scores: torch.Tensor, runs: Mapping[float, Compressed]) -> pd.DataFrame:
    """Per keep ratio and image: patches kept, the budget ``ipcv.keep_count`` gives, whether the kept
    patches are exactly that image's top-K by ``scores`` ``[L]``, and the mean score of kept and
    removed patches."""
    rows = []
    for ratio, c in runs.items():
        kept = kept_mask(batch.length, c.keep)
        for i, name in enumerate(batch.names):
            sl = batch.patch_rows(i)
            s, k = scores[sl], kept[sl]
            n = int(k.sum())
            top = torch.zeros_like(k)
            top[s.topk(n).indices] = True
            rows.append(
                dict(
                    keep_ratio=ratio,
                    image=name,
                    kept=n,
                    budget=ipcv.keep_count(len(s), ratio),
                    top_k=bool(torch.equal(top, k)),
                    score_kept=float(s[k].mean()),
                    score_removed=float(s[~k].mean()) if n < len(s) else float("nan"),
                )  # fmt: skip
            )
    return pd.DataFrame(rows)


def saliency_share(saliency: torch.Tensor, batch: Batch, runs: Mapping[float, Compressed], patch: int) -> pd.DataFrame:
    """Share of each image's saliency mass (unpruned saliency map ``[B, 1, H, W]``) that lies on the
    patches IPCV keeps. A choice blind to content would get the keep ratio itself on average."""
    per_patch = F.avg_pool2d(saliency.float(), patch)[:, 0]  # [B, h, w] mean saliency of each patch
    rows = []
    for ratio, c in runs.items():
        grids = batch.grid_values(kept_mask(batch.length, c.keep))
        for i, name in enumerate(batch.names):
            m = torch.from_numpy(grids[name])
            rows.append(dict(keep_ratio=ratio, image=name, share=float(per_patch[i][m].sum() / per_patch[i].sum())))
    return pd.DataFrame(rows)


def qwen2vl_segments(grid_thw: Sequence[Sequence[int]]) -> list[int]:
    """Patches per attention segment of a Qwen2-VL tower call: one per image, one per temporal
    patch (pair of video frames); ``grid_thw`` rows are (t, h, w) in patches."""
    return [h * w for t, h, w in grid_thw for _ in range(t)]


def budgets(seg_lengths: Sequence[int], ratios: Sequence[float], prefix: int = 0) -> pd.DataFrame:
    """Kept tokens per segment (``ipcv.keep_count`` of its unprotected tokens, plus the prefix)."""
    rows = []
    for s, n in enumerate(seg_lengths):
        row = {"segment": s, "tokens": n}
        row.update({f"keep {r:g}": ipcv.keep_count(n - prefix, r) + prefix for r in ratios})
        rows.append(row)
    return pd.DataFrame(rows)


def kept_per_image(c: Compressed, batch: Batch) -> list[int]:
    """Kept patches of each image in a run (prefix tokens not counted)."""
    return [int(k) - batch.prefix_tokens for k in c.keep_counts]


RULES = ("difference", "random", "diversity")


def selection_rules(
    enc: Encoder,
    batch: Batch,
    un: Unpruned,
    keep_ratios: Sequence[float],
    prune_layer: int = 3,
    seeds: Sequence[int] = (0, 1, 2),
) -> pd.DataFrame:
    """IPCV with each selection rule of eq. 2 (``IPCV(selection=...)``: eq. 1's feature difference, a seeded
    random choice, greedy max-min diversity), everything else at the defaults, against the unpruned run.

    Per keep ratio, rule and image: ``all_cos``, the mean cosine of the image's downstream tokens (as
    :func:`ipcv.analysis.fidelity.fidelity_row`), and ``share``, the share of the image's unpruned saliency mass on
    the kept patches (as :func:`saliency_share`; NaN without a saliency head). The random rule is the mean over
    ``seeds`` (one draw per seed), so one lucky draw does not decide.

    Columns: keep_ratio, rule, image, all_cos, share.
    """
    per_patch = None if un.saliency is None else F.avg_pool2d(un.saliency.float(), enc.patch_size)[:, 0]
    rows = []
    for ratio in keep_ratios:
        for rule in RULES:
            for seed in seeds if rule == "random" else (0,):
                s = ipcv.IPCV(ratio, prune_layer=prune_layer, selection=rule, seed=seed)
                c = run_compressed(enc, batch, s, states=False)
                cos = image_cosines(batch, un, c)
                grids = batch.grid_values(kept_mask(batch.length, c.keep))
                for i, name in enumerate(batch.names):
                    share = float("nan")
                    if per_patch is not None:
                        m = torch.from_numpy(grids[name])
                        share = float(per_patch[i][m].sum() / per_patch[i].sum())
                    rows.append(
                        dict(keep_ratio=ratio, rule=rule, seed=seed, image=name, all_cos=cos[name], share=share)
                    )
    table = pd.DataFrame(rows)
    return table.groupby(["keep_ratio", "rule", "image"], sort=False)[["all_cos", "share"]].mean().reset_index()
