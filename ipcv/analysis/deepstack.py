"""How close each DeepStack feature of a compressed Qwen3-VL tower stays to the unpruned one, per tap and per
way of rebuilding the tap (``IPCV(taps="ngr")`` / ``"frozen"``, or any vision-side method).

On random weights this is a pipeline check only (it shows that the taps are read, that a tap before the pruning
block is exact and that the variants differ where they should), never a statement about a trained model.

    python -m ipcv.analysis.deepstack [--size tiny|8b] [--patches N] [--keep R] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

import torch

import ipcv

from .fidelity import relative_error, row_cosine


def deepstack_fidelity(tower, pixel_values: torch.Tensor, grid_thw: torch.Tensor, variants: Mapping[str, object]):
    """One row per (variant, tap): the cosine (mean, min over merge units) and mean relative error of that
    tap's DeepStack feature against the unpruned tower's, and the feature's row count.

    tower: an *uncompressed* Qwen3-VL vision tower (``Qwen3VLVisionModel``); variants: ``{name: vision-side
    settings}``, each run with :func:`ipcv.compressed`.
    """
    if ipcv.api.settings(tower, "vision") is not None:
        raise ValueError("deepstack_fidelity: tower is compressed; pass the plain tower (ipcv.restore it first)")
    taps = list(tower.config.deepstack_visual_indexes)
    with torch.inference_mode():
        ref = tower(pixel_values, grid_thw=grid_thw).deepstack_features
        rows = []
        for name, settings in variants.items():
            with ipcv.compressed(tower, vision=settings):
                got = tower(pixel_values, grid_thw=grid_thw).deepstack_features
            for layer, a, b in zip(taps, got, ref):
                if a.shape != b.shape:
                    raise RuntimeError(f"{name}: tap {layer} has {tuple(a.shape)}, the unpruned {tuple(b.shape)}")
                cos = row_cosine(a, b)
                rows.append(
                    dict(
                        variant=name,
                        tap=layer,
                        rows=int(a.shape[0]),
                        cosine_mean=float(cos.mean()),
                        cosine_min=float(cos.min()),
                        relative_error_mean=float(relative_error(a, b).mean()),
                    )  # fmt: skip
                )
    return rows


TINY = dict(
    depth=12, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64, patch_size=16,
    spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=256,
    deepstack_visual_indexes=[2, 6, 9],
)  # fmt: skip


def _tower(size: str):
    from transformers.models.qwen3_vl import modeling_qwen3_vl as q3

    from ..models.configs import QWEN3_VL_8B_VISION

    torch.manual_seed(0)
    cfg = q3.Qwen3VLVisionConfig(**(TINY if size == "tiny" else QWEN3_VL_8B_VISION))
    cfg._attn_implementation = "sdpa"
    tower = q3.Qwen3VLVisionModel(cfg).eval()
    if size == "tiny":  # random init (std 0.02) barely moves the residual stream: make the blocks matter
        with torch.no_grad():
            for p in tower.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.15)
    return tower


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ipcv.analysis.deepstack", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "8b"], default="tiny", help="tiny random tower, or the 8B's size")
    p.add_argument("--patches", type=int, default=1024, help="one square image of this many patches")
    p.add_argument("--keep", type=float, nargs="+", default=[0.5, 0.2])
    p.add_argument("--prune-layer", type=int, default=None, help="default: 1 (tiny), 3 (8b)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from ..models.qwen3_vl import random_inputs

    tower = _tower(args.size)
    lp = args.prune_layer or (1 if args.size == "tiny" else 3)
    n_as = 3 if args.size == "tiny" else 7
    inputs = random_inputs(args.patches, torch.device("cpu"), torch.float32)
    variants = {}
    for k in args.keep:
        variants[f"IPCV {k:g} taps=ngr"] = ipcv.IPCV(k, prune_layer=lp, stabilize_layers=n_as, neighbors=10)
        variants[f"IPCV {k:g} taps=frozen"] = ipcv.IPCV(
            k, prune_layer=lp, stabilize_layers=n_as, neighbors=10, taps="frozen"
        )
        variants[f"ToMe {k:g}"] = ipcv.ToMe(k)
        variants[f"DARTViT {k:g}"] = ipcv.DARTViT(k, prune_layer=lp)
    rows = deepstack_fidelity(tower, inputs["hidden_states"], inputs["grid_thw"], variants)
    result = dict(
        measure="cosine of each DeepStack feature to the unpruned tower's (merge units), per tap",
        weights=f"random ({'tiny Qwen3-VL tower, std 0.15' if args.size == 'tiny' else 'Qwen3-VL-8B tower size'}); "
        "a pipeline check, no accuracy or quality is implied",
        tower=TINY if args.size == "tiny" else "Qwen3-VL-8B vision tower (ipcv.models.configs.QWEN3_VL_8B_VISION)",
        patches=args.patches, prune_layer=lp, stabilize_layers=n_as, device="CPU",
        rows=rows,
    )  # fmt: skip
    for r in rows:
        print(f"{r['variant']:>24}  tap {r['tap']:>2}  cos mean {r['cosine_mean']:.4f}  min {r['cosine_min']:.4f}  "
              f"rel. err {r['relative_error_mean']:.4f}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
