"""Taps: inner blocks whose full-length output a model reads besides the last block's (Qwen3-VL's DeepStack
mergers read blocks 8 / 16 / 24 of its 27). A runner that has pruned or merged tokens rebuilds the full,
original-order sequence at a tap its own way and hands it on (:func:`offer`); the adapter that asked for the
taps (:func:`collect_taps`) applies its reader there and gets the results back. Nothing is rebuilt at a block
nobody reads.

How each runner rebuilds a tap (the same rule it uses for its final output, so a tap is what the model would
read if the encoder ended there): IPCV brings the removed tokens up to date with NGR from their kept
neighbours (eq. 6 at the tap's output; ``IPCV(taps="ngr")``) or hands back their frozen states at the pruning
block (``taps="frozen"``); ToMe / ToFu give every merged position a copy of the token it was merged into;
DART-ViT gives every pruned position a copy of its closest kept token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch

# per tower call: ({layer: reader}, {layer: reader's output})
_TAPS: ContextVar[tuple[Mapping[int, Callable], dict[int, object]] | None] = ContextVar("ipcv_taps", default=None)


@contextmanager
def collect_taps(readers: Mapping[int, Callable[[torch.Tensor], object]]) -> Iterator[dict[int, object]]:
    """For the runner inside this context, apply ``readers[layer]`` to the full-length ``[L, D]`` output of
    block ``layer`` (rebuilt by the runner) and collect ``{layer: result}``."""
    sink: dict[int, object] = {}
    token = _TAPS.set((dict(readers), sink))
    try:
        yield sink
    finally:
        _TAPS.reset(token)


def wanted(layer: int) -> bool:
    """Whether the output of block ``layer`` is read (a runner builds it only then)."""
    active = _TAPS.get()
    return active is not None and layer in active[0]


def offer(layer: int, build: Callable[[], torch.Tensor]) -> None:
    """After block ``layer``: if it is a tap, ``build()`` the full-length ``[L, D]`` output in original order
    and apply the tap's reader to it."""
    active = _TAPS.get()
    if active is not None and layer in active[0]:
        active[1][layer] = active[0][layer](build())
