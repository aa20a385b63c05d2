"""The public surface: ``compress``, ``restore``, ``compressed``, ``stats`` and the registry of model families.

Patching follows ToMe's pattern: the encoder module that owns the block loop gets its class swapped
for a subclass whose ``forward`` runs the compressed schedule; its settings live in one attribute,
``_ipcv_vision``. The LLM side does the same to the decoder (settings in ``_ipcv_language``) and to
the module above it that knows where the visual tokens are. No weight is copied or changed, so
``restore`` (swapping the classes back) gives a model that computes exactly what it computed before.
``stats`` counts the tokens each block and layer processes, for :func:`ipcv.costs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, overload

from torch import nn

from . import trace as _trace
from .catalog import method_of
from .models._attention import check_attention, check_decoder, set_attention
from .models.base import Adapter
from .models.registry import ADAPTERS, find, supported_models
from .settings import LanguageMethod, VisionMethod

__all__ = ["compress", "compressed", "restore", "settings", "stats", "supported_models", "vision_attention"]

Side = Literal["vision", "language"]
_SETTINGS = "_ipcv_vision"
_LANGUAGE = "_ipcv_language"
_SCORES = "_ipcv_scores"  # the tower block whose attention a language-side VisionZip reads
_subclasses: dict[tuple[type, object], type] = {}


def _patched_class(cls: type, forward, methods: tuple = ()) -> type:
    key = (cls, forward, methods)
    if key not in _subclasses:
        body = {"forward": forward, "_ipcv_base": cls, **dict(methods)}
        _subclasses[key] = type(f"IPCV{cls.__name__}", (cls,), body)
    return _subclasses[key]


def _whole_models(which) -> list[str]:
    """The whole-model classes (the first two each adapter accepts: the model with its head, and without) of
    the families ``which(adapter)`` selects, for error messages."""
    return [name for a in ADAPTERS if which(a) and a.language is not None for name in a.classes[:2]]


def _language_targets(model: nn.Module, adapter: Adapter, language: LanguageMethod) -> tuple[nn.Module, nn.Module]:
    found = adapter.locate_language(model)
    if found is None:
        raise TypeError(
            f"language={language!r}: a {type(model).__name__} has no language decoder; pass the whole model "
            f"(e.g. {_whole_models(lambda a: a.language is not None)[0]}) or use vision= only"
        )
    return found


def compress(model: nn.Module, vision: VisionMethod | None = None, language: LanguageMethod | None = None) -> nn.Module:
    """Patch ``model`` in place so it runs compressed; returns ``model``.

    Calls compose: a side given as None keeps what an earlier call set there, so
    ``compress(model, vision=ipcv.IPCV(0.35))`` then ``compress(model, language=ipcv.DART(0.35))``
    runs both; a side given again is replaced. To run a side uncompressed again, call
    :func:`restore` (both sides) and compress the side you want. Accepted models: see
    :func:`supported_models`; anything else raises TypeError.

    Args:
        vision: the vision-side method: ``ipcv.IPCV(...)`` or a baseline (``ipcv.ToMe``,
            ``ipcv.ToFu``, ``ipcv.DARTViT``): any vision row of :data:`ipcv.catalog.METHODS`.
        language: the LLM-side method, pruning visual tokens inside the language decoder at
            prefill: ``ipcv.DART``, ``ipcv.FastV``, ``ipcv.V2Drop``, ``ipcv.SparseVLM`` (any language row
            of :data:`ipcv.catalog.METHODS`), or a pre-LLM one pruning once at the decoder's input
            (``ipcv.VisionZip``, ``ipcv.DivPrune``, ``ipcv.CDPruner``, ``ipcv.RandomKeep``, ``ipcv.Pool``; it
            composes with a vision side: ``vision=ipcv.IPCV(0.5), language=ipcv.DivPrune(0.5)``). Needs a
            model with a decoder; ``language=`` alone is the paper's "ViT retain 100%" setting.
    """
    if vision is None and language is None:
        raise ValueError(
            "compress: give a vision-side method (vision=ipcv.IPCV(0.35)) and/or a language-side one "
            "(language=ipcv.DART(0.35))"
        )
    for side, given in (("vision", vision), ("language", language)):
        if given is not None:
            try:
                method_of(given, side)
            except TypeError as e:
                raise TypeError(f"{side}={e}") from None
    adapter, target = find(model)
    if vision is None:
        vision = getattr(target, _SETTINGS, None)  # compose: keep the vision side an earlier call set
    if language is None:
        language = settings(model, "language")
    reduced = vision is not None and vision.reduces_output
    if vision is not None:
        vision.check_depth(adapter.depth(target))
        check_attention(target.config, type(model).__name__)
    if reduced:
        found = adapter.locate_language(model)
        if not adapter.reduced_output or found is None:
            families = tuple(a.family for a in ADAPTERS if a.reduced_output)
            examples = ", ".join(_whole_models(lambda a: a.reduced_output))
            raise NotImplementedError(
                f"vision={vision!r}: output='reduced' is built for the mRoPE families {families} only, "
                f"on a whole model with its decoder (e.g. {examples}), got {type(model).__name__}; use output='full'"
            )
        if language is not None:
            raise ValueError(
                f"vision={vision!r} with language={language!r}: output='reduced' (the IPCV paper's runs of the "
                "ViT-side baselines) runs no LLM-side method; use output='full' to combine them (a language side "
                "set by an earlier compress call counts: ipcv.restore(model) first)"
            )
    if language is not None:
        outer, decoder = _language_targets(model, adapter, language)
        language.check_depth(len(decoder.layers))
        check_decoder(decoder, type(model).__name__, language)
    scores = getattr(language, "tower_layer", None)  # a pre-LLM method reading the tower's attention (VisionZip)
    if scores is not None:
        if not adapter.tower_scores:
            families = tuple(a.family for a in ADAPTERS if a.tower_scores)
            raise NotImplementedError(
                f"language={language!r} needs the vision tower's attention, which ipcv computes for the towers of "
                f"{families} only, got a {type(model).__name__} ({adapter.family})"
            )
        depth = adapter.depth(target)
        if not -depth <= scores < depth:
            raise ValueError(
                f"language={language!r}: layer={scores} is outside the allowed range [{-depth}, {depth - 1}] for "
                f"this tower ({depth} blocks)"
            )
        check_attention(target.config, type(model).__name__)
    restore(model)
    if vision is not None or scores is not None:
        target.__class__ = _patched_class(type(target), adapter.forward)
    if vision is not None:
        setattr(target, _SETTINGS, vision)
    if scores is not None:
        setattr(target, _SCORES, scores % adapter.depth(target))
    if reduced or language is not None:  # reduced: the outer call drops the unkept merge units
        outer, decoder = found if reduced else (outer, decoder)
        outer.__class__ = _patched_class(type(outer), adapter.language.outer_forward, adapter.language.outer_methods)
        decoder.__class__ = _patched_class(type(decoder), adapter.language.decoder_forward)
    elif vision is not None and adapter.language is not None and adapter.language.outer_methods:
        outer = adapter.locate_language(model)[0]  # hands the encoder what only the outer model sees
        outer.__class__ = _patched_class(type(outer), adapter.language.outer_forward, adapter.language.outer_methods)
    if language is not None:
        setattr(decoder, _LANGUAGE, language)
    return model


def _unpatch(module: nn.Module, attribute: str | None = None) -> None:
    base = getattr(type(module), "_ipcv_base", None)
    if base is not None:
        module.__class__ = base
    if attribute is not None:
        module.__dict__.pop(attribute, None)


def restore(model: nn.Module) -> nn.Module:
    """Remove every patch ``compress`` made (both sides); the model computes exactly what it did before.

    A model ipcv does not support (see :func:`supported_models`) was never compressed: TypeError saying so.
    """
    if not any(a.locate(model) is not None for a in ADAPTERS):
        raise TypeError(
            f"ipcv.restore: ipcv does not support a {type(model).__name__}, so it has not compressed it and there "
            f"is nothing to restore; supported models: {', '.join(supported_models())}"
        )
    adapter, target = find(model)
    _unpatch(target, _SETTINGS)
    target.__dict__.pop(_SCORES, None)
    found = adapter.locate_language(model)
    if found is not None:
        _unpatch(found[0])
        _unpatch(found[1], _LANGUAGE)
    return model


@overload
def settings(model: nn.Module, side: Literal["vision"] = "vision") -> VisionMethod | None: ...
@overload
def settings(model: nn.Module, side: Literal["language"]) -> LanguageMethod | None: ...


def settings(model: nn.Module, side: Side = "vision") -> VisionMethod | LanguageMethod | None:
    """The settings ``model`` is compressed with on ``side`` ("vision" or "language"), or None."""
    adapter, target = find(model)
    if side == "vision":
        return getattr(target, _SETTINGS, None)
    if side == "language":
        found = adapter.locate_language(model)
        return None if found is None else getattr(found[1], _LANGUAGE, None)
    raise ValueError(f"settings: side={side!r} is not allowed: use 'vision' or 'language'")


@contextmanager
def compressed(
    model: nn.Module, vision: VisionMethod | None = None, language: LanguageMethod | None = None
) -> Iterator[nn.Module]:
    """``with ipcv.compressed(model, vision=ipcv.IPCV(0.35), language=ipcv.DART(0.35)):`` compress
    inside the block only, composed like :func:`compress` (a side given as None keeps its current
    settings); on exit both sides are back to what they were (uncompressed, or their earlier
    settings)."""
    previous = settings(model, "vision"), settings(model, "language")
    compress(model, vision=vision, language=language)
    try:
        yield model
    finally:
        restore(model)
        if previous != (None, None):
            compress(model, vision=previous[0], language=previous[1])


@contextmanager
def stats(model: nn.Module) -> Iterator[_trace.Trace]:
    """``with ipcv.stats(model) as s: model(...)``: count the tokens every vision block and decoder
    layer of ``model`` processes inside the block, compressed or not (this thread / context only).

    ``s.vision``: one :class:`ipcv.trace.VisionCall` per encoder call (tokens per segment and the
    settings it ran with; ``ipcv.flops.encoder_flops(...).tokens_per_block`` gives the tokens per
    block from the same schedule that runs); ``s.decoder``: one
    :class:`ipcv.trace.DecoderRecord` per decoder call (tokens per layer and sample, visual
    tokens, KV-cache length). :func:`ipcv.costs` turns them into Table 4's FLOPs and KV cache.
    Observation uses forward hooks that exist only inside the block and record only for the
    context that opened it.
    """
    adapter, target = find(model)
    found = adapter.locate_language(model)
    with _trace.trace() as record:
        record.made_by = "stats"

        def on_vision(module, args, kwargs):
            if _trace.active() is record and adapter.segments is not None:
                segs = adapter.segments(module, args, kwargs)
                record.vision.append(
                    _trace.VisionCall(
                        segs, getattr(module, _SETTINGS, None), getattr(module, _SCORES, None) is not None
                    )
                )

        def on_decoder(module, args, kwargs, output):
            # a patched decoder (LLM-side method, or a ViT-side output="reduced") records its own calls
            if _trace.active() is record and getattr(type(module), "_ipcv_base", None) is None:
                adapter.language.record_plain(module, args, kwargs, output)

        handles = [target.register_forward_pre_hook(on_vision, with_kwargs=True)]
        if found is not None:
            handles.append(found[1].register_forward_hook(on_decoder, with_kwargs=True))
            handles += adapter.language.observe_outer(found[0])
        try:
            yield record
        finally:
            for h in handles:
                h.remove()


VISION_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "varlen")


def vision_attention(model: nn.Module, implementation: str) -> str:
    """Choose the attention kernel of ``model``'s vision tower only (the LLM keeps its own); returns
    the implementation it had, so ``vision_attention(model, previous)`` undoes it.

    ``"varlen"``: one variable-length attention call per block over all images / frames, by
    PyTorch's own kernel (``torch.nn.attention.varlen``, flash or cuDNN; CUDA, bf16 / fp16) registered
    in transformers' attention interface, for users without the ``flash-attn`` package; on CPU or in
    float32 it runs scaled_dot_product_attention per segment. For towers that pack their images (the
    families whose adapter says ``packs_segments``). ``"flash_attention_2"`` / ``"_3"`` need the ``flash-attn`` package.
    Works on compressed and uncompressed models alike (the compressed blocks use the same kernel).
    """
    if implementation not in VISION_ATTENTION:
        raise ValueError(f"implementation={implementation!r} is not allowed: use one of {VISION_ATTENTION}")
    adapter, target = find(model)
    if implementation == "varlen" and not adapter.packs_segments:
        packed = ", ".join(a.family for a in ADAPTERS if a.packs_segments)
        raise ValueError(
            f"implementation='varlen' needs a tower that packs its images ({packed}); "
            f"a {type(model).__name__} ({adapter.family}) batches them: use 'sdpa' or 'flash_attention_2'"
        )
    return set_attention(target, implementation)
