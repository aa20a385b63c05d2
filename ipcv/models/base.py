"""What an adapter tells the public API about a model family, and the sizes the analytic FLOP count
(:mod:`ipcv.flops`) reads from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from torch import nn

from ..shapes import DecoderShape, EncoderShape


@dataclass(frozen=True)
class LanguageAdapter:
    """The language decoder of one model family (LLM-side methods).

    locate: ``(outer, decoder)`` of an accepted model: the module that knows where the visual tokens
        are (its forward is swapped for ``outer_forward``) and the module that owns the decoder
        layer loop (swapped for ``decoder_forward``, which reads ``self._ipcv_language``); None if
        the model has no decoder.
    shape: the sizes the analytic FLOP / KV-cache count needs (:class:`ipcv.shapes.DecoderShape`).
    record_plain: ``(decoder, args, kwargs, output)`` records the token counts of an uncompressed
        decoder call into the active trace (a forward hook of :func:`ipcv.stats`).
    observe_outer: ``(outer) -> hook handles`` that let ``record_plain`` see where the visual tokens
        of an uncompressed call are (installed by :func:`ipcv.stats` for the duration of its block).
    outer_methods: ``(name, function)`` pairs the patched outer class also replaces; when there are any,
        the outer model is patched whenever either side is compressed (they hand the encoder what only the
        outer model sees, e.g. LLaVA-NeXT's ``image_sizes``; they must compute what the originals compute).
    """

    locate: Callable[[nn.Module], tuple[nn.Module, nn.Module] | None]
    outer_forward: Callable
    decoder_forward: Callable
    shape: Callable[[nn.Module], DecoderShape]
    record_plain: Callable
    observe_outer: Callable[[nn.Module], list]
    outer_methods: tuple[tuple[str, Callable], ...] = ()


@dataclass(frozen=True)
class Harness:
    """How lmms-eval runs a family through ipcv (:mod:`ipcv.eval`).

    model_id: the ``lmms-eval --model`` id ipcv registers. class_name: the wrapper class
    :mod:`ipcv.eval.harness` builds (``ipcv.eval.harness.<class_name>``). wrapper: the dotted path of
    the lmms-eval wrapper it extends; kind: that wrapper's kind as lmms-eval registers it. model_type:
    the ``config.json`` ``model_type`` of the checkpoints the wrapper loads.
    """

    model_id: str
    class_name: str
    wrapper: str
    kind: Literal["simple", "chat"]
    model_type: str


@dataclass(frozen=True)
class RealTower:
    """A family's vision tower at the size of a released checkpoint, with random weights, for the benchmarks
    (``python -m ipcv.bench vision --family <family>``): latency does not depend on weight values.

    name: the benchmark file's stem; title: what it is, in words; weights: the label every result carries.
    build: ``() -> tower`` (random weights). inputs: ``(patches, device, dtype) -> kwargs`` of one call with
    that many patches (ValueError for a count the tower cannot take). segments: ``patches -> tokens per
    segment`` as the tower sees them (CLS included). depth: its number of blocks.
    """

    name: str
    title: str
    weights: str
    build: Callable[[], nn.Module]
    inputs: Callable
    segments: Callable[[int], list[int]]
    depth: int


@dataclass(frozen=True)
class Adapter:
    """One model family.

    family: short name. classes: names of the accepted model classes (for error messages).
    locate: the module to patch inside an accepted model (the encoder that owns the block loop),
        or None if the model is not of this family.
    depth: number of blocks of that module.
    forward: replacement ``forward`` of the located module; it reads its settings from
        ``self._ipcv_vision`` and keeps every per-call value local.
    shape: the sizes the analytic FLOP count needs (:class:`ipcv.shapes.EncoderShape`).
    language: the family's language decoder, or None (vision encoders alone).
    segments: ``(encoder, args, kwargs) -> tokens per segment`` of one encoder call (for
        :func:`ipcv.stats`), or None.
    read_layer: ``(model) -> hidden state index`` the model's projector reads from the encoder when
        it is an inner one, else None (see :attr:`EncoderShape.read_layer`); None: always the last.
    packs_segments: the encoder attends over all images / frames of a call packed into one sequence
        (``cu_seqlens``), so the ``"varlen"`` kernel applies (:func:`ipcv.vision_attention`).
    reduced_output: a ViT-side baseline's ``output="reduced"`` is built for this family (the LLM receives
        only the kept merge units).
    tower_scores: the tower can hand a language-side :class:`ipcv.VisionZip` its attention scores (the
        tower is patched for it; ``compress`` refuses VisionZip on a family without).
    harness: how lmms-eval runs the family (None: not evaluated through lmms-eval).
    tower: the real-size tower the benchmarks time (None: not benchmarked).
    """

    family: str
    classes: tuple[str, ...]
    locate: Callable[[nn.Module], nn.Module | None]
    depth: Callable[[nn.Module], int]
    forward: Callable
    shape: Callable[[nn.Module], EncoderShape]
    language: LanguageAdapter | None = None
    segments: Callable | None = None
    read_layer: Callable[[nn.Module], int | None] | None = None
    packs_segments: bool = False
    reduced_output: bool = False
    tower_scores: bool = False
    harness: Harness | None = None
    tower: RealTower | None = None

    def locate_language(self, model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """``(outer, decoder)`` of ``model``'s language side, or None (no decoder: a vision encoder alone)."""
        return self.language.locate(model) if self.language is not None else None

    def model_shape(self, model: nn.Module, target: nn.Module) -> EncoderShape:
        """:attr:`shape` of ``target``, with the layer ``model`` reads from it."""
        shape = self.shape(target)
        layer = None if self.read_layer is None else self.read_layer(model)
        return shape if layer is None else replace(shape, read_layer=layer)


def inner_read_layer(feature_layer, depth: int) -> int | None:
    """The hidden state index (0 .. depth) a ``vision_feature_layer`` setting reads, None when it is
    the last block's output (or a list of layers, which a compressed encoder refuses at call time)."""
    if not isinstance(feature_layer, int):
        return None
    layer = feature_layer % (depth + 1)
    return None if layer == depth else layer


def pop_output_flags(kwargs: dict, owner: str) -> None:
    """Drop the output flags a compressed encoder cannot honour; refuse them when set.

    Per-block hidden states and attention maps have a different length after pruning; use
    ``ipcv.trace(states=True)`` to observe a compressed encoder instead.
    """
    for name in ("output_hidden_states", "output_attentions"):
        if kwargs.pop(name, None):
            raise ValueError(
                f"{owner} is compressed by ipcv: {name}=True is not supported (the pruned blocks see fewer "
                "tokens); use `with ipcv.trace(states=True)` to record the kept tokens per block, or "
                "ipcv.restore(model) first"
            )
    kwargs.pop("return_dict", None)
