"""vLLM's entry point for ipcv (group ``vllm.general_plugins`` in pyproject.toml): :func:`register`.

vLLM calls :func:`register` in each of its processes (the front end that parses ``vllm serve``'s arguments or
builds ``vllm.LLM``'s config, the engine core, every worker). It

1. parses :data:`ipcv.serving.ENV` (a bad string raises here, in the front end, before any engine starts);
2. registers ipcv's subclasses of vLLM's own ``Qwen2VLForConditionalGeneration`` and
   ``Qwen2_5_VLForConditionalGeneration`` (:mod:`ipcv.serving.vllm_models`, by ``"module:Class"`` name, so no
   model code is imported here) under the same architecture names: they inherit vLLM's multimodal processor,
   weight loading and language model, and swap only the vision tower's forward, and only when the variable
   names a method when the model is built (unset or ``none``: vLLM's own tower, untouched). Registering them
   whatever the variable says lets one process build engines with different settings (the benchmark does);
3. adds a start-up check to vLLM's per-architecture config hooks, chained after vLLM's own, which runs when
   every engine config is built (front end), reading the variable then: the method must fit the tower's
   depth, and the engine must not capture or compile the encoder (``compilation_config.cudagraph_mm_encoder``
   / ``compile_mm_encoder``: the compressed tower picks its tokens at run time, data-dependent shapes and
   indices that a captured graph or a shape-specialised compiled block would freeze), nor shard it by tensor
   parallelism (use ``mm_encoder_tp_mode="data"``). The same check runs again when a worker builds the model.

This file and :mod:`ipcv.serving.vllm_models` are the only ones that know vLLM.
"""

from __future__ import annotations

from . import method_from_env

ARCHITECTURES = {
    "Qwen2VLForConditionalGeneration": "ipcv.serving.vllm_models:IPCVQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "ipcv.serving.vllm_models:IPCVQwen2_5_VLForConditionalGeneration",
}


def check_engine(vllm_config, settings) -> None:
    """Raise ValueError if ``settings`` cannot run on the engine ``vllm_config`` describes (module docstring)."""
    from ..method_strings import format_method

    name = f"IPCV_METHOD={format_method(settings)!r}"
    model = vllm_config.model_config
    vision = getattr(model.hf_config, "vision_config", None)
    depth = getattr(vision, "depth", None)
    if depth is not None:
        try:
            settings.check_depth(int(depth))
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
    comp = vllm_config.compilation_config
    for flag in ("cudagraph_mm_encoder", "compile_mm_encoder"):
        if getattr(comp, flag, False):
            raise ValueError(
                f"{name}: compilation_config.{flag}=True is not supported with ipcv: the compressed vision tower "
                "picks its tokens at run time (data-dependent shapes and indices), which a captured CUDA graph or "
                f"a shape-specialised compiled encoder would freeze; leave {flag} off (vLLM's default)"
            )
    par = vllm_config.parallel_config
    mm = model.get_multimodal_config() if hasattr(model, "get_multimodal_config") else None
    tp_mode = getattr(mm, "mm_encoder_tp_mode", "weights")
    if par.tensor_parallel_size > 1 and tp_mode != "data":
        raise ValueError(
            f"{name}: tensor_parallel_size={par.tensor_parallel_size} shards the vision tower's weights, which "
            "ipcv's stabilized blocks do not handle; add mm_encoder_tp_mode='data' (--mm-encoder-tp-mode data: "
            "each rank runs the whole tower on its share of the images)"
        )


class _Check:
    """A config hook of vLLM's per-architecture table: ipcv's start-up check, then the hook it replaced."""

    previous = None

    @classmethod
    def verify_and_update_config(cls, vllm_config) -> None:
        settings = method_from_env()
        if settings is not None:
            check_engine(vllm_config, settings)
        if cls.previous is not None:
            cls.previous.verify_and_update_config(vllm_config)

    @classmethod
    def verify_and_update_model_config(cls, model_config) -> None:
        if cls.previous is not None:
            cls.previous.verify_and_update_model_config(model_config)


def register() -> None:
    """vLLM's plugin hook (module docstring). Idempotent: vLLM may call it more than once per process."""
    method_from_env()  # a bad string stops vLLM here
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    for arch, target in ARCHITECTURES.items():
        ModelRegistry.register_model(arch, target)
        hook = MODELS_CONFIG_MAP.get(arch)
        if getattr(hook, "ipcv", False):
            continue
        MODELS_CONFIG_MAP[arch] = type(f"IPCVCheck_{arch}", (_Check,), {"previous": hook, "ipcv": True})
