"""Latency of an MLLM's vision tower, vanilla vs IPCV, at real sizes with random weights.

``--family``: every family whose adapter names a real-size tower (:attr:`ipcv.models.base.Adapter.tower`):
qwen2_vl (Qwen2-VL-7B's tower), qwen2_5_vl (Qwen2.5-VL-7B's, window attention), qwen3_vl (Qwen3-VL-8B's, full
attention, DeepStack taps 8/16/24), internvl (InternViT-300M of
InternVL3-1B/2B/8B, one 448x448 tile = 1024 patches + CLS per tile), llava_onevision (SigLIP-so400m of
LLaVA-OneVision-7B, 26 blocks, one 384x384 crop = 729 patches).
Latency and FLOPs do not depend on weight values, so random weights at the real architecture give
a real speed measurement (and no accuracy: none is reported). Settings are timed interleaved
(vanilla, keep 0.65, 0.5, ... then again) so that slow drift of the machine hits all alike. Beside
wall time, the process's CPU time is recorded (``cpu_time_ratio``): on a CPU shared with other
jobs it is the steadier measure of the work done (run with ``OMP_WAIT_POLICY=PASSIVE`` so that
waiting threads do not spin).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import ipcv
from ipcv.flops import vision_flops
from ipcv.models.base import RealTower
from ipcv.models.registry import families

from ..clock import timed
from ..measure import environment
from .common import Progress, UsageError, check_device, median, nonnegative_int, note, positive_int, ratio, write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --family -> the real-size tower its adapter names
FAMILIES: dict[str, RealTower] = {name: a.tower for name, a in families().items() if a.tower is not None}


def build_tower(
    device: torch.device, dtype: torch.dtype, attn: str, seed: int = 0, family: str | RealTower = "qwen2_vl"
):
    torch.manual_seed(seed)
    with torch.device(device):
        tower = (FAMILIES[family] if isinstance(family, str) else family).build()
    tower = tower.to(dtype).eval()
    if attn == "varlen":  # PyTorch's varlen kernel, registered in transformers' attention interface
        ipcv.vision_attention(tower, attn)
    else:
        tower.config._attn_implementation = attn
    return tower


def run(args: argparse.Namespace, family: RealTower | None = None, desc: str = "vision") -> dict:
    """Time the tower of ``args.family`` (or of ``family``, a tower not in :data:`FAMILIES`); ``desc``
    names the run in the progress display."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    family = family or FAMILIES[args.family]
    note(f"{desc}: building the {family.title} ({args.dtype}, {args.attn} attention, random weights) on {device}")
    tower = build_tower(device, dtype, args.attn, family=family)
    settings = {"vanilla": None} | {
        f"ipcv{k:g}": ipcv.IPCV(k, args.prune_layer, args.stabilize_layers, args.neighbors) for k in args.keep
    }
    rows = []
    for patches in args.patches:
        inputs = family.inputs(patches, device, dtype)
        segments = family.segments(patches)
        times: dict[str, list[float]] = {name: [] for name in settings}
        cpu: dict[str, list[float]] = {name: [] for name in settings}
        sections: dict[str, float] = {}

        def call(s, inputs=inputs):
            if s is None:
                ipcv.restore(tower)
            else:
                ipcv.compress(tower, vision=s)
            with torch.inference_mode():
                return tower(**inputs)

        with Progress(len(settings) * (1 + args.repeats), f"{desc}: {patches} patches") as progress:
            for name, s in settings.items():  # warm-up, and the per-step time split of IPCV's own work
                progress.step(f"{name} warm-up")
                with ipcv.trace(timing=True) as t:
                    call(s)
                sections[name] = sum(t.sections.values())
            for i in range(args.repeats):
                for name, s in settings.items():
                    progress.step(f"{name} timed run {i + 1}/{args.repeats}")
                    c0 = time.process_time()
                    times[name].append(timed(lambda s=s: call(s), device))
                    cpu[name].append(time.process_time() - c0)
        vanilla_t, vanilla_c = median(times["vanilla"]), median(cpu["vanilla"])
        vanilla_f = vision_flops(tower, segments).total
        for name, s in settings.items():
            t = median(times[name])
            f = vision_flops(tower, segments, s).total
            rows.append(
                dict(
                    patches=patches,
                    setting=name,
                    keep=1.0 if s is None else s.keep_ratio,
                    median_s=t,
                    times_s=times[name],
                    time_ratio=t / vanilla_t,
                    cpu_s=cpu[name],
                    cpu_time_ratio=median(cpu[name]) / vanilla_c,
                    flop_ratio=f / vanilla_f,
                    gflops=f / 1e9,
                    ipcv_overhead_s=sections[name],
                    overhead_share_of_vanilla=sections[name] / vanilla_t,
                )  # fmt: skip
            )
        print_rows([r for r in rows if r["patches"] == patches])
    ipcv.restore(tower)
    return {
        "benchmark": f"{family.title}, vanilla vs IPCV",
        "family": args.family,
        "weights": family.weights,
        "dtype": args.dtype,
        "attention": args.attn,
        "settings": dict(
            prune_layer=args.prune_layer, stabilize_layers=args.stabilize_layers, neighbors=args.neighbors
        ),
        "repeats": args.repeats,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **environment(device),
        "rows": rows,
    }


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'patches':>7} {'setting':>9} {'median s':>9} {'time ratio':>10} {'CPU-time ratio':>14} "
          f"{'FLOP ratio':>10} {'time/FLOP':>9} {'score+kNN+NGR':>14}")  # fmt: skip
    for r in rows:
        print(
            f"{r['patches']:>7} {r['setting']:>9} {r['median_s']:>9.3f} {r['time_ratio']:>10.3f} "
            f"{r.get('cpu_time_ratio', float('nan')):>14.3f} {r['flop_ratio']:>10.3f} "
            f"{r['time_ratio'] / r['flop_ratio']:>9.3f} "
            f"{100 * r['overhead_share_of_vanilla']:>13.2f}%",
            flush=True,
        )


ATTENTION = ipcv.api.VISION_ATTENTION  # eager, sdpa, flash_attention_2 / _3, varlen


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=sorted(FAMILIES), default="qwen2_vl", help="which tower (real size)")
    p.add_argument(
        "--patches", type=positive_int, nargs="+", default=[1024, 4096],
        help="patches of one square image, the square of an even number (internvl: a multiple of 1024, one "
        "448x448 tile each)",
    )  # fmt: skip
    p.add_argument("--keep", type=ratio, nargs="+", default=[0.65, 0.5, 0.35, 0.2], help="keep ratios, in (0, 1]")
    p.add_argument("--prune-layer", type=positive_int, default=3, help=">= 1 and < the tower's depth")
    p.add_argument(
        "--stabilize-layers", type=nonnegative_int, default=7, help=">= 0; prune layer + this <= the tower's depth"
    )
    p.add_argument("--neighbors", type=positive_int, default=10, help="k of NGR, >= 1")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per setting (median reported), >= 1")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--attn", choices=ATTENTION, default="sdpa", help="the tower's attention implementation")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results (default: data/bench/...)")


def validate(args: argparse.Namespace) -> None:
    """UsageError for arguments no tower can run (checked before one is built)."""
    family = FAMILIES[args.family]
    for patches in args.patches:
        try:
            family.inputs(patches, torch.device("meta"), torch.float32)
        except ValueError as e:
            raise UsageError(str(e)) from None
    blocks = family.depth
    if not args.prune_layer < blocks:
        raise UsageError(
            f"--prune-layer {args.prune_layer}: outside the allowed range [1, {blocks - 1}] ({family.title}: "
            f"{blocks} blocks)"
        )
    if args.prune_layer + args.stabilize_layers > blocks:
        raise UsageError(
            f"--stabilize-layers {args.stabilize_layers}: outside the allowed range [0, {blocks - args.prune_layer}] "
            f"for --prune-layer {args.prune_layer} ({family.title}: {blocks} blocks)"
        )
    check_device(args.device)
    if args.attn.startswith("flash") and not args.device.startswith("cuda"):
        raise UsageError(f"--attn {args.attn}: needs a CUDA device (--device cuda) and the flash-attn package")


def main(args: argparse.Namespace) -> None:
    result = run(args)
    stem = FAMILIES[args.family].name
    out = args.out or Path("data/bench") / f"{stem}_{args.device.split(':')[0]}_{args.dtype}_{args.attn}.json"
    write_json(out, result)
    print(f"\n{result['device']}; weights: {result['weights']}\nwritten to {out}")
