"""The optional masked image modelling objective of pre-training (``pretrain.mim_weight``; SimMIM's input masking
and pixel regression, not METER's): the ViT's masked input path, the head's targets, the loss and its weight,
the gradients it sends to the ViT, the masks of ``prepare_batch`` and the METER export leaving the head out."""
import copy

import pytest
import torch

from losses.meter import meter_losses
from models.backbone import Backbone
from models.meter_export import meter_state_dict
from pretrain import prepare_batch
from tests.test_backbone import TINY_CFA, TINY_HIDDEN, TINY_TEXT, TINY_VIT
from tests.test_pretrain import _meter_batch, _pretrainer, _words_batch
from utils.config import DEFAULTS


@pytest.mark.parametrize("radius", [None, 1])
def test_masked_input_path_equals_the_plain_path_without_masked_patches(radius):
    torch.manual_seed(0)
    backbone = Backbone(64, dict(TINY_VIT, local_radius=radius), dict(TINY_TEXT), dict(TINY_CFA), TINY_HIDDEN).eval()
    image = torch.randn(2, 3, 64, 64)
    token = torch.randn(1, 1, TINY_VIT["embed_dim"])
    n = backbone.grid_size[0] * backbone.grid_size[1]
    plain = backbone.encode_image(image)
    none = backbone.encode_image(image, torch.zeros(2, n, dtype=torch.bool), token)
    assert torch.allclose(plain, none, atol=1e-6)
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[0, 3] = True
    one = backbone.encode_image(image, mask, token)
    assert torch.allclose(one[1], plain[1], atol=1e-6) and not torch.allclose(one[0], plain[0], atol=1e-3)
    other = image.clone()
    other[0, :, 0:16, 48:64] = 5.0  # patch 3 (row 0, column 3 of the 4x4 grid at patch 16) changed
    assert torch.allclose(backbone.encode_image(other, mask, token), one, atol=1e-6)  # its pixels are not seen


def test_mim_head_targets_are_the_patches_in_the_vit_order():
    model = _pretrainer(mim=True)
    image = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).view(2, 3, 64, 64)
    targets = model.mim_score.targets(image)
    p = TINY_VIT["patch_size"]
    assert targets.shape == (2, 16, 3 * p * p)
    assert torch.equal(targets[1, 6], image[1, :, 16:32, 32:48].reshape(-1))  # row 1, column 2


def test_mim_loss_weight_gradients_and_export():
    batch = _meter_batch()
    model = _pretrainer(mim=True).train()
    g = torch.Generator().manual_seed(0)
    batch["mim_mask"] = torch.rand(4, 16, generator=g) < 0.5
    out = model(batch)
    k = int(batch["mim_mask"].sum())
    assert out["mim_pred"].shape == out["mim_target"].shape == (k, 3 * TINY_VIT["patch_size"] ** 2)
    losses = meter_losses(out, batch)
    expected = (out["mim_pred"] - out["mim_target"]).abs().mean()
    assert losses["mim"].item() == pytest.approx(expected.item(), rel=1e-6)
    weighted = meter_losses(out, batch, mim_weight=3.0)
    assert torch.allclose(weighted["loss"], losses["mlm"] + losses["itm"] + 3 * losses["mim"])
    losses["mim"].backward()
    assert model.mim_score.mask_token.grad.abs().sum() > 0
    assert model.backbone.vit_model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.backbone.text_transformer.embeddings.word_embeddings.weight.grad is None  # image side only
    assert meter_state_dict(model).keys() == meter_state_dict(_pretrainer(mim=False)).keys()
    assert "mim_pred" not in _pretrainer(mim=False)(batch)


def test_prepare_batch_draws_the_patch_masks_at_the_ratio():
    ids, mask, word_index, content = _words_batch(b=64, seed=5)
    batch = {"input_ids": ids, "attention_mask": mask, "content_mask": content, "word_index": word_index,
             "word_kind": torch.where(word_index >= 0, word_index % 5, -1)}
    p = dict(copy.deepcopy(DEFAULTS["pretrain"]), mim_weight=1.0, mim_ratio=0.25)
    out = prepare_batch(batch, torch.Generator().manual_seed(0), 3, (5, 100), p, n_patches=256)
    assert out["mim_mask"].shape == (64, 256) and out["mim_mask"].dtype == torch.bool
    assert 0.22 < out["mim_mask"].float().mean() < 0.28
    again = prepare_batch(batch, torch.Generator().manual_seed(0), 3, (5, 100), p, n_patches=256)
    assert torch.equal(again["mim_mask"], out["mim_mask"])  # the CPU generator decides: exact resume
    assert "mim_mask" not in prepare_batch(batch, torch.Generator().manual_seed(0), 3, (5, 100),
                                           copy.deepcopy(DEFAULTS["pretrain"]), n_patches=256)
