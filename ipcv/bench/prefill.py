"""Prefill of Qwen2-VL-2B, vanilla vs the paper's settings (Table 1 / Table 4 rows), at real sizes with
random weights: one 448x448 image (1024 patches, 256 LLM visual tokens) and a short prompt.

For each setting: prefill time (one forward of the whole model with an empty cache, logits of the
last token only, the median of ``--repeats`` runs timed interleaved across settings), the analytic
FLOPs (:func:`ipcv.costs`, vision tower + decoder) and the KV cache after prefill (MB, float16 as
Table 4). Latency and FLOPs do not depend on weight values; no accuracy is implied.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration

import ipcv
from ipcv.budgets import progressive_counts
from ipcv.flops import decoder_layer_flops, encoder_flops
from ipcv.methods.sparsevlm import recycled_clusters
from ipcv.models.configs import QWEN2_VL_2B_TEXT, QWEN2_VL_2B_TOKENS, QWEN2_VL_7B_VISION
from ipcv.shapes import DecoderShape, EncoderShape
from ipcv.vision.dart_vit import dart_vit_counts
from ipcv.vision.merging import global_plan, merge_plan

from ..clock import timed
from ..measure import environment
from ..paper import table4
from .common import Progress, UsageError, median, nonnegative_int, note, write_json
from .vision import DTYPES

TEXT_BEFORE, TEXT_AFTER = 15, 10  # chat template around the image: system + user turn, question + assistant


def build_model(dtype: torch.dtype, attn: str, seed: int = 0) -> Qwen2VLForConditionalGeneration:
    cfg = Qwen2VLConfig(
        text_config=QWEN2_VL_2B_TEXT, vision_config=QWEN2_VL_7B_VISION | {"hidden_size": 1536}, **QWEN2_VL_2B_TOKENS
    )
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(cfg).to(dtype).eval()


def text_ids(cfg) -> int:
    """Random prompt text is drawn from ids below this: no special token, at most 151000 (Qwen2-VL's)."""
    return min(151000, cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id)


def inputs(model, side: int = 448, seed: int = 0) -> dict:
    """One ``side`` x ``side`` image between text tokens, as the processor would give it."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    grid = [1, side // 14, side // 14]
    n_visual = grid[1] * grid[2] // 4
    text = lambda n: torch.randint(0, text_ids(cfg), (n,), generator=g).tolist()  # noqa: E731
    ids = text(TEXT_BEFORE) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_visual
    ids = torch.tensor([ids + [cfg.vision_end_token_id] + text(TEXT_AFTER)])
    dtype = next(model.parameters()).dtype
    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=(ids == cfg.image_token_id).int(),
        pixel_values=torch.randn(grid[1] * grid[2], 3 * 2 * 14 * 14, generator=g).to(dtype),
        image_grid_thw=torch.tensor([grid]),
    )


def ratio_grid(vit=(0.5, 0.35, 0.2), llm=(0.35, 0.2, 0.05)) -> dict[str, tuple[object, object]]:
    """The rows of Tables 1 and 4: (vision, language) settings by name. ViT-side methods are paired
    with LLM-side DART at the same ratio (the authors' script pairs IPCV with DART) at the ratios
    ``vit``; LLM-side methods run with the whole ViT (100%) at the ratios ``llm``."""
    rows: dict[str, tuple[object, object]] = {"vanilla": (None, None)}
    for r in vit:
        tag = f"ViT {r:.0%} / LLM {r:.0%}"
        rows[f"IPCV | {tag}"] = (ipcv.IPCV(r), ipcv.DART(r))
        rows[f"ToMe | {tag}"] = (ipcv.ToMe(r), ipcv.DART(r))
        rows[f"ToFu | {tag}"] = (ipcv.ToFu(r), ipcv.DART(r))
        rows[f"DART(ViT) | {tag}"] = (ipcv.DARTViT(r), ipcv.DART(r))
    for r in llm:
        tag = f"ViT 100% / LLM {r:.0%}"
        rows[f"DART | {tag}"] = (None, ipcv.DART(r))
        rows[f"FastV | {tag}"] = (None, ipcv.FastV(r))
        rows[f"V2Drop | {tag}"] = (None, ipcv.V2Drop(r))
        rows[f"SparseVLM | {tag}"] = (None, ipcv.SparseVLM(r))
    return rows


def protocol_settings(protocol: str) -> dict[str, tuple[object, object]]:
    """The rows of Table 4 as :func:`ipcv.presets.paper_settings` gives them in ``protocol``
    (``"paper"`` or ``"official"``), by name ``"method | setting"``."""
    rows: dict[str, tuple[object, object]] = {}
    for setting, method in ipcv.presets.paper_rows("table4"):
        name = "vanilla" if method == "Vanilla" else f"{method} | {setting}"
        rows[name] = ipcv.presets.paper_settings("table4", setting, method, protocol)
    return rows


# Qwen2-VL-7B-Instruct's decoder (28 layers, 4 KV heads of 128): Table 4's vanilla KV cache, 76.6 MB in
# float16, is 1,336 prompt tokens. The split below (1,259 visual, 77 text) is fitted on one row (DART at
# 35 %); every other row of :func:`table4_kv_fit` is a prediction.
QWEN2_VL_7B_LAYERS, TABLE4_VISUAL, TABLE4_TEXT = 28, 1259, 77


def visual_per_layer(language, visual: int, layers: int) -> list[int]:
    """Visual tokens each decoder layer holds after an LLM-side pruner (one image, batch 1), from the
    settings' own budget functions (SparseVLM's recycled cluster tokens included)."""

    if language is None:
        return [visual] * layers
    stages, cur, out = language.stage_layers(), visual, []
    for i in range(layers):
        if i in stages:
            s = stages.index(i)
            if getattr(language, "budget", None) == "progressive":
                k = progressive_counts(cur, language.ratios()[s : s + 1], language.rounding)[0]
            else:
                k = language.counts(visual, layers)[s]
            extra = 0
            if isinstance(language, ipcv.SparseVLM) and not language.recycle_in_budget:
                extra = recycled_clusters(cur - k, language.recycle, language.recycle_rule)[1]
            cur = k + extra
        out.append(cur)
    return out


# Qwen/Qwen2-VL-7B-Instruct: its decoder and vision tower, for the analytic Table 4 fit
QWEN2_VL_7B_DECODER = dict(layers=28, dim=3584, mlp_dim=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064)


def _qwen2_vl_7b_tower_shape():

    c = QWEN2_VL_7B_VISION
    D, m = c["embed_dim"], c["spatial_merge_size"] ** 2
    merger = 2 * (m * D * m * D + m * D * c["hidden_size"]) // m
    embed = 2 * c["in_channels"] * c["temporal_patch_size"] * c["patch_size"] ** 2 * D
    return EncoderShape(c["depth"], D, D * c["mlp_ratio"], embed, merger, 0, c["num_heads"])


def _prefill_tflops(vision, visual_per_layer: list[int], visual: int, text: int) -> float:
    """Analytic prefill TFLOPs of Qwen2-VL-7B for one image of ``4 * visual`` patches: the vision tower
    under ``vision`` (one image: a global budget is that image's) and the decoder layers with causal attention."""
    import dataclasses

    if vision is not None and getattr(vision, "output", "full") == "reduced":
        vision = dataclasses.replace(vision, output="full")
    tower = encoder_flops(_qwen2_vl_7b_tower_shape(), [4 * visual], vision).total
    shape = DecoderShape(**QWEN2_VL_7B_DECODER)
    decoder = sum(decoder_layer_flops(shape, text + v, text + v) for v in visual_per_layer)
    return (tower + decoder) / 1e12


def reduced_visual_tokens(vision, patches: int, depth: int = 32, unit: int = 4) -> int:
    """LLM visual tokens a ViT-side baseline with ``output="reduced"`` hands on for one image of
    ``patches`` patches in a tower of ``depth`` blocks: its surviving patches from the schedule that runs
    it (ToMe / ToFu: :func:`ipcv.vision.merging.global_plan` or :func:`ipcv.vision.merging.merge_plan`;
    DART-ViT: :func:`ipcv.vision.dart_vit.dart_vit_counts`), turned into merge units by the rule of
    :func:`ipcv.models.qwen2_vl.reduced_units` (survivors / unit, half up, at least one)."""

    if isinstance(vision, ipcv.DARTViT):
        survivors = dart_vit_counts(vision, patches)
    elif vision.scope == "global":
        survivors = patches - sum(global_plan(patches, vision, depth))
    else:
        survivors = patches - sum(r[0] for r in merge_plan([patches], [0], vision, depth))
    return min(patches // unit, max(int(survivors > 0), (2 * survivors + unit) // (2 * unit)))


def table4_kv_fit(visual: int = TABLE4_VISUAL, text: int = TABLE4_TEXT) -> list[dict]:
    """Table 4's KV and TFLOPs columns (% of vanilla) beside what the presets imply, in both protocols,
    analytically: the KV cache is the sum over Qwen2-VL-7B's 28 layers of the tokens each layer
    caches; FLOPs are the vision tower's and the decoder layers' (:mod:`ipcv.flops`). ViT-side
    baselines hand the LLM their reduced token set (``output="reduced"``): ``text`` +
    :func:`reduced_visual_tokens` in every layer. No model runs; a row a protocol cannot reach is None."""
    layers, vanilla = QWEN2_VL_7B_LAYERS, QWEN2_VL_7B_LAYERS * (visual + text)
    vanilla_tflops = _prefill_tflops(None, [visual] * layers, visual, text)
    table = table4()
    paper_vanilla = table[("vanilla", "Vanilla")]  # Table 4's 100 %: 76.6 MB, 31.9 TFLOPs
    out = []
    for (setting, method), r in table.items():
        fit = {
            "setting": setting,
            "method": method,
            "table4_kv_pct": 100 * r["kv_cache_mb"] / paper_vanilla["kv_cache_mb"],
            "table4_tflops_pct": 100 * r["tflops"] / paper_vanilla["tflops"],
        }
        for protocol in ipcv.presets.PROTOCOLS:
            vision, language = ipcv.presets.paper_settings("table4", setting, method, protocol)
            if vision is not None and getattr(vision, "output", "full") == "reduced":
                per_layer = [reduced_visual_tokens(vision, 4 * visual, QWEN2_VL_7B_VISION["depth"])] * layers
            else:
                try:
                    if language is not None:
                        language.check_depth(layers)
                except ValueError:
                    fit[protocol] = fit[protocol + "_tflops"] = None
                    continue
                per_layer = visual_per_layer(language, visual, layers)
            fit[protocol] = 100 * sum(text + v for v in per_layer) / vanilla
            fit[protocol + "_tflops"] = 100 * _prefill_tflops(vision, per_layer, visual, text) / vanilla_tflops
        out.append(fit)
    return out


def print_kv_fit(rows: list[dict]) -> None:
    head = f"{'% of vanilla':<28} {'KV: Table 4':>11} {'paper':>7} {'official':>8}"
    print(f"{head}   {'FLOPs: Table 4':>14} {'paper':>7} {'official':>8}")

    def cell(x, w):
        return f"{x:>{w - 1}.1f}%" if x is not None else f"{'n/a':>{w}}"

    for r in rows:
        print(
            f"{r['method'] + ' | ' + r['setting']:<28} {cell(r['table4_kv_pct'], 11)} {cell(r['paper'], 7)} "
            f"{cell(r['official'], 8)}   {cell(r['table4_tflops_pct'], 14)} {cell(r['paper_tflops'], 7)} "
            f"{cell(r['official_tflops'], 8)}"
        )


def runnable(settings: dict[str, tuple[object, object]]) -> tuple[dict[str, tuple[object, object]], dict[str, str]]:
    """The settings this model can run, and the others with the reason (not built yet, or a budget the
    method cannot reach on this decoder)."""
    ok, refused = {}, {}
    for name, (vision, language) in settings.items():
        try:
            if vision is not None:
                vision.check_depth(QWEN2_VL_7B_VISION["depth"])
            if language is not None:
                language.check_depth(QWEN2_VL_2B_TEXT["num_hidden_layers"])
        except (NotImplementedError, ValueError) as e:
            refused[name] = f"{type(e).__name__}: {e}"
            continue
        ok[name] = (vision, language)
    return ok, refused


def modern_grid(ratios=ipcv.presets.MODERN_RATIOS, paired: float = 0.35) -> dict[str, tuple[object, object]]:
    """This project's 2026 comparison on the prefill bench: vanilla, each pre-LLM method alone at ``ratios``
    (the whole ViT), and IPCV at ``paired`` in the ViT with each pre-LLM method at ``paired`` (rows of
    :func:`ipcv.presets.modern_settings`), plus IPCV alone at ``paired`` for reference."""
    rows = {name: (v, lang) for name, v, lang in ipcv.presets.modern_settings(tuple(ratios) + (paired,))}
    pct = f"{round(100 * paired)}%"
    keep = {"vanilla", f"IPCV {pct}"}
    keep |= {f"{m} {round(100 * r)}%" for m in ipcv.presets.PRE_LLM for r in ratios}
    keep |= {f"IPCV+{m} {pct}" for m in ipcv.presets.PRE_LLM}
    return {name: rows[name] for name in rows if name in keep}


def _grid(args: argparse.Namespace) -> dict[str, tuple[object, object]]:
    if args.protocol == "ours":
        grid = ratio_grid()
    elif args.protocol == "modern":
        grid = modern_grid()
    else:
        grid = protocol_settings(args.protocol)
    only = getattr(args, "only", None)
    if only:
        pattern = re.compile(only)
        grid = {name: s for name, s in grid.items() if name == "vanilla" or pattern.search(name)}
    return grid


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu")
    settings, refused = runnable(_grid(args))
    note(f"prefill: building Qwen2-VL-2B ({args.dtype}, {args.attn}, random weights) for {len(settings)} settings")
    model = build_model(DTYPES[args.dtype], args.attn)
    kw = inputs(model, side=args.side)

    def call(vision, language):
        ipcv.restore(model)  # compress composes with earlier calls: start each setting from the plain model
        if vision is not None or language is not None:
            ipcv.compress(model, vision=vision, language=language)
        with torch.inference_mode():
            return model(**kw, use_cache=True, logits_to_keep=1)

    counts = {}
    times: dict[str, list[float]] = {name: [] for name in settings}
    cpu_times: dict[str, list[float]] = {name: [] for name in settings}  # process CPU time: less load-sensitive
    with Progress(len(settings) * (1 + args.repeats), "prefill") as progress:
        for name, (vision, language) in settings.items():  # warm-up and the token counts of each setting
            progress.step(f"{name}: warm-up and token counts")
            with ipcv.stats(model) as st:
                call(vision, language)
            counts[name] = (ipcv.costs(model, st, bytes_per_value=2), st.decoder[-1])
        for i in range(args.repeats):
            for name, s in settings.items():
                progress.step(f"{name}: timed run {i + 1}/{args.repeats}")
                cpu = time.process_time()
                times[name].append(timed(lambda s=s: call(*s), device))
                cpu_times[name].append(time.process_time() - cpu)
    ipcv.restore(model)

    rows = []
    base_t, base_f = (median(times["vanilla"]) if args.repeats else None), counts["vanilla"][0].total
    base_cpu = median(cpu_times["vanilla"]) if args.repeats else None
    for name, (vision, language) in settings.items():
        c, rec = counts[name]
        t = median(times[name]) if args.repeats else None
        rows.append(
            dict(
                setting=name,
                vision=repr(vision),
                language=repr(language),
                median_s=t,
                times_s=times[name],
                time_ratio=t / base_t if t is not None else None,
                cpu_s=cpu_times[name],
                cpu_ratio=median(cpu_times[name]) / base_cpu if args.repeats else None,
                tflops=c.total / 1e12,
                vision_tflops=c.vision / 1e12,
                decoder_tflops=c.decoder / 1e12,
                flop_ratio=c.total / base_f,
                kv_cache_mb=c.kv_cache_mb,
                decoder_tokens_per_layer=list(c.decoder_tokens_per_layer),
                visual_tokens_per_layer=[v[0] for v in rec.visual],
            )  # fmt: skip
        )
    print_rows(rows)
    for name, why in refused.items():
        print(f"{name:<36} not run: {why}")
    n_text = TEXT_BEFORE + TEXT_AFTER + 2
    grid = args.side // 14
    return {
        "benchmark": "Qwen2-VL-2B prefill, vanilla vs "
        + (
            "this project's 2026 comparison (not the paper's)"
            if args.protocol == "modern"
            else "the paper's ViT / LLM settings"
        ),
        "only": getattr(args, "only", None),
        "weights": "random (architecture of Qwen/Qwen2-VL-2B-Instruct); no accuracy is implied",
        "model": {
            "text": {k: v for k, v in QWEN2_VL_2B_TEXT.items() if k != "rope_parameters"}
            | {"mrope_section": [16, 24, 24], "rope_theta": 1e6},
            "vision": QWEN2_VL_7B_VISION | {"hidden_size": 1536},
        },
        "protocol": args.protocol,
        "input": f"one {args.side}x{args.side} image ({grid * grid} patches, {grid * grid // 4} LLM visual tokens) "
        f"and {n_text} text tokens, batch 1",
        "measure": "one forward with an empty cache (prefill), logits of the last token; median of repeats, "
        "timed interleaved across settings; wall time (median_s, time_ratio) and the process's CPU time "
        "(cpu_s, cpu_ratio: less sensitive to other load on the machine)",
        "flops": "analytic (ipcv.costs): vision tower incl. patch embedding and merger, decoder layers with causal "
        "attention, the methods' own work, LM head for one token",
        "kv_cache": "after prefill, float16 (2 bytes per value, as Table 4), MB = 1e6 bytes",
        "dtype": args.dtype,
        "attention": args.attn,
        "repeats": args.repeats,
        **environment(device),
        "rows": rows,
        "not_run": refused,
    }


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'setting':<36} {'prefill s':>9} {'time %':>7} {'CPU %':>6} {'TFLOPs':>7} {'FLOP %':>7} {'KV MB':>6} "
          f"{'LLM tokens l0 / last':>20}")  # fmt: skip
    for r in rows:
        tokens = r["decoder_tokens_per_layer"]
        timing = (
            f"{r['median_s']:>9.2f} {100 * r['time_ratio']:>6.1f}%"
            + (f" {100 * r['cpu_ratio']:>5.1f}%" if r.get("cpu_ratio") is not None else f" {'-':>6}")
            if r["median_s"] is not None
            else f"{'-':>9} {'-':>7} {'-':>6}"
        )
        print(
            f"{r['setting']:<36} {timing} {r['tflops']:>7.3f} "
            f"{100 * r['flop_ratio']:>6.1f}% {r['kv_cache_mb']:>6.2f} {tokens[0]:>10} / {tokens[-1]:<8}",
            flush=True,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repeats", type=nonnegative_int, default=3, help="timed runs per setting (median reported); 0: no timing"
    )
    p.add_argument(
        "--protocol",
        choices=("ours", "paper", "official", "modern"),
        default="ours",
        help="ours: the library defaults at the paper's ratios; paper / official: Table 4's rows from ipcv.presets; "
        "modern: this project's 2026 comparison (the pre-LLM methods at 35/20/10 %%, IPCV 35 %% + each at 35 %%)",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="REGEX",
        help="run only the settings whose name matches this regular expression (vanilla always runs: the ratios "
        "are to it), e.g. --only 'DivPrune|Pool'",
    )
    p.add_argument("--side", type=int, default=448, help="image side in pixels (a multiple of 28)")
    p.add_argument(
        "--kv-fit", action="store_true", help="only print Table 4's KV column beside both protocols (analytic)"
    )
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--attn", choices=("eager", "sdpa"), default="sdpa", help="attention of the tower and decoder")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: data/bench/prefill_qwen2vl2b_cpu.json)")


def validate(args: argparse.Namespace) -> None:
    if getattr(args, "only", None) is not None:
        try:
            re.compile(args.only)
        except re.error as e:
            raise UsageError(f"--only {args.only!r}: not a regular expression ({e})") from None
    if args.side < 28 or args.side % 28:
        raise UsageError(f"--side {args.side}: not allowed; use a multiple of 28 (>= 28), e.g. 448")


def main(args: argparse.Namespace) -> None:
    if args.kv_fit:
        print_kv_fit(table4_kv_fit())
        return
    result = run(args)
    suffix = "" if args.protocol == "ours" else f"_{args.protocol}"
    out = args.out or Path(f"data/bench/prefill_qwen2vl2b_cpu{suffix}.json")
    write_json(out, result)
    print(f"\n{result['device']}; weights: {result['weights']}\nwritten to {out}")
