"""Packed sequences: a call's tokens laid end to end, ``[L, D]``, cut into segments (one per image or video
frame) by their lengths. The index arithmetic every schedule shares: offsets, groups of equal segments,
device index tensors that never make the host wait, complements and scatters. Pure functions; nothing here
knows transformers or any method."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def device_index(values: Sequence[int], device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A 1-D tensor of the integers ``values`` on ``device``; on CUDA copied from pinned host memory
    without blocking, so the host does not wait for the kernels already queued."""
    t = torch.tensor(list(values), dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def segment_groups(*per_segment: Sequence[int]) -> dict[tuple[int, ...], list[int]]:
    """Segments grouped by their values in ``per_segment`` (e.g. length and budget): key -> the
    indices of the segments sharing it, in order. One batched op then serves each group."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for s, key in enumerate(zip(*per_segment)):
        groups.setdefault(key, []).append(s)
    return groups


def offsets(lengths: Sequence[int]) -> list[int]:
    """Where each run starts when runs of ``lengths`` are laid end to end: ``[0, l0, l0 + l1, ...]``."""
    out, total = [], 0
    for n in lengths:
        out.append(total)
        total += n
    return out


def rows_of(starts: Sequence[int], width: int, device: torch.device) -> torch.Tensor:
    """``[G, width]`` rows ``start + j`` of G equally long runs beginning at ``starts``."""
    return device_index(starts, device).unsqueeze(1) + torch.arange(width, device=device)


def scatter_tokens(h_keep: torch.Tensor, h_rem: torch.Tensor, keep: torch.Tensor, rem: torch.Tensor) -> torch.Tensor:
    """Eq. 7 / eq. 10: the full ``[L, D]`` sequence with kept and removed rows in their places."""
    full = h_keep.new_empty((keep.numel() + rem.numel(), h_keep.shape[-1]))
    full[keep] = h_keep
    full[rem] = h_rem.to(h_keep.dtype)
    return full


def complement(keep: torch.Tensor, length: int) -> torch.Tensor:
    """Indices in ``range(length)`` not in ``keep`` (distinct indices), sorted. Their number is known,
    ``length - len(keep)``, so no count is read back from the device."""
    mask = torch.ones(length, dtype=torch.bool, device=keep.device)
    mask[keep] = False
    return torch.nonzero_static(mask, size=length - keep.numel()).flatten()


def protected_counts(seg_lengths: Sequence[int], protected: torch.Tensor | None) -> list[int]:
    """Protected tokens (CLS) per segment of ``seg_lengths`` (``protected``: ``[L]`` bool, or None: none)."""
    if protected is None:
        return [0] * len(seg_lengths)
    return [int(p.sum()) for p in protected.split(list(seg_lengths))]
