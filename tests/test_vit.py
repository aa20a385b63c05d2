"""IPCV inside ViT-style encoders (DINOv2, CLIP vision, SigLIP vision), tiny random configs."""

from __future__ import annotations

import pytest
import torch
from families import VIT_FAMILIES, tiny_vit, vit_encoder, vit_images, vit_layers
from reference import keep_budget, masked_attention, reference_ipcv

import ipcv

FAMILIES = VIT_FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_all_is_bit_exact(family, attn):
    model = tiny_vit(family, attn)
    x = vit_images()
    with torch.no_grad():
        ref = model(pixel_values=x)
        ipcv.compress(model, vision=ipcv.IPCV(1.0, prune_layer=2, stabilize_layers=2))
        out = model(pixel_values=x)
        ipcv.restore(model)
        back = model(pixel_values=x)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(back.last_hidden_state, ref.last_hidden_state)


def reference(model, family, x, settings):
    """The equations for these encoders; ``x`` is the input of the first layer ``[B, N, D]``."""
    B, N, D = x.shape
    seg = torch.arange(B).repeat_interleave(N)
    dinov2 = family == "dinov2"
    prefix = 0 if family == "siglip" else 1
    protected = torch.zeros(B, N, dtype=torch.bool)
    protected[:, :prefix] = True

    def block(layer, h, rows):
        blk = vit_layers(model)[layer]
        attn = blk.attention if dinov2 else blk.self_attn
        n1, n2 = (blk.norm1, blk.norm2) if dinov2 else (blk.layer_norm1, blk.layer_norm2)
        o_proj = attn.o_proj if dinov2 else attn.out_proj
        H = attn.num_attention_heads if dinov2 else attn.num_heads
        y = n1(h)
        q, k, v = (p(y).view(h.shape[0], H, -1) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        a = o_proj(masked_attention(q, k, v, seg[rows], seg[rows], (D // H) ** -0.5).reshape(h.shape[0], D))
        h = h + (blk.layer_scale1(a) if dinov2 else a)
        m = blk.mlp(n2(h))
        return h + (blk.layer_scale2(m) if dinov2 else m)

    with torch.no_grad():
        out, keep, counts = reference_ipcv(
            block, x.reshape(B * N, D), seg, len(vit_layers(model)), settings.keep_ratio, settings.prune_layer,
            settings.stabilize_layers, settings.neighbors, settings.reintegrate, settings.scope, protected.flatten(),
        )  # fmt: skip
    return out.view(B, N, D), keep, counts


def first_layer_input(model, x):
    seen = {}

    def hook(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = vit_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(pixel_values=x)
    handle.remove()
    return seen["h"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "settings",
    [
        ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3),
        ipcv.IPCV(0.5, prune_layer=1, stabilize_layers=0, neighbors=4, reintegrate=False),
        ipcv.IPCV(0.35, prune_layer=2, stabilize_layers=2, neighbors=3, scope="global"),
    ],
    ids=["default", "ablations", "global"],
)
def test_matches_reference_equations(family, settings):
    model = tiny_vit(family, "sdpa")
    x = vit_images()
    h0 = first_layer_input(model, x)
    expected, keep, counts = reference(model, family, h0, settings)
    ipcv.compress(model, vision=settings)
    with torch.no_grad(), ipcv.trace() as t:
        vit_encoder(model)(h0)  # the encoder alone: its output is what the reference computes
        out = vit_encoder(model)(h0).last_hidden_state
        model(pixel_values=x)  # and the whole model runs
    assert t.calls[0].keep.tolist() == keep
    assert t.calls[0].keep_counts == counts
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["dinov2", "siglip"])
def test_cls_always_kept_and_not_counted(family):
    model = tiny_vit(family)
    ipcv.compress(model, vision=ipcv.IPCV(0.2, prune_layer=2, stabilize_layers=2))
    with torch.no_grad(), ipcv.trace() as t:
        out = model(pixel_values=vit_images(3))
    N = out.last_hidden_state.shape[1]
    prefix = 1 if family == "dinov2" else 0
    call = t.calls[0]
    assert call.keep_counts == [keep_budget(N - prefix, 0.2) + prefix] * 3
    if prefix:
        assert set(range(0, 3 * N, N)) <= set(call.keep.tolist())


def test_refuses_attention_mask_and_output_flags():
    model = tiny_vit("dinov2")
    ipcv.compress(model, vision=ipcv.IPCV(0.5, prune_layer=2, stabilize_layers=2))
    with pytest.raises(ValueError, match="output_hidden_states"):
        model(pixel_values=vit_images(1), output_hidden_states=True)
    with pytest.raises(ValueError, match="attention_mask"):
        vit_encoder(model)(torch.randn(1, 50, 32), attention_mask=torch.ones(1, 1, 50, 50))
