"""What an adapter tells the public API about a model family, and the sizes the analytic FLOP count
(:mod:`ipcv.flops`) reads from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn


@dataclass(frozen=True)
class EncoderShape:
    """What the FLOP count needs to know about an encoder.

    embed_flops_per_token: patch embedding; head_flops_per_token: work after the last block per
    input token (Qwen2-VL's 2x2 merger), 0 for ViT encoders whose head belongs to the caller.
    prefix_tokens: protected tokens per segment (CLS). heads: attention heads (the baselines'
    similarity metrics work on one head's width). window_tokens: tokens per attention window
    (Qwen2.5-VL), 0 when every block attends per segment; full_blocks: the blocks that attend per
    segment anyway. read_layer: the hidden state the model reads from this encoder when that is an
    inner one (LLaVA's ``vision_feature_layer=-2``): the compressed schedule ends there and the blocks
    from it on run on the full sequence; None: the last block's output.
    """

    depth: int
    dim: int
    mlp_dim: int
    embed_flops_per_token: int = 0
    head_flops_per_token: int = 0
    prefix_tokens: int = 0
    heads: int = 1
    window_tokens: int = 0
    full_blocks: tuple[int, ...] = ()
    read_layer: int | None = None


@dataclass(frozen=True)
class DecoderShape:
    """What the decoder FLOP / KV-cache count needs to know (grouped-query attention, gated MLP)."""

    layers: int
    dim: int
    mlp_dim: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    mlp_matrices: int = 3


@dataclass(frozen=True)
class LanguageAdapter:
    """The language decoder of one model family (LLM-side methods).

    locate: ``(outer, decoder)`` of an accepted model: the module that knows where the visual tokens
        are (its forward is swapped for ``outer_forward``) and the module that owns the decoder
        layer loop (swapped for ``decoder_forward``, which reads ``self._ipcv_language``); None if
        the model has no decoder.
    shape: the sizes the analytic FLOP / KV-cache count needs (:class:`ipcv.flops.DecoderShape`).
    record_plain: ``(decoder, args, kwargs, output)`` records the token counts of an uncompressed
        decoder call into the active trace (a forward hook of :func:`ipcv.stats`).
    observe_outer: ``(outer) -> hook handles`` that let ``record_plain`` see where the visual tokens
        of an uncompressed call are (installed by :func:`ipcv.stats` for the duration of its block).
    """

    locate: Callable[[nn.Module], tuple[nn.Module, nn.Module] | None]
    outer_forward: Callable
    decoder_forward: Callable
    shape: Callable[[nn.Module], DecoderShape]
    record_plain: Callable
    observe_outer: Callable[[nn.Module], list]


@dataclass(frozen=True)
class Adapter:
    """One model family.

    family: short name. classes: names of the accepted model classes (for error messages).
    locate: the module to patch inside an accepted model (the encoder that owns the block loop),
        or None if the model is not of this family.
    depth: number of blocks of that module.
    forward: replacement ``forward`` of the located module; it reads its settings from
        ``self._ipcv_vision`` and keeps every per-call value local.
    shape: the sizes the analytic FLOP count needs (:class:`ipcv.flops.EncoderShape`).
    language: the family's language decoder, or None (vision encoders alone).
    segments: ``(encoder, args, kwargs) -> tokens per segment`` of one encoder call (for
        :func:`ipcv.stats`), or None.
    read_layer: ``(model) -> hidden state index`` the model's projector reads from the encoder when
        it is an inner one, else None (see :attr:`EncoderShape.read_layer`); None: always the last.
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
