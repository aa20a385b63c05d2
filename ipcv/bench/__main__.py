"""``python -m ipcv.bench {vision,knn-memory,prefill,efficiency,gpu,vllm} [options]`` (or ``ipcv-bench``).

Every argument is checked before a model is built: a bad one prints the command's usage line and one
message naming it and what is allowed (exit 2). Progress goes to stderr (``IPCV_PROGRESS``: ``bar``,
``lines`` or ``off``; by default a bar on a terminal, one line per step in a log).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import efficiency, gpu, knn_memory, prefill, serving, vision
from .common import UsageError

COMMANDS = {
    "vision": (vision, "Qwen2-VL-7B vision tower latency, vanilla vs IPCV"),
    "knn-memory": (knn_memory, "extra memory of the kNN step"),
    "prefill": (prefill, "Qwen2-VL-2B prefill time, FLOPs, KV cache: paper settings"),
    "efficiency": (efficiency, "Qwen2-VL-2B generate(): Table 4 rows, Figure 1 shares"),
    "gpu": (gpu, "on a CUDA GPU: method checks, Qwen2-VL-7B latency, tower scaling"),
    "vllm": (serving, "inside vLLM (ipcv's plugin): Qwen2-VL-7B tower time, TTFT, requests/s"),
}


def parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser and each benchmark's subparser, by name."""
    parser = argparse.ArgumentParser(prog="python -m ipcv.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    subs = {}
    for name, (module, help) in COMMANDS.items():
        subs[name] = sub.add_parser(name, help=help, description=module.__doc__.split("\n\n")[0])
        module.add_arguments(subs[name])
    return parser, subs


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse and check ``argv``: a bad argument exits 2 with the benchmark's usage line and one message."""
    parser, subs = parsers()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command][0].validate(args)  # what one argument's type cannot say: combinations, the machine
    except UsageError as e:
        subs[args.command].error(str(e))
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_knn-one":  # internal: one kNN memory measurement in a fresh process
        patches, dim, keep, k, block, device = argv[1:]
        print(json.dumps(knn_memory.measure(int(patches), int(dim), float(keep), int(k), int(block), device)))
        return
    args = parse(argv)
    COMMANDS[args.command][0].main(args)


if __name__ == "__main__":
    main()
