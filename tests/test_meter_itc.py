"""The optional image-text contrastive objective of pre-training (``pretrain.itc``, ALBEF's ITC; not METER's):
the loss, the head's gradients into both unimodal encoders, and the METER export leaving the head out."""
import math

import torch

from losses.meter import itc_loss, meter_losses
from models.meter_export import meter_state_dict
from tests.test_pretrain import _meter_batch, _pretrainer


def test_itc_loss_is_symmetric_infonce():
    assert math.isclose(itc_loss(torch.zeros(5, 5)).item(), math.log(5), rel_tol=1e-6)
    assert itc_loss(20 * torch.eye(4)).item() < 1e-6
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    target = torch.arange(6)
    manual = (-logits.log_softmax(1)[target, target].mean() - logits.log_softmax(0)[target, target].mean()) / 2
    assert torch.allclose(itc_loss(logits), manual)
    assert not torch.allclose(itc_loss(logits), itc_loss(logits.t().contiguous() + torch.eye(6)))


def test_itc_head_trains_both_encoders_and_stays_out_of_the_export():
    batch = _meter_batch()
    model = _pretrainer(itc_dim=16).train()
    out = model(batch)
    b = batch["image"].shape[0]
    assert out["itc_logits"].shape == (b, b)
    losses = meter_losses(out, batch)
    assert torch.allclose(losses["loss"], losses["mlm"] + losses["itm"] + losses["itc"])
    losses["itc"].backward()
    vit_grad = model.backbone.vit_model.cls_token.grad
    text_grad = model.backbone.text_transformer.embeddings.word_embeddings.weight.grad
    assert vit_grad is not None and vit_grad.abs().sum() > 0
    assert text_grad is not None and text_grad.abs().sum() > 0
    assert model.backbone.cfa.token_type_embeddings.weight.grad is None   # ITC reads the features before the CFA
    exported = meter_state_dict(model)
    assert not [k for k in exported if "itc" in k]
    assert exported.keys() == meter_state_dict(_pretrainer(itc_dim=None)).keys()
    assert "itc_logits" not in _pretrainer(itc_dim=None)(batch)
