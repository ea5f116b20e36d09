"""CIEC model wiring (CIEC paper section 2, Figure 2): backbone + CFA (2.2), eq. 1 head, TRPS (2.3), VCTG (2.4).

``CIEC.forward(batch)`` reads ``image`` (B,3,S,S), ``input_ids`` / ``attention_mask`` (B,L), ``content_mask`` (B,L),
``word_tokens`` (B,L) bool (``datasets.text.word_token_mask``),
``cand_boxes`` (B,n,4), ``cand_mask`` (B,n) and, in training mode only, ``y_v`` (B,) (TRPS training filter and
I_valid). It returns one flat dict (N = (S / patch)^2 patches, D = model.hidden_size):

    logit_bin, p_bin                 (B,)     eq. 1 logit and sigmoid
    patch_logits, patch_prob         (B,N)    TRPS patch map and P_p
    v_coarse                         (B,)     Top-K mean of P_p
    box_masks                        (B,n,N)  eq. 3 masks M (before the y_v filter)
    s_iv, s_ev, box_scores           (B,n)    S^iv, S^ev, S^v (eq. 4); invalid candidates very negative
    best_idx                         (B,)     long, argmax of S^v over valid candidates
    best_mask                        (B,N)    M* (zeros without candidates)
    img_valid                        (B,)     I_valid of eq. 5
    v_fine                           (B,)     eq. 5
    pred_box                         (B,4)    C* (cx,cy,w,h) when judged manipulated, else exactly zero
    v_patch_feats                    (B,N,D)  V-hat_pat, for L_Sce
    t_coarse                         (B,)     Top-K mean of token scores
    s_it, s_et, s_raw                (B,L)    eqs. 13, 15, 14
    token_prob                       (B,L)    S^t (eq. 16): per-token p(fake)
    t_fine                           (B,)     sentence prediction (2.4.2)
    token_pred                       (B,L)    long 0/1 token predictions
"""
import torch
import torch.nn as nn


class CIEC(nn.Module):
    def __init__(self, backbone, trps, vctg, bin_head):
        super().__init__()
        self.backbone, self.trps, self.vctg, self.bin_head = backbone, trps, vctg, bin_head

    def forward(self, batch):
        feats = self.backbone(batch["image"], batch["input_ids"], batch["attention_mask"])
        v_pat_hat, v_pat_raw = feats["v_hat"][:, 1:], feats["v_raw"][:, 1:]
        y_v = batch["y_v"] if self.training else None
        out = self.trps(v_pat_hat, v_pat_raw, feats["t_raw"][:, 0], batch["cand_boxes"], batch["cand_mask"], y_v)
        text = self.vctg(feats["t_hat"], feats["t_raw"], v_pat_raw, batch["attention_mask"], batch["content_mask"],
                         batch["word_tokens"])
        clash = set(out) & set(text)
        assert not clash, f"TRPS and VCTG both return {sorted(clash)}"
        out.update(text)
        logit = self.bin_head(feats["v_cls"], feats["t_cls"]).float()
        out.update(logit_bin=logit, p_bin=torch.sigmoid(logit), v_patch_feats=v_pat_hat)
        return out
