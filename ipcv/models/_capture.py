"""transformers' hidden-state capture around a compressed encoder.

Vision models record ``hidden_states`` with forward hooks on their layers, counting hook calls to
know which layer an output belongs to. A compressed encoder calls its layers on fewer tokens, or not
at all (stabilized blocks), so those hooks would record wrong lengths under wrong indices. The
encoder therefore runs with capture switched off and hands the collector the states itself. An MLLM
whose projector reads an inner layer (``vision_feature_layer``) asks for exactly that layer
(transformers' ``select_hidden_states``); the compressed schedule then ends there, reintegrated, so
the layer the projector reads is full length; the blocks after it run on the full sequence as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers.utils.output_capturing import _active_collector


@dataclass(frozen=True)
class Capture:
    """What the caller asked the encoder to record, for one call.

    layer: the one hidden state (0 = input of block 0, ``depth`` = output of the last block) that
        must be full length: the compressed schedule ends there.
    """

    collected: dict | None
    layer: int
    depth: int

    def deliver(self, states: dict[int, torch.Tensor]) -> None:
        """Give the caller its hidden states (``states[i]``: full-length state ``i``)."""
        if self.collected is None or "hidden_states" not in self.collected:
            return
        self.collected["hidden_states"][:] = [states.get(i) for i in range(self.depth + 1)]


def _refuse(owner: str, name: str, why: str) -> ValueError:
    return ValueError(
        f"{owner} is compressed by ipcv: {name} {why}; use `with ipcv.trace(states=True)` to record the kept "
        "tokens per block, or ipcv.restore(model) first"
    )


def pop_flags(kwargs: dict) -> dict:
    """Take ``output_hidden_states`` / ``output_attentions`` / ``return_dict`` out of an encoder's kwargs."""
    flags = {name: kwargs.pop(name, None) for name in ("output_hidden_states", "output_attentions")}
    kwargs.pop("return_dict", None)
    return flags


@contextmanager
def detached(owner: str, depth: int, flags: dict | None = None) -> Iterator[Capture]:
    """Run a compressed encoder of ``depth`` blocks with transformers' capture hooks off; yields what
    the caller asked for. ValueError for what a compressed encoder cannot give: attention maps, all
    hidden states, or several selected layers. ``flags`` (:func:`pop_flags`) given to the encoder
    directly, outside any capture, are refused when set."""
    collected = _active_collector.get()
    layer = depth
    if collected is None:
        for name, value in (flags or {}).items():
            if value is not None and value is not False:
                raise _refuse(owner, f"{name}={value!r}", "is not supported (the pruned blocks see fewer tokens)")
    if collected is not None:
        if "attentions" in collected:
            raise _refuse(owner, "output_attentions=True", "is not supported (the pruned blocks see fewer tokens)")
        if "hidden_states" in collected:
            selected = collected.get("_hidden_states_layers")
            if selected is None:
                raise _refuse(
                    owner, "output_hidden_states=True", "is not supported (the pruned blocks see fewer tokens)"
                )
            if len(selected) != 1:
                raise _refuse(
                    owner, f"hidden states of layers {sorted(selected)} (vision_feature_layer)",
                    "cannot all be full length: only one layer can be read from a compressed encoder",
                )  # fmt: skip
            layer = next(iter(selected))
    token = _active_collector.set(None)
    try:
        yield Capture(collected, layer, depth)
    finally:
        _active_collector.reset(token)


def check_read_layer(settings, capture: Capture, owner: str) -> None:
    """ValueError if the method does not fit in the blocks before the layer the projector reads."""
    if capture.layer == capture.depth or capture.layer == 0:
        return
    try:
        settings.check_depth(capture.layer)
    except ValueError as err:
        raise ValueError(
            f"{owner}: the projector reads hidden state {capture.layer} (vision_feature_layer), so the compressed "
            f"schedule must end there: {err}"
        ) from None
