"""Asymmetric Sparse Constraint L_Asc (paper section 2.4.3, eqs. 18-20).

L_Asc = lam * L^T + L^F, on the token scores S^t (outputs ``token_prob``, (B,L) probabilities in [0,1]).
- L^T (eq. 18), true sentences (y_t = 0): per sentence, mean BCE(S^t, 0) over its content tokens (M_c); then mean
  over the true sentences that have at least one content token.
- L^F (eq. 19), fake sentences (y_t = 1): the K2 content tokens with the highest S^t, K2 = min(#content,
  max(k2_min, ceil(k2_ratio * #content))); per sentence, mean BCE(S^t, 1) over them; then mean over the fake
  sentences with content tokens. Other tokens of fake sentences get no loss (the paper: "we impose no operations
  on them").
- Not in the paper, off by default (``rest_weight`` = ``loss.asc_rest_weight``, 0): + rest_weight * L^R, L^R = per
  fake sentence, mean BCE(S^t, 0) over its content tokens OUTSIDE the Top-K2 set; mean over the fake sentences that
  have such tokens. It makes the sparse activation hard (docs/implementation_notes.md "Eqs. 18-20").
Token set: content tokens, ``batch["content_mask"] > 0`` on real word tokens (``batch["word_tokens"]``: never
``<s>``, ``</s>``, padding). S^t is exactly 0 off M_c (eqs. 13, 15), so other tokens would only dilute the mean.
batch: ``y_t`` (B,), ``content_mask`` (B,L), ``word_tokens`` (B,L) bool. Returns a float32 scalar; each part is 0
when its set is empty.
"""
import torch

from losses.text_mil import bce_prob


def _set_mean(per_sentence, members):
    """Mean of ``per_sentence`` over rows where ``members`` is True; 0 (graph-connected) when there are none."""
    members = members.float()
    return (per_sentence * members).sum() / members.sum().clamp(min=1.0)


def topk_token_mask(scores, valid, k2_ratio, k2_min):
    """(B,L) bool: the K2 highest ``scores`` among ``valid`` tokens of each row, K2 as in the module docstring."""
    n = valid.sum(dim=1)
    k2 = torch.ceil(n.double() * k2_ratio - 1e-9).long()     # float64 and -1e-9: ceil(0.3 * 50) is 15, not 16
    k2 = torch.minimum(torch.clamp(k2, min=k2_min), n)
    order = scores.detach().masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True, stable=True)
    first_k2 = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0) < k2.unsqueeze(1)
    return torch.zeros_like(valid).scatter(1, order, first_k2)


def asc_loss(outputs, batch, lam=2.0, k2_ratio=0.1, k2_min=1, rest_weight=0.0):
    """Eq. 20: lam * L^T (eq. 18) + L^F (eq. 19) [+ rest_weight * L^R, not in the paper]; see the module docstring."""
    s_t = outputs["token_prob"].float()
    y_t = batch["y_t"].to(s_t.device) > 0.5
    content = (batch["content_mask"] > 0) & batch["word_tokens"].bool()
    n_content = content.sum(dim=1)
    has_content = n_content > 0

    true_bce = bce_prob(s_t, torch.zeros_like(s_t)) * content.float()
    loss_true = _set_mean(true_bce.sum(dim=1) / n_content.clamp(min=1), ~y_t & has_content)

    top = topk_token_mask(s_t, content, k2_ratio, k2_min)
    fake_bce = bce_prob(s_t, torch.ones_like(s_t)) * top.float()
    loss_fake = _set_mean(fake_bce.sum(dim=1) / top.sum(dim=1).clamp(min=1), y_t & has_content)
    if not rest_weight:
        return lam * loss_true + loss_fake
    rest = content & ~top
    rest_bce = bce_prob(s_t, torch.zeros_like(s_t)) * rest.float()
    loss_rest = _set_mean(rest_bce.sum(dim=1) / rest.sum(dim=1).clamp(min=1), y_t & (rest.sum(dim=1) > 0))
    return lam * loss_true + loss_fake + rest_weight * loss_rest
