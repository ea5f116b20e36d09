"""METER's pre-training objectives (METER, Dou et al. 2022, section 3.3), used by pretrain.py to give the CIEC
backbone the image-text alignment the paper starts from (CIEC section 3.2: "backbone weights sourced from METER").

outputs (``models.meter_heads.MeterPretrainer``): ``mlm_logits`` (M,V) and ``mlm_labels`` (M,) at the M masked
tokens; ``itm_logits`` (B,2); optionally ``itc_logits`` (B,B) (``pretrain.itc``, ALBEF's contrastive loss, not
METER's); optionally ``rud_logits`` (B,L) (``pretrain.rud_weight``, replaced-unit detection, not METER's).
batch: ``itm_label`` (B,) long, 1 = the caption belongs to the image; with RUD ``rud_labels`` (B,L) float and
``rud_mask`` (B,L) bool (``datasets.pretrain.replaced_unit_targets``); optionally ``mim_pred`` / ``mim_target``
(K,3p^2) (``pretrain.mim_weight``, SimMIM's masked image modelling, not METER's).
Returns float32 scalars {mlm: cross-entropy mean over masked tokens (0 when none is masked), itm: cross-entropy
mean over pairs, [itc: symmetric InfoNCE, the mean of image->text and text->image cross-entropy with the
diagonal as targets (ALBEF eq. 2)], [rud: binary cross-entropy mean over the masked tokens (ELECTRA's
discriminator loss)], [mim: L1 mean over the masked patches' pixels (SimMIM's loss)], loss: mlm + itm [+ itc]
[+ rud_weight * rud] [+ mim_weight * mim] (METER weights both 1; ALBEF adds ITC with weight 1; ELECTRA weights its
discriminator 50).
"""
import torch
import torch.nn.functional as F


def itc_loss(logits):
    """(B,B) image-to-caption logits of the batch -> symmetric InfoNCE with pair i <-> caption i as targets."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def rud_loss(logits, labels, mask):
    """(B,L) token logits, 0/1 labels and a bool mask -> BCE mean over the masked tokens (0 when none is)."""
    if not mask.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask], labels[mask].float())


def meter_losses(outputs, batch, rud_weight=1.0, mim_weight=1.0):
    logits, labels = outputs["mlm_logits"].float(), outputs["mlm_labels"]
    mlm = F.cross_entropy(logits, labels) if labels.numel() else logits.sum() * 0.0
    itm = F.cross_entropy(outputs["itm_logits"].float(), batch["itm_label"])
    out = {"mlm": mlm, "itm": itm, "loss": mlm + itm}
    if "itc_logits" in outputs:
        out["itc"] = itc_loss(outputs["itc_logits"].float())
        out["loss"] = out["loss"] + out["itc"]
    if "rud_logits" in outputs:
        out["rud"] = rud_loss(outputs["rud_logits"].float(), batch["rud_labels"], batch["rud_mask"])
        out["loss"] = out["loss"] + rud_weight * out["rud"]
    if "mim_pred" in outputs:
        pred = outputs["mim_pred"].float()
        out["mim"] = F.l1_loss(pred, outputs["mim_target"].float()) if pred.numel() else pred.sum() * 0.0
        out["loss"] = out["loss"] + mim_weight * out["mim"]
    return out
