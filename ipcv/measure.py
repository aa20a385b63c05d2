"""Measurement shared by the benchmarks (:mod:`ipcv.bench`) and the evaluation harness (:mod:`ipcv.eval`):
where a run happened (:func:`device_name`, :func:`environment`) and what one ``generate`` call costs, measured
around it (:func:`measured_generate`): prefill and total latency, visual tokens entering the LLM and kept per
decoder layer, analytic FLOPs and KV cache (:func:`ipcv.costs`). Times come from :class:`ipcv.clock.Clock`.

Latency: CUDA events on a GPU (recorded on the stream, read after one synchronize at the end), else
``time.perf_counter``. *Prefill* is from the start of ``generate`` to the end of the model's first
forward: input preparation, the vision encoder (``generate`` encodes images before prefill) and the
LLM prefill, i.e. what a ``max_new_tokens=1`` call would take. *Total* is the whole ``generate`` call
(the paper's Table 4 latency, summed over a benchmark). *Vision* is the time spent inside the vision
encoder's calls (Figure 1's "ViT encoding"; the rest of prefill is mostly the LLM).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

from . import api
from .clock import Clock
from .flops import costs
from .models.registry import find


def device_name(device: str | torch.device) -> str:
    """Human name of a device: the GPU model, or the CPU model and the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    """What a result file records about where it ran: device, library versions, date (UTC)."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


@dataclass
class GenerateRecord:
    """One ``generate`` call (one sample at batch size 1).

    batch: samples in the call. new_tokens: tokens generated per sample (longest row). prefill_s /
    total_s: seconds (see module doc). visual_in: visual tokens entering the LLM, per sample.
    visual_per_layer: ``[layer]`` visual tokens each decoder layer processed at prefill, summed over the
    batch. vision_s: seconds inside the vision encoder. vision_tflops / llm_tflops: analytic prefill
    FLOPs (vision tower, decoder prefill) in TFLOPs.
    kv_mb: KV cache after prefill, MB at 2 bytes per value (Table 4's unit).
    """

    batch: int
    new_tokens: int
    prefill_s: float
    total_s: float
    vision_s: float
    visual_in: list[int]
    visual_per_layer: list[int]
    vision_tflops: float
    llm_tflops: float
    kv_mb: float

    def as_dict(self) -> dict:
        return asdict(self)


def measured_generate(model: torch.nn.Module, generate: Callable, *args, **kwargs):
    """Run ``generate(*args, **kwargs)`` on ``model`` (patched or not) and measure it.

    Returns ``(output, GenerateRecord)``. The observation hooks exist only during the call.
    """
    device = next(model.parameters()).device
    clock = Clock(device)
    marks = {}
    spans: list[list] = []

    def first_forward_done(module, args, output):
        marks.setdefault("prefill", clock.mark())

    encoder = find(model)[1]
    handles = [
        model.register_forward_hook(first_forward_done),
        encoder.register_forward_pre_hook(lambda module, args: spans.append([clock.mark()])),
        encoder.register_forward_hook(lambda module, args, output: spans[-1].append(clock.mark())),
    ]
    try:
        with api.stats(model) as record:
            start = clock.mark()
            out = generate(*args, **kwargs)
            end = clock.mark()
    finally:
        for handle in handles:
            handle.remove()
    total = clock.seconds(start, end)
    prefill = clock.seconds(start, marks["prefill"]) if "prefill" in marks else total
    ids = kwargs.get("input_ids", args[0] if args else None)
    sequences = out.sequences if hasattr(out, "sequences") else out
    batch = int(sequences.shape[0])
    new = int(sequences.shape[1] - ids.shape[1]) if ids is not None else 0
    cost = costs(model, dataclasses.replace(record, decoder=record.decoder[:1]))  # prefill only
    first = record.decoder[0] if record.decoder else None
    return out, GenerateRecord(
        batch=batch,
        new_tokens=new,
        prefill_s=prefill,
        total_s=total,
        vision_s=sum(clock.seconds(a, b) for a, b in spans),
        visual_in=list(first.visual[0]) if first else [],
        visual_per_layer=[int(sum(v)) for v in first.visual] if first else [],
        vision_tflops=cost.vision / 1e12,
        llm_tflops=cost.decoder / 1e12,
        kv_mb=cost.kv_cache_mb,
    )


def summarize(records: list[dict]) -> dict:
    """Per-task aggregate of :class:`GenerateRecord` dicts: sums (latency over the benchmark, as Table 4) and
    per-sample means."""
    n = sum(r["batch"] for r in records)
    if not n:
        return {"samples": 0}
    mean = lambda key: sum(r[key] for r in records) / n  # noqa: E731  (a call's value covers its batch)
    layers = max(len(r["visual_per_layer"]) for r in records)
    per_layer = [sum(r["visual_per_layer"][i] for r in records if i < len(r["visual_per_layer"])) / n
                 for i in range(layers)]  # fmt: skip
    return {
        "samples": n,
        "calls": len(records),
        "latency_s": sum(r["total_s"] for r in records),
        "prefill_s": sum(r["prefill_s"] for r in records),
        "latency_per_sample_s": sum(r["total_s"] for r in records) / n,
        "prefill_per_sample_s": sum(r["prefill_s"] for r in records) / n,
        "vision_s": sum(r.get("vision_s", 0.0) for r in records),
        "visual_tokens_llm": sum(sum(r["visual_in"]) for r in records) / n,
        "visual_tokens_per_layer": per_layer,
        "vision_tflops": mean("vision_tflops"),
        "llm_tflops": mean("llm_tflops"),
        "tflops": mean("vision_tflops") + mean("llm_tflops"),
        "kv_mb": mean("kv_mb"),
    }
