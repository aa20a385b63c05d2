"""IPCV inside Qwen2-VL's vision tower, on tiny random configs of the real classes."""

from __future__ import annotations

import threading

import pytest
import torch
from families import MIXED, SEVERAL, SINGLE, VIDEO, make_tower, pixels, tiny_qwen2vl
from reference import keep_budget, masked_attention, reference_ipcv
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

import ipcv

GRIDS = {"single": SINGLE, "several": SEVERAL, "video": VIDEO, "mixed": MIXED}


def run(tower, grid, x=None):
    x = pixels(grid) if x is None else x
    with torch.no_grad():
        return tower(x, grid_thw=torch.tensor(grid))


def _rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]


def reference(tower, grid, settings: ipcv.IPCV):
    """The equations, written out for this tower (see tests/reference.py)."""
    grid_t = torch.tensor(grid)
    with torch.no_grad():
        h0 = tower.patch_embed(pixels(grid))
        cos, sin = tower.rotary_pos_emb(h0, get_vision_position_ids(grid_t, tower.spatial_merge_size))
        cu, _ = get_vision_attention_seqlens(grid_t, tower.config)
        seg = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff())

        def block(layer, x, rows):
            blk = blk_ = tower.blocks[layer]
            H = blk.attn.num_heads
            q, k, v = blk.attn.qkv(blk.norm1(x)).view(x.shape[0], 3, H, -1).unbind(1)
            q, k = _rotate(q, cos[rows], sin[rows]), _rotate(k, cos[rows], sin[rows])
            a = masked_attention(q, k, v, seg[rows], seg[rows], blk.attn.scaling)
            h = x + blk_.attn.proj(a.reshape(x.shape[0], -1))
            return h + blk.mlp(blk.norm2(h))

        out, keep, counts = reference_ipcv(
            block, h0, seg, len(tower.blocks), settings.keep_ratio, settings.prune_layer,
            settings.stabilize_layers, settings.neighbors, settings.reintegrate, settings.scope,
        )  # fmt: skip
    return out, keep, counts


# --- keep_ratio = 1.0 is the unpatched model, bit for bit --------------------------------------


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_all_is_bit_exact(grid, attn):
    tower = make_tower(attn)
    ref = run(tower, grid)
    ipcv.compress(tower, vision=ipcv.IPCV(1.0, prune_layer=2, stabilize_layers=2))
    out = run(tower, grid)
    assert type(tower).__name__.startswith("IPCV")
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(out.pooler_output, ref.pooler_output)


def test_keep_all_full_model_logits_bit_exact():
    model = tiny_qwen2vl()
    kw = lm_inputs(SINGLE)
    with torch.no_grad():
        ref = model(**kw).logits
        ipcv.compress(model, vision=ipcv.IPCV(1.0, stabilize_layers=2))
        out = model(**kw).logits
    assert torch.equal(out, ref)


# --- the equations ----------------------------------------------------------------------------

SETTINGS = {
    "default": dict(keep_ratio=0.35, prune_layer=2, stabilize_layers=2, neighbors=3),
    "lp1": dict(keep_ratio=0.5, prune_layer=1, stabilize_layers=3, neighbors=4),
    "as_to_end": dict(keep_ratio=0.2, prune_layer=3, stabilize_layers=3, neighbors=2),
    "wo_as": dict(keep_ratio=0.35, prune_layer=2, stabilize_layers=0, neighbors=3),
    "wo_reint": dict(keep_ratio=0.35, prune_layer=2, stabilize_layers=2, neighbors=3, reintegrate=False),
    "k_exceeds_kept": dict(keep_ratio=0.05, prune_layer=2, stabilize_layers=2, neighbors=10),
    "global": dict(keep_ratio=0.35, prune_layer=2, stabilize_layers=2, neighbors=3, scope="global"),
}


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("grid", [SEVERAL, VIDEO], ids=["several", "video"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_matches_reference_equations(name, grid, attn):
    settings = ipcv.IPCV(**SETTINGS[name])
    tower = make_tower(attn)
    expected, keep, counts = reference(tower, grid, settings)
    ipcv.compress(tower, vision=settings)
    with ipcv.trace() as t:
        out = run(tower, grid)
    call = t.calls[0]
    assert call.keep.tolist() == keep
    assert call.keep_counts == counts
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-4, atol=1e-4)
    assert out.pooler_output.shape == (expected.shape[0] // 4, tower.config.hidden_size)


def test_output_differs_from_vanilla_when_pruning():
    """The comparison above would pass for a no-op; make sure pruning changes something."""
    tower = make_tower()
    ref = run(tower, SINGLE).last_hidden_state
    ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2))
    out = run(tower, SINGLE).last_hidden_state
    assert out.shape == ref.shape
    assert not torch.allclose(out, ref, atol=1e-3)


# --- budgets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.65, 0.5, 0.35, 0.2, 0.01])
def test_per_segment_keep_counts(ratio):
    tower = make_tower()
    grid = MIXED  # an image of 96 patches and a 3-frame video of 16 patches per frame
    ipcv.compress(tower, vision=ipcv.IPCV(ratio, prune_layer=2, stabilize_layers=2))
    with ipcv.trace() as t:
        run(tower, grid)
    call = t.calls[0]
    assert call.seg_lengths == [96, 16, 16, 16]
    assert call.keep_counts == [keep_budget(n, ratio) for n in call.seg_lengths]
    # every kept index lies in the segment it is counted in, and order is preserved
    bounds = torch.tensor([0, 96, 112, 128, 144])
    for s, c in enumerate(call.keep_counts):
        inside = ((call.keep >= bounds[s]) & (call.keep < bounds[s + 1])).sum()
        assert inside == c
    assert torch.equal(call.keep, call.keep.sort().values)


def test_global_scope_single_top_k():
    tower = make_tower()
    ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, scope="global"))
    with ipcv.trace() as t:
        run(tower, MIXED)
    call = t.calls[0]
    assert sum(call.keep_counts) == keep_budget(144, 0.35)
    top = call.scores.topk(keep_budget(144, 0.35)).indices.sort().values
    assert torch.equal(call.keep, top)


# --- ablation switches ------------------------------------------------------------------------


def block_inputs(tower, grid, layer):
    """Input of block ``layer`` in the unpatched tower."""
    seen = {}

    def hook(module, args, kwargs):
        seen["h"] = args[0].clone()

    handle = tower.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True)
    run(tower, grid)
    handle.remove()
    return seen["h"]


def test_without_reintegration_returns_frozen_states():
    tower = make_tower()
    h_lp = block_inputs(tower, SEVERAL, 2)
    ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, reintegrate=False))
    with ipcv.trace() as t:
        out = run(tower, SEVERAL).last_hidden_state
    rem = t.calls[0].rem
    assert torch.equal(out[rem], h_lp[rem])


def test_stabilization_changes_kept_tokens():
    tower = make_tower()
    outs = {}
    for n_as in (0, 2):
        ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=n_as))
        with ipcv.trace() as t:
            outs[n_as] = run(tower, SINGLE).last_hidden_state
    keep = t.calls[0].keep
    assert not torch.allclose(outs[0][keep], outs[2][keep], atol=1e-4)


# --- API behaviour ----------------------------------------------------------------------------


def test_restore_is_bit_exact_and_complete():
    tower = make_tower()
    before = run(tower, SEVERAL)
    state = {k: v.clone() for k, v in tower.state_dict().items()}
    cls = type(tower)
    ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2))
    run(tower, SEVERAL)
    assert ipcv.restore(tower) is tower
    after = run(tower, SEVERAL)
    assert type(tower) is cls
    assert not hasattr(tower, "_ipcv_vision")
    assert torch.equal(after.last_hidden_state, before.last_hidden_state)
    assert torch.equal(after.pooler_output, before.pooler_output)
    assert all(torch.equal(v, state[k]) for k, v in tower.state_dict().items())
    ipcv.restore(tower)  # restoring an unpatched model is a no-op


def test_compress_again_replaces_settings_and_context_manager_restores():
    model = tiny_qwen2vl()
    first = ipcv.IPCV(0.5, stabilize_layers=2)
    assert ipcv.compress(model, vision=first) is model
    second = ipcv.IPCV(0.2, stabilize_layers=1)
    ipcv.compress(model, vision=second)
    assert ipcv.settings(model) == second
    assert type(model.model.visual).__mro__[1].__name__ == "Qwen2VisionTransformerPretrainedModel"
    with ipcv.compressed(model, vision=ipcv.IPCV(0.65, stabilize_layers=0)):
        assert ipcv.settings(model).keep_ratio == 0.65
    assert ipcv.settings(model) == second
    ipcv.restore(model)
    with ipcv.compressed(model.model, vision=first):
        assert ipcv.settings(model) == first
    assert ipcv.settings(model) is None
    assert type(model.model.visual).__name__ == "Qwen2VisionTransformerPretrainedModel"


def test_no_state_on_modules_and_threads_do_not_interfere():
    towers = [make_tower(seed=0), make_tower(seed=0)]
    grids = [SEVERAL, VIDEO]
    settings = [ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2), ipcv.IPCV(0.6, prune_layer=1, stabilize_layers=0)]
    for tower, s in zip(towers, settings):
        ipcv.compress(tower, vision=s)
    expected = [run(t, g).last_hidden_state for t, g in zip(towers, grids)]
    before = [set(vars(t)) | {n for m in t.modules() for n in vars(m)} for t in towers]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def work(i):
        for _ in range(5):
            results[i].append(run(towers[i], grids[i]).last_hidden_state)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(2):
        assert all(torch.equal(r, expected[i]) for r in results[i])
    after = [set(vars(t)) | {n for m in t.modules() for n in vars(m)} for t in towers]
    assert before == after


def test_full_model_generate_and_reduced_dtypes():
    model = tiny_qwen2vl()
    kw = lm_inputs(SEVERAL)
    ipcv.compress(model, vision=ipcv.IPCV(0.35, stabilize_layers=2))
    with torch.no_grad(), ipcv.trace() as t:
        out = model.generate(**kw, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == kw["input_ids"].shape[1] + 3
    assert len(t.calls) == 1 and t.calls[0].seg_lengths == [96, 24, 40]  # the prefill's one tower call
    assert t.calls[0].keep_counts == [ipcv.keep_count(n, 0.35) for n in (96, 24, 40)]
    for dtype in (torch.bfloat16, torch.float16):
        tower = make_tower("sdpa", dtype=dtype)
        ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2))
        res = run(tower, MIXED, pixels(MIXED, dtype=dtype))
        assert res.last_hidden_state.dtype == dtype
        assert torch.isfinite(res.pooler_output).all()


def test_output_flags_are_refused_not_ignored():
    tower = make_tower()
    ipcv.compress(tower, vision=ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2))
    with pytest.raises(ValueError, match="output_hidden_states"):
        tower(pixels(SINGLE), grid_thw=torch.tensor(SINGLE), output_hidden_states=True)


def lm_inputs(grid):
    image_token = 250
    n = sum(t * h * w for t, h, w in grid) // 4
    # one image block per grid row, each between vision start/end tokens
    ids = [1, 5]
    for t, h, w in grid:
        ids += [252] + [image_token] * (t * h * w // 4) + [253]
    ids += [6, 7]
    ids = torch.tensor([ids])
    assert int((ids == image_token).sum()) == n
    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=pixels(grid),
        image_grid_thw=torch.tensor(grid),
        mm_token_type_ids=(ids == image_token).int(),
    )


# --- the FlashAttention path, with a CPU stand-in for the varlen kernel ------------------------


def _varlen_reference(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None,
    cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs,
):  # fmt: skip
    """What flash_attn_varlen_func computes, on the layout transformers hands a flash kernel."""
    assert attention_mask is None and not is_causal and query.shape[0] == 1
    assert cu_seq_lens_q.dtype == torch.int32 and cu_seq_lens_k.dtype == torch.int32
    assert max_length_q == int(cu_seq_lens_q.diff().max()) and max_length_k == int(cu_seq_lens_k.diff().max())
    assert int(cu_seq_lens_q[-1]) == query.shape[2] and int(cu_seq_lens_k[-1]) == key.shape[2]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [L, H, d]
    seg_q = torch.repeat_interleave(torch.arange(len(cu_seq_lens_q) - 1), cu_seq_lens_q.diff().long())
    seg_k = torch.repeat_interleave(torch.arange(len(cu_seq_lens_k) - 1), cu_seq_lens_k.diff().long())
    return masked_attention(q, k, v, seg_q, seg_k, scaling).unsqueeze(0), None


@pytest.fixture
def emulated_flash():
    from transformers import AttentionInterface

    name = "emulated_flash_varlen"
    AttentionInterface.register(name, _varlen_reference)
    return name


@pytest.mark.parametrize(
    "settings",
    [
        ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2),
        ipcv.IPCV(0.05, prune_layer=2, stabilize_layers=2, scope="global"),
    ],
    ids=["segment", "global-with-empty-frames"],
)
def test_flash_varlen_path_matches_eager(emulated_flash, settings):
    outs = {}
    for attn in ("eager", emulated_flash):
        tower = make_tower("eager")  # transformers checks for a real flash kernel at construction only
        tower.config._attn_implementation = attn
        ipcv.compress(tower, vision=settings)
        with ipcv.trace() as t:
            outs[attn] = run(tower, MIXED).last_hidden_state
    if settings.scope == "global":
        assert 0 in t.calls[0].keep_counts  # a frame lost all its tokens: the empty-segment path ran
    torch.testing.assert_close(outs[emulated_flash], outs["eager"], rtol=1e-4, atol=1e-4)


# --- ipcv.vision_attention("varlen"): PyTorch's varlen kernel through transformers' interface -----


@pytest.mark.parametrize("grid", [SINGLE, SEVERAL, VIDEO, MIXED], ids=["single", "several", "video", "mixed"])
def test_varlen_attention_matches_eager_and_keep_all_is_exact(grid):
    outs = {}
    for attn in ("eager", "varlen"):
        tower = make_tower("eager")
        assert ipcv.vision_attention(tower, attn) == "eager"
        vanilla = run(tower, grid).last_hidden_state
        ipcv.compress(tower, vision=ipcv.IPCV(1.0, prune_layer=2, stabilize_layers=2))
        assert torch.equal(run(tower, grid).last_hidden_state, vanilla)  # keep 1.0: the plain blocks
        ipcv.compress(tower, vision=ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2))
        outs[attn] = (vanilla, run(tower, grid).last_hidden_state)
        assert ipcv.vision_attention(tower, "eager") == attn  # the previous one comes back
    for got, want in zip(outs["varlen"], outs["eager"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_vision_attention_refuses_what_it_cannot_do():
    tower = make_tower()
    with pytest.raises(ValueError, match="implementation='flash'.*allowed"):
        ipcv.vision_attention(tower, "flash")
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        with pytest.raises(ValueError, match="flash-attn package"):
            ipcv.vision_attention(tower, "flash_attention_2")
    from transformers import Dinov2Config, Dinov2Model

    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="varlen.*packs its images"):
        ipcv.vision_attention(dino, "varlen")
    from ipcv.models._attention import varlen_attention_forward

    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="vision towers only"):
        varlen_attention_forward(None, q, q, q)  # a language model's call: no segment boundaries


def _meta_tower_call(grid):
    """A Qwen2-VL tower call whose tensors all live on the meta device, on the varlen path in bf16:
    any read of a device value by the host (``.item()``, ``.tolist()``, ``nonzero``, boolean
    indexing, ``int(t)``) raises there, so a run that finishes never waits for the GPU."""
    from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids

    from ipcv.models import qwen2_vl as adapter
    from ipcv.models._attention import register_varlen

    tower = make_tower()
    tower.config._attn_implementation = register_varlen()
    g = torch.tensor(grid)
    with torch.no_grad():
        cu, max_len = get_vision_attention_seqlens(g, tower.config, kwargs={})
        h = tower.patch_embed(pixels(grid))
        pe = tower.rotary_pos_emb(h, get_vision_position_ids(g, tower.spatial_merge_size, kwargs={}))
    tower.to("meta", torch.bfloat16)
    to_meta = lambda t: t.to("meta", torch.bfloat16 if t.is_floating_point() else t.dtype)  # noqa: E731
    call = adapter._TowerCall(
        tower, to_meta(cu), max_len, tuple(map(to_meta, pe)), {}, adapter.qwen.eager_attention_forward
    )
    return call, len(tower.blocks), to_meta(h), cu.diff().tolist()


@pytest.mark.parametrize("grid", [SINGLE, SEVERAL, VIDEO, MIXED], ids=["single", "several", "video", "mixed"])
def test_ipcv_block_loop_never_reads_the_device(grid):
    from ipcv.vision.ipcv import run_ipcv

    with pytest.raises(RuntimeError, match="meta"):  # the detector works: a host read fails on meta
        torch.ones(3, device="meta").sum().item()
    call, depth, h, seg = _meta_tower_call(grid)
    with torch.no_grad():
        out = run_ipcv(call, depth, h, seg, ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2))
    assert out.shape == h.shape and out.device.type == "meta"


def test_torch_varlen_call_adapts_to_older_signatures(monkeypatch):
    """PyTorch 2.9's varlen_attn has neither ``scale`` nor ``enable_gqa``: the queries are pre-scaled and
    grouped heads repeated, and the result is the reference path's (CPU, per segment)."""
    from ipcv.models import _attention

    def old_kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False):  # 2.9's parameters
        assert key.shape[1] == query.shape[1]  # grouped heads were repeated
        out, _ = _attention.varlen_attention_forward(
            None, *(x.transpose(0, 1).unsqueeze(0) for x in (query, key, value)), scaling=None,
            cu_seq_lens_q=cu_seq_q, cu_seq_lens_k=cu_seq_k, max_length_q=max_q, max_length_k=max_k,
        )  # fmt: skip
        return out[0]

    monkeypatch.setattr(_attention, "torch_varlen", lambda: old_kernel)
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(10, 4, 8, generator=g), torch.randn(12, 2, 8, generator=g), torch.randn(12, 2, 8, generator=g)
    cu_q, cu_k = torch.tensor([0, 6, 10], dtype=torch.int32), torch.tensor([0, 7, 12], dtype=torch.int32)
    got = _attention._torch_varlen(q, k, v, cu_q, cu_k, 6, 7, 0.3)
    want, _ = _attention.varlen_attention_forward(
        None, *(x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)), scaling=0.3,
        cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k, max_length_q=6, max_length_k=7,
    )  # fmt: skip
    torch.testing.assert_close(got, want[0], rtol=1e-5, atol=1e-6)
