"""Image-level MIL losses of TRPS (CIEC paper section 2.3): L^v_Coarse (eq. 2) and L^v_Fine (eq. 8).

outputs: ``v_coarse`` (B,) Top-K mean of P_p (2.3.1), ``v_fine`` (B,) scope-gated LSE prediction (eq. 5), both
probabilities in [0,1]. batch: ``y_v`` float (B,) image-fake label (FS/FA). Each loss is the mean BCE over the batch,
a float32 scalar, through the autocast-safe ``bce_prob`` shared with the text losses (probabilities clamped to
[1e-6, 1 - 1e-6] before the log, so loss and gradient stay finite at 0 or 1).
"""
from losses.text_mil import bce_prob


def v_coarse_loss(outputs, batch):
    """Eq. 2: BCE(y^v_coarse, y^v), mean over the batch."""
    return bce_prob(outputs["v_coarse"], batch["y_v"]).mean()


def v_fine_loss(outputs, batch):
    """Eq. 8: BCE(y^v_fine, y^v), mean over the batch."""
    return bce_prob(outputs["v_fine"], batch["y_v"]).mean()
