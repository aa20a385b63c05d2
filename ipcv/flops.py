"""Analytic FLOPs of a vision encoder and a language decoder, vanilla or compressed, and the KV cache. A
multiply-add counts 2 FLOPs. The tokens each block and layer processes, and each method's own work, come
from the method's count in :data:`ipcv.catalog.METHODS` (the same schedule functions that run it), so what
is counted is what runs; this module knows no method by name.

Counted: the linear layers, the attention products (QK^T and AV, per segment), patch embedding
and the encoder's own head (Qwen2-VL's merger), and IPCV's extra work: scoring (eq. 1), the kNN
distances (eq. 3) and NGR (eq. 4-5, once per stabilized block and once for reintegration).
Not counted: norms, activations, softmax, rotary embedding, top-k and index copies (each O(L*D) or
less, the same order as what is counted for IPCV's overhead but not material next to the blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn

from .catalog import method_of
from .models.registry import find
from .settings import VisionMethod
from .shapes import DecoderShape, EncoderShape
from .trace import DecoderRecord, Trace


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one encoder call, and the tokens each block processed (queries / keys)."""

    blocks: int
    overhead: int
    embed_and_head: int
    tokens_per_block: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.blocks + self.overhead + self.embed_and_head


def block_flops(
    shape: EncoderShape,
    q_lengths: Sequence[int],
    kv_lengths: Sequence[int],
    mlp_tokens: int | None = None,
    windows: Sequence[int] | None = None,
) -> int:
    """One block with the given query rows and key/value rows per segment; the MLP runs on
    ``mlp_tokens`` rows (default: the query rows; fewer when tokens merge after attention).
    ``windows``: attention windows per segment (window attention), the segment's queries and keys
    counted as if spread evenly over them; None: one attention per segment."""
    D, n_q, n_kv = shape.dim, sum(q_lengths), sum(kv_lengths)
    n_mlp = n_q if mlp_tokens is None else mlp_tokens
    linear = 2 * D * D * (2 * n_q + 2 * n_kv) + 2 * 2 * n_mlp * D * shape.mlp_dim  # q,o + k,v ; fc1+fc2
    windows = [1] * len(q_lengths) if windows is None else windows
    attention = 4 * D * sum(q * k // w for q, k, w in zip(q_lengths, kv_lengths, windows))
    return linear + attention


def attention_windows(shape: EncoderShape, layer: int, seg_lengths: Sequence[int]) -> list[int] | None:
    """Windows per segment of block ``layer`` (segments of ``seg_lengths`` tokens), or None when the
    block attends per segment."""
    if not shape.window_tokens or layer in shape.full_blocks:
        return None
    return [max(1, -(-int(n) // shape.window_tokens)) for n in seg_lengths]


def encoder_flops(shape: EncoderShape, seg_lengths: Sequence[int], settings: VisionMethod | None = None) -> FlopCount:
    """FLOPs of one call over segments of ``seg_lengths`` tokens (protected prefix included).

    When the model reads an inner layer (``shape.read_layer``), the method's schedule covers the
    blocks before it and the blocks from it on are counted on the full sequence, as they run.

    ``settings``: None (vanilla) or any vision-side method, whose per-block token counts and own work come
    from its count in :data:`ipcv.catalog.METHODS` (for IPCV, :func:`ipcv.vision.ipcv.count_ipcv`: the
    per-segment kept counts of :func:`ipcv.keep_count`, ``scope="global"`` counted as if its budget fell
    evenly). ``tokens_per_block``: query tokens entering each block.
    """
    seg = [int(n) for n in seg_lengths]
    if shape.read_layer is not None and settings is not None and 0 < shape.read_layer < shape.depth:
        inner = _encoder_flops(replace(shape, depth=shape.read_layer), seg, settings)
        rest = [
            block_flops(shape, seg, seg, None, attention_windows(shape, i, seg))
            for i in range(len(inner.tokens_per_block), shape.depth)
        ]
        return FlopCount(
            inner.blocks + sum(rest), inner.overhead, inner.embed_and_head,
            inner.tokens_per_block + (sum(seg),) * len(rest),
        )  # fmt: skip
    return _encoder_flops(shape, seg, settings)


def _encoder_flops(shape: EncoderShape, seg: list[int], settings: VisionMethod | None) -> FlopCount:
    L = sum(seg)
    fixed = L * (shape.embed_flops_per_token + shape.head_flops_per_token)
    if settings is None or settings.keep_ratio >= 1.0:
        total = sum(block_flops(shape, seg, seg, None, attention_windows(shape, i, seg)) for i in range(shape.depth))
        return FlopCount(total, 0, fixed, (L,) * shape.depth)
    count = method_of(settings, "vision").count
    blocks, overhead = count(
        settings, seg, shape.prefix_tokens, shape.depth, shape.dim, shape.heads, tap_layers=shape.taps
    )
    total = sum(
        block_flops(shape, b.q_lengths, b.kv_lengths, sum(b.mlp_lengths), attention_windows(shape, i, seg))
        for i, b in enumerate(blocks)
    )
    return FlopCount(total, overhead, fixed, tuple(sum(b.q_lengths) for b in blocks))


def vision_flops(model: nn.Module, seg_lengths: Sequence[int], settings: VisionMethod | None = None) -> FlopCount:
    """:func:`encoder_flops` for the vision encoder of any model ``ipcv.compress`` accepts.

    ``seg_lengths``: tokens per image / video frame as the encoder sees them (patches, plus the
    CLS token for ViT encoders); e.g. ``[1024]`` for one 448x448 image in Qwen2-VL.
    """
    adapter, target = find(model)
    return encoder_flops(adapter.model_shape(model, target), seg_lengths, settings)


def tower_score_flops(shape: EncoderShape, seg_lengths: Sequence[int]) -> int:
    """The attention scores one tower block computes a second time for a pre-LLM method that reads them
    (:class:`ipcv.VisionZip`): its queries and keys for every token (``2 L D 2D``) and the logits per
    segment (``2 n^2 D``; softmax and sums not counted)."""
    L, D = sum(seg_lengths), shape.dim
    return 4 * L * D * D + 2 * D * sum(int(n) ** 2 for n in seg_lengths)


# --- the language decoder (LLM-side methods) and the whole model ----------------------------------


def decoder_layer_flops(shape: DecoderShape, queries: int, cache: int) -> int:
    """One decoder layer for ``queries`` new tokens of one sample whose cache holds ``cache`` tokens
    after the call: q/o and k/v projections, the gated MLP, and the causal attention products
    (query j of the call attends to ``cache - queries + j + 1`` keys)."""
    D, hd = shape.dim, shape.head_dim
    linear = (
        2 * queries * (2 * D * shape.heads * hd + 2 * D * shape.kv_heads * hd + shape.mlp_matrices * D * shape.mlp_dim)
    )
    pairs = queries * (cache - queries) + queries * (queries + 1) // 2
    return linear + 4 * shape.heads * hd * pairs


def decoder_overhead(shape: DecoderShape, record: DecoderRecord) -> int:
    """The LLM-side method's own work at its pruning layers (its ``<method>_overhead`` in
    :mod:`ipcv.language`, from the settings the call ran under), summed over stages and samples; 0 for a
    call that pruned nothing, or whose decoder ran no LLM-side method (vanilla, or a ViT-side baseline's reduced
    output: no ``settings``). From a :class:`ipcv.trace.DecoderRecord`."""
    if not record.kept or record.settings is None:
        return 0
    overhead = method_of(record.settings, "language").count
    total = 0
    for layer in record.stages:
        if layer == 0:  # a pre-LLM stage: it sees the whole prompt
            tokens, visual = record.prompt
        else:
            tokens, visual = record.tokens[layer - 1], record.visual[layer - 1]
        for b, n in enumerate(tokens):
            total += overhead(record.settings, shape, n, visual[b], record.visual[layer][b])
    return total


def decoder_flops(shape: DecoderShape, record, lm_head_tokens: int = 1) -> int:
    """FLOPs of one decoder call from its :class:`ipcv.trace.DecoderRecord`: every layer for every
    sample, the method's overhead, and the LM head for ``lm_head_tokens`` tokens per sample
    (generate computes logits for the last token only)."""
    total = 0
    for tokens, cache in zip(record.tokens, record.cache):
        total += sum(decoder_layer_flops(shape, q, c) for q, c in zip(tokens, cache))
    samples = len(record.tokens[0]) if record.tokens else 0
    return total + decoder_overhead(shape, record) + 2 * shape.dim * shape.vocab * lm_head_tokens * samples


def kv_cache_mb(shape: DecoderShape, record, bytes_per_value: int = 2) -> float:
    """KV-cache size after the call, in MB (1e6 bytes): keys and values of every cached token of
    every layer and sample (filler and padding slots excluded), ``bytes_per_value`` 2 as float16 /
    bfloat16 (Table 4)."""
    tokens = sum(sum(layer) for layer in record.cache)
    return tokens * 2 * shape.kv_heads * shape.head_dim * bytes_per_value / 1e6


@dataclass(frozen=True)
class Costs:
    """Analytic cost of the calls recorded by :func:`ipcv.stats` (Table 4's FLOPs and KV cache).

    vision / decoder: FLOPs of all vision-encoder calls / all decoder calls; kv_cache_mb: after
    the last decoder call. vision_tokens_per_block / decoder_tokens_per_layer: tokens (queries)
    entering each block / layer, summed over calls and samples.
    """

    vision: int
    decoder: int
    kv_cache_mb: float
    vision_tokens_per_block: tuple[int, ...]
    decoder_tokens_per_layer: tuple[int, ...]

    @property
    def total(self) -> int:
        return self.vision + self.decoder


def costs(model: nn.Module, stats: Trace, bytes_per_value: int = 2) -> Costs:
    """FLOPs and KV cache of everything ``stats`` (from ``with ipcv.stats(model) as stats``) recorded
    for ``model``: vision calls counted by :func:`encoder_flops` under the settings they ran with,
    decoder calls by :func:`decoder_flops`, the KV cache by :func:`kv_cache_mb`."""
    if not isinstance(stats, Trace):
        raise TypeError(
            f"costs: stats must be what `with ipcv.stats(model) as stats:` yields, got {type(stats).__name__}"
        )
    if stats.made_by != "stats":
        raise ValueError(
            "costs: this record comes from ipcv.trace(), which records compressed calls only (no vision "
            "token counts, no uncompressed decoder calls), so its costs would be wrong; record the forward "
            "with `with ipcv.stats(model) as stats:` and pass that"
        )
    adapter, tower = find(model)
    shape = adapter.model_shape(model, tower)
    vision, per_block = 0, [0] * shape.depth
    for call in stats.vision:
        count = encoder_flops(shape, call.seg_lengths, call.settings)
        vision += count.total + (tower_score_flops(shape, call.seg_lengths) if call.scored else 0)
        per_block = [a + b for a, b in zip(per_block, count.tokens_per_block)]
    decoder, kv, per_layer = 0, 0.0, []
    if adapter.language is not None and stats.decoder:
        dshape = adapter.language.shape(adapter.language.locate(model)[1])
        per_layer = [0] * dshape.layers
        for record in stats.decoder:
            decoder += decoder_flops(dshape, record)
            per_layer = [a + sum(t) for a, t in zip(per_layer, record.tokens)]
        kv = kv_cache_mb(dshape, stats.decoder[-1], bytes_per_value)
    return Costs(vision, decoder, kv, tuple(per_block), tuple(per_layer))
