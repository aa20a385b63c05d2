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
    position_ids: torch.Tensor | None = None  # the call's ``[3 or 4, B, L]`` mRoPE positions, if given


def _temporal(position_ids: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """``[B, L]`` temporal mRoPE position of each prompt position, or None (no 3D positions given)."""
    if position_ids is None or position_ids.ndim != 3 or position_ids.shape[0] not in (3, 4):
        return None
    t = position_ids[-3]  # [4, B, L]: text positions first, then (t, h, w)
    return t.cpu() if t.shape == (batch, length) else None


def visual_spans(visual: Layout | None, batch: int, length: int, device) -> torch.Tensor | None:
    """``[B, L]`` long: visual span of each prompt position (-1 text), or None without visual tokens.

    A span is one image, or one frame of a video (one temporal slice of its LLM grid,
    ``(h / m) * (w / m)`` tokens). Tokens are found from ``input_ids`` (``image_token_id`` /
    ``video_token_id``) or else ``mm_token_type_ids`` (1 image, 2 video), and split into spans in
    order with the grids. Without grids (``generate()`` encodes the images before prefill and calls it
    without them) every contiguous run of visual tokens is cut where its temporal mRoPE position changes,
    so a video's frames are still one span each; with neither, a run is one span.
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
    temporal = _temporal(visual.position_ids, batch, length)
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
            if grid is None:  # contiguous runs, cut where the frame (temporal position) changes
                cut = rows.diff() > 1
                if temporal is not None:
                    cut |= temporal[b, rows].diff() != 0
                ids = torch.cat([torch.zeros(1, dtype=torch.long), cut.long().cumsum(0)])
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
        bound.get("position_ids"),
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


def reduced_call(outer, args: tuple, kwargs: dict, units_key: str):
    """``output="reduced"`` of a ViT-side baseline, at the outer model's call.

    If the vision tower runs a baseline with ``output="reduced"`` and this call carries images or
    video (``pixel_values*``, or ``mm_encoder_outputs`` as generate() pre-computes them), the
    features are computed here (once, with the tower's mask of kept merge units, ``units_key``) and
    handed on as ``mm_encoder_outputs``; the placeholders of the other units are marked for dropping.
    The input ids, attention mask and 3D mRoPE positions stay those of the full prompt (so every kept
    token keeps its original ``(t, h, w)`` position and the text after an image its own), and the
    decoder removes the marked positions before its first layer (:mod:`ipcv.models._decoder`).

    Returns: ``(args, kwargs, drop)``, with ``drop`` ``[B, L]`` bool (True: a placeholder the LLM does
    not receive) or None when nothing is reduced in this call.
    """
    settings = getattr(getattr(outer, "visual", None), "_ipcv_vision", None)
    if getattr(settings, "output", "full") != "reduced":
        return args, kwargs, None
    names = ("input_ids", "attention_mask", "position_ids", "past_key_values", "inputs_embeds")
    kwargs = dict(zip(names, args)) | kwargs
    encoded = dict(kwargs.get("mm_encoder_outputs") or {})
    for kind, pixels, grid in (("image", "pixel_values", "image_grid_thw"),
                               ("video", "pixel_values_videos", "video_grid_thw")):  # fmt: skip
        if kwargs.get(pixels) is not None and encoded.get(kind) is None:
            features = outer.get_image_features if kind == "image" else outer.get_video_features
            encoded[kind] = features(kwargs.pop(pixels), kwargs.get(grid), return_dict=True)
        kwargs.pop(pixels, None)
    if not encoded:
        return (), kwargs, None
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError(
            f"{type(settings).__name__}(output='reduced'): input_ids=None is not supported with images or video "
            "(the placeholders of the dropped merge units are found from the input ids); pass input_ids"
        )
    config = outer.config
    drop = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    for kind, token_id in (("image", config.image_token_id), ("video", config.video_token_id)):
        out = encoded.get(kind)
        if out is None:
            continue
        units = out.get(units_key) if hasattr(out, "get") else None
        if units is None:
            raise ValueError(
                f"{type(settings).__name__}(output='reduced'): mm_encoder_outputs[{kind!r}] was not computed by "
                "the compressed tower (it has no mask of kept merge units); pass pixel values, or features "
                "from this model's get_image_features / get_video_features"
            )
        placeholders = input_ids == token_id
        if int(placeholders.sum()) != units.numel():
            raise ValueError(
                f"{type(settings).__name__}(output='reduced'): {int(placeholders.sum())} {kind} placeholder "
                f"tokens in input_ids, but the {kind} features have {units.numel()} merge units"
            )
        drop[placeholders] = ~units.to(drop.device)  # row-major, the order masked_scatter fills them in
    kwargs["mm_encoder_outputs"] = encoded
    return (), kwargs, drop if bool(drop.any()) else None


def scored_call(outer, args: tuple, kwargs: dict, keys: tuple[str, str]):
    """A language-side VisionZip's tower scores, at the outer model's call.

    If the tower was asked for VisionZip's scores (``_ipcv_scores``) and this call carries images or video
    (``pixel_values*``, or ``mm_encoder_outputs`` as generate() pre-computes them), the features are computed
    here once and handed on as ``mm_encoder_outputs``; the score and metric of every merge unit
    (``keys``: the tower output's entries) are placed at their placeholders' prompt positions, in the order
    ``masked_scatter`` fills them.

    Returns: ``(args, kwargs, scores)`` with ``scores = (score [B, L] (NaN off the visual tokens), metric
    [B, L, d])``, or None when the tower gives none in this call.
    """
    if getattr(getattr(outer, "visual", None), "_ipcv_scores", None) is None:
        return args, kwargs, None
    names = ("input_ids", "attention_mask", "position_ids", "past_key_values", "inputs_embeds")
    kwargs = dict(zip(names, args)) | kwargs
    encoded = dict(kwargs.get("mm_encoder_outputs") or {})
    for kind, pixels, grid in (("image", "pixel_values", "image_grid_thw"),
                               ("video", "pixel_values_videos", "video_grid_thw")):  # fmt: skip
        if kwargs.get(pixels) is not None and encoded.get(kind) is None:
            features = outer.get_image_features if kind == "image" else outer.get_video_features
            encoded[kind] = features(kwargs.pop(pixels), kwargs.get(grid), return_dict=True)
        kwargs.pop(pixels, None)
    if not encoded:
        return (), kwargs, None
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError(
            "VisionZip: input_ids=None is not supported with images or video (the visual tokens' scores are "
            "placed by their placeholder ids); pass input_ids"
        )
    config = outer.config
    score = metric = None
    for kind, token_id in (("image", config.image_token_id), ("video", config.video_token_id)):
        out = encoded.get(kind)
        if out is None:
            continue
        s = out.get(keys[0]) if hasattr(out, "get") else None
        if s is None:
            raise ValueError(
                f"VisionZip: mm_encoder_outputs[{kind!r}] was not computed by this compressed model's tower (it "
                "holds no attention scores); pass pixel values, or features from its get_image_features / "
                "get_video_features"
            )
        m = out[keys[1]]
        placeholders = input_ids == token_id
        if int(placeholders.sum()) != s.numel():
            raise ValueError(
                f"VisionZip: {int(placeholders.sum())} {kind} placeholder tokens in input_ids, but the {kind} "
                f"features have {s.numel()} tokens"
            )
        if score is None:
            score = torch.full(input_ids.shape, float("nan"), device=s.device)
            metric = torch.zeros(*input_ids.shape, m.shape[-1], device=m.device)
        placeholders = placeholders.to(s.device)
        score[placeholders] = s.float()
        metric[placeholders] = m.float()
    kwargs["mm_encoder_outputs"] = encoded
    return (), kwargs, None if score is None else (score, metric)
