"""``python -m ipcv.bench {vision,knn-memory,prefill,efficiency,gpu} [options]`` (also installed as ``ipcv-bench``)."""

from __future__ import annotations

import argparse
import json
import sys

from . import efficiency, gpu, knn_memory, prefill, vision


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_knn-one":  # internal: one kNN memory measurement in a fresh process
        patches, dim, keep, k, block, device = argv[1:]
        print(json.dumps(knn_memory.measure(int(patches), int(dim), float(keep), int(k), int(block), device)))
        return
    parser = argparse.ArgumentParser(prog="python -m ipcv.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    vision.add_arguments(sub.add_parser("vision", help="Qwen2-VL-7B vision tower latency, vanilla vs IPCV"))
    knn_memory.add_arguments(sub.add_parser("knn-memory", help="extra memory of the kNN step"))
    prefill.add_arguments(sub.add_parser("prefill", help="Qwen2-VL-2B prefill time, FLOPs, KV cache: paper settings"))
    efficiency.add_arguments(sub.add_parser("efficiency", help="Qwen2-VL-2B generate(): Table 4 rows, Figure 1 shares"))
    gpu.add_arguments(sub.add_parser("gpu", help="on a CUDA GPU: method checks, Qwen2-VL-7B latency, tower scaling"))
    args = parser.parse_args(argv)
    commands = {"vision": vision.main, "knn-memory": knn_memory.main, "prefill": prefill.main}
    commands["efficiency"], commands["gpu"] = efficiency.main, gpu.main
    commands[args.command](args)


if __name__ == "__main__":
    main()
