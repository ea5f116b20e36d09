"""TRPS (paper section 2.3, eqs. 3-7) on hand-built tensors with known answers."""
import math

import pytest
import torch

from models.trps import INVALID_SCORE, TRPS, box_soft_masks, lse_mean, patch_centres

G = 4  # 4x4 grid, N = 16


def make_trps(text_aid=True, box_reduce="mean", tau2=0.1, topk=2):
    """TRPS with D = 1 and patch logit = feature, so P_p is set by the input."""
    torch.manual_seed(0)
    m = TRPS(dim=1, dim_v_raw=3, dim_t_raw=3, grid=G, topk=topk, tau1=2.0, tau2=tau2, box_reduce=box_reduce,
             proj_dim=4, text_aid=text_aid)
    with torch.no_grad():
        m.patch_head.weight.fill_(1.0)
        m.patch_head.bias.zero_()
    return m


def inputs(logits, boxes, mask):
    """logits (B,N) -> the TRPS argument tuple without y_v."""
    B = logits.shape[0]
    torch.manual_seed(1)
    return (logits.unsqueeze(-1), torch.randn(B, G * G, 3), torch.randn(B, 3),
            torch.tensor(boxes, dtype=torch.float32), torch.tensor(mask))


def test_patch_centres_row_major():
    c = patch_centres(G)
    assert c.shape == (16, 2)
    assert c[0].tolist() == [0.5, 0.5] and c[1].tolist() == [1.5, 0.5] and c[G].tolist() == [0.5, 1.5]


def test_eq3_inside_outside_and_product_form():
    big = torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])  # whole image
    masks = box_soft_masks(big, patch_centres(16), 16, tau1=2.0)
    assert masks.shape == (1, 1, 256)
    # a patch 3.5 patch units inside both borders is ~1; patches far outside a small box are ~0
    assert masks[0, 0, 3 * 16 + 3] > 0.99
    small = torch.tensor([[[0.25, 0.25, 0.25, 0.25]]])  # covers patches 2..5 (grid units 2-6)
    ms = box_soft_masks(small, patch_centres(16), 16, tau1=2.0)[0, 0].view(16, 16)
    assert ms[3, 3] > 0.9 and ms[12, 12] < 1e-6 and ms[3, 12] < 1e-5
    # product of the two 1-D sigmoids, checked at patch (row 3, col 7) by hand
    px, py = 7.5, 3.5
    expect = (1 / (1 + math.exp(-2.0 * (16 * 0.125 - abs(px - 4.0))))) * \
             (1 / (1 + math.exp(-2.0 * (16 * 0.125 - abs(py - 4.0)))))
    assert ms[3, 7].item() == pytest.approx(expect, rel=1e-5)


def test_lse_limits():
    s = torch.tensor([[0.1, 0.7, 0.4, 0.9]])
    valid = torch.tensor([[True, True, True, False]])
    assert lse_mean(s, valid, 1e-3).item() == pytest.approx(0.7, abs=1e-2)   # hard max over valid
    assert lse_mean(s, valid, 1e4).item() == pytest.approx(0.4, abs=1e-3)    # mean over valid
    mid = lse_mean(s, valid, 0.1).item()
    assert 0.4 < mid < 0.7


def test_padded_candidates_never_chosen_and_eq6():
    m = make_trps(topk=1).eval()
    logits = torch.full((1, 16), -4.0)
    logits[0, 0] = 4.0  # hot patch at top-left
    # box 0 (padded) covers the hot patch, box 1 and 2 real elsewhere
    boxes = [[[0.125, 0.125, 0.25, 0.25], [0.875, 0.875, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5]]]
    out = m(*inputs(logits, boxes, [[False, True, True]]))
    assert out["best_idx"].item() in (1, 2)
    assert out["box_scores"][0, 0].item() == INVALID_SCORE
    # eq. 6 over the two valid boxes only, with 1/n_valid
    s = out["box_scores"][0, 1:]
    expect = 0.1 * (torch.logsumexp(s / 0.1, 0) - math.log(2))
    assert out["img_valid"].item() == 1.0  # Top-1 of P_p is the hot patch
    assert out["v_fine"].item() == pytest.approx(expect.item(), abs=1e-5)
    assert out["pred_box"][0].tolist() == boxes[0][out["best_idx"].item()]


def test_best_box_follows_hot_patches_and_zero_box_when_real():
    m = make_trps(text_aid=False).eval()
    logits = torch.full((2, 16), -6.0)
    logits[0, [10, 11, 14, 15]] = 6.0  # bottom-right 2x2 hot in sample 0; sample 1 all cold
    boxes = [[[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]] * 2
    out = m(*inputs(logits, boxes, [[True, True], [True, True]]))
    assert out["best_idx"][0].item() == 1
    assert out["img_valid"].tolist() == [1.0, 0.0]  # eval: v_coarse > 0.5 (Top-2 mean)
    assert out["pred_box"][0].tolist() == [0.75, 0.75, 0.5, 0.5]
    assert torch.equal(out["pred_box"][1], torch.zeros(4))
    # eval with a hot image: local scope is used
    s = out["box_scores"][0]
    assert out["v_fine"][0].item() == pytest.approx((0.1 * (torch.logsumexp(s / 0.1, 0) - math.log(2))).item(), 1e-5)
    # global scope for the cold image: eq. 7 over all patches
    p = out["patch_prob"][1]
    assert out["v_fine"][1].item() == pytest.approx((0.1 * (torch.logsumexp(p / 0.1, 0) - math.log(16))).item(), 1e-5)


def test_training_filter_with_y_v():
    m = make_trps().train()
    logits = torch.randn(2, 16)
    boxes = [[[0.3, 0.3, 0.4, 0.4], [0.6, 0.6, 0.3, 0.5]]] * 2
    args = inputs(logits, boxes, [[True, True], [True, True]])
    out = m(*args, torch.tensor([0.0, 1.0]))
    ref = m.eval()(*args)
    assert torch.equal(out["s_iv"][0], torch.zeros(2)) and torch.equal(out["s_ev"][0], torch.zeros(2))
    assert torch.allclose(out["s_iv"][1], ref["s_iv"][1]) and torch.allclose(out["s_ev"][1], ref["s_ev"][1])
    assert out["img_valid"].tolist() == [0.0, 1.0]
    assert torch.equal(out["pred_box"][0], torch.zeros(4))
    assert torch.equal(out["pred_box"][1], args[3][1, out["best_idx"][1]])
    assert torch.allclose(out["box_masks"], ref["box_masks"])  # M is reported before the filter


def test_mean_reduce_is_mask_weighted_average_and_sum_reduce():
    logits = torch.randn(1, 16)
    boxes = [[[0.5, 0.5, 0.5, 0.5]]]
    mean_out = make_trps(text_aid=False).eval()(*inputs(logits, boxes, [[True]]))
    sum_out = make_trps(text_aid=False, box_reduce="sum").eval()(*inputs(logits, boxes, [[True]]))
    M, P = mean_out["box_masks"][0, 0], mean_out["patch_prob"][0]
    assert sum_out["s_iv"].item() == pytest.approx((M * P).sum().item(), rel=1e-5)
    assert mean_out["s_iv"].item() == pytest.approx(((M * P).sum() / M.sum()).item(), rel=1e-5)


def test_no_candidate_fake_image_falls_back_to_global():
    m = make_trps().train()
    logits = torch.randn(1, 16)
    out = m(*inputs(logits, [[[0.0, 0.0, 0.0, 0.0]] * 3], [[False, False, False]]), torch.tensor([1.0]))
    p = out["patch_prob"][0]
    assert out["v_fine"].item() == pytest.approx((0.1 * (torch.logsumexp(p / 0.1, 0) - math.log(16))).item(), 1e-5)
    assert torch.equal(out["pred_box"], torch.zeros(1, 4)) and torch.equal(out["best_mask"], torch.zeros(1, 16))
    out["v_fine"].sum().backward()
    assert all(torch.isfinite(q.grad).all() for q in m.parameters() if q.grad is not None)


def test_text_aid_switch_and_gradient_to_alpha():
    off = make_trps(text_aid=False)
    assert not hasattr(off, "v_proj") and off.alpha is None
    on = make_trps().train()
    logits = torch.randn(2, 16, requires_grad=True)
    args = inputs(logits.detach(), [[[0.3, 0.3, 0.4, 0.4], [0.7, 0.6, 0.3, 0.5]]] * 2, [[True, True]] * 2)
    out = on(*args, torch.tensor([1.0, 1.0]))
    assert 0.0 <= out["v_fine"].min() and out["v_fine"].max() <= 1.0
    out["v_fine"].sum().backward()
    for p in (on.alpha_raw, on.v_proj.weight, on.t_proj.weight, on.patch_head.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_v_coarse_is_topk_mean():
    m = make_trps(topk=3).eval()
    logits = torch.randn(2, 16)
    out = m(*inputs(logits, [[[0.5, 0.5, 0.2, 0.2]]] * 2, [[True]] * 2))
    expect = torch.sigmoid(logits).sort(dim=1, descending=True).values[:, :3].mean(1)
    assert torch.allclose(out["v_coarse"], expect)
