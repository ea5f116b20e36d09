"""METER's pre-training objectives (METER, Dou et al. 2022, section 3.3), used by pretrain.py to give the CIEC
backbone the image-text alignment the paper starts from (CIEC section 3.2: "backbone weights sourced from METER").

outputs (``models.meter_heads.MeterPretrainer``): ``mlm_logits`` (M,V) and ``mlm_labels`` (M,) at the M masked
tokens; ``itm_logits`` (B,2); optionally ``itc_logits`` (B,B) (``pretrain.itc``, ALBEF's contrastive loss, not
METER's). batch: ``itm_label`` (B,) long, 1 = the caption belongs to the image.
Returns float32 scalars {mlm: cross-entropy mean over masked tokens (0 when none is masked), itm: cross-entropy
mean over pairs, [itc: symmetric InfoNCE, the mean of image->text and text->image cross-entropy with the
diagonal as targets (ALBEF eq. 2)], loss: mlm + itm [+ itc] (METER weights both 1; ALBEF adds ITC with weight 1)}.
"""
import torch
import torch.nn.functional as F


def itc_loss(logits):
    """(B,B) image-to-caption logits of the batch -> symmetric InfoNCE with pair i <-> caption i as targets."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def meter_losses(outputs, batch):
    logits, labels = outputs["mlm_logits"].float(), outputs["mlm_labels"]
    mlm = F.cross_entropy(logits, labels) if labels.numel() else logits.sum() * 0.0
    itm = F.cross_entropy(outputs["itm_logits"].float(), batch["itm_label"])
    out = {"mlm": mlm, "itm": itm, "loss": mlm + itm}
    if "itc_logits" in outputs:
        out["itc"] = itc_loss(outputs["itc_logits"].float())
        out["loss"] = out["loss"] + out["itc"]
    return out
