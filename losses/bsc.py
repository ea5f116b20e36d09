"""Background Silencing Constraint L_Bsc (CIEC paper section 2.3.3, eqs. 9-10).

I_bg = 1(M* < eps) (eq. 9) marks the patches outside the selected box C*; L_Bsc = BCE(P_p, 0, weight = I_bg)
(eq. 10), applied to fake images only (y_v = 1) that have at least one candidate box (without a box there is no
"outside"). The BCE towards 0 is computed from the logits, softplus(patch_logits) = -log(1 - sigmoid(logit)).
Normalisation: mean over the background patches of those images (sum / number of weighted patches); a finite 0
(still attached to the graph) when the batch has no such image.

outputs: ``patch_logits`` (B,N), ``best_mask`` (B,N) M*. batch: ``y_v`` (B,), ``cand_mask`` (B,n) bool.
Returns a float32 scalar.
"""
import torch.nn.functional as F


def fake_with_box(batch):
    """(B,) bool: fake images (y_v = 1) with at least one real candidate box."""
    return (batch["y_v"] > 0.5) & batch["cand_mask"].bool().any(dim=1)


def bsc_loss(outputs, batch, eps=0.1):
    """Eqs. 9-10, mean over background patches of fake images."""
    logits = outputs["patch_logits"].float()
    background = (outputs["best_mask"] < eps) & fake_with_box(batch).to(logits.device).unsqueeze(1)
    weight = background.float()
    return (F.softplus(logits) * weight).sum() / weight.sum().clamp(min=1.0)
