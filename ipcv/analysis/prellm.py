"""The 2026 pre-LLM baselines on a vision encoder's final tokens, and what the token set they hand on carries.

VisionZip, DivPrune, CDPruner, RandomKeep and Pool prune (or merge) the visual tokens *after* the tower,
before the first decoder layer. On a pure vision encoder (the book's trained DINOv2) there is no decoder, so
their maths (:mod:`ipcv.methods`, the functions :mod:`ipcv.language` runs) is applied here to the tokens a
projector would read: the encoder's output after its final norm (``enc.finish``), one image at a time.
IPCV runs *inside* the encoder (:func:`ipcv.analysis.hidden.run_compressed`) and restores every token, so
"IPCV + X" is X applied to IPCV's restored output.

Two measures mean the same thing for every method (:func:`measures`):

- **coverage**: each *unpruned* final patch token's best cosine similarity to the set the LLM would receive,
  averaged over the image's patches (1: every patch token is in the set or has an exact copy there);
- **saliency share**: each token of the set stands for one patch's worth of content, spread over the
  patches it is made of in proportion to their weight in it (a kept patch: that patch; a 2x2 pooled token:
  a quarter to each of its 4 patches; a VisionZip contextual token ``target + mean(assigned)``: half to the
  target, half shared by the assigned ones; the CLS token: no patch); the share is the trained saliency
  mass those weights cover, over the image's total. For a selection it is notebook 01's share of saliency
  on the kept patches; a choice blind to content gets the share of tokens it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import ipcv
from ipcv.methods.cdpruner import cdpruner_keep
from ipcv.methods.divprune import divprune_keep
from ipcv.methods.pool import pool_cells, pool_states
from ipcv.methods.random_keep import random_keep
from ipcv.methods.visionzip import contextual_states, split_counts, visionzip_merge

from .encoders import Batch, Encoder
from .hidden import Unpruned

METHODS = ("VisionZip", "DivPrune", "CDPruner", "RandomKeep", "Pool")
#: how the book names each method's rows here: CDPruner has no instruction to condition on in a pure ViT
LABELS = {
    "VisionZip": "VisionZip ([CLS] attention)",
    "DivPrune": "DivPrune",
    "CDPruner": "CDPruner (no instruction: DPP only)",
    "RandomKeep": "Random (seed 0)",
    "Pool": "Pool (average)",
}
IPCV_ALONE = "IPCV alone (all tokens restored)"


def label(method: str, paired: bool) -> str:
    """The row name of ``method`` alone or behind IPCV (``"IPCV + DivPrune"``)."""
    return f"IPCV + {LABELS[method]}" if paired else LABELS[method]


@dataclass
class ImageTokens:
    """One image's tokens as a projector reads them. prefix: ``[p, D]`` (CLS); patches: ``[n, D]`` in
    row-major grid order; grid: ``(h, w)``, ``h * w = n``."""

    prefix: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]


def image_tokens(batch: Batch, output: torch.Tensor) -> list[ImageTokens]:
    """Split an encoder's downstream output ``[L, D]`` (``enc.finish``) into its images. A ViT's output keeps
    the packed layout (prefix, then the row-major patches); an output merged 2x2 (Qwen2-VL's merger, ``L / 4``
    rows, no prefix) is read on the merged grid, in the order the processor gives (row-major merge units)."""
    if len(output) == batch.length:
        out = []
        for i, start in enumerate(batch.starts):
            p, n = batch.prefix_tokens, batch.seg_lengths[i]
            patches = output[start + p : start + n][torch.as_tensor(np.argsort(batch.rasters[i]))]
            out.append(ImageTokens(output[start : start + p], patches, batch.grids[i]))
        return out
    if batch.prefix_tokens or batch.length % len(output):
        raise ValueError(f"{len(output)} output rows do not split evenly over images of {batch.seg_lengths} tokens")
    unit = batch.length // len(output)
    side = int(round(unit**0.5))
    out, start = [], 0
    for h, w in batch.grids:
        grid = (h // side, w // side)
        n = grid[0] * grid[1]
        out.append(ImageTokens(output[start:start], output[start : start + n], grid))
        start += n
    return out


@dataclass
class TokenSet:
    """What the LLM would receive for one image. states: ``[k, D]``; weights: ``[k, n]`` each token's share of
    each patch (rows sum to 1; a CLS row is 0)."""

    states: torch.Tensor
    weights: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.states.shape[0]


def _selected(x: ImageTokens, idx: torch.Tensor) -> TokenSet:
    n = x.patches.shape[0]
    return TokenSet(x.patches[idx], F.one_hot(idx, n).float())


def cls_attention(enc: Encoder, batch: Batch, states: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's inputs in block ``block`` (negative: from the end) of a ViT with a CLS token, from that
    block's input ``states`` ``[L, D]`` (packed): the attention the CLS token pays each patch, summed over the
    heads (``[B, n]``, patches in row-major order) and the block's keys averaged over the heads (the merging
    metric, ``[B, n, d]``), the official LLaVA rule."""
    if batch.prefix_tokens != 1 or enc.attention_inputs is None:
        raise ValueError(
            f"VisionZip's [CLS] rule needs a ViT with one CLS token and its attention wired ({enc.family} has "
            f"{batch.prefix_tokens} prefix tokens)"
        )
    block = block % enc.depth
    B, N = len(batch.names), batch.seg_lengths[0]
    with torch.inference_mode():
        q, k, scaling = enc.attention_inputs(block, states.view(B, N, -1))
        probs = ((q[:, :, :1].float() @ k.float().transpose(-1, -2)) * scaling).softmax(-1)  # [B, H, 1, N]
    order = torch.as_tensor(np.argsort(batch.rasters[0]))
    scores = probs[:, :, 0, 1:].sum(1).cpu()[:, order]
    metric = k.float().mean(1)[:, 1:].cpu()[:, order]
    return scores, metric


def compress(
    method: str, keep_ratio: float, x: ImageTokens, image: int, vz: tuple[torch.Tensor, torch.Tensor] | None = None
) -> TokenSet:
    """``method`` at ``keep_ratio`` on one image's tokens (``image``: its number, RandomKeep's span), with the
    library's defaults. The budget is the settings' own count of the ``n`` patches (``ipcv.keep_count``; Pool:
    its pooled grid). VisionZip (``vz``: :func:`cls_attention`'s score and metric of this image) follows the
    official LLaVA rule: the CLS token is one of its dominant tokens."""
    n = x.patches.shape[0]
    settings = {"VisionZip": ipcv.VisionZip, "DivPrune": ipcv.DivPrune, "CDPruner": ipcv.CDPruner,
                "RandomKeep": ipcv.RandomKeep, "Pool": ipcv.Pool}[method](keep_ratio)  # fmt: skip
    k = settings.counts(n)[0]
    if method == "RandomKeep":
        return _selected(x, random_keep(n, k, settings.seed, image))
    if method == "DivPrune":
        return _selected(x, divprune_keep(x.patches, k))
    if method == "CDPruner":  # no instruction: relevance is uniform, the kernel is the plain similarity
        return _selected(x, cdpruner_keep(x.patches, x.patches, x.patches[:0], k, settings.theta))
    if method == "Pool":
        cells = pool_cells(*x.grid, keep_ratio)
        weights = torch.zeros(len(cells), n)
        for j, c in enumerate(cells):
            weights[j, c] = 1.0 / len(c)
        return TokenSet(pool_states(x.patches, cells), weights)
    if method == "VisionZip":
        if vz is None or x.prefix.shape[0] != 1:
            raise ValueError("VisionZip here needs the CLS token and its attention (cls_attention)")
        dominant, contextual = split_counts(k, settings.contextual_share)
        top, targets, groups = visionzip_merge(vz[0], vz[1], dominant - 1, contextual)  # CLS is a dominant token
        weights = torch.zeros(1 + len(top) + len(targets), n)
        weights[1 + torch.arange(len(top)), top] = 1.0
        for t, g in enumerate(groups):
            row = 1 + len(top) + t
            weights[row, targets[t]] = 0.5 if g.numel() else 1.0
            if g.numel():
                weights[row, g] = 0.5 / g.numel()
        states = torch.cat([x.prefix, x.patches[top], contextual_states(x.patches, targets, groups)])
        return TokenSet(states, weights)
    raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")


def patch_saliency(un: Unpruned, batch: Batch, patch: int) -> list[torch.Tensor] | None:
    """Per image, the unpruned saliency map's mean over each patch, ``[n]`` row-major (None: no head)."""
    if un.saliency is None:
        return None
    per_patch = F.avg_pool2d(un.saliency.float(), patch)[:, 0]
    return [per_patch[i].reshape(-1) for i in range(len(batch.names))]


def measures(target: torch.Tensor, s: TokenSet, saliency: torch.Tensor | None) -> dict[str, float]:
    """``coverage`` (mean over the unpruned patch tokens ``target`` ``[n, D]`` of their best cosine to the set)
    and ``share`` (saliency mass the set's patch weights cover, over the total; NaN without a saliency map)."""
    a = F.normalize(target.float(), dim=-1)
    b = F.normalize(s.states.float(), dim=-1)
    coverage = float((a @ b.T).max(1).values.mean())
    share = float("nan") if saliency is None else float((s.weights.sum(0) * saliency).sum() / saliency.sum())
    return dict(coverage=coverage, share=share)


def compare(
    enc: Encoder,
    batch: Batch,
    un: Unpruned,
    ipcv_runs: dict,
    keep_ratios: Sequence[float],
    methods: Sequence[str] = METHODS,
) -> pd.DataFrame:
    """Every method alone and behind IPCV at each keep ratio, plus IPCV alone, one row per image.

    ipcv_runs: ``{keep_ratio: run}`` of IPCV at that ratio inside the encoder (anything with ``.output``, e.g.
    :func:`ipcv.analysis.hidden.run_compressed`'s); IPCV + X runs both at the same ratio (the
    ``ViT r / LLM r`` pairing of ``ipcv.presets.modern_settings``). Behind IPCV, VisionZip scores the block
    before IPCV's pruning block (the last one no longer sees every patch), as ``ipcv.presets.pre_llm_method``.
    Columns: method, pre_llm, ipcv, keep_ratio, image, tokens (handed to the LLM), patches, coverage, share.
    """
    target = image_tokens(batch, un.output)
    sal = patch_saliency(un, batch, enc.patch_size)
    has_cls = batch.prefix_tokens == 1 and enc.attention_inputs is not None
    if "VisionZip" in methods and has_cls:
        zip_alone = cls_attention(enc, batch, un.states[enc.depth - 1], -1)
    rows = []

    def add(name, method, paired, r, sets):
        for i, (image, s) in enumerate(zip(batch.names, sets)):
            m = measures(target[i].patches, s, None if sal is None else sal[i])
            rows.append(dict(method=name, pre_llm=method, ipcv=paired, keep_ratio=r, image=image, tokens=s.tokens,
                             patches=target[i].patches.shape[0], **m))  # fmt: skip

    for r in keep_ratios:
        c = ipcv_runs[r]
        restored = image_tokens(batch, c.output)
        n = [x.patches.shape[0] for x in restored]
        add(IPCV_ALONE, "", True, r, [TokenSet(x.patches, torch.eye(k)) for x, k in zip(restored, n)])
        for method in methods:
            if method == "VisionZip" and not has_cls:
                continue
            for paired, tokens in ((False, target), (True, restored)):
                vz = None
                if method == "VisionZip":
                    block = c.settings.prune_layer - 1 if paired else enc.depth - 1
                    scores, metric = cls_attention(enc, batch, un.states[block], block) if paired else zip_alone
                sets = []
                for i, x in enumerate(tokens):
                    if method == "VisionZip":
                        vz = (scores[i], metric[i])
                    sets.append(compress(method, r, x, i, vz))
                add(label(method, paired), method, paired, r, sets)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the FLOP model: Qwen2-VL-2B at prefill

COST_PATCHES, COST_VISUAL, COST_GRID = 1024, 256, (16, 16)  # one 448 x 448 image: 32 x 32 patches, 16 x 16 tokens


def settings_of(method: str, keep_ratio: float, paired: bool):
    """``(vision, language)`` settings of a row: ``ipcv.presets.pre_llm_method`` behind ``IPCV(keep_ratio)``."""
    vision = ipcv.IPCV(keep_ratio) if paired else None
    if not method:
        return vision, None
    return vision, ipcv.presets.pre_llm_method(method, keep_ratio, vision)


def kept_tokens(method: str, keep_ratio: float, n: int, grid: tuple[int, int]) -> int:
    """Tokens the LLM receives of ``n`` on a ``grid``: the settings' count (Pool: its pooled grid); all without
    a pre-LLM method."""
    if not method:
        return n
    if method == "Pool":
        return len(pool_cells(*grid, keep_ratio))
    return settings_of(method, keep_ratio, False)[1].counts(n)[0]


def costs(model, keep_ratios: Sequence[float], methods: Sequence[str] = METHODS) -> pd.DataFrame:
    """The rows of :func:`compare` priced on ``model`` (:func:`ipcv.analysis.flop_tables.qwen2vl_2b`) for one
    448 x 448 image (1024 patches, 256 LLM tokens on a 16 x 16 grid: DINOv2's 224 px grid) by
    :func:`ipcv.analysis.flop_tables.prefill_costs`, plus vanilla. Columns: method, pre_llm, ipcv,
    keep_ratio, kept, vision_gflops, overhead_gflops, decoder_gflops, gflops, kv_cache_mb, flop_ratio."""
    from .flop_tables import prefill_costs

    rows = [dict(method="vanilla", pre_llm="", ipcv=False, keep_ratio=1.0, kept=COST_VISUAL,
                 **prefill_costs(model, COST_PATCHES, COST_VISUAL, COST_VISUAL))]  # fmt: skip
    for r in keep_ratios:
        entries = [(IPCV_ALONE, "", True)]
        entries += [(label(m, p), m, p) for m in methods for p in (False, True)]
        for name, method, paired in entries:
            vision, language = settings_of(method, r, paired)
            k = kept_tokens(method, r, COST_VISUAL, COST_GRID)
            c = prefill_costs(model, COST_PATCHES, COST_VISUAL, k, vision, language)
            rows.append(dict(method=name, pre_llm=method, ipcv=paired, keep_ratio=r, kept=k, **c))
    out = pd.DataFrame(rows)
    out["flop_ratio"] = out["gflops"] / out["gflops"].iloc[0]
    return out


def analytic_prefill(model, paired: float = 0.35) -> pd.DataFrame:
    """The rows of ``python -m ipcv.bench prefill --protocol modern`` priced analytically (no run): vanilla, each
    pre-LLM method alone at ``ipcv.presets.MODERN_RATIOS``, IPCV alone at ``paired`` and IPCV + each at
    ``paired``, on ``model`` for one 448 x 448 image and the bench's 27 text tokens.
    Columns: setting, LLM visual tokens, TFLOPs, FLOP ratio (to vanilla), KV MB."""
    from .flop_tables import prefill_costs

    entries = [("vanilla", "", False, 1.0)]
    entries += [(f"{m} {round(100 * r)}%", m, False, r) for r in ipcv.presets.MODERN_RATIOS for m in METHODS]
    pct = f"{round(100 * paired)}%"
    entries += [(f"IPCV {pct}", "", True, paired)] + [(f"IPCV+{m} {pct}", m, True, paired) for m in METHODS]
    rows = []
    for name, method, with_ipcv, r in entries:
        vision, language = settings_of(method, r, with_ipcv) if r < 1 else (None, None)
        k = kept_tokens(method, r, COST_VISUAL, COST_GRID)
        c = prefill_costs(model, COST_PATCHES, COST_VISUAL, k, vision, language)
        rows.append({"setting": name, "LLM visual tokens": k, "TFLOPs": c["gflops"] / 1e3, "KV MB": c["kv_cache_mb"]})
    out = pd.DataFrame(rows)
    out.insert(3, "FLOP ratio", out["TFLOPs"] / out["TFLOPs"].iloc[0])
    return out
