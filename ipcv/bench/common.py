"""What every benchmark records about where it ran."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers


def device_name(device: torch.device) -> str:
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
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes: CUDA events around it on a GPU (the device synchronised
    before), perf_counter on the CPU."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# the paper's Table 4, in the checkout's data/ (absent from an installed package: then no paper columns)
PAPER_TABLE4 = Path(__file__).resolve().parents[2] / "data" / "paper" / "table4_efficiency_mmbench.csv"


def table4_key(name: str) -> tuple[str, str]:
    """A benchmark row's name -> Table 4's ``(setting, method)``: ``"IPCV | ViT 35% / LLM 35%"`` ->
    ``("vit35_llm35", "IPCV")``, ``"IPCV | vit35_llm35"`` (a preset row) likewise, ``"vanilla"`` ->
    ``("vanilla", "Vanilla")``."""
    if name == "vanilla":
        return "vanilla", "Vanilla"
    method, rest = (p.strip() for p in name.split("|"))
    method = {"DART(ViT)": "DART (ViT)"}.get(method, method)
    if "%" not in rest:
        return rest, method
    vit, llm = re.findall(r"(\d+)%", rest)
    return f"vit{vit}_llm{llm}", method


def paper_table4(path: Path = PAPER_TABLE4) -> dict[tuple[str, str], dict[str, float]]:
    """Table 4's rows by ``(setting, method)``, numbers as floats; empty without the file."""
    if not path.is_file():
        return {}
    with path.open() as f:
        return {
            (r["setting"], r["method"]): {k: float(v) for k, v in r.items() if k not in ("setting", "method")}
            for r in csv.DictReader(f)
        }
