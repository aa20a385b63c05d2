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
none of issue 10's speed targets (:data:`TARGETS`; only a real-size run on a CUDA GPU does) and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.utils import is_flash_attn_2_available

import ipcv
from ipcv import catalog
from ipcv.models._attention import varlen_kernel
from ipcv.models.configs import (
    QWEN2_VL_2B_TEXT,
    QWEN2_VL_2B_TOKENS,
    QWEN2_VL_7B_TEXT,
    QWEN2_VL_7B_VISION,
    TINY_TEXT,
    TINY_TOKENS,
    TINY_VISION,
)

from ..measure import environment
from ..method_strings import format_method
from ..paper import table4, table4_key
from . import vision
from .common import Progress, UsageError, check_device, median, note, positive_int, write_json
from .efficiency import apply, generate_measured, video_inputs
from .prefill import inputs, paper_settings, protocol_settings
from .vision import DTYPES

SIZES = {
    # size: (check model (text, vision, tokens), latency model, inputs (name, kind, side, frames), tower patches)
    "real": (
        (QWEN2_VL_2B_TEXT, QWEN2_VL_7B_VISION | {"hidden_size": 1536}, QWEN2_VL_2B_TOKENS),
        (QWEN2_VL_7B_TEXT, QWEN2_VL_7B_VISION, QWEN2_VL_2B_TOKENS),
        (
            ("448x448 image", "image", 448, 1),
            ("1344x1344 image", "image", 1344, 1),
            ("16-frame video", "video", 448, 16),
        ),
        (1024, 4096, 16384),
    ),
    "tiny": (
        (TINY_TEXT, TINY_VISION, TINY_TOKENS),
        (TINY_TEXT, TINY_VISION, TINY_TOKENS),
        (("112x112 image", "image", 112, 1), ("224x224 image", "image", 224, 1), ("4-frame video", "video", 112, 4)),
        (64, 256),
    ),
}  # fmt: skip
# the smallest relative difference a check allows, whatever the unpatched model's own (per dtype)
FLOOR = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 5e-3}
WEIGHTS = {
    "real": "random (architectures of Qwen/Qwen2-VL-2B-Instruct for check, Qwen/Qwen2-VL-7B-Instruct for latency "
    "and tower); no accuracy is implied",
    "tiny": "random, tiny configs of the Qwen2-VL classes (checks the command on CPU: not a speed measurement)",
}
TARGETS = {  # issue 10's speed targets
    "tower_time_over_flop_ratio_4096": 1.10,
    "overhead_share_of_vanilla_tower_4096": 0.03,
    "ipcv_dart_35_35_total_ratio_448": 0.608,
}


# --- models and inputs --------------------------------------------------------------------------------


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(spec: tuple[dict, dict, dict], device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A Qwen2-VL model of ``spec`` (text, vision, token ids) built on ``device`` directly in ``dtype``
    (no float32 copy of a 7B model), random weights from the config's own initialisation."""
    text, vis, tokens = spec
    cfg = Qwen2VLConfig(text_config=text, vision_config=vis, **tokens)
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = Qwen2VLForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = cfg.text_config.eos_token_id
    return model.eval()


def set_attention(model, attn: str) -> str:
    """Vision tower on ``attn``; the decoder on eager when ``attn`` is eager, else sdpa. Returns the
    decoder's implementation."""
    ipcv.vision_attention(model, attn)
    llm = "eager" if attn == "eager" else "sdpa"
    text = model.model.language_model
    text.config._attn_implementation = llm
    return llm


def prompt(model, kind: str, side: int, frames: int) -> dict:
    """Inputs on the model's device, pixels in its dtype."""
    kw = inputs(model, side=side) if kind == "image" else video_inputs(model, side, frames)
    param = next(model.parameters())
    return {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in kw.items()}


def attention_implementations(device: torch.device) -> dict[str, str]:
    """The vision attention implementations this machine can run -> the kernel each uses."""
    out = {"eager": "eager (matmul + softmax)", "sdpa": "scaled_dot_product_attention, one call per image"}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out["varlen"] = varlen_kernel(device, dtype)
    if device.type == "cuda" and is_flash_attn_2_available():
        out["flash_attention_2"] = "flash-attn varlen"
    return out


def at_keep(settings, keep: float):
    return None if settings is None else dataclasses.replace(settings, keep_ratio=keep)


# --- part 1: check ------------------------------------------------------------------------------------


@contextmanager
def count_syncs(device: torch.device) -> Iterator[list]:
    """Count host-device synchronisations inside IPCV's block schedule (CUDA only): the runner is
    wrapped for the duration, under ``torch.cuda.set_sync_debug_mode("warn")``."""
    seen: list = []
    row = catalog.BY_SETTINGS[ipcv.IPCV]
    runner = row.run
    if device.type != "cuda":
        yield seen
        return

    def guarded(*args, **kwargs):
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                return runner(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
            seen.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))

    catalog.BY_SETTINGS[ipcv.IPCV] = dataclasses.replace(row, run=guarded)  # the table row IPCV's calls read
    try:
        yield seen
    finally:
        catalog.BY_SETTINGS[ipcv.IPCV] = row


def _logits(model, kw: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model(**kw).logits[0, -1].float()


def _decisions(t) -> list:
    """What a run decided, from its trace: IPCV's kept rows, a baseline's source map, an LLM-side
    method's kept positions per layer."""
    out: list = [c.keep.tolist() if hasattr(c, "keep") else c.source.tolist() for c in t.calls]
    return out + [d.kept for d in t.decoder]


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit the same values (a NaN where the other has a NaN counts as the same)."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(args, device: torch.device) -> dict:
    spec = SIZES[args.size][0]
    dtypes = ("bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")
    attns = attention_implementations(device)
    settings = paper_settings(vit=(0.35,), llm=(0.35,))
    rows, failures = [], []
    methods = [name for name in settings if name != "vanilla"]
    with Progress(len(dtypes) * len(attns) * len(methods), "gpu check", unit="check") as progress:
        for dtype in dtypes:
            model = build(spec, device, DTYPES[dtype])
            kw = prompt(model, "image", 448 if args.size == "real" else 112, 1)
            logits: dict[tuple[str, str], torch.Tensor] = {}
            decisions: dict[tuple[str, str], list] = {}
            for attn in ["eager", *[a for a in attns if a != "eager"]]:
                llm_attn = set_attention(model, attn)
                ipcv.restore(model)
                vanilla = _logits(model, kw)
                logits[attn, "vanilla"] = vanilla
                for name in methods:
                    vis, lang = settings[name]
                    progress.step(f"{dtype} {attn}: {name}")
                    row = dict(dtype=dtype, attention=attn, llm_attention=llm_attn, kernel=attns[attn], setting=name)
                    ipcv.restore(model)
                    ipcv.compress(model, vision=at_keep(vis, 1.0), language=at_keep(lang, 1.0))
                    row["keep1_exact"] = identical(_logits(model, kw), vanilla)
                    ipcv.restore(model)
                    ipcv.compress(model, vision=vis, language=lang)
                    with count_syncs(device) as syncs, ipcv.trace() as t:
                        out = _logits(model, kw)
                    logits[attn, name], decisions[attn, name] = out, _decisions(t)
                    row["finite"] = bool(torch.isfinite(out).all())
                    row["vanilla_finite"] = bool(torch.isfinite(vanilla).all())  # random fp16 weights may overflow
                    if attn != "eager":
                        rel_vanilla = _rel(vanilla, logits["eager", "vanilla"])
                        tolerance = max(2 * rel_vanilla, FLOOR[dtype])
                        row |= dict(rel=_rel(out, logits["eager", name]), rel_vanilla=rel_vanilla, tolerance=tolerance)
                        row["same_decisions"] = decisions[attn, name] == decisions["eager", name]
                        # a token selection decided differently (a near-tie under another kernel's rounding) makes the
                        # two runs different computations: the tolerance applies only where the decisions agree
                        row["within"] = row["rel"] <= tolerance if row["same_decisions"] else None
                    if device.type == "cuda" and vis is not None and type(vis) is ipcv.IPCV and attn != "eager":
                        row["syncs_in_ipcv_blocks"] = len(syncs)
                        row["sync_messages"] = sorted(set(syncs))[:5]
                    # a method is not blamed for an overflow the unpatched model has too
                    finite = row["finite"] or not row["vanilla_finite"]
                    ok = row["keep1_exact"] and finite and row.get("within") is not False
                    row["ok"] = ok
                    if not ok:
                        failures.append(f"{dtype} {attn} {name}")
                    rows.append(row)
                ipcv.restore(model)
            ipcv.vision_attention(model, "sdpa")
            del model
            _free(device)
    print_check(rows)
    return {
        "model": "Qwen2-VL-2B architecture" if args.size == "real" else "tiny Qwen2-VL",
        "input": "one image, 25 text tokens; last-position logits of one forward (prefill)",
        "rule": "keep 1.0: logits equal to the unpatched model's bit for bit; keep 0.35: rel = ||x - x_eager|| / "
        "||x_eager|| against the same method under eager attention in the same dtype, within "
        "max(2 * rel_vanilla, floor) where both runs made the same decisions (kept / merged tokens); where a "
        "near-tie went the other way the row says so (same_decisions false) and no tolerance applies; floor per "
        "dtype: " + ", ".join(f"{k} {v:g}" for k, v in FLOOR.items()),
        "attention_implementations": attns,
        "dtypes": list(dtypes),
        "rows": rows,
        "failures": failures,
    }


def print_check(rows: list[dict]) -> None:
    print(
        f"\n{'dtype':<5} {'attention':<18} {'setting':<32} {'keep1':>6} {'rel':>9} {'tol':>9} {'same':>5} "
        f"{'syncs':>5}  ok"
    )
    for r in rows:
        rel = f"{r['rel']:.2e}" if "rel" in r else "-"
        tol = f"{r['tolerance']:.1e}" if "tolerance" in r else "-"
        print(
            f"{r['dtype']:<5} {r['attention']:<18} {r['setting']:<32} {'exact' if r['keep1_exact'] else 'DIFF':>6} "
            f"{rel:>9} {tol:>9} {str(r.get('same_decisions', '-'))[:5]:>5} {r.get('syncs_in_ipcv_blocks', '-')!s:>5}  "
            f"{'ok' if r['ok'] else 'FAIL'}"
        )


# --- part 2: latency ----------------------------------------------------------------------------------


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def latency(args, device: torch.device) -> dict:
    spec = SIZES[args.size][1]
    note(f"gpu latency: building the {'Qwen2-VL-7B architecture' if args.size == 'real' else 'tiny Qwen2-VL'} "
         f"({args.dtype}, random weights) on {device}")  # fmt: skip
    model = build(spec, device, DTYPES[args.dtype])
    set_attention(model, args.attn)
    settings = paper_settings(vit=(0.65, 0.5, 0.35, 0.2), llm=(0.35, 0.2, 0.05))
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


# --- part 3: tower ------------------------------------------------------------------------------------


def tower(args, device: torch.device) -> list[dict]:
    """:func:`ipcv.bench.vision.run` on the 7B tower, once per attention implementation."""
    family = vision.FAMILIES["qwen2_vl"]
    if args.size == "tiny":
        family = dataclasses.replace(
            family, name="vision_qwen2vl_tiny", title="tiny Qwen2-VL vision tower", weights=WEIGHTS["tiny"],
            build=lambda: Qwen2VisionTransformerPretrainedModel(Qwen2VLVisionConfig(**TINY_VISION)),
            depth=TINY_VISION["depth"],
        )  # fmt: skip
    out = []
    for attn in attention_implementations(device):
        if attn == "eager" and device.type == "cuda":
            continue  # eager materialises [H, L, L]: 16,384 patches would not fit, and nobody runs it on a GPU
        ns = argparse.Namespace(
            family="qwen2_vl", patches=list(SIZES[args.size][3]), keep=[0.65, 0.5, 0.35, 0.2], prune_layer=3,
            stabilize_layers=7, neighbors=10, repeats=args.repeats, device=str(device), dtype=args.dtype,
            attn="varlen" if attn == "varlen" else attn,
        )  # fmt: skip
        result = vision.run(ns, family, desc=f"gpu tower, {attn}")
        out.append({**result, "attention": attn, "kernel": attention_implementations(device)[attn]})
        _free(device)
    return out


# --- the command ------------------------------------------------------------------------------------------


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
