"""Image-branch losses (paper eqs. 1, 2, 8, 9-10, 11) and the Criterion, on hand-built tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import Criterion
from losses.bic import bic_loss
from losses.bsc import bsc_loss
from losses.image_mil import v_coarse_loss, v_fine_loss
from losses.sce import sce_loss, spatial_weight


def bce(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def image_batch(y_v, cand_any):
    """batch with y_v / y_m (B,) and a cand_mask (B,3) with one real candidate where cand_any."""
    y_v = torch.tensor(y_v, dtype=torch.float32)
    cand = torch.zeros(len(y_v), 3, dtype=torch.bool)
    cand[:, 0] = torch.tensor(cand_any)
    return {"y_v": y_v, "y_m": y_v.clone(), "cand_mask": cand}


def random_outputs(B, grid=4, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = grid * grid
    best = torch.zeros(B, N)
    best.view(B, grid, grid)[:, 1:3, 1:3] = 0.9  # a 2x2 box in the middle
    return {"logit_bin": torch.randn(B, generator=g, requires_grad=True),
            "v_coarse": torch.rand(B, generator=g).requires_grad_(),
            "v_fine": torch.rand(B, generator=g).requires_grad_(),
            "patch_logits": torch.randn(B, N, generator=g, requires_grad=True),
            "v_patch_feats": torch.randn(B, N, D, generator=g, requires_grad=True),
            "best_mask": best}


def test_bic_and_mil_values():
    out = {"logit_bin": torch.tensor([0.0, 2.0]), "v_coarse": torch.tensor([0.2, 0.9]),
           "v_fine": torch.tensor([0.7, 0.4])}
    batch = {"y_m": torch.tensor([0.0, 1.0]), "y_v": torch.tensor([1.0, 0.0])}
    p1 = 1 / (1 + math.exp(-2.0))
    assert bic_loss(out, batch).item() == pytest.approx((bce(0.5, 0) + bce(p1, 1)) / 2, rel=1e-5)
    assert v_coarse_loss(out, batch).item() == pytest.approx((bce(0.2, 1) + bce(0.9, 0)) / 2, rel=1e-5)
    assert v_fine_loss(out, batch).item() == pytest.approx((bce(0.7, 1) + bce(0.4, 0)) / 2, rel=1e-5)


def test_mil_finite_at_saturated_probabilities():
    p = torch.tensor([0.0, 1.0, 1.0, 0.0], requires_grad=True)
    loss = v_fine_loss({"v_fine": p}, {"y_v": torch.tensor([1.0, 0.0, 1.0, 0.0])})
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 5 and torch.isfinite(p.grad).all()


def test_bsc_mean_over_background_of_fake_images_with_box():
    out = random_outputs(3)
    batch = image_batch([1.0, 0.0, 1.0], [True, True, False])  # only sample 0 counts
    bg = out["best_mask"][0] < 0.1
    expect = F.softplus(out["patch_logits"][0][bg]).mean()
    assert bsc_loss(out, batch, eps=0.1).item() == pytest.approx(expect.item(), rel=1e-5)
    with torch.no_grad():
        out["patch_logits"][1:] += 5.0  # real image and box-less fake image do not matter
    assert bsc_loss(out, batch, eps=0.1).item() == pytest.approx(expect.item(), rel=1e-5)


def test_bsc_zero_without_fake_images():
    out = random_outputs(2)
    loss = bsc_loss(out, image_batch([0.0, 0.0], [True, True]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(out["patch_logits"].grad, torch.zeros(2, 16))


def test_spatial_weight():
    w = spatial_weight(4, 0.25, "cpu")
    assert w.shape == (16, 16) and torch.allclose(w.diagonal(), torch.ones(16))
    assert w[0, 1].item() == pytest.approx(math.exp(-(0.25 ** 2) / (2 * 0.25 ** 2)), rel=1e-5)
    assert w[0, 5].item() == pytest.approx(math.exp(-(2 * 0.25 ** 2) / (2 * 0.25 ** 2)), rel=1e-5)


def test_sce_hand_built():
    # grid 2: patches 0, 1 fake (inside M*), 2, 3 true; sigma huge so H = cosine similarity
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]], requires_grad=True)
    out = {"v_patch_feats": feats, "best_mask": torch.tensor([[0.9, 0.8, 0.01, 0.0]])}
    batch = image_batch([1.0], [True])
    loss = sce_loss(out, batch, eps=0.1, delta=0.2, topk=1, sigma=1e6)
    # pull: cos(0,1) = 0 -> 0.2; push (K1 = 1): patch 0 -> patch 2 (H = 1) 1.2, patch 1 -> H = 0, 0.2
    assert loss.item() == pytest.approx(0.2 + (1.2 + 0.2) / 2, rel=1e-5)
    loss.backward()
    assert feats.grad.abs().sum() > 0
    # with K1 = 2 patch 0 also meets patch 3 (H = -1 -> 0): push = (1.2 + 0 + 0.2 + 0.2) / 4
    loss2 = sce_loss(out, batch, eps=0.1, delta=0.2, topk=2, sigma=1e6)
    assert loss2.item() == pytest.approx(0.2 + 1.6 / 4, rel=1e-5)


def test_sce_spatial_modulation():
    feats = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    out = {"v_patch_feats": feats, "best_mask": torch.tensor([[0.9, 0.9, 0.0, 0.0]])}
    # fake patches 0 and 1 are neighbours (d = 1/2): H = exp(-0.25 / (2 * 0.3^2)); push terms: cos 0 -> 0.2
    h = math.exp(-0.25 / (2 * 0.3 ** 2))
    loss = sce_loss(out, image_batch([1.0], [True]), delta=0.9, topk=1, sigma=0.3)
    assert loss.item() == pytest.approx(max(0.0, 0.9 - h) + 0.9, rel=1e-5)


@pytest.mark.parametrize("y_v,cand", [([0.0, 0.0], [True, True]), ([1.0, 1.0], [True, True]),
                                      ([1.0, 1.0], [False, False]), ([1.0, 0.0], [False, True])])
def test_image_losses_finite_on_edge_batches(y_v, cand):
    out = random_outputs(2)
    batch = image_batch(y_v, cand)
    weights = {"bic": 1.0, "v_coarse": 1.0, "v_fine": 1.0, "bsc": 1.0, "sce": 1.0}
    losses = Criterion(weights, sce_topk=4)(out, batch)
    assert set(losses) == set(weights) | {"loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(t.grad).all() for t in out.values() if t.grad is not None)
    if not any(a > 0.5 and c for a, c in zip(y_v, cand)):
        assert losses["bsc"].item() == 0.0 and losses["sce"].item() == 0.0


def test_criterion_weights_and_skips():
    out = random_outputs(2)
    batch = image_batch([1.0, 0.0], [True, True])
    crit = Criterion({"bic": 2.0, "v_coarse": 0.5, "sce": 0.0})
    losses = crit(out, batch)
    assert losses["sce"].item() == 0.0
    expect = 2.0 * bic_loss(out, batch) + 0.5 * v_coarse_loss(out, batch)
    assert losses["loss"].item() == pytest.approx(expect.item(), rel=1e-6)
    with pytest.raises(AssertionError, match="unknown"):
        Criterion({"bic": 1.0, "bogus": 1.0})
