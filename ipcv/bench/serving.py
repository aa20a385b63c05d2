"""Qwen2-VL-7B's vision tower served by vLLM with ipcv's plugin: vanilla vs IPCV, measured like a server.

Runs where vLLM is installed (``pip install "ipcv[vllm]"``; on a CPU machine the venv of ``make venv-vllm``).
The model is the real Qwen2-VL-7B vision tower (architecture from its config.json) with a small random LLM
behind it (``--llm-layers`` layers of Qwen2-VL-2B's width); vLLM builds it with random weights
(``load_format="dummy"``: speed does not depend on weight values, and no accuracy is implied). One engine runs
in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), started with ``IPCV_METHOD`` set, so it is the user's
path; between measurements the tower's setting is switched (vanilla: vLLM's own tower class). Settings are
measured interleaved (vanilla, keep 0.65, 0.5, ... then again), so slow drift of a shared machine hits all alike.

Per setting:

- encoder time per image: vLLM's tower called on one square image of each ``--sizes`` (448: 1024 patches,
  1344: 9216), beside the analytic FLOP ratio of :func:`ipcv.flops.vision_flops` and the process's CPU-time
  ratio (the steadier measure on a CPU shared with other jobs);
- time to first token: one chat request with one 448x448 image (or the smallest ``--sizes``), one output token;
- requests/s: ``--requests`` such requests at once, ``--max-tokens`` output tokens each.

Beside each wall time the process's CPU time is recorded (the engine runs in this process): the TTFT's CPU-time
ratio and the throughput ratio by CPU time (vanilla's CPU seconds per batch over the setting's) are the steadier
measures on a CPU shared with other jobs.

Every request carries its own multimodal UUID, so vLLM's encoder cache never hands back an earlier output.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from ..clock import timed
from ..measure import environment
from ..method_strings import format_method
from ..models.configs import QWEN2_VL_2B_TEXT, QWEN2_VL_7B_VISION
from .common import Progress, UsageError, check_device, median, note, positive_int, ratio, write_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
           "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
# a ChatML prompt with Qwen2-VL's vision markers (written for this benchmark)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n" \
    "<|im_start|>assistant\n"  # fmt: skip


def save_model(path: Path, llm_layers: int) -> Path:
    """config.json (Qwen2-VL-7B's tower, a ``llm_layers``-layer LLM of Qwen2-VL-2B's width), a small byte-level
    BPE tokenizer trained here and Qwen2-VL's image processor: no weights (vLLM makes random ones)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["Describe the image.", "You are a helpful assistant.", "a cat on a mat"] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    pixels = dict(min_pixels=56 * 56, max_pixels=1344 * 1344)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    text = QWEN2_VL_2B_TEXT | dict(
        vocab_size=len(tokenizer), num_hidden_layers=llm_layers, bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], max_position_embeddings=8192,
    )  # fmt: skip
    vision = QWEN2_VL_7B_VISION | {"hidden_size": text["hidden_size"]}
    cfg = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], architectures=["Qwen2VLForConditionalGeneration"],
    )  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _image(side: int, seed: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8))


def _flop_ratios(sizes: list[int], settings: dict) -> dict[tuple[int, str], float]:
    """Analytic vision FLOPs relative to vanilla, per (size, setting), on transformers' tower of the same
    architecture (built on the meta device: no memory)."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen

    from ..flops import vision_flops

    with torch.device("meta"):
        tower = qwen.Qwen2VisionTransformerPretrainedModel(qwen.Qwen2VLVisionConfig(**QWEN2_VL_7B_VISION))
    out = {}
    for side in sizes:
        seg = [(side // 14) ** 2]
        vanilla = vision_flops(tower, seg).total
        for name, s in settings.items():
            out[side, name] = (vision_flops(tower, seg, s).total if s is not None else vanilla) / vanilla
    return out


def run(args: argparse.Namespace) -> dict:
    from ..serving import ENV, serving_method

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process: its tower is reachable
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    schedule = f"prune_layer={args.prune_layer}:stabilize_layers={args.stabilize_layers}"
    settings = {"vanilla": None} | {f"ipcv{k:g}": serving_method(f"IPCV:{k}:{schedule}") for k in args.keep}
    from vllm import LLM, SamplingParams

    workdir = Path(tempfile.mkdtemp(prefix="ipcv_bench_vllm_"))
    model_dir = save_model(workdir / "model", args.llm_layers)
    side_ttft = min(args.sizes)
    note(f"vllm: starting vLLM ({args.dtype}) with Qwen2-VL-7B's tower and a {args.llm_layers}-layer random LLM")
    os.environ[ENV] = format_method(settings[f"ipcv{args.keep[0]:g}"])
    t0 = time.perf_counter()
    llm = LLM(
        model=str(model_dir), load_format="dummy", dtype=args.dtype, enforce_eager=True,
        max_model_len=max(4096, (max(args.sizes) // 28) ** 2 + 256), limit_mm_per_prompt={"image": 1},
        mm_processor_kwargs={"min_pixels": 56 * 56, "max_pixels": max(args.sizes) ** 2},
        enable_prefix_caching=False, max_num_seqs=max(args.requests, 1), distributed_executor_backend="uni",
        seed=0,
    )  # fmt: skip
    start_s = time.perf_counter() - t0
    tower = llm.apply_model(lambda model: model.visual)[0]
    ipcv_class = type(tower)
    vllm_class = next(c for c in ipcv_class.__mro__ if c.__module__.startswith("vllm."))
    device = tower.device
    dtype = tower.dtype
    uid = iter(range(10**9))

    def use(s):
        tower.__class__ = vllm_class if s is None else ipcv_class
        if s is not None:
            tower.ipcv_method = s

    def request(side: int) -> dict:
        n = next(uid)
        return {"prompt": PROMPT, "multi_modal_data": {"image": _image(side, n)},
                "multi_modal_uuids": {"image": [f"bench-{n}"]}}  # fmt: skip

    def encoder_s(side: int) -> tuple[float, float]:
        grid = torch.tensor([[1, side // 14, side // 14]])
        pixels = torch.randn((side // 14) ** 2, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(side))
        pixels = pixels.to(device, dtype)
        c0 = time.process_time()
        with torch.inference_mode():
            t = timed(lambda: tower(pixels, grid), device)
        return t, time.process_time() - c0

    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    some = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    enc = {(side, name): [] for side in args.sizes for name in settings}
    enc_cpu = {(side, name): [] for side in args.sizes for name in settings}
    ttft = {name: [] for name in settings}
    rps = {name: [] for name in settings}
    ttft_cpu = {name: [] for name in settings}
    batch_cpu = {name: [] for name in settings}
    steps = (1 + args.repeats) * len(settings) * (len(args.sizes) + 2)
    with Progress(steps, "vllm") as progress:
        for rep in range(1 + args.repeats):  # round 0 warms up (not recorded)
            for name, s in settings.items():
                use(s)
                for side in args.sizes:
                    progress.step(f"{name} encoder {side}x{side} ({'warm-up' if rep == 0 else f'run {rep}'})")
                    t, c = encoder_s(side)
                    if rep:
                        enc[side, name].append(t)
                        enc_cpu[side, name].append(c)
                progress.step(f"{name} first token")
                t0, c0 = time.perf_counter(), time.process_time()
                llm.generate(request(side_ttft), one, use_tqdm=False)
                if rep:
                    ttft[name].append(time.perf_counter() - t0)
                    ttft_cpu[name].append(time.process_time() - c0)
                progress.step(f"{name} {args.requests} requests")
                batch = [request(side_ttft) for _ in range(args.requests)]
                t0, c0 = time.perf_counter(), time.process_time()
                outs = llm.generate(batch, some, use_tqdm=False)
                if rep:
                    rps[name].append(len(outs) / (time.perf_counter() - t0))
                    batch_cpu[name].append(time.process_time() - c0)
    use(None)
    flops = _flop_ratios(args.sizes, settings)
    rows = []
    for side in args.sizes:
        t_v, c_v = median(enc[side, "vanilla"]), median(enc_cpu[side, "vanilla"])
        for name, s in settings.items():
            rows.append(dict(
                size=f"{side}x{side}", patches=(side // 14) ** 2, setting=name,
                method=format_method(s), keep=1.0 if s is None else s.keep_ratio,
                encoder_s=median(enc[side, name]), encoder_times_s=enc[side, name],
                encoder_time_ratio=median(enc[side, name]) / t_v,
                encoder_cpu_time_ratio=median(enc_cpu[side, name]) / c_v,
                flop_ratio=flops[side, name],
            ))  # fmt: skip
    serve_rows = [
        dict(setting=name, method=format_method(s), ttft_s=median(ttft[name]), ttft_times_s=ttft[name],
             requests_per_s=median(rps[name]), requests_per_s_runs=rps[name],
             ttft_ratio=median(ttft[name]) / median(ttft["vanilla"]),
             throughput_ratio=median(rps[name]) / median(rps["vanilla"]),
             ttft_cpu_s=ttft_cpu[name], ttft_cpu_time_ratio=median(ttft_cpu[name]) / median(ttft_cpu["vanilla"]),
             batch_cpu_s=batch_cpu[name],
             cpu_throughput_ratio=median(batch_cpu["vanilla"]) / median(batch_cpu[name]))
        for name, s in settings.items()
    ]  # fmt: skip
    import vllm

    result = {
        "benchmark": "vLLM serving Qwen2-VL-7B's vision tower with a small LLM, vanilla vs IPCV (ipcv's plugin)",
        "weights": "random (vLLM load_format='dummy'; architecture of Qwen/Qwen2-VL-7B-Instruct's vision tower, "
        f"a {args.llm_layers}-layer LLM of Qwen2-VL-2B's width); no accuracy is implied",
        "vllm": vllm.__version__,
        "dtype": args.dtype,
        "settings": dict(prune_layer=args.prune_layer, stabilize_layers=args.stabilize_layers),
        "repeats": args.repeats,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "ttft_image": f"{side_ttft}x{side_ttft}",
        "engine_start_s": start_s,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **environment(torch.device(args.device)),
        "encoder": rows,
        "serving": serve_rows,
    }
    print_result(result)
    del llm
    return result


def print_result(result: dict) -> None:
    head = f"{'image':>9} {'setting':>9} {'encoder s':>9} {'time ratio':>10} {'CPU-time ratio':>14} {'FLOP ratio':>10}"
    print("\n" + head)
    for r in result["encoder"]:
        print(f"{r['size']:>9} {r['setting']:>9} {r['encoder_s']:>9.3f} {r['encoder_time_ratio']:>10.3f} "
              f"{r['encoder_cpu_time_ratio']:>14.3f} {r['flop_ratio']:>10.3f}")  # fmt: skip
    print(f"\n{'setting':>9} {'TTFT s':>8} {'TTFT ratio':>10} {'CPU-time ratio':>14} {'requests/s':>10} "
          f"{'throughput ratio':>16} {'by CPU time':>11}")  # fmt: skip
    for r in result["serving"]:
        print(f"{r['setting']:>9} {r['ttft_s']:>8.3f} {r['ttft_ratio']:>10.3f} {r['ttft_cpu_time_ratio']:>14.3f} "
              f"{r['requests_per_s']:>10.3f} {r['throughput_ratio']:>16.3f} "
              f"{r['cpu_throughput_ratio']:>11.3f}")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes", type=positive_int, nargs="+", default=[448, 1344],
        help="square image sides in pixels for the encoder time, multiples of 28 (448: 1024 patches)",
    )  # fmt: skip
    p.add_argument("--keep", type=ratio, nargs="+", default=[0.65, 0.5, 0.35, 0.2], help="keep ratios, in (0, 1]")
    p.add_argument("--prune-layer", type=positive_int, default=3, help=">= 1 and < 32 (the tower's depth)")
    p.add_argument("--stabilize-layers", type=int, default=7, help=">= 0; prune layer + this <= 32")
    p.add_argument("--repeats", type=positive_int, default=3, help="measured rounds after one warm-up round")
    p.add_argument("--requests", type=positive_int, default=8, help="image requests sent at once for requests/s")
    p.add_argument("--max-tokens", type=positive_int, default=16, help="output tokens per request (requests/s)")
    p.add_argument("--llm-layers", type=positive_int, default=2, help="layers of the small random LLM")
    p.add_argument("--device", default="cpu", help="cpu | cuda: the machine vLLM's build runs on (named in the result)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results (default: data/bench/...)")


def validate(args: argparse.Namespace) -> None:
    """UsageError for arguments that cannot run (checked before vLLM starts)."""
    for side in args.sizes:
        if side % 28:
            raise UsageError(f"--sizes {side}: must be a multiple of 28 (14-pixel patches, 2x2 merge units)")
    depth = QWEN2_VL_7B_VISION["depth"]
    if not args.prune_layer < depth:
        raise UsageError(f"--prune-layer {args.prune_layer}: outside the allowed range [1, {depth - 1}]")
    if not 0 <= args.stabilize_layers <= depth - args.prune_layer:
        raise UsageError(
            f"--stabilize-layers {args.stabilize_layers}: outside the allowed range [0, {depth - args.prune_layer}] "
            f"for --prune-layer {args.prune_layer}"
        )
    check_device(args.device)
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise UsageError('needs vLLM: pip install "ipcv[vllm]" (on a CPU machine: make venv-vllm)') from None


def main(args: argparse.Namespace) -> None:
    result = run(args)
    sizes = "_".join(str(s) for s in args.sizes)
    out = args.out or Path("data/bench") / f"vllm_qwen2vl7b_{args.device.split(':')[0]}_{args.dtype}_{sizes}.json"
    write_json(out, result)
    print(f"\n{result['device']}; weights: {result['weights']}\nwritten to {out}")
