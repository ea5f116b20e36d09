"""Tiny CIEC end-to-end: build_model, forward (train / eval), the full Criterion and backward."""
import pytest
import torch

from datasets.text import word_token_mask
from losses import build_criterion
from models import build_model
from models.heads import BinaryHead
from utils.config import DEFAULTS, merge

B, S, L, NB = 4, 32, 12, 3

OUTPUT_KEYS = {  # docs/architecture.md, "The model output": key -> shape with B, N, n, L, D symbols
    "logit_bin": "B", "p_bin": "B", "patch_logits": "BN", "patch_prob": "BN", "v_coarse": "B",
    "box_masks": "BnN", "s_iv": "Bn", "s_ev": "Bn", "box_scores": "Bn", "best_idx": "B", "best_mask": "BN",
    "img_valid": "B", "v_fine": "B", "pred_box": "B4", "v_patch_feats": "BND", "t_coarse": "B", "s_it": "BL",
    "s_et": "BL", "s_raw": "BL", "t_fine": "B", "t_fine_logit": "B", "token_prob": "BL", "token_pred": "BL"}


def tiny_cfg(**trps):
    return merge(DEFAULTS, {
        "data": {"image_size": S, "max_len": L, "num_boxes": NB},
        "model": {"hidden_size": 16,
                  "vit": {"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8, "mlp_ratio": 2.0},
                  "text": {"vocab_size": 50, "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                           "intermediate_size": 32, "max_position_embeddings": 40},
                  "cfa": {"num_layers": 1, "num_heads": 2, "intermediate_size": 32, "dropout": 0.0},
                  "trps": {"topk": 2, "proj_dim": 8, **trps}, "vctg": {"topk": 2, "proj_dim": 8}},
        "loss": {"sce_topk": 3}})


def make_batch():
    """Pairs: real/real, fake image, fake text, fake image without candidates (last)."""
    g = torch.Generator().manual_seed(0)
    lengths = [12, 9, 7, 10]
    ids = torch.ones(B, L, dtype=torch.long)  # pad id 1
    att = torch.zeros(B, L, dtype=torch.long)
    content = torch.zeros(B, L)
    for i, n in enumerate(lengths):  # test data construction only
        ids[i, :n] = torch.randint(3, 50, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2
        att[i, :n] = 1
        content[i, 1:n - 1:2] = 1.0
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.3, 0.3], [0.7, 0.6, 0.2, 0.3]]).expand(B, NB, 4).clone()
    cand = torch.tensor([[True, True, False], [True, True, True], [True, False, False], [False, False, False]])
    boxes[~cand] = 0.0
    y_v, y_t = torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    return {"image": torch.randn(B, 3, S, S, generator=g), "input_ids": ids, "attention_mask": att,
            "word_tokens": word_token_mask(att), "content_mask": content, "cand_boxes": boxes, "cand_mask": cand,
            "y_v": y_v, "y_t": y_t,
            "y_m": torch.maximum(y_v, y_t), "gt_box": torch.zeros(B, 4)}


def test_binary_head_shape_and_layers():
    head = BinaryHead(6)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "LayerNorm", "GELU", "Linear"]
    assert head.mlp[0].in_features == 12 and head.mlp[0].out_features == 24
    assert head(torch.randn(5, 6), torch.randn(5, 6)).shape == (5,)


def test_forward_train_criterion_backward():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg).train()
    batch = make_batch()
    out = model(batch)
    sizes = {"B": B, "N": (S // 8) ** 2, "n": NB, "L": L, "D": 16, "4": 4}
    assert set(out) == set(OUTPUT_KEYS), sorted(set(out) ^ set(OUTPUT_KEYS))  # one name per output, all documented
    for key, dims in OUTPUT_KEYS.items():
        assert tuple(out[key].shape) == tuple(sizes[d] for d in dims), key
    assert out["img_valid"].tolist() == batch["y_v"].tolist()
    assert torch.equal(out["pred_box"][[0, 2, 3]], torch.zeros(3, 4))  # real images and the box-less fake one
    assert out["pred_box"][1].abs().sum() > 0
    losses = build_criterion(cfg)(out, batch)
    assert set(losses) == set(cfg["loss"]["weights"]) | {"loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["bsc"] > 0 and losses["sce"] > 0
    losses["loss"].backward()
    named = dict(model.named_parameters())
    for name in ("trps.alpha_raw", "trps.v_proj.weight", "trps.patch_head.weight", "bin_head.mlp.0.weight",
                 "backbone.vit_model.patch_embed.proj.weight",
                 "backbone.text_transformer.embeddings.word_embeddings.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_mode_uses_coarse_decision():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    batch = make_batch()
    batch.pop("y_v")  # evaluation never reads the image label
    with torch.no_grad():
        out = model(batch)
    judged = out["v_coarse"] > 0.5
    assert torch.equal(out["img_valid"], judged.float())
    zero = ~judged | ~batch["cand_mask"].any(1)
    assert torch.equal(out["pred_box"][zero], torch.zeros(int(zero.sum()), 4))
    assert ((out["p_bin"] >= 0) & (out["p_bin"] <= 1)).all()
    assert ((out["v_fine"] >= 0) & (out["v_fine"] <= 1)).all()


def test_train_mode_requires_y_v_and_text_aid_off():
    model = build_model(tiny_cfg(text_aid=False)).train()
    batch = make_batch()
    out = model(batch)
    assert torch.equal(out["s_ev"], torch.zeros(B, NB))
    assert not any(n.startswith("trps.v_proj") for n, _ in model.named_parameters())
    batch.pop("y_v")
    with pytest.raises(KeyError):
        model(batch)


def test_bf16_autocast_step_is_finite():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg).train()
    batch = make_batch()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(batch)
        losses = build_criterion(cfg)(out, batch)
    assert out["box_scores"].dtype == torch.float32 and out["v_fine"].dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert model.trps.alpha_raw.grad is not None and torch.isfinite(model.trps.alpha_raw.grad)
