"""lmms-eval model wrappers that compress the harness's own models after loading.

Each wrapper (one per model family with a harness row, :func:`ipcv.eval.plugin.harnesses`) subclasses lmms-eval's
wrapper of its family (so prompts, generation and scoring are
exactly the harness's) and adds three model arguments:

    lmms-eval --model ipcv_qwen2_vl \\
        --model_args pretrained=Qwen/Qwen2-VL-7B-Instruct,vision=IPCV:0.35,language=DART:0.35 --tasks mme,pope

- ``vision`` / ``language``: method strings (:mod:`ipcv.method_strings`: ``IPCV:0.35``,
  ``IPCV:0.35:prune_layer=4``, ``ToMe:0.5``, ``DART:0.35``, ``none``), validated before the model loads;
- ``ipcv_log``: a JSON-lines file that receives one record per ``generate`` call (task, latency,
  prefill, visual tokens per LLM layer, FLOPs, KV MB; :class:`ipcv.measure.GenerateRecord`); with
  several processes each rank writes ``<ipcv_log>.rank<r>``. If the family's wrapper cannot load the
  model, its message goes to ``ipcv_load_error.rank<r>.txt`` beside ``ipcv_log`` (lmms-eval only logs
  it and exits 0), so ``python -m ipcv.eval`` stops the sweep there.

Every call is also handed to lmms-eval's own throughput log, so its results JSON carries
``throughput.avg_prefill_s``, ``avg_visual_tokens_llm``, ``avg_tflops``, ``avg_kv_mb`` beside the total
latency; per-task aggregates are logged at the end of each task (:func:`ipcv.measure.summarize`).
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger

from .. import api
from ..measure import device_name, measured_generate, summarize
from ..method_strings import format_method, parse_method
from .checks import write_load_error


class _Compressed:
    """Mixin: compress ``self.model`` after the family's wrapper loaded it; measure every generate call."""

    def __init__(self, vision: str = "none", language: str = "none", ipcv_log: str | None = None, **kwargs) -> None:
        settings = parse_method(vision, "vision"), parse_method(language, "language")
        try:
            super().__init__(**kwargs)
        except Exception as e:  # lmms-eval logs it and exits 0: tell ipcv.eval the model did not load
            if ipcv_log is not None:
                write_load_error(ipcv_log, e)
            raise
        model = self.model
        if settings != (None, None):
            api.compress(model, vision=settings[0], language=settings[1])
        self.ipcv_settings = settings
        self._ipcv_log = None if ipcv_log is None else Path(ipcv_log)
        if self._ipcv_log is not None and self.world_size > 1:
            self._ipcv_log = self._ipcv_log.with_name(f"{self._ipcv_log.name}.rank{self.rank}")
        self._ipcv_task = None
        self._ipcv_records: list[dict] = []
        self._ipcv_device = device_name(next(model.parameters()).device)
        model.generate = functools.partial(self._ipcv_generate, model.generate)
        logger.info(
            f"ipcv: {type(model).__name__} vision={format_method(settings[0])} language={format_method(settings[1])}"
        )

    def _ipcv_generate(self, generate, *args, **kwargs):
        out, record = measured_generate(self.model, generate, *args, **kwargs)
        row = {"task": self._ipcv_task, "device": self._ipcv_device, **record.as_dict()}
        self._ipcv_records.append(row)
        log_metrics(
            total_elapsed_time=record.total_s,
            total_gen_tokens=record.new_tokens * record.batch,
            avg_speed=record.new_tokens * record.batch / record.total_s if record.total_s > 0 else 0.0,
            additional_metrics={
                "prefill_s": record.prefill_s,
                "visual_tokens_llm": sum(record.visual_in) / max(1, record.batch),
                "tflops": record.vision_tflops + record.llm_tflops,
                "kv_mb": record.kv_mb,
                "total_requests": record.batch,
            },
        )
        return out

    def generate_until(self, requests):
        """The family's ``generate_until``, one task at a time so every call is attributed to its task."""
        order: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            order.setdefault(request.task_name, []).append(i)
        answers = [None] * len(requests)
        for task, index in order.items():
            self._ipcv_task, start = task, len(self._ipcv_records)
            for i, answer in zip(index, super().generate_until([requests[i] for i in index])):
                answers[i] = answer
            records = self._ipcv_records[start:]
            logger.info(f"ipcv [{task}]: {json.dumps(summarize(records))}")
            if self._ipcv_log is not None:
                self._ipcv_log.parent.mkdir(parents=True, exist_ok=True)
                with open(self._ipcv_log, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
        self._ipcv_task = None
        return answers


_classes: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """The wrapper class ``name`` of a family's harness row (:func:`ipcv.eval.plugin.harnesses`), built on
    first use: a subclass of the lmms-eval wrapper it names (imported only then) with :class:`_Compressed` in
    front."""
    from .plugin import harnesses

    spec = next((h for h in harnesses().values() if h.class_name == name), None)
    if spec is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _classes:
        module, base = spec.wrapper.rsplit(".", 1)
        wrapper = getattr(importlib.import_module(module), base)
        doc = f"lmms-eval's {base} ({spec.wrapper}), compressed by ipcv (see the module docstring)."
        _classes[name] = type(name, (_Compressed, wrapper), {"__doc__": doc, "__module__": __name__})
    return _classes[name]
