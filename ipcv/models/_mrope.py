"""What the mRoPE families (Qwen2-VL, Qwen2.5-VL) share on the LLM side: where the visual tokens of
one call are (one span per image and per video frame, from the token ids and the grids) and how 3D
mRoPE ``position_ids`` reach the decoder. The rest of the LLM side is :mod:`ipcv.models._decoder`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """What the outer model knows about where visual tokens are, for one call."""

    config: object  # the Qwen2VLConfig (token ids, merge size)
    input_ids: torch.Tensor | None
    mm_token_type_ids: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    video_grid_thw: torch.Tensor | None


def visual_spans(visual: Layout | None, batch: int, length: int, device) -> torch.Tensor | None:
    """``[B, L]`` long: visual span of each prompt position (-1 text), or None without visual tokens.

    A span is one image, or one frame of a video (one temporal slice of its LLM grid,
    ``(h / m) * (w / m)`` tokens). Tokens are found from ``input_ids`` (``image_token_id`` /
    ``video_token_id``) or else ``mm_token_type_ids`` (1 image, 2 video), and split into spans in
    order with the grids; without grids every contiguous run of visual tokens is one span.
    """
    if visual is None:
        return None
    config = visual.config
    if visual.input_ids is not None and visual.input_ids.shape == (batch, length):
        kinds = ((visual.input_ids == config.image_token_id, visual.image_grid_thw),
                 (visual.input_ids == config.video_token_id, visual.video_grid_thw))  # fmt: skip
    elif visual.mm_token_type_ids is not None and visual.mm_token_type_ids.shape == (batch, length):
        t = visual.mm_token_type_ids
        kinds = ((t == 1, visual.image_grid_thw), (t == 2, visual.video_grid_thw))
    else:
        return None
    m2 = config.vision_config.spatial_merge_size**2
    span = torch.full((batch, length), -1, dtype=torch.long)
    count = [0] * batch
    for mask, grid in kinds:
        mask = mask.cpu()
        if not bool(mask.any()):
            continue
        frames = [] if grid is None else [int(h * w) // m2 for t, h, w in grid.tolist() for _ in range(int(t))]
        frames = iter(frames)
        for b in range(batch):
            rows = mask[b].nonzero().flatten()
            if grid is None:  # contiguous runs
                ids = torch.cat([torch.zeros(1, dtype=torch.long), (rows.diff() > 1).long().cumsum(0)])
            else:
                ids = torch.empty(rows.numel(), dtype=torch.long)
                start, k = 0, 0
                while start < rows.numel():
                    n = next(frames)
                    ids[start : start + n] = k
                    start, k = start + n, k + 1
            span[b, rows] = ids + count[b]
            count[b] += int(ids.max()) + 1 if rows.numel() else 0
    for b in range(batch):  # number the spans of each sample in prompt order
        rows = (span[b] >= 0).nonzero().flatten()
        if rows.numel():
            starts = torch.cat([torch.ones(1, dtype=torch.bool), span[b, rows].diff() != 0])
            span[b, rows] = starts.long().cumsum(0) - 1
    return span.to(device) if any(count) else None


def layout(outer, args: tuple, kwargs: dict) -> Layout:
    names = ("input_ids", "attention_mask", "position_ids", "past_key_values", "inputs_embeds")
    bound = dict(zip(names, args)) | kwargs
    return Layout(
        outer.config,
        bound.get("input_ids"),
        bound.get("mm_token_type_ids"),
        bound.get("image_grid_thw"),
        bound.get("video_grid_thw"),
    )


def positions(inputs_embeds, position_ids, past_length):
    """The original forward's handling of ``position_ids``: ``([3, B, L] mRoPE ids, [B, L] text ids or None)``."""
    if position_ids is None:
        position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_length
        position_ids = position_ids.view(1, 1, -1).expand(3, inputs_embeds.shape[0], -1)
    elif position_ids.ndim == 2:
        position_ids = position_ids[None, ...].expand(3, position_ids.shape[0], -1)
    if position_ids.ndim == 3 and position_ids.shape[0] == 4:
        return position_ids[1:], position_ids[0]
    return position_ids, None
