"""Source maps of the vision-side baselines: for every position of a call's full-length output, the packed
position of the token whose final state it holds. Adapters read them for ``output="reduced"``
(:func:`collect_sources`), :func:`ipcv.trace` records them (:class:`ipcv.trace.ReductionRecord`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from .. import trace as _trace

# per tower call, the ``source`` maps of the runners that ran in it (see :func:`collect_sources`)
_SOURCES: ContextVar[list[torch.Tensor] | None] = ContextVar("ipcv_vit_sources", default=None)


@contextmanager
def collect_sources() -> Iterator[list[torch.Tensor]]:
    """Collect, for the runs inside this context, the ``[L]`` source map of each call of a baseline
    runner (for every position of the full-length output, the packed position of the token whose
    final state it holds; itself if it survived). A runner that removed nothing appends nothing.
    Used by adapters for ``output="reduced"``; the list lives only as long as the context."""
    sink: list[torch.Tensor] = []
    token = _SOURCES.set(sink)
    try:
        yield sink
    finally:
        _SOURCES.reset(token)


def record(method: str, seg_lengths, keep_counts, tokens_per_block, source: torch.Tensor) -> None:
    sink = _SOURCES.get()
    if sink is not None:
        sink.append(source)
    record = _trace.active()
    if record is not None:
        record.calls.append(
            _trace.ReductionRecord(method, list(seg_lengths), list(keep_counts), tokens_per_block, source)
        )
