"""Multimodal binary classification loss L_BIC (CIEC paper section 2.2, eq. 1).

outputs: ``logit_bin`` (B,) logit of the eq. 1 head. batch: ``y_m`` float (B,) pair-fake label.
Returns the mean BCE over the batch (from the logit, numerically stable and autocast-safe), a float32 scalar.
"""
import torch.nn.functional as F


def bic_loss(outputs, batch):
    """Eq. 1: BCE(MLP(Concat(V-hat_cls, T-hat_cls)), y^m)."""
    return F.binary_cross_entropy_with_logits(outputs["logit_bin"].float(), batch["y_m"].float())
