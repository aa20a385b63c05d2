"""Part ``latency``: whole ``generate()`` calls on the Qwen2-VL-7B architecture, vanilla and every row of
Table 4 (see :mod:`ipcv.bench.gpu`).
"""

from __future__ import annotations

import torch

import ipcv

from ...method_strings import format_method
from ...paper import table4, table4_key
from ..common import Progress, median, note
from ..efficiency import apply, generate_measured
from ..prefill import protocol_settings, ratio_grid
from ..vision import DTYPES
from . import shared  # shared.build: the one model builder, read at call time
from .shared import SIZES, _free, _peak_gib, _peak_reset, prompt, set_attention


def latency(args, device: torch.device) -> dict:
    spec = SIZES[args.size][1]
    note(f"gpu latency: building the {'Qwen2-VL-7B architecture' if args.size == 'real' else 'tiny Qwen2-VL'} "
         f"({args.dtype}, random weights) on {device}")  # fmt: skip
    model = shared.build(spec, device, DTYPES[args.dtype])
    set_attention(model, args.attn)
    settings = ratio_grid(vit=(0.65, 0.5, 0.35, 0.2), llm=(0.35, 0.2, 0.05))
    if args.protocol != "ours":
        settings = protocol_settings(args.protocol)
    paper = table4()
    results = []
    for label, kind, side, frames in SIZES[args.size][2]:
        kw = prompt(model, kind, side, frames)
        runnable, refused = {}, {}
        for name, (vis, lang) in settings.items():
            try:
                apply(model, vis, lang)
                runnable[name] = (vis, lang)
            except (ValueError, NotImplementedError) as e:
                refused[name] = str(e)
        records: dict[str, list] = {name: [] for name in runnable}
        peaks: dict[str, float | None] = {}
        with Progress(len(runnable) * (1 + args.repeats), f"gpu latency, {label}") as progress:
            for name, (vis, lang) in runnable.items():  # warm-up: every setting once (kernels, caches, allocator)
                progress.step(f"{name}: warm-up")
                apply(model, vis, lang)
                generate_measured(model, kw, args.new_tokens)
            for i in range(args.repeats):  # timed, interleaved across settings
                for name, (vis, lang) in runnable.items():
                    progress.step(f"{name}: generate {i + 1}/{args.repeats}")
                    apply(model, vis, lang)
                    _peak_reset(device)
                    records[name].append(generate_measured(model, kw, args.new_tokens))
                    peaks[name] = _peak_gib(device)
        ipcv.restore(model)
        base = records["vanilla"]
        base_total, base_prefill = median([r.total_s for r in base]), median([r.prefill_s for r in base])
        base_flops = base[0].vision_tflops + base[0].llm_tflops
        rows = []
        for name, (vis, lang) in runnable.items():
            rec = records[name]
            total, prefill = median([r.total_s for r in rec]), median([r.prefill_s for r in rec])
            tflops = rec[0].vision_tflops + rec[0].llm_tflops
            row = dict(
                setting=name, vision=format_method(vis), language=format_method(lang), total_s=total,
                prefill_s=prefill, vision_s=median([r.vision_s for r in rec]), total_ratio=total / base_total,
                prefill_ratio=prefill / base_prefill, tflops=tflops, flop_ratio=tflops / base_flops,
                kv_cache_mb=rec[0].kv_mb, peak_gib=peaks[name], visual_tokens_llm=rec[0].visual_in[0],
                totals_s=[r.total_s for r in rec], prefills_s=[r.prefill_s for r in rec],
            )  # fmt: skip
            key = table4_key(name)
            if kind == "image" and side == 448 and key in paper:
                p = paper[key]
                row |= dict(paper_total_pct=p["latency_pct"], paper_prefill_pct=p["prefill_pct"])
            rows.append(row)
        results.append(dict(input=label, kind=kind, side=side, frames=frames, rows=rows, refused=refused))
        print_latency(label, rows)
    del model
    _free(device)
    return {
        "model": "Qwen2-VL-7B architecture" if args.size == "real" else "tiny Qwen2-VL",
        "dtype": args.dtype,
        "attention": args.attn,
        "protocol": args.protocol,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "measure": "ipcv.measure.measured_generate (CUDA events on a GPU): total = the whole generate() call, "
        "prefill = start of generate to the end of the first forward (vision tower included), vision = inside the "
        "tower; medians of repeats timed interleaved across settings after one warm-up call of each; peak = "
        "torch.cuda.max_memory_allocated during the call (weights included)",
        "inputs": results,
    }


def print_latency(label: str, rows: list[dict]) -> None:
    print(f"\n{label}")
    print(f"{'setting':<34} {'total s':>8} {'total %':>8} {'prefill %':>9} {'FLOP %':>7} {'KV MB':>7} {'peak GiB':>8}"
          f" {'paper tot/pre %':>15}")  # fmt: skip
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        paper = f"{r['paper_total_pct']:.1f}/{r['paper_prefill_pct']:.1f}" if "paper_total_pct" in r else "-"
        print(
            f"{r['setting']:<34} {r['total_s']:>8.3f} {100 * r['total_ratio']:>7.1f}% "
            f"{100 * r['prefill_ratio']:>8.1f}% "
            f"{100 * r['flop_ratio']:>6.1f}% {r['kv_cache_mb']:>7.2f} {peak:>8} {paper:>15}",
            flush=True,
        )
