"""Backbone and CFA (paper section 2.2): METER-parity of the ViT and the co-attention layers, shapes, autocast,
gradients.

The references below are written from METER's description (docs/protocol.md 5.3-5.4):
``MeterVisual`` keeps METER's CLIP key names (conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks.i.{ln_1, attn (nn.MultiheadAttention), ln_2, mlp.c_fc, mlp.c_proj}, ln_post) and
builds ``layers - 1`` QuickGELU blocks as METER does; ``ref_cfa`` is BERT's cross layer written with
explicit softmax, the -10000 additive mask, erf GELU and LayerNorm eps 1e-12.
"""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import Backbone, build_backbone, build_vit
from models.cfa import CFA
from models.pretrained_keys import check_and_load, convert_clip_visual

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2, patch_size=16, mlp_ratio=4.0)
TINY_TEXT = dict(vocab_size=60, hidden_size=24, num_layers=2, num_heads=2, intermediate_size=32,
                 max_position_embeddings=20, layer_norm_eps=1e-5)
TINY_CFA = dict(num_layers=2, num_heads=4, intermediate_size=48, dropout=0.1)
TINY_HIDDEN = 40


def tiny_backbone(image_size=64, seed=0, vit=None):
    torch.manual_seed(seed)
    return Backbone(image_size, dict(vit or TINY_VIT), dict(TINY_TEXT), dict(TINY_CFA), TINY_HIDDEN)


def randomize_(module, std=0.1):
    """Make every parameter non-trivial (LayerNorm 1/0, zero biases would hide mapping errors)."""
    torch.manual_seed(123)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


def tiny_batch(batch=2, image_size=64, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.randint(3, TINY_TEXT["vocab_size"], (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    ids[:, 0], mask[1, 5:], ids[1, 5:] = 0, 0, 1  # <s> ... then padding (pad id 1) in sample 1
    return image, ids, mask


# --------------------------------------------------------------------------------------------
# Reference METER visual transformer (CLIP names, QuickGELU, layers-1 blocks, ln_post on all tokens)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class RefBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):  # (L, B, D)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class RefTransformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[RefBlock(width, heads) for _ in range(layers - 1)])  # METER: layers-1

    def forward(self, x):
        return self.resblocks(x)


class MeterVisual(nn.Module):
    """METER's CLIP ``VisualTransformer`` (no ``proj``): image (B,3,R,R) -> (B, 1+(R/p)^2, width)."""

    def __init__(self, resolution, patch, width, layers, heads):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width) * width ** -0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = RefTransformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x)


def test_vit_matches_meter_visual_reference():
    ref = randomize_(MeterVisual(resolution=64, patch=16, width=32, layers=3, heads=2)).eval()
    assert len(ref.transformer.resblocks) == 2
    vit = build_vit(64, **TINY_VIT).eval()
    converted, unmapped, resized = convert_clip_visual(ref.state_dict(), vit.patch_embed.grid_size, 2)
    assert unmapped == [] and resized == []
    check_and_load(vit, converted, "reference")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = ref(x), vit.forward_features(x)
    assert got.shape == (2, 17, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the parity is sensitive to the activation: plain GELU (timm's non-quickgelu CLIP) differs
    for blk in vit.blocks:
        blk.mlp.act = nn.GELU()
    with torch.no_grad():
        assert (vit.forward_features(x) - want).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# Reference CFA (BERT cross layer with explicit math)


def _lin(p, name, x):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def _ln(p, name, x):
    return F.layer_norm(x, x.shape[-1:], p[name + ".weight"], p[name + ".bias"], eps=1e-12)


def _ref_attention(p, pre, h, ctx, ctx_mask, heads):
    b, lq, d = h.shape
    split = lambda t: t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = (split(_lin(p, f"{pre}.self.{n}", src)) for n, src in (("query", h), ("key", ctx), ("value", ctx)))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if ctx_mask is not None:
        scores = scores + (1.0 - ctx_mask.float())[:, None, None, :] * -10000.0
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, d)
    return _ln(p, f"{pre}.output.LayerNorm", _lin(p, f"{pre}.output.dense", out) + h)


def _ref_layer(p, pre, h, ctx, h_mask, ctx_mask, heads):
    h1 = _ref_attention(p, pre + ".attention", h, h, h_mask, heads)
    h2 = _ref_attention(p, pre + ".crossattention", h1, ctx, ctx_mask, heads)
    inter = _lin(p, pre + ".intermediate.dense", h2)
    inter = 0.5 * inter * (1.0 + torch.erf(inter / math.sqrt(2.0)))
    return _ln(p, pre + ".output.LayerNorm", _lin(p, pre + ".output.dense", inter) + h2)


def ref_cfa(p, v, t, text_mask, layers, heads):
    x = _lin(p, "cross_modal_text_transform", t) + p["token_type_embeddings.weight"][0]
    y = _lin(p, "cross_modal_image_transform", v) + p["token_type_embeddings.weight"][1]
    for i in range(layers):
        x, y = (_ref_layer(p, f"cross_modal_text_layers.{i}", x, y, text_mask, None, heads),
                _ref_layer(p, f"cross_modal_image_layers.{i}", y, x, None, text_mask, heads))
    pool = lambda name, z: torch.tanh(_lin(p, name + ".dense", z[:, 0]))  # noqa: E731
    return {"t_hat": x, "v_hat": y, "t_cls": pool("cross_modal_text_pooler", x),
            "v_cls": pool("cross_modal_image_pooler", y)}


def test_cfa_matches_reference_and_masks_text_padding():
    cfa = randomize_(CFA(hidden_size=24, image_in_dim=16, text_in_dim=20, num_layers=2, num_heads=3,
                         intermediate_size=40, dropout=0.1)).eval()
    v, t = torch.randn(2, 5, 16), torch.randn(2, 7, 20)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        got = cfa(v, t, text_mask=mask)
        want = ref_cfa(cfa.state_dict(), v, t, mask, layers=2, heads=3)
    for key in ("v_hat", "t_hat", "v_cls", "t_cls"):
        torch.testing.assert_close(got[key], want[key], atol=2e-5, rtol=1e-5)
    t2 = t.clone()
    t2[1, 4:] += 5.0  # change only the padded text positions
    with torch.no_grad():
        got2 = cfa(v, t2, text_mask=mask)
    torch.testing.assert_close(got2["v_hat"], got["v_hat"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got2["t_hat"][:, :4], got["t_hat"][:, :4], atol=1e-5, rtol=1e-5)
    assert (got2["t_hat"][1, 4:] - got["t_hat"][1, 4:]).abs().max() > 1e-3  # pads are still queries
    assert cfa.cross_modal_text_layers[0].output.LayerNorm.eps == 1e-12


def test_cfa_init_follows_meter():
    torch.manual_seed(0)
    cfa = CFA(hidden_size=64, image_in_dim=64, text_in_dim=64, num_layers=1, num_heads=4,
              intermediate_size=128, dropout=0.0)
    w = cfa.cross_modal_image_layers[0].intermediate.dense.weight
    assert abs(w.std().item() - 0.02) < 0.002 and cfa.cross_modal_text_pooler.dense.bias.abs().max() == 0
    assert abs(cfa.token_type_embeddings.weight.std().item() - 0.02) < 0.01
    ln = cfa.cross_modal_text_layers[0].attention.output.LayerNorm
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)


# --------------------------------------------------------------------------------------------
# Backbone


def test_backbone_forward_shapes_fp32_and_bf16_autocast():
    bb = randomize_(tiny_backbone()).eval()
    image, ids, mask = tiny_batch()
    shapes = {"v_raw": (2, 17, 32), "t_raw": (2, 9, 24), "v_hat": (2, 17, TINY_HIDDEN),
              "t_hat": (2, 9, TINY_HIDDEN), "v_cls": (2, TINY_HIDDEN), "t_cls": (2, TINY_HIDDEN)}
    with torch.no_grad():
        out = bb(image, ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16 = bb(image, ids, mask)
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
    assert {k: tuple(v.shape) for k, v in out16.items()} == shapes
    for key in shapes:
        assert torch.isfinite(out16[key].float()).all()
        rel = (out16[key].float() - out[key]).norm() / out[key].norm()
        assert rel < 0.1, (key, rel)
    # RoBERTa output is the public last_hidden_state, the CLS pooler is tanh(Linear(token 0))
    t_raw = bb.text_transformer(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out["t_raw"], t_raw.detach())
    torch.testing.assert_close(out["v_cls"], torch.tanh(bb.cfa.cross_modal_image_pooler.dense(out["v_hat"][:, 0])))


def test_gradients_reach_both_encoders_and_cfa():
    bb = randomize_(tiny_backbone())
    image, ids, mask = tiny_batch()
    out = bb(image, ids, mask)
    g = torch.Generator().manual_seed(5)
    loss = sum((v * torch.randn(v.shape, generator=g)).sum() for k, v in out.items() if k in
               ("v_hat", "t_hat", "v_cls", "t_cls"))
    loss.backward()
    dead = [n for n, p in bb.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []
    for prefix in ("vit_model.patch_embed", "text_transformer.embeddings.word_embeddings",
                   "cfa.cross_modal_text_layers.0.crossattention", "cfa.cross_modal_image_layers.1.output"):
        assert any(n.startswith(prefix) for n, _ in bb.named_parameters())


def test_build_backbone_from_config_defaults_on_meta():
    from utils.config import load_config

    with torch.device("meta"):
        bb = build_backbone(load_config(), pad_token_id=1)
    vit = bb.vit_model
    assert len(vit.blocks) == 11 and vit.pos_embed.shape == (1, 257, 768)
    assert vit.patch_embed.proj.bias is None and isinstance(vit.norm_pre, nn.LayerNorm)
    assert type(vit.blocks[0].mlp.act).__name__ == "QuickGELU"
    assert vit.norm.eps == 1e-5 and vit.num_prefix_tokens == 1 and vit.global_pool == ""
    cfg = bb.text_transformer.config
    assert (cfg.type_vocab_size, cfg.max_position_embeddings, cfg.layer_norm_eps, cfg.pad_token_id) == (1, 514, 1e-5, 1)
    assert bb.text_transformer.pooler is None
    assert len(bb.cfa.cross_modal_text_layers) == 6 == len(bb.cfa.cross_modal_image_layers)
    assert sum(p.numel() for p in bb.cfa.cross_modal_text_layers[0].parameters()) == 9_451_776
    assert sum(p.numel() for p in vit.parameters()) == 78_757_632


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dropout_only_in_train_mode(mode):
    bb = randomize_(tiny_backbone())
    getattr(bb, mode)()
    image, ids, mask = tiny_batch()
    with torch.no_grad():
        a, b = bb(image, ids, mask)["v_hat"], bb(image, ids, mask)["v_hat"]
    assert torch.equal(a, b) == (mode == "eval")


def test_local_attention_mask_is_the_chebyshev_window_plus_the_class_token():
    from models.backbone import local_attention_mask
    mask = local_attention_mask((4, 5), 1)
    assert mask.shape == (21, 21) and mask[0].all() and mask[:, 0].all()
    for i in range(20):
        for j in range(20):
            near = max(abs(i // 5 - j // 5), abs(i % 5 - j % 5)) <= 1
            assert bool(mask[1 + i, 1 + j]) == near, (i, j)
    assert mask[1:, 1:].sum(1).tolist()[:6] == [4, 6, 6, 6, 4, 6]   # corner, edges, interior at radius 1


def test_local_radius_limits_what_a_patch_sees_and_keeps_the_parameters():
    vit = dict(TINY_VIT, depth=1, patch_size=8)   # 8x8 grid; one block: a patch sees its window and the class token
    local = randomize_(tiny_backbone(vit=dict(vit, local_radius=1))).eval()
    full = randomize_(tiny_backbone(vit=vit)).eval()
    assert local.state_dict().keys() == full.state_dict().keys()   # the mask is a buffer outside the state dict
    image = tiny_batch()[0]
    near, far = image.clone(), image.clone()
    near[:, :, 8:16, 8:16] += 1.0      # patch (1, 1): inside patch (0, 0)'s 3x3 window
    far[:, :, 16:24, 0:8] += 1.0       # patch (2, 0): outside it
    with torch.no_grad():
        base, v_near, v_far = (local.encode_image(x)[:, 1] for x in (image, near, far))
        assert torch.equal(base, v_far) and not torch.allclose(base, v_near)
        assert not torch.allclose(full.encode_image(image)[:, 1], full.encode_image(far)[:, 1])
        # a window covering the grid is global attention, the same function as timm's own forward
        wide = tiny_backbone(vit=dict(vit, local_radius=7))
        wide.load_state_dict(full.state_dict())
        torch.testing.assert_close(wide.eval().encode_image(image), full.encode_image(image))


def test_local_attention_grad_checkpointing_gives_the_same_gradients():
    bb = randomize_(tiny_backbone(vit=dict(TINY_VIT, local_radius=1))).train()
    image = tiny_batch()[0]
    grads = []
    for parts in ((), ("vit",)):
        bb.set_grad_checkpointing(parts)
        bb.zero_grad()
        torch.manual_seed(0)
        bb.encode_image(image).square().sum().backward()
        grads.append([p.grad.clone() for p in bb.vit_model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
