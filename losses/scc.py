"""Semantic Consistency Constraint L_Scc (paper section 2.4.4, eq. 21).

V1 = pure real pairs (y_v = 0, y_t = 0), V2 = real image with fake text (y_v = 0, y_t = 1); pairs with a fake image
are left out. For each sample, the mean of S_raw (eq. 14, outputs ``s_raw`` (B,L)) over its tokens in M_c^p, read
as M_c * M_p: content tokens (``content_mask``) among the real word tokens (``batch["word_tokens"]``: no padding,
no ``<s>``/``</s>``); ``tokens="words"`` uses every real word token instead. Samples with no such token leave their set.
L_Scc = ReLU(delta - (mean over V1 - mean over V2)); 0 when V1 or V2 is empty. Returns a float32 scalar.
"""
import torch


def scc_loss(outputs, batch, delta=0.1, tokens="content"):
    """Eq. 21 margin between the mean visual support of real pairs and of real-image/fake-text pairs."""
    s_raw = outputs["s_raw"].float()
    valid = batch["word_tokens"].bool()
    if tokens == "content":
        valid = valid & (batch["content_mask"] > 0)
    elif tokens != "words":
        raise ValueError(f"scc_loss: tokens must be 'content' or 'words', got {tokens!r}")
    n = valid.sum(dim=1)
    per_sample = (s_raw * valid.float()).sum(dim=1) / n.clamp(min=1)
    real_img = (batch["y_v"].to(s_raw.device) < 0.5) & (n > 0)
    fake_txt = batch["y_t"].to(s_raw.device) > 0.5
    v1, v2 = (real_img & ~fake_txt).float(), (real_img & fake_txt).float()
    mean1 = (per_sample * v1).sum() / v1.sum().clamp(min=1.0)
    mean2 = (per_sample * v2).sum() / v2.sum().clamp(min=1.0)
    both = (v1.sum() > 0) & (v2.sum() > 0)
    return torch.relu(delta - (mean1 - mean2)) * both.float()
