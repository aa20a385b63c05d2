"""Latency of Qwen2-VL-7B's vision tower, vanilla vs IPCV, at real sizes with random weights.

Latency and FLOPs do not depend on weight values, so random weights at the real architecture give
a real speed measurement (and no accuracy: none is reported). Settings are timed interleaved
(vanilla, keep 0.65, 0.5, ... then again) so that slow drift of the machine hits all alike.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

import ipcv
from ipcv.flops import vision_flops

from .common import environment, median, timed, write_json

# Qwen/Qwen2-VL-7B-Instruct vision_config (the 2B model has the same tower, hidden_size 1536)
QWEN2_VL_7B_VISION = dict(
    depth=32, embed_dim=1280, num_heads=16, hidden_size=3584, mlp_ratio=4, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
)  # fmt: skip
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_tower(device: torch.device, dtype: torch.dtype, attn: str, seed: int = 0):
    cfg = Qwen2VLVisionConfig(**QWEN2_VL_7B_VISION)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device(device):
        tower = Qwen2VisionTransformerPretrainedModel(cfg)
    return tower.to(dtype).eval()


def square_grid(patches: int) -> list[list[int]]:
    side = math.isqrt(patches)
    if side * side != patches or side % 2:
        raise ValueError(f"--patches {patches}: must be the square of an even number (e.g. 1024, 4096)")
    return [[1, side, side]]


def run(args: argparse.Namespace) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    tower = build_tower(device, dtype, args.attn)
    settings = {"vanilla": None} | {
        f"ipcv{k:g}": ipcv.IPCV(k, args.prune_layer, args.stabilize_layers, args.neighbors) for k in args.keep
    }
    rows = []
    for patches in args.patches:
        grid = torch.tensor(square_grid(patches), device=device)
        x = torch.randn(patches, 3 * 2 * 14 * 14, device=device, dtype=dtype)
        times: dict[str, list[float]] = {name: [] for name in settings}
        sections: dict[str, float] = {}

        def call(s, x=x, grid=grid):
            if s is None:
                ipcv.restore(tower)
            else:
                ipcv.compress(tower, vision=s)
            with torch.inference_mode():
                return tower(x, grid_thw=grid)

        for name, s in settings.items():  # warm-up, and the per-step time split of IPCV's own work
            with ipcv.trace(timing=True) as t:
                call(s)
            sections[name] = sum(t.sections.values())
        for _ in range(args.repeats):
            for name, s in settings.items():
                times[name].append(timed(lambda s=s: call(s), device))
        vanilla_t = median(times["vanilla"])
        vanilla_f = vision_flops(tower, [patches]).total
        for name, s in settings.items():
            t = median(times[name])
            f = vision_flops(tower, [patches], s).total
            rows.append(
                dict(
                    patches=patches,
                    setting=name,
                    keep=1.0 if s is None else s.keep_ratio,
                    median_s=t,
                    times_s=times[name],
                    time_ratio=t / vanilla_t,
                    flop_ratio=f / vanilla_f,
                    gflops=f / 1e9,
                    ipcv_overhead_s=sections[name],
                    overhead_share_of_vanilla=sections[name] / vanilla_t,
                )  # fmt: skip
            )
        print_rows([r for r in rows if r["patches"] == patches])
    ipcv.restore(tower)
    return {
        "benchmark": "Qwen2-VL-7B vision tower, vanilla vs IPCV",
        "weights": "random (architecture of Qwen/Qwen2-VL-7B-Instruct's vision tower); no accuracy is implied",
        "dtype": args.dtype,
        "attention": args.attn,
        "settings": dict(
            prune_layer=args.prune_layer, stabilize_layers=args.stabilize_layers, neighbors=args.neighbors
        ),
        "repeats": args.repeats,
        **environment(device),
        "rows": rows,
    }


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'patches':>7} {'setting':>9} {'median s':>9} {'time ratio':>10} {'FLOP ratio':>10} "
          f"{'time/FLOP':>9} {'score+kNN+NGR':>14}")  # fmt: skip
    for r in rows:
        print(
            f"{r['patches']:>7} {r['setting']:>9} {r['median_s']:>9.3f} {r['time_ratio']:>10.3f} "
            f"{r['flop_ratio']:>10.3f} {r['time_ratio'] / r['flop_ratio']:>9.3f} "
            f"{100 * r['overhead_share_of_vanilla']:>13.2f}%",
            flush=True,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patches", type=int, nargs="+", default=[1024, 4096], help="patches of one square image")
    p.add_argument("--keep", type=float, nargs="+", default=[0.65, 0.5, 0.35, 0.2])
    p.add_argument("--prune-layer", type=int, default=3)
    p.add_argument("--stabilize-layers", type=int, default=7)
    p.add_argument("--neighbors", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per setting (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--attn", default="sdpa", help="eager | sdpa | flash_attention_2")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results (default: data/bench/...)")


def main(args: argparse.Namespace) -> None:
    result = run(args)
    out = args.out or Path("data/bench") / f"vision_qwen2vl7b_{args.device.split(':')[0]}_{args.dtype}_{args.attn}.json"
    write_json(out, result)
    print(f"\n{result['device']}; weights: {result['weights']}\nwritten to {out}")
