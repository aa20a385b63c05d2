"""Part ``check``: every method against the unpatched model, per dtype and attention implementation (see
:mod:`ipcv.bench.gpu`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

import ipcv
from ipcv import catalog

from ..common import Progress
from ..prefill import ratio_grid
from ..vision import DTYPES
from . import shared  # shared.build: the one model builder, read at call time
from .shared import FLOOR, SIZES, _free, at_keep, attention_implementations, prompt, set_attention


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
    settings = ratio_grid(vit=(0.35,), llm=(0.35,))
    rows, failures = [], []
    methods = [name for name in settings if name != "vanilla"]
    with Progress(len(dtypes) * len(attns) * len(methods), "gpu check", unit="check") as progress:
        for dtype in dtypes:
            model = shared.build(spec, device, DTYPES[dtype])
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
