"""METER's pre-training objectives (METER, Dou et al. 2022, section 3.3), used by pretrain.py to give the CIEC
backbone the image-text alignment the paper starts from (CIEC section 3.2: "backbone weights sourced from METER").

outputs (``models.meter_heads.MeterPretrainer``): ``mlm_logits`` (M,V) and ``mlm_labels`` (M,) at the M masked
tokens; ``itm_logits`` (B,2). batch: ``itm_label`` (B,) long, 1 = the caption belongs to the image.
Returns float32 scalars {mlm: cross-entropy mean over masked tokens (0 when none is masked), itm: cross-entropy
mean over pairs, loss: mlm + itm (METER weights both 1)}.
"""
import torch.nn.functional as F


def meter_losses(outputs, batch):
    logits, labels = outputs["mlm_logits"].float(), outputs["mlm_labels"]
    mlm = F.cross_entropy(logits, labels) if labels.numel() else logits.sum() * 0.0
    itm = F.cross_entropy(outputs["itm_logits"].float(), batch["itm_label"])
    return {"mlm": mlm, "itm": itm, "loss": mlm + itm}
