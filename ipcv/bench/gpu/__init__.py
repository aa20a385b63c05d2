"""``python -m ipcv.bench gpu``: every method checked and timed on a CUDA GPU, in one command.

Three parts (``--parts``), one JSON file (``data/bench/gpu_<gpu>.json``) naming the GPU, its driver and
the torch / transformers versions:

``check``   every method against the unpatched model on a small real-shaped config (the
            Qwen2-VL-2B architecture, random weights) in bf16 and fp16, with each attention
            implementation available (eager, sdpa, ``varlen``: PyTorch's own varlen kernel through
            transformers' attention interface, and ``flash_attention_2`` when the flash-attn package is
            installed). Keep 1.0 must give the unpatched model's logits bit for bit; at keep 0.35 the
            logits with an implementation are compared with the same method's under eager attention in
            the same dtype, ``rel = ||x - x_eager|| / ||x_eager||``, and must stay within
            ``max(2 * rel_vanilla, floor[dtype])``, where ``rel_vanilla`` is the unpatched model's own
            difference between the two implementations: compression may not make the kernels disagree
            more than they already do. On the varlen / flash paths IPCV's tower is also run with
            ``torch.cuda.set_sync_debug_mode("warn")`` around its block schedule and the host-device
            synchronisations counted (target: none).
``latency`` the Qwen2-VL-7B architecture (random weights from its config, bf16): whole ``generate``
            calls, as ``python -m ipcv.eval`` measures them (CUDA events after warm-up): total,
            prefill and vision-tower latency, analytic FLOPs, KV MB and peak memory, for vanilla and
            every row of Table 4, on an MMBench-like prompt (one 448x448 image), a 1344x1344 image and
            a 16-frame 448x448 video; the paper's relative numbers beside ours (448x448 rows).
``tower``   the 7B's vision tower alone at 1,024 / 4,096 / 16,384 patches, vanilla vs IPCV: time ratio
            beside FLOP ratio, and the share of vanilla's time spent in scoring + kNN + NGR.

Latency and FLOPs do not depend on weight values: random weights at the real architecture are an
honest speed measurement, and no accuracy is implied. Without CUDA the command refuses to run unless
asked for its CPU variant, ``--device cpu --size tiny``, which runs every part on tiny configs of the
same classes (float32 / bf16, eager / sdpa / varlen): it checks the command, not the speed, so it judges
none of the speed targets (:data:`ipcv.bench.gpu.shared.TARGETS`; only a real-size run on a CUDA GPU does) and says so.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import torch

from ...measure import environment
from ..common import UsageError, check_device, positive_int, write_json
from ..vision import DTYPES
from .check import check
from .latency import latency
from .shared import SIZES, TARGETS, WEIGHTS, attention_implementations
from .tower import tower


def gpu_environment(device: torch.device) -> dict:
    env = environment(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= dict(
            cuda=torch.version.cuda, multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1), driver=_driver(),
        )  # fmt: skip
    return env


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except OSError:
        return None


def not_judged(size: str, device_type: str) -> str | None:
    """Why a run's timings cannot judge issue 10's speed targets, or None for a real-size run on a CUDA GPU."""
    if size == "real" and device_type == "cuda":
        return None
    return (
        f"they are judged only on a real-size run (--size real) on a CUDA GPU; this run (--size {size} on "
        f"{device_type}) uses tiny configs that check the command, and its timings mean nothing"
    )


def targets(tower_results: list[dict], latency_result: dict | None, unjudged: str | None = None) -> list[dict]:
    """Issue 10's speed targets against what was measured (varlen attention for the tower). ``unjudged``
    (:func:`not_judged`): the reason this run cannot judge them; then every target's ``met`` is None."""
    out = []
    by_attn = {t["attention"]: t for t in tower_results}
    t = by_attn.get("varlen") or next(iter(by_attn.values()), None)
    rows = [] if t is None else [r for r in t["rows"] if r["setting"] == "ipcv0.35"]
    row = next((r for r in rows if r["patches"] == 4096), rows[-1] if rows else None)
    if row is not None:
        out.append(dict(target="tower time ratio / FLOP ratio, IPCV 0.35", patches=row["patches"],
                        attention=t["attention"], value=row["time_ratio"] / row["flop_ratio"],
                        limit=TARGETS["tower_time_over_flop_ratio_4096"]))  # fmt: skip
        out.append(dict(target="scoring + kNN + NGR, share of the vanilla tower", patches=row["patches"],
                        attention=t["attention"], value=row["overhead_share_of_vanilla"],
                        limit=TARGETS["overhead_share_of_vanilla_tower_4096"]))  # fmt: skip
    if latency_result is not None:
        first = latency_result["inputs"][0]
        r = next((r for r in first["rows"] if r["setting"] == "IPCV | ViT 35% / LLM 35%"), None)
        if r is not None:
            out.append(dict(target="IPCV+DART 35/35 total latency, share of vanilla", input=first["input"],
                            value=r["total_ratio"], limit=TARGETS["ipcv_dart_35_35_total_ratio_448"]))  # fmt: skip
    for o in out:
        o["met"] = None if unjudged else o["value"] <= o["limit"]
    return out


def print_targets(result: dict) -> None:
    if result.get("targets_not_judged"):
        print(f"\nspeed targets ({len(result['targets'])}): not checked on this run: {result['targets_not_judged']}")
        return
    for t in result["targets"]:
        print(f"target {t['target']}: {t['value']:.3f} (limit {t['limit']}) {'met' if t['met'] else 'MISSED'}")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def validate(args: argparse.Namespace) -> None:
    """UsageError for arguments this machine cannot run (checked before a model is built)."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--device {args.device}: no CUDA device here (torch.cuda.is_available() is False). On a GPU machine run "
            "it as is; to check the command on CPU run `python -m ipcv.bench gpu --device cpu --size tiny`"
        )
    check_device(args.device)
    device = torch.device(args.device)
    if device.type == "cpu" and args.size != "tiny":
        raise UsageError(
            f"--device cpu: only --size tiny is allowed, got --size {args.size} (the real 7B architecture is for a GPU)"
        )
    attns = attention_implementations(device)
    if args.attn not in attns:
        raise UsageError(f"--attn {args.attn}: not available here; use one of {', '.join(attns)}")


def run(args: argparse.Namespace) -> dict:
    try:
        validate(args)
    except UsageError as e:
        raise SystemExit(f"python -m ipcv.bench gpu: {e}") from None
    device = torch.device(args.device)
    result: dict = {
        "benchmark": "ipcv on the GPU: method checks, Table 4 latency on Qwen2-VL-7B, vision-tower scaling",
        "weights": WEIGHTS[args.size],
        "size": args.size,
        **gpu_environment(device),
    }
    if "check" in args.parts:
        result["check"] = check(args, device)
    if "latency" in args.parts:
        result["latency"] = latency(args, device)
    if "tower" in args.parts:
        result["tower"] = tower(args, device)
    result["targets_not_judged"] = not_judged(args.size, device.type)
    result["targets"] = targets(result.get("tower", []), result.get("latency"), result["targets_not_judged"])
    print_targets(result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", nargs="+", choices=("check", "latency", "tower"), default=["check", "latency", "tower"])
    p.add_argument("--device", default="cuda", help="cuda (default) | cpu (with --size tiny: checks the command only)")
    p.add_argument("--size", choices=sorted(SIZES), default="real", help="real architectures, or tiny (CPU check)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="latency and tower parts")
    p.add_argument(
        "--attn", default="varlen", help="vision attention for the latency part (eager|sdpa|varlen|flash_attention_2)"
    )
    p.add_argument(
        "--protocol", choices=("ours", "paper", "official"), default="ours", help="Table 4 rows (latency part)"
    )
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per setting (median reported), >= 1")
    p.add_argument("--new-tokens", type=positive_int, default=8, help="tokens generated per call (forced), >= 1")
    p.add_argument("--out", type=Path, default=None, help="JSON (default: data/bench/gpu_<device>.json)")


def merge(previous: dict, result: dict) -> dict:
    """``result`` with the parts it did not run taken from ``previous``, a file of the same device, size and
    library versions (so the parts can run in separate calls), the targets recomputed."""
    same = all(previous.get(k) == result.get(k) for k in ("device", "size", "torch", "transformers"))
    if not same:
        return result
    merged = {**{k: previous[k] for k in ("check", "latency", "tower") if k in previous}, **result}
    merged["targets"] = targets(merged.get("tower", []), merged.get("latency"), merged.get("targets_not_judged"))
    return merged


def main(args: argparse.Namespace) -> None:
    result = run(args)
    out = args.out or Path("data/bench") / f"gpu_{slug(result['device'])}{'_tiny' if args.size == 'tiny' else ''}.json"
    if out.is_file():
        result = merge(json.loads(out.read_text()), result)
    write_json(out, result)
    print(f"\n{result['device']}; weights: {result['weights']}\nwritten to {out}")
    failures = result.get("check", {}).get("failures", [])
    if failures:
        raise SystemExit(f"{len(failures)} check(s) failed: {', '.join(failures)}")
