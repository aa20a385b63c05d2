"""Extra memory of IPCV's kNN step (eq. 3) at a given number of patches.

Each measurement runs in a fresh process: on CPU the peak resident memory is reset just before
the call (``/proc/self/clear_refs``) and its peak above the resident memory at that moment is
reported; on CUDA, ``max_memory_allocated`` above the memory allocated before the call. The chunked
search is compared with an unchunked one (the whole R x K distance matrix at once).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from ipcv.budgets import keep_count
from ipcv.methods.ipcv import KNN_BLOCK_ELEMENTS, find_neighbors
from ipcv.methods.packed import complement

from ..measure import environment
from .common import Progress, check_device, positive_int, ratio, write_json


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(patches: int, dim: int, keep: float, k: int, block: int, device: str) -> dict:
    """Peak extra memory (MiB) of one ``find_neighbors`` call; run in a fresh process."""
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(patches, dim, device=dev, generator=g)
    keep_idx = torch.randperm(patches, device=dev, generator=g)[: keep_count(patches, keep)].sort().values
    rem = complement(keep_idx, patches)
    counts = [keep_idx.numel()]
    w = min(patches, 256)  # warm-up on up to 256 patches, 100 of 256 kept
    wk = max(1, w * 100 // 256)
    find_neighbors(h[:w], torch.arange(wk, device=dev), torch.arange(wk, w, device=dev), [w], [wk], k)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set size (VmHWM)
        base = _status_bytes("VmRSS")
    nb = find_neighbors(h, keep_idx, rem, [patches], counts, k, block_elements=block)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_bytes("VmHWM") - base
    return {"extra_mib": peak / 2**20, "R": int(rem.numel()), "K": int(keep_idx.numel()), "k": nb.index.shape[1]}


def main(args: argparse.Namespace) -> None:
    rows = []
    searches = (("chunked", KNN_BLOCK_ELEMENTS), ("unchunked", 1 << 62))
    with Progress(len(searches), "knn-memory") as progress:
        for label, block in searches:
            progress.step(f"{label} search, {args.patches} patches x {args.dim} on {args.device}, in a fresh process")
            cmd = [sys.executable, "-m", "ipcv.bench", "_knn-one", str(args.patches), str(args.dim), str(args.keep),
                   str(args.neighbors), str(block), args.device]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"knn-memory: the {label} measurement failed (exit {done.returncode}):\n{done.stderr}")
            row = json.loads(done.stdout.strip().splitlines()[-1]) | {"search": label, "block_elements": block}
            full_matrix = row["R"] * row["K"] * 4 / 2**20
            row["full_distance_matrix_mib"] = full_matrix
            rows.append(row)
            progress.write(f"{label:>9}: extra memory {row['extra_mib']:8.1f} MiB  (R={row['R']}, K={row['K']}, "
                           f"full R x K float32 matrix {full_matrix:.1f} MiB)")  # fmt: skip
    result = {
        "benchmark": "extra memory of the kNN step",
        "patches": args.patches, "dim": args.dim, "keep": args.keep, "neighbors": args.neighbors,
        **environment(torch.device(args.device)), "rows": rows,
    }  # fmt: skip
    out = args.out or Path("data/bench") / f"knn_memory_{args.patches}_{args.device.split(':')[0]}.json"
    write_json(out, result)
    print(f"written to {out}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patches", type=positive_int, default=16384, help="patches of one segment, >= 1")
    p.add_argument("--dim", type=positive_int, default=1280, help="hidden size, >= 1")
    p.add_argument("--keep", type=ratio, default=0.35, help="keep ratio, in (0, 1]")
    p.add_argument("--neighbors", type=positive_int, default=10, help="k of the kNN, >= 1")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--out", type=Path, default=None)


def validate(args: argparse.Namespace) -> None:
    check_device(args.device)
