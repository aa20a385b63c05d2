"""A plain, slow transcription of the paper's equations, used to check the library.

It shares no code with ``ipcv``: explicit per-token loops, full attention with a block-diagonal
mask, and the stabilized blocks computed the authors' way (every token a query, then the kept rows
sliced out), which is numerically the same function as ipcv's kept-queries-only attention.
"""

from __future__ import annotations

import math

import torch


def keep_budget(n: int, ratio: float) -> int:
    return max(1, min(n, math.floor(ratio * n + 0.5)))


def release_budget(n: int, ratio: float) -> int:
    """The authors' release (scope="global"): int(n * (1 - reduction)), reduction written as a decimal."""
    return max(1, min(n, int(n * (1 - round(1 - ratio, 6)))))


def masked_attention(q, k, v, seg_q, seg_k, scale):
    """q: [n, H, d], k/v: [m, H, d]; tokens attend only inside their segment."""
    logits = torch.einsum("qhd,khd->hqk", q, k) * scale
    logits = logits.masked_fill(seg_q[None, :, None] != seg_k[None, None, :], float("-inf"))
    return torch.einsum("hqk,khd->qhd", logits.softmax(-1), v)


def reference_ipcv(
    block, h0, seg, depth, keep_ratio, lp, n_as, k, reintegrate=True, scope="segment", protected=None,
    taps=None, tap_mode="ngr", expendable=None,
):  # fmt: skip
    """IPCV on a packed sequence.

    block(layer, x [n, D], rows LongTensor) -> the layer's output for x (all rows queries, attention
    within segments of those rows); h0: [L, D] input of block 0; seg: [L] segment id per token;
    expendable: [L] bool or None, tokens ranked after every other one of their segment (AnyRes padding).
    taps: a dict whose keys are blocks whose full-length output is read (Qwen3-VL's DeepStack); filled with
    that output, removed tokens rebuilt by eq. 5 at it (tap_mode "ngr") or frozen at lp ("frozen").
    Returns (output [L, D], keep indices, per-segment kept counts).
    """
    taps = {} if taps is None else taps
    L = h0.shape[0]
    rows = torch.arange(L)
    protected = torch.zeros(L, dtype=torch.bool) if protected is None else protected
    expendable = torch.zeros(L, dtype=torch.bool) if expendable is None else expendable
    h = h0
    for layer in range(lp):
        h_prev = h
        h = block(layer, h, rows)
        if layer in taps:
            taps[layer] = h
    score = [float((h[i] - h_prev[i]).norm()) for i in range(L)]  # eq. 1

    # eq. 2
    keep = []
    groups = [rows] if scope == "global" else [rows[seg == s] for s in seg.unique()]
    for g in groups:
        prot = [int(i) for i in g if protected[i]]
        free = [int(i) for i in g if not protected[i]]
        free.sort(key=lambda i: (bool(expendable[i]), -score[i]))
        budget = release_budget if scope == "global" else keep_budget
        keep += prot + free[: budget(len(free), keep_ratio)]
    keep = sorted(keep)
    rem = [i for i in range(L) if i not in set(keep)]
    counts = [sum(1 for i in keep if seg[i] == s) for s in seg.unique()]

    # eq. 3: neighbours among kept tokens (same segment unless global), Euclidean on h_lp
    neighbours = {}
    for i in rem:
        cand = [j for j in keep if scope == "global" or seg[j] == seg[i]]
        cand.sort(key=lambda j: float((h[i] - h[j]).norm()))
        neighbours[i] = cand[: min(k, len(cand))]

    h_lp = h.clone()
    state = {i: h_lp[i] for i in keep}  # current states of kept tokens

    def ngr(i):  # eq. 5
        return h_lp[i] + torch.stack([state[j] - h_lp[j] for j in neighbours[i]]).mean(0)

    def tap(layer):
        if layer in taps:
            taps[layer] = torch.stack([state[i] if i in state else (ngr(i) if tap_mode == "ngr" else h_lp[i])
                                       for i in range(L)])  # fmt: skip

    for layer in range(lp, lp + n_as):  # eq. 6-9: full sequence through attention, kept rows kept
        full = torch.stack([state[i] if i in state else ngr(i) for i in range(L)])
        out = block(layer, full, rows)
        state = {i: out[i] for i in keep}
        tap(layer)
    keep_t = torch.tensor(keep)
    for layer in range(lp + n_as, depth):
        out = block(layer, torch.stack([state[i] for i in keep]), keep_t)
        state = {i: out[n] for n, i in enumerate(keep)}
        tap(layer)
    final = torch.stack([state[i] if i in state else (ngr(i) if reintegrate else h_lp[i]) for i in range(L)])  # eq. 10
    return final, keep, counts
