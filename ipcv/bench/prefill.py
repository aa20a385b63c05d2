"""Prefill of Qwen2-VL-2B, vanilla vs the paper's settings (Table 1 / Table 4 rows), at real sizes with
random weights: one 448x448 image (1024 patches, 256 LLM visual tokens) and a short prompt.

For each setting: prefill time (one forward of the whole model with an empty cache, logits of the
last token only, the median of ``--repeats`` runs timed interleaved across settings), the analytic
FLOPs (:func:`ipcv.costs`, vision tower + decoder) and the KV cache after prefill (MB, float16 as
Table 4). Latency and FLOPs do not depend on weight values; no accuracy is implied.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration

import ipcv

from .common import environment, median, timed, write_json
from .vision import DTYPES, QWEN2_VL_7B_VISION

# Qwen/Qwen2-VL-2B-Instruct config.json (text part and token ids); its vision tower is the 7B one
# with a 1536-wide merger output
QWEN2_VL_2B_TEXT = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    bos_token_id=151643, eos_token_id=151645,
)  # fmt: skip
QWEN2_VL_2B_TOKENS = dict(
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653
)
TEXT_BEFORE, TEXT_AFTER = 15, 10  # chat template around the image: system + user turn, question + assistant


def build_model(dtype: torch.dtype, attn: str, seed: int = 0) -> Qwen2VLForConditionalGeneration:
    cfg = Qwen2VLConfig(
        text_config=QWEN2_VL_2B_TEXT, vision_config=QWEN2_VL_7B_VISION | {"hidden_size": 1536}, **QWEN2_VL_2B_TOKENS
    )
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = attn
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(cfg).to(dtype).eval()


def inputs(model, side: int = 448, seed: int = 0) -> dict:
    """One ``side`` x ``side`` image between text tokens, as the processor would give it."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    grid = [1, side // 14, side // 14]
    n_visual = grid[1] * grid[2] // 4
    text = lambda n: torch.randint(0, 151000, (n,), generator=g).tolist()  # noqa: E731
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


def paper_settings() -> dict[str, tuple[object, object]]:
    """The rows of Tables 1 and 4: (vision, language) settings by name. ViT-side methods are paired
    with LLM-side DART at the same ratio (the authors' script pairs IPCV with DART); LLM-side
    methods run with the whole ViT (100%)."""
    rows: dict[str, tuple[object, object]] = {"vanilla": (None, None)}
    for r in (0.5, 0.35, 0.2):
        tag = f"ViT {r:.0%} / LLM {r:.0%}"
        rows[f"IPCV | {tag}"] = (ipcv.IPCV(r), ipcv.DART(r))
        rows[f"ToMe | {tag}"] = (ipcv.ToMe(r), ipcv.DART(r))
        rows[f"ToFu | {tag}"] = (ipcv.ToFu(r), ipcv.DART(r))
        rows[f"DART(ViT) | {tag}"] = (ipcv.DARTViT(r), ipcv.DART(r))
    for r in (0.35, 0.2, 0.05):
        tag = f"ViT 100% / LLM {r:.0%}"
        rows[f"DART | {tag}"] = (None, ipcv.DART(r))
        rows[f"FastV | {tag}"] = (None, ipcv.FastV(r))
        rows[f"V2Drop | {tag}"] = (None, ipcv.V2Drop(r))
        rows[f"SparseVLM | {tag}"] = (None, ipcv.SparseVLM(r))
    return rows


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu")
    model = build_model(DTYPES[args.dtype], args.attn)
    kw = inputs(model)
    settings = paper_settings()

    def call(vision, language):
        ipcv.restore(model)  # compress composes with earlier calls: start each setting from the plain model
        if vision is not None or language is not None:
            ipcv.compress(model, vision=vision, language=language)
        with torch.inference_mode():
            return model(**kw, use_cache=True, logits_to_keep=1)

    counts = {}
    for name, (vision, language) in settings.items():  # warm-up and the token counts of each setting
        with ipcv.stats(model) as st:
            call(vision, language)
        counts[name] = (ipcv.costs(model, st, bytes_per_value=2), st.decoder[-1])
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, s in settings.items():
            times[name].append(timed(lambda s=s: call(*s), device))
    ipcv.restore(model)

    rows = []
    base_t, base_f = median(times["vanilla"]), counts["vanilla"][0].total
    for name, (vision, language) in settings.items():
        c, rec = counts[name]
        t = median(times[name])
        rows.append(
            dict(
                setting=name,
                vision=repr(vision),
                language=repr(language),
                median_s=t,
                times_s=times[name],
                time_ratio=t / base_t,
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
    n_text = TEXT_BEFORE + TEXT_AFTER + 2
    return {
        "benchmark": "Qwen2-VL-2B prefill, vanilla vs the paper's ViT / LLM settings",
        "weights": "random (architecture of Qwen/Qwen2-VL-2B-Instruct); no accuracy is implied",
        "model": {
            "text": {k: v for k, v in QWEN2_VL_2B_TEXT.items() if k != "rope_parameters"}
            | {"mrope_section": [16, 24, 24], "rope_theta": 1e6},
            "vision": QWEN2_VL_7B_VISION | {"hidden_size": 1536},
        },
        "input": f"one 448x448 image (1024 patches, 256 LLM visual tokens) and {n_text} text tokens, batch 1",
        "measure": "one forward with an empty cache (prefill), logits of the last token; median of repeats, "
        "timed interleaved across settings",
        "flops": "analytic (ipcv.costs): vision tower incl. patch embedding and merger, decoder layers with causal "
        "attention, the methods' own work, LM head for one token",
        "kv_cache": "after prefill, float16 (2 bytes per value, as Table 4), MB = 1e6 bytes",
        "dtype": args.dtype,
        "attention": args.attn,
        "repeats": args.repeats,
        **environment(device),
        "rows": rows,
    }


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'setting':<36} {'prefill s':>9} {'time %':>7} {'TFLOPs':>7} {'FLOP %':>7} {'KV MB':>6} "
          f"{'LLM tokens l0 / last':>20}")  # fmt: skip
    for r in rows:
        tokens = r["decoder_tokens_per_layer"]
        print(
            f"{r['setting']:<36} {r['median_s']:>9.2f} {100 * r['time_ratio']:>6.1f}% {r['tflops']:>7.3f} "
            f"{100 * r['flop_ratio']:>6.1f}% {r['kv_cache_mb']:>6.2f} {tokens[0]:>10} / {tokens[-1]:<8}",
            flush=True,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--attn", default="sdpa", help="eager | sdpa")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: data/bench/prefill_qwen2vl2b_cpu.json)")


def main(args: argparse.Namespace) -> None:
    result = run(args)
    out = args.out or Path("data/bench/prefill_qwen2vl2b_cpu.json")
    write_json(out, result)
    print(f"\n{result['device']}; weights: {result['weights']}\nwritten to {out}")
