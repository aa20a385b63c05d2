"""One unpruned forward with every block's input, and one compressed forward under ``ipcv.trace``.

Block indices follow :mod:`ipcv.vision.ipcv`: ``Unpruned.states[l]`` is the input of block ``l``
(``l = 0`` the patch embeddings) and ``states[depth]`` the output of the last block, before any
final norm or merger; the paper's ``h_{i,l}`` is ``states[l][i]`` and its ``l_final + 1`` is
``depth``. A compressed run's ``states[l]`` (from the trace) is the *output* of block ``l`` for the
kept tokens, i.e. the compressed counterpart of ``Unpruned.states[l + 1][keep]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import ipcv

from .encoders import Batch, Encoder


@dataclass
class Unpruned:
    """The uncompressed encoder on a batch.

    states: ``[depth + 1, L, D]`` (see the module docstring). output: what the downstream consumes
    (``enc.finish``), ``[L', D']``. saliency: ``[B, 1, H, W]`` or None.
    """

    states: torch.Tensor
    output: torch.Tensor
    saliency: torch.Tensor | None

    @property
    def final(self) -> torch.Tensor:
        """``[L, D]`` output of the last block."""
        return self.states[-1]


@dataclass
class Compressed:
    """The encoder compressed with ``settings`` on a batch, as recorded by ``ipcv.trace(states=True)``.

    keep / rem: ``[K]`` / ``[R]`` packed rows. neighbors: ``[R, k]`` rows of the *kept sequence*
    (``keep[neighbors]`` are packed rows), nearest first. scores: ``[L]`` eq. 1. states: block ->
    ``[K, D]`` kept-token output. final: ``[L, D]`` the restored sequence after the last block
    (eq. 10). output / saliency: as for :class:`Unpruned`.
    """

    settings: ipcv.IPCV
    keep: torch.Tensor
    rem: torch.Tensor
    neighbors: torch.Tensor
    scores: torch.Tensor
    states: dict[int, torch.Tensor]
    seg_lengths: list[int]
    keep_counts: list[int]
    final: torch.Tensor
    output: torch.Tensor
    saliency: torch.Tensor | None

    @property
    def neighbor_rows(self) -> torch.Tensor:
        """``[R, k]`` packed rows of each removed token's neighbours."""
        return self.keep[self.neighbors]


def _cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().cpu()


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _FinalHook:
    """Captures the full-length output of the encoder module (before any final norm / merger)."""

    def __init__(self, module: torch.nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.value = output.last_hidden_state

    def remove(self) -> None:
        self.handle.remove()


def _downstream(enc: Encoder, batch: Batch, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    final = final.to(device=enc.device, dtype=enc.dtype)
    with torch.inference_mode():
        out = _cpu(enc.finish(final, batch))
        sal = _cpu(enc.saliency(final, batch)) if enc.saliency is not None else None
    return out, sal


def downstream(enc: Encoder, batch: Batch, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the downstream gets from a final sequence ``[L, D]``: ``(enc.finish, enc.saliency)``.

    Used to feed baselines (copy / frozen) through the same final norm, merger or head.
    """
    return _downstream(enc, batch, final)


def run_unpruned(enc: Encoder, batch: Batch) -> Unpruned:
    """The uncompressed encoder with the input of every block recorded (forward pre-hooks)."""
    if ipcv.settings(enc.model) is not None:
        raise RuntimeError("run_unpruned: the model is compressed; call ipcv.restore(model) first")
    inputs: list[torch.Tensor] = []
    handles = [
        blk.register_forward_pre_hook(lambda m, a, k: inputs.append(_cpu(_first_tensor(a, k))), with_kwargs=True)
        for blk in enc.blocks
    ]
    final = _FinalHook(enc.encoder)
    try:
        with torch.inference_mode():
            enc.model(**batch.kwargs)
    finally:
        for h in handles:
            h.remove()
        final.remove()
    D = inputs[0].shape[-1]
    states = torch.stack([x.reshape(-1, D) for x in inputs] + [_cpu(final.value).reshape(-1, D)])
    out, sal = _downstream(enc, batch, final.value.reshape(-1, D))
    return Unpruned(states, out, sal)


def run_compressed(enc: Encoder, batch: Batch, settings: ipcv.IPCV, states: bool = True) -> Compressed:
    """The encoder under ``ipcv.compressed(model, vision=settings)`` with ``ipcv.trace(states=states)``.

    Raises:
        ValueError: the settings remove no token (nothing is recorded then).
    """
    final = _FinalHook(enc.encoder)
    try:
        with ipcv.compressed(enc.model, vision=settings), ipcv.trace(states=states) as t, torch.inference_mode():
            enc.model(**batch.kwargs)
    finally:
        final.remove()
    if not t.calls:
        raise ValueError(f"{settings} removes no token of a batch with segments {batch.seg_lengths}")
    if len(t.calls) != 1:
        raise RuntimeError(f"expected one compressed encoder call per forward, got {len(t.calls)}")
    rec = t.calls[0]
    D = final.value.shape[-1]
    full = final.value.reshape(-1, D)
    out, sal = _downstream(enc, batch, full)
    return Compressed(
        settings, rec.keep.cpu(), rec.rem.cpu(), rec.neighbors.cpu(), _cpu(rec.scores),
        {layer: _cpu(s) for layer, s in rec.states.items()}, list(rec.seg_lengths), list(rec.keep_counts),
        _cpu(full), out, sal,
    )  # fmt: skip


@dataclass
class Output:
    """The encoder's output under any vision-side method (IPCV, ToMe, ToFu, DART-ViT ...).

    final: ``[L, D]`` full-length sequence after the last block; output / saliency: as for
    :class:`Unpruned`.
    """

    settings: object
    final: torch.Tensor
    output: torch.Tensor
    saliency: torch.Tensor | None


def run_method(enc: Encoder, batch: Batch, settings) -> Output:
    """The encoder under ``ipcv.compressed(model, vision=settings)`` for any vision-side method."""
    final = _FinalHook(enc.encoder)
    try:
        with ipcv.compressed(enc.model, vision=settings), torch.inference_mode():
            enc.model(**batch.kwargs)
    finally:
        final.remove()
    full = final.value.reshape(-1, final.value.shape[-1])
    out, sal = _downstream(enc, batch, full)
    return Output(settings, _cpu(full), out, sal)
