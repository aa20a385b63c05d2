"""Table 4 and Figure 1 on the real Qwen2-VL architecture with random weights: whole ``generate`` calls.

For every setting (vanilla, the ViT-side methods at 65/50/35/20 % paired with LLM-side DART at the same
ratio, the LLM-side and the pre-LLM methods at 35/20/5 % with the whole ViT), one MMBench-like prompt (one 448x448
image, a short question) is answered with ``--new-tokens`` greedy tokens and measured the way
``python -m ipcv.eval`` measures a benchmark sample (:func:`ipcv.measure.measured_generate`): total
latency, prefill latency (start of generate to the end of the first forward), time inside the vision
tower, analytic prefill FLOPs and the KV cache after prefill. Figure 1: vanilla's vision-tower share
of prefill time for a low-resolution image, a high-resolution image and a video.

Latency and FLOPs do not depend on weight values (an honest speed measurement); no accuracy is implied.
The machine's load average is recorded before and after: timings taken on a busy machine say so.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import ipcv
from ipcv.models.configs import QWEN2_VL_2B_TEXT, QWEN2_VL_7B_VISION

from ..measure import environment, measured_generate
from ..method_strings import format_method
from .common import Progress, UsageError, median, note, positive_int, write_json
from .prefill import build_model, inputs, ratio_grid, text_ids
from .vision import DTYPES

# Figure 1's three inputs: (name, kind, side in px, frames)
FIGURE1_INPUTS = (
    ("low-res image (448x448)", "image", 448, 1),
    ("high-res image (896x896)", "image", 896, 1),
    ("video (8 frames, 336x336)", "video", 336, 8),
)


def video_inputs(model, side: int, frames: int, seed: int = 0) -> dict:
    """A ``frames``-frame video of ``side`` x ``side`` px between text tokens, as the processor gives it."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    grid = [frames // 2, side // 14, side // 14]
    n_visual = grid[0] * grid[1] * grid[2] // 4
    text = lambda n: torch.randint(0, text_ids(cfg), (n,), generator=g).tolist()  # noqa: E731
    ids = text(15) + [cfg.vision_start_token_id] + [cfg.video_token_id] * n_visual
    ids = torch.tensor([ids + [cfg.vision_end_token_id] + text(10)])
    dtype = next(model.parameters()).dtype
    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=(ids == cfg.video_token_id).int() * 2,
        pixel_values_videos=torch.randn(grid[0] * grid[1] * grid[2], 3 * 2 * 14 * 14, generator=g).to(dtype),
        video_grid_thw=torch.tensor([grid]),
    )


def apply(model, vision, language) -> None:
    """The plain model, then compressed with (vision, language) if either is set (``compress`` composes
    with earlier calls: every setting starts from the plain model)."""
    ipcv.restore(model)
    if vision is not None or language is not None:
        ipcv.compress(model, vision=vision, language=language)


def generate_measured(model, kw: dict, new_tokens: int):
    """One greedy ``generate`` of exactly ``new_tokens`` tokens, measured (:func:`measured_generate`)."""
    with torch.inference_mode():
        _, record = measured_generate(
            model, model.generate, **kw, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
    return record


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu")
    load_before = os.getloadavg()
    settings = selected(args.only)
    note(f"efficiency: building Qwen2-VL-2B ({args.dtype}, {args.attn}, random weights) for {len(settings)} settings")
    model = build_model(DTYPES[args.dtype], args.attn)
    model.generation_config.pad_token_id = model.config.text_config.eos_token_id
    kw = inputs(model)

    skipped = {}
    for name, s in list(settings.items()):  # a setting this model cannot run is reported, not timed
        try:
            apply(model, *s)
        except (ValueError, NotImplementedError) as e:
            skipped[name] = str(e)
            del settings[name]
    records: dict[str, list] = {name: [] for name in settings}
    with Progress(1 + args.repeats * len(settings), "efficiency: Table 4") as progress:
        progress.step("warm-up")
        generate_measured(model, kw, 1)  # warm-up (every setting runs the same kernels on shorter inputs)
        for i in range(args.repeats):  # timed interleaved across settings
            for name, s in settings.items():
                progress.step(f"{name}: generate {i + 1}/{args.repeats}")
                apply(model, *s)
                records[name].append(generate_measured(model, kw, args.new_tokens))
    ipcv.restore(model)

    rows = []
    base = records["vanilla"]
    base_total, base_prefill = median([r.total_s for r in base]), median([r.prefill_s for r in base])
    base_flops = base[0].vision_tflops + base[0].llm_tflops
    for name, (vision, language) in settings.items():
        rec = records[name]
        total, prefill = median([r.total_s for r in rec]), median([r.prefill_s for r in rec])
        tflops = rec[0].vision_tflops + rec[0].llm_tflops
        rows.append(
            dict(
                setting=name,
                vision=format_method(vision),
                language=format_method(language),
                total_s=total,
                prefill_s=prefill,
                vision_s=median([r.vision_s for r in rec]),
                llm_prefill_s=median([r.prefill_s - r.vision_s for r in rec]),
                total_ratio=total / base_total,
                prefill_ratio=prefill / base_prefill,
                llm_prefill_ratio=median([r.prefill_s - r.vision_s for r in rec])
                / median([r.prefill_s - r.vision_s for r in base]),
                tflops=tflops,
                flop_ratio=tflops / base_flops,
                kv_cache_mb=rec[0].kv_mb,
                visual_tokens_llm=rec[0].visual_in[0],
                visual_tokens_per_layer=rec[0].visual_per_layer,
                totals_s=[r.total_s for r in rec],
                prefills_s=[r.prefill_s for r in rec],
            )  # fmt: skip
        )
    shares = []
    figure1 = () if getattr(args, "no_figure1", False) else FIGURE1_INPUTS
    with Progress(args.repeats * len(figure1), "efficiency: Figure 1") as progress:
        for label, kind, side, frames in figure1:
            x = inputs(model, side=side) if kind == "image" else video_inputs(model, side, frames)
            recs = []
            for i in range(args.repeats):
                progress.step(f"{label}: prefill {i + 1}/{args.repeats}")
                recs.append(generate_measured(model, x, 1))
            prefill, vision_s = median([r.prefill_s for r in recs]), median([r.vision_s for r in recs])
            shares.append(
                dict(
                    input=label,
                    visual_tokens=recs[0].visual_in[0],
                    prefill_s=prefill,
                    vision_s=vision_s,
                    vision_share=vision_s / prefill,
                    llm_share=1 - vision_s / prefill,
                    vision_tflops=recs[0].vision_tflops,
                    llm_tflops=recs[0].llm_tflops,
                )  # fmt: skip
            )
    print_rows(rows, shares)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    return {
        "benchmark": "Qwen2-VL-2B generate(): Table 4 settings and Figure 1 shares",
        "weights": "random (architecture of Qwen/Qwen2-VL-2B-Instruct); no accuracy is implied",
        "model": {
            "text": {k: v for k, v in QWEN2_VL_2B_TEXT.items() if k != "rope_parameters"},
            "vision": QWEN2_VL_7B_VISION | {"hidden_size": 1536},
        },  # fmt: skip
        "input": "Table 4: one 448x448 image (1024 patches, 256 LLM visual tokens) and 27 text tokens, batch 1",
        "new_tokens": args.new_tokens,
        "measure": "ipcv.measure.measured_generate: total = the whole generate() call, prefill = start of "
        "generate to the end of the first forward (vision encoder included), vision = inside the vision tower, "
        "llm_prefill = prefill - vision (per run); medians of repeats timed interleaved across settings",
        "protocol": "this library's defaults (ViT-side methods full-length output + LLM-side DART at the same "
        "ratio; LLM-side methods at decoder layer 2), not the paper's exact protocol",
        "flops": "analytic prefill FLOPs (ipcv.costs)",
        "kv_cache": "after prefill, 2 bytes per value (Table 4), MB = 1e6 bytes",
        "dtype": args.dtype,
        "attention": args.attn,
        "repeats": args.repeats,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        **environment(device),
        "rows": rows,
        "skipped": skipped,
        "figure1": shares,  # empty with --no-figure1
    }


def print_rows(rows: list[dict], shares: list[dict]) -> None:
    print(
        f"\n{'setting':<34} {'total s':>8} {'total %':>8} {'prefill s':>9} {'prefill %':>9} {'LLM %':>6} "
        f"{'FLOP %':>7} {'KV MB':>6}"
    )
    for r in rows:
        print(
            f"{r['setting']:<34} {r['total_s']:>8.2f} {100 * r['total_ratio']:>7.1f}% "
            f"{r['prefill_s']:>9.2f} {100 * r['prefill_ratio']:>8.1f}% {100 * r['llm_prefill_ratio']:>5.1f}% "
            f"{100 * r['flop_ratio']:>6.1f}% {r['kv_cache_mb']:>6.2f}",
            flush=True,
        )
    for s in shares:
        print(f"{s['input']:<28} vision {100 * s['vision_share']:.1f}% of prefill ({s['prefill_s']:.2f} s)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=positive_int, default=2, help="timed runs per setting (median reported), >= 1")
    p.add_argument("--new-tokens", type=positive_int, default=8, help="tokens generated per call (forced), >= 1")
    p.add_argument(
        "--only", nargs="*",
        help="run only settings whose name contains one of these (and vanilla), "
        "e.g. --only 'FastV | ViT 100%% / LLM 35%%'",
    )  # fmt: skip
    p.add_argument("--no-figure1", action="store_true", help="skip Figure 1's vision shares (three more inputs)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--attn", choices=("eager", "sdpa"), default="sdpa", help="attention of the tower and decoder")
    p.add_argument(
        "--out", type=Path, default=None,
        help=f"JSON (default: {FULL_OUT}; with --only or --no-figure1: {SUBSET_OUT}, so a partial run never "
        "replaces the book's file)",
    )  # fmt: skip


SETTINGS = dict(vit=(0.65, 0.5, 0.35, 0.2), llm=(0.35, 0.2, 0.05))
FULL_OUT = Path("data/bench/efficiency_qwen2vl2b_cpu.json")
SUBSET_OUT = Path("data/bench/efficiency_qwen2vl2b_cpu_subset.json")


def pre_llm_grid(llm=SETTINGS["llm"]) -> dict[str, tuple[object, object]]:
    """The pre-LLM methods (VisionZip, DivPrune, CDPruner, RandomKeep, Pool) at the LLM-side ratios, with the
    whole ViT, named like Table 4's LLM-side rows (this project's rows, not the paper's)."""
    return {
        f"{m} | ViT 100% / LLM {round(100 * r)}%": (None, ipcv.presets.pre_llm_method(m, r))
        for r in llm
        for m in ipcv.presets.PRE_LLM
    }


def grid() -> dict[str, tuple[object, object]]:
    """Every setting of the bench: Table 4's (:func:`ratio_grid`) and the pre-LLM rows (:func:`pre_llm_grid`)."""
    return ratio_grid(**SETTINGS) | pre_llm_grid()


def selected(only: list[str] | None) -> dict[str, tuple[object, object]]:
    """The settings to run: all of :func:`grid`, or vanilla and those whose name contains one of ``only``."""
    settings = grid()
    if only:
        settings = {k: v for k, v in settings.items() if k == "vanilla" or any(o in k for o in only)}
    return settings


def validate(args: argparse.Namespace) -> None:
    names = [n for n in grid() if n != "vanilla"]
    unmatched = [o for o in args.only or () if not any(o in name for name in names)]
    if unmatched:
        methods = ", ".join(dict.fromkeys(n.split(" | ")[0] for n in names))
        tags = ", ".join(repr(t) for t in dict.fromkeys(n.split(" | ")[1] for n in names))
        raise UsageError(
            f"--only {' '.join(unmatched)}: matches no setting; a setting is named 'METHOD | RATIOS' with METHOD one "
            f"of {methods} and RATIOS one of {tags}"
        )


def main(args: argparse.Namespace) -> None:
    result = run(args)
    partial = bool(args.only) or getattr(args, "no_figure1", False)
    out = args.out or (SUBSET_OUT if partial else FULL_OUT)
    write_json(out, result)
    print(f"\n{result['device']}; weights: {result['weights']}\nwritten to {out}")
