"""Text losses of CIEC (paper section 2.4): eqs. 12, 17 (text_mil), 18-20 (asc), 21 (scc) on hand-built tensors."""
import math

import pytest
import torch

from datasets.text import word_token_mask
from losses.asc import asc_loss, topk_token_mask
from losses.scc import scc_loss
from losses.text_mil import bce_prob, t_coarse_loss, t_fine_loss


def seq_masks(n_content, n_stop=1, length=None):
    """attention/content rows for ``<s> stop* content* </s> pad*`` (content tokens after the stop words)."""
    n_words = n_stop + n_content
    length = length or n_words + 2
    attn = torch.zeros(length, dtype=torch.long)
    attn[:n_words + 2] = 1
    content = torch.zeros(length)
    content[1 + n_stop:1 + n_words] = 1
    return attn, content


def batch_of(rows, y_t, y_v=None, length=12):
    attn, content = zip(*(seq_masks(n, length=length) for n in rows))
    y_t = torch.tensor(y_t, dtype=torch.float)
    return {"attention_mask": torch.stack(attn), "word_tokens": word_token_mask(torch.stack(attn)),
            "content_mask": torch.stack(content), "y_t": y_t,
            "y_v": torch.zeros_like(y_t) if y_v is None else torch.tensor(y_v, dtype=torch.float)}


def scores_for(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(batch["content_mask"].shape, generator=g) * batch["content_mask"]
    return s.requires_grad_(True)


def test_bce_prob_matches_formula_and_is_finite_at_0_and_1():
    p = torch.tensor([0.8, 0.3, 0.0, 1.0])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = bce_prob(p, y)
    assert torch.allclose(out[:2], torch.tensor([-math.log(0.8), -math.log(0.7)]))
    assert torch.isfinite(out).all() and (out[2:] > 10).all()


def test_t_coarse_and_t_fine_losses():
    batch = {"y_t": torch.tensor([1.0, 0.0])}
    expected = (-math.log(0.8) - math.log(1 - 0.4)) / 2
    assert math.isclose(t_coarse_loss({"t_coarse": torch.tensor([0.8, 0.4])}, batch), expected, rel_tol=1e-5)
    assert math.isclose(t_fine_loss({"t_fine": torch.tensor([0.8, 0.4])}, batch), expected, rel_tol=1e-5)
    logit = torch.logit(torch.tensor([0.8, 0.4]))
    with_logit = t_fine_loss({"t_fine": torch.tensor([0.5, 0.5]), "t_fine_logit": logit}, batch)
    assert math.isclose(with_logit, expected, rel_tol=1e-5)


def test_asc_selects_exactly_k2_top_content_tokens_of_fake_sentences():
    batch = batch_of([5], y_t=[1.0])
    s = torch.tensor([[0.0, 0.0, 0.2, 0.9, 0.1, 0.7, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    asc_loss({"token_prob": s}, batch, lam=2.0, k2_ratio=0.3, k2_min=1).backward()   # ceil(1.5) = 2
    assert torch.equal(s.grad[0] != 0, torch.tensor([i in (3, 5) for i in range(12)]))
    # loss value: mean of BCE(., 1) over the two chosen tokens
    value = asc_loss({"token_prob": s}, batch, lam=2.0, k2_ratio=0.3, k2_min=1)
    assert math.isclose(value.item(), (-math.log(0.9) - math.log(0.7)) / 2, rel_tol=1e-5)


@pytest.mark.parametrize("n_content, k2", [(1, 1), (4, 1), (8, 2), (9, 3), (10, 3)])
def test_asc_k2_grows_with_the_number_of_content_tokens(n_content, k2):
    batch = batch_of([n_content], y_t=[1.0], length=14)
    s = scores_for(batch)
    mask = topk_token_mask(s, batch["content_mask"] > 0, k2_ratio=0.25, k2_min=1)
    assert mask.sum().item() == k2
    chosen, others = s[mask], s[(batch["content_mask"] > 0) & ~mask]
    assert others.numel() == 0 or chosen.min() >= others.max()
    asc_loss({"token_prob": s}, batch, lam=2.0, k2_ratio=0.25, k2_min=1).backward()
    assert (s.grad != 0).sum().item() == k2


def test_asc_k2_ceil_is_exact_for_decimal_ratios():
    valid = torch.zeros(1, 60, dtype=torch.bool)
    valid[0, 1:51] = True                                   # 50 content tokens
    scores = torch.rand(1, 60)
    assert topk_token_mask(scores, valid, 0.3, 1).sum() == 15
    assert topk_token_mask(scores, valid, 0.1, 1).sum() == 5


def test_asc_k2_min_and_cap():
    valid = torch.tensor([[False, True, True, True, False]])
    scores = torch.tensor([[0.0, 0.1, 0.5, 0.3, 0.0]])
    assert topk_token_mask(scores, valid, 0.1, 2).sum() == 2
    assert topk_token_mask(scores, valid, 0.1, 10).sum() == 3


def test_asc_true_sentences_hand_value_with_lambda():
    batch = batch_of([2, 3], y_t=[0.0, 0.0])
    s = torch.zeros(2, 12)
    s[0, 2:4] = torch.tensor([0.5, 0.2])
    s[1, 2:5] = torch.tensor([0.1, 0.1, 0.4])
    s[1, 1] = 0.9                                           # a stop word: not in the loss
    per0 = (-math.log(0.5) - math.log(0.8)) / 2
    per1 = (-2 * math.log(0.9) - math.log(0.6)) / 3
    value = asc_loss({"token_prob": s}, batch, lam=2.0, k2_ratio=0.1, k2_min=1)
    assert math.isclose(value.item(), 2.0 * (per0 + per1) / 2, rel_tol=1e-5)


def test_asc_rest_weight_suppresses_the_tokens_of_fake_sentences_outside_top_k2():
    batch = batch_of([3, 2, 2], y_t=[1.0, 1.0, 0.0])
    s = torch.zeros(3, 12)
    s[0, 2:5] = torch.tensor([0.9, 0.3, 0.2])              # Top-K2 = {0.9}; rest {0.3, 0.2}
    s[1, 2:4] = torch.tensor([0.6, 0.4])                   # Top-K2 = {0.6}; rest {0.4}
    s[2, 2:4] = torch.tensor([0.5, 0.5])                   # a true sentence: eq. 18 only
    s[0, 1] = 0.99                                         # a stop word of a fake sentence: never in the loss
    paper = asc_loss({"token_prob": s}, batch, lam=2.0, k2_ratio=0.1, k2_min=1)
    assert math.isclose(asc_loss({"token_prob": s}, batch, rest_weight=0.0).item(), paper.item())
    rest = ((-math.log(0.7) - math.log(0.8)) / 2 - math.log(0.6)) / 2
    value = asc_loss({"token_prob": s}, batch, lam=2.0, k2_ratio=0.1, k2_min=1, rest_weight=0.5)
    assert math.isclose(value.item(), paper.item() + 0.5 * rest, rel_tol=1e-5)
    s.requires_grad_(True)
    asc_loss({"token_prob": s}, batch, rest_weight=0.5).backward()
    assert s.grad[0, 3] > 0 and s.grad[0, 4] > 0 and s.grad[0, 1] == 0  # pushed down; the stop word untouched


def test_asc_and_scc_read_the_word_tokens_of_the_batch():
    """The token set is ``batch["word_tokens"]`` (made by the dataset), not recomputed from the attention mask."""
    batch = batch_of([2, 3], y_t=[0.0, 0.0])
    s = torch.zeros(2, 12)
    s[0, 2:4] = torch.tensor([0.5, 0.2])
    s[1, 2:5] = torch.tensor([0.1, 0.1, 0.4])
    fewer = dict(batch, word_tokens=batch["word_tokens"].clone())
    fewer["word_tokens"][1] = False                          # row 1 has no word token left: only row 0 counts
    per0 = (-math.log(0.5) - math.log(0.8)) / 2
    value = asc_loss({"token_prob": s}, fewer, lam=2.0, k2_ratio=0.1, k2_min=1)
    assert math.isclose(value.item(), 2.0 * per0, rel_tol=1e-5)
    outputs, scc_batch = scc_case([0.3, 0.3, 0.3, 0.3], y_t=[0, 0, 1, 1], y_v=[0, 0, 0, 0])
    assert scc_loss(outputs, scc_batch, delta=0.1).item() == pytest.approx(0.1)
    scc_batch["word_tokens"][2:] = False                     # the fake-text pairs lose their tokens: V2 is empty
    assert scc_loss(outputs, scc_batch, delta=0.1).item() == 0.0


@pytest.mark.parametrize("rows, y_t", [([3, 4], [0.0, 0.0]), ([3, 4], [1.0, 1.0]), ([0, 0], [0.0, 1.0]),
                                       ([0, 5], [1.0, 1.0])])
def test_asc_finite_on_all_real_all_fake_and_empty_sentences(rows, y_t):
    batch = batch_of(rows, y_t=y_t)
    s = scores_for(batch)
    loss = asc_loss({"token_prob": s}, batch, lam=2.0, k2_ratio=0.1, k2_min=1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    lam0 = asc_loss({"token_prob": s}, batch, lam=0.0, k2_ratio=0.1, k2_min=1)
    if all(y == 1.0 for y in y_t):
        assert torch.allclose(loss, lam0)                   # no true sentence: L^T = 0
    if all(n == 0 for n in rows):
        assert loss.item() == 0.0


def test_asc_fake_part_zero_in_all_real_batch():
    batch = batch_of([3, 4], y_t=[0.0, 0.0])
    s = scores_for(batch)
    full = asc_loss({"token_prob": s}, batch, lam=1.0, k2_ratio=0.1, k2_min=1)
    true_only = asc_loss({"token_prob": s}, batch, lam=2.0, k2_ratio=0.1, k2_min=1)
    assert full.item() > 0 and math.isclose(true_only.item(), 2 * full.item(), rel_tol=1e-6)


def scc_case(s_means, y_t, y_v, rows=(2, 2, 2, 2)):
    """s_raw equal to ``s_means[b]`` on content tokens, 5.0 on stop words/specials (must be ignored)."""
    batch = batch_of(list(rows), y_t=y_t, y_v=y_v)
    s_raw = torch.full(batch["content_mask"].shape, 5.0)
    s_raw = torch.where(batch["content_mask"] > 0, torch.tensor(s_means).unsqueeze(1), s_raw)
    return {"s_raw": s_raw.requires_grad_(True)}, batch


def test_scc_hinge_hand_values():
    # V1 = rows 0,1 (means 0.3, 0.5 -> 0.4); V2 = row 2 (0.35); row 3 has a fake image (excluded)
    outputs, batch = scc_case([0.3, 0.5, 0.35, -9.0], y_t=[0, 0, 1, 1], y_v=[0, 0, 0, 1])
    assert math.isclose(scc_loss(outputs, batch, delta=0.1).item(), 0.1 - (0.4 - 0.35), rel_tol=1e-5)
    assert scc_loss(outputs, batch, delta=0.01).item() == 0.0
    outputs, batch = scc_case([0.2, 0.2, 0.6, 0.6], y_t=[0, 0, 1, 1], y_v=[0, 0, 0, 0])
    loss = scc_loss(outputs, batch, delta=0.1)
    assert math.isclose(loss.item(), 0.5, rel_tol=1e-5)
    loss.backward()
    g = outputs["s_raw"].grad
    assert torch.allclose(g[0, 2:4], torch.full((2,), -0.25)) and torch.allclose(g[2, 2:4], torch.full((2,), 0.25))
    assert (g[:, :2] == 0).all()                           # <s> and the stop word carry no gradient


def test_scc_words_option_counts_stop_words():
    outputs, batch = scc_case([0.2, 0.2, 0.2, 0.2], y_t=[0, 0, 1, 1], y_v=[0, 0, 0, 0])
    outputs["s_raw"] = outputs["s_raw"].detach().clone()
    outputs["s_raw"][0:2, 1] = 1.1                          # stop word of the real pairs: (1.1 + 0.4) / 3 = 0.5
    outputs["s_raw"][2:4, 1] = 0.2                          # stop word of the fake-text pairs: mean stays 0.2
    assert scc_loss(outputs, batch, delta=0.1).item() == pytest.approx(0.1)
    assert scc_loss(outputs, batch, delta=0.1, tokens="words").item() == 0.0


@pytest.mark.parametrize("y_t, y_v, rows", [([0, 0, 0, 0], [0, 0, 0, 0], (2, 2, 2, 2)),
                                            ([1, 1, 1, 1], [0, 0, 0, 0], (2, 2, 2, 2)),
                                            ([0, 1, 0, 1], [1, 1, 1, 1], (2, 2, 2, 2)),
                                            ([0, 1, 0, 1], [0, 0, 0, 0], (0, 2, 0, 2))])
def test_scc_zero_and_finite_when_a_set_is_empty(y_t, y_v, rows):
    outputs, batch = scc_case([0.9, 0.1, 0.9, 0.1], y_t=y_t, y_v=y_v, rows=rows)
    loss = scc_loss(outputs, batch, delta=0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(outputs["s_raw"].grad).all()


def test_losses_under_cpu_bf16_autocast():
    batch = batch_of([3, 4], y_t=[0.0, 1.0])
    s = scores_for(batch).detach().bfloat16().requires_grad_(True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = asc_loss({"token_prob": s}, batch) + t_coarse_loss({"t_coarse": s.max(dim=1).values}, batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
