"""Sentence-level MIL losses of VCTG (paper section 2.4): L^t_Coarse (eq. 12) and L^t_Fine (eq. 17).

outputs: ``t_coarse`` (B,) probability (Top-K mean of token scores, 2.4.1); ``t_fine`` (B,) probability and, if
present, ``t_fine_logit`` (B,) (used instead, for stability). batch: ``y_t`` float (B,) text-fake label.
Each function returns a scalar tensor (mean over the batch), computed in float32. ``bce_prob`` is the
autocast-safe BCE on probabilities shared by the text losses (``F.binary_cross_entropy`` is refused under CUDA
autocast).
"""
import torch
import torch.nn.functional as F

EPS = 1e-6


def bce_prob(p, target, eps=EPS):
    """Element-wise BCE of probabilities ``p`` against ``target``, float32, p clamped to [eps, 1 - eps]."""
    p = p.float().clamp(eps, 1.0 - eps)
    target = target.float()
    return -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p))


def t_coarse_loss(outputs, batch):
    """Eq. 12: BCE(y^t_coarse, y^t), mean over the batch."""
    return bce_prob(outputs["t_coarse"], batch["y_t"]).mean()


def t_fine_loss(outputs, batch):
    """Eq. 17: BCE(y^t_fine, y^t), mean over the batch (from ``t_fine_logit`` when the model provides it)."""
    if "t_fine_logit" in outputs:
        return F.binary_cross_entropy_with_logits(outputs["t_fine_logit"].float(), batch["y_t"].float())
    return bce_prob(outputs["t_fine"], batch["y_t"]).mean()
