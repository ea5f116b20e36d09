"""Textual-guidance Refine Patch Selection (TRPS), CIEC paper section 2.3, eqs. 2-7.

Shapes: B batch, N = grid * grid patches, n candidate boxes, D CFA width (``dim``), Dv / Dt widths
of the raw (pre-CFA) visual / textual encoder outputs.

Inputs of ``TRPS.forward``:
    v_pat_hat  (B,N,D)   V-hat_pat, CFA patch features
    v_pat_raw  (B,N,Dv)  V_pat, raw ViT patch features (explicit branch, "original features")
    t_cls_raw  (B,Dt)    T_cls, raw text encoder feature of the first token
    cand_boxes (B,n,4)   candidate boxes, normalised cx, cy, w, h (zero-padded)
    cand_mask  (B,n)     bool, True for a real candidate
    y_v        (B,)      image label in training (M-hat = M * y_v, I_valid = y_v); None in evaluation
                         (no filter, I_valid = v_coarse > 0.5)

Output dict (see docs/architecture.md):
    patch_logits, patch_prob (B,N)   projection of V-hat_pat and P_p = sigmoid (2.3.1)
    v_coarse (B,)                    Top-K mean of P_p (2.3.1, eq. 2 input)
    box_masks (B,n,N)                eq. 3 soft masks M (before the y_v filter)
    s_iv, s_ev, box_scores (B,n)     S^iv, S^ev, S^v (eq. 4); invalid candidates hold INVALID_SCORE
    best_idx (B,) long, best_mask (B,N)  C* index and M* (zeros when the image has no candidate)
    img_valid (B,)                   I_valid of eq. 5
    v_fine (B,)                      eq. 5 (local eq. 6 / global eq. 7), a probability in [0,1]
    pred_box (B,4)                   C* when I_valid and a candidate exists, else exactly zero

Probability handling (docs/implementation_notes.md): the patch similarity is mapped to [0,1] and,
with box_reduce="mean", S^v = (S^iv + alpha * S^ev) / (1 + alpha) with alpha = softplus(.) >= 0. This
is a positive per-model rescaling of eq. 4 (same argmax), and keeps S^v, hence the LSE of eq. 6, in
[0,1]. With box_reduce="sum" the scores are unbounded and v_fine is clamped to [0,1].
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

INVALID_SCORE = -1.0e4


def patch_centres(grid):
    """(grid*grid, 2) x, y centres of the patches in patch units, row-major (x = column + 0.5)."""
    idx = torch.arange(grid, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(idx, idx, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def box_soft_masks(boxes, centres, grid, tau1):
    """Eq. 3: (B,n,4) cx,cy,w,h boxes, (N,2) patch centres -> (B,n,N) soft masks in (0,1)."""
    boxes = boxes.float() * grid
    cx, cy, w, h = (boxes[..., i:i + 1] for i in range(4))  # each (B,n,1)
    px, py = centres[:, 0], centres[:, 1]  # (N,)
    mx = torch.sigmoid(tau1 * (w / 2 - (px - cx).abs()))
    my = torch.sigmoid(tau1 * (h / 2 - (py - cy).abs()))
    return mx * my


def lse_mean(scores, valid, tau):
    """tau * log(mean_{valid} exp(s / tau)) over the last dim (eqs. 6, 7); rows need >= 1 valid entry."""
    scaled = torch.where(valid, scores / tau, torch.full_like(scores, float("-inf")))
    count = valid.sum(-1).clamp_min(1).to(scores.dtype)
    return tau * (torch.logsumexp(scaled, dim=-1) - count.log())


class TRPS(nn.Module):
    """Coarse patch prediction, eq. 3 box masks, eq. 4 dual-branch box scores, eqs. 5-7 aggregation."""

    def __init__(self, dim, dim_v_raw, dim_t_raw, grid, topk=8, tau1=2.0, tau2=0.1, box_reduce="mean",
                 proj_dim=256, text_aid=True, alpha_init=1.0):
        super().__init__()
        if box_reduce not in ("mean", "sum"):
            raise ValueError(f"model.trps.box_reduce must be 'mean' or 'sum', got {box_reduce!r}")
        self.grid, self.topk, self.tau1, self.tau2 = grid, topk, tau1, tau2
        self.box_reduce, self.text_aid = box_reduce, text_aid
        self.patch_head = nn.Linear(dim, 1)
        if text_aid:  # not built without text aid, so that DDP sees no unused parameters
            self.v_proj = nn.Linear(dim_v_raw, proj_dim)
            self.t_proj = nn.Linear(dim_t_raw, proj_dim)
            # alpha = softplus(alpha_raw) >= 0; the projections can flip the sign of Sim themselves
            self.alpha_raw = nn.Parameter(torch.tensor(math.log(math.expm1(alpha_init))))
        self.register_buffer("centres", patch_centres(grid), persistent=False)

    @property
    def alpha(self):
        return F.softplus(self.alpha_raw) if self.text_aid else None

    def coarse(self, v_pat_hat):
        """2.3.1: patch logits (B,N), P_p (B,N), Top-K mean (B,)."""
        logits = self.patch_head(v_pat_hat).squeeze(-1).float()
        prob = torch.sigmoid(logits)
        k = min(self.topk, prob.shape[1])
        return logits, prob, prob.topk(k, dim=1).values.mean(dim=1)

    def reduce(self, masks, values, mass):
        """Sum (or mask-mass-normalised sum) over patches of masks (B,n,N) * values (B,N) -> (B,n)."""
        total = (masks * values.unsqueeze(1)).sum(-1)  # elementwise, so it stays fp32 under autocast
        return total / mass if self.box_reduce == "mean" else total

    def text_similarity(self, v_pat_raw, t_cls_raw):
        """Sim(V_pat, T_cls) in a shared space, cosine mapped to [0,1]: (B,N)."""
        with torch.autocast(device_type=v_pat_raw.device.type, enabled=False):
            v = F.normalize(self.v_proj(v_pat_raw.float()), dim=-1)
            t = F.normalize(self.t_proj(t_cls_raw.float()), dim=-1)
            return 0.5 * (1.0 + (v * t.unsqueeze(1)).sum(-1))

    def box_scores(self, masks, prob, v_pat_raw, t_cls_raw, y_v):
        """Eq. 4 on the y_v-filtered masks: S^iv, S^ev, S^v (B,n) each."""
        mass = masks.sum(-1).clamp_min(1e-6)  # mass of M, so that M-hat = 0 gives S = 0
        masks_hat = masks if y_v is None else masks * y_v.float().view(-1, 1, 1)
        s_iv = self.reduce(masks_hat, prob, mass)
        if not self.text_aid:
            return s_iv, torch.zeros_like(s_iv), s_iv
        s_ev = self.reduce(masks_hat, self.text_similarity(v_pat_raw, t_cls_raw), mass)
        alpha = self.alpha
        s_v = s_iv + alpha * s_ev
        if self.box_reduce == "mean":
            s_v = s_v / (1.0 + alpha)  # convex combination: S^v in [0,1], same argmax as eq. 4
        return s_iv, s_ev, s_v

    def forward(self, v_pat_hat, v_pat_raw, t_cls_raw, cand_boxes, cand_mask, y_v=None):
        B, N, _ = v_pat_hat.shape
        assert N == self.grid ** 2, f"TRPS built for a {self.grid}x{self.grid} grid, got {N} patches"
        logits, prob, v_coarse = self.coarse(v_pat_hat)
        masks = box_soft_masks(cand_boxes, self.centres, self.grid, self.tau1)
        s_iv, s_ev, s_v = self.box_scores(masks, prob, v_pat_raw, t_cls_raw, y_v)

        cand_mask = cand_mask.bool()
        has_box = cand_mask.any(dim=1)
        scores = torch.where(cand_mask, s_v, torch.full_like(s_v, INVALID_SCORE))
        best_idx = scores.argmax(dim=1)
        rows = torch.arange(B, device=best_idx.device)
        best_mask = masks[rows, best_idx] * has_box.unsqueeze(1).to(masks.dtype)
        img_valid = (v_coarse > 0.5).float() if y_v is None else y_v.float()

        # eqs. 5-7; rows without candidates use every box in the (discarded) local LSE to stay finite
        local = lse_mean(s_v, cand_mask | ~has_box.unsqueeze(1), self.tau2)
        glob = lse_mean(prob, torch.ones_like(prob, dtype=torch.bool), self.tau2)
        use_local = (img_valid > 0.5) & has_box
        v_fine = torch.where(use_local, local, glob)
        if self.box_reduce == "sum":
            v_fine = v_fine.clamp(0.0, 1.0)
        chosen = cand_boxes[rows, best_idx].float()
        pred_box = torch.where(use_local.unsqueeze(1), chosen, torch.zeros_like(chosen))
        return {"patch_logits": logits, "patch_prob": prob, "v_coarse": v_coarse, "box_masks": masks,
                "s_iv": s_iv, "s_ev": s_ev, "box_scores": scores, "best_idx": best_idx,
                "best_mask": best_mask, "img_valid": img_valid, "v_fine": v_fine, "pred_box": pred_box}


def build_trps(cfg):
    """TRPS from cfg["model"]["trps"]; grid = image_size // patch_size."""
    m = cfg["model"]
    t = m["trps"]
    return TRPS(dim=m["hidden_size"], dim_v_raw=m["vit"]["embed_dim"], dim_t_raw=m["text"]["hidden_size"],
                grid=cfg["data"]["image_size"] // m["vit"]["patch_size"], topk=t["topk"], tau1=t["tau1"],
                tau2=t["tau2"], box_reduce=t["box_reduce"], proj_dim=t["proj_dim"], text_aid=t["text_aid"])
