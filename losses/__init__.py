"""CIEC training objective (paper section 2.1, last paragraph): a constant-weighted sum of
L_BIC (eq. 1), L^v_Coarse (eq. 2), L^v_Fine (eq. 8), L_Bsc (eq. 10), L_Sce (eq. 11), L^t_Coarse (eq. 12),
L^t_Fine (eq. 17), L_Asc (eq. 20) and L_Scc (eq. 21).

``Criterion(weights, **options)(outputs, batch)`` returns a dict with one unweighted float32 scalar per key of
``weights`` (``bic, v_coarse, v_fine, bsc, sce, t_coarse, t_fine, asc, scc``) and ``loss``, the weighted sum.
A weight of 0 skips the loss (reported as 0): the ablations of Tables 2-3.
"""
import torch

from losses.asc import asc_loss
from losses.bic import bic_loss
from losses.bsc import bsc_loss
from losses.image_mil import v_coarse_loss, v_fine_loss
from losses.scc import scc_loss
from losses.sce import sce_loss
from losses.text_mil import t_coarse_loss, t_fine_loss


class Criterion:
    def __init__(self, weights, bsc_eps=0.1, sce_delta=0.2, sce_topk=8, sce_sigma=0.25, asc_lambda=2.0,
                 asc_k2_ratio=0.1, asc_k2_min=1, asc_rest_weight=0.0, scc_delta=0.1):
        self.losses = {
            "bic": bic_loss,
            "v_coarse": v_coarse_loss,
            "v_fine": v_fine_loss,
            "bsc": lambda o, b: bsc_loss(o, b, eps=bsc_eps),
            "sce": lambda o, b: sce_loss(o, b, eps=bsc_eps, delta=sce_delta, topk=sce_topk, sigma=sce_sigma),
            "t_coarse": t_coarse_loss,
            "t_fine": t_fine_loss,
            "asc": lambda o, b: asc_loss(o, b, lam=asc_lambda, k2_ratio=asc_k2_ratio, k2_min=asc_k2_min,
                                         rest_weight=asc_rest_weight),
            "scc": lambda o, b: scc_loss(o, b, delta=scc_delta),
        }
        unknown = sorted(set(weights) - set(self.losses))
        assert not unknown, f"loss.weights has unknown keys {unknown}; known: {sorted(self.losses)}"
        self.weights = {k: float(v) for k, v in weights.items()}

    def __call__(self, outputs, batch):
        ref = outputs["logit_bin"]
        out, total = {}, ref.new_zeros((), dtype=torch.float32)
        for name, weight in self.weights.items():
            if weight == 0:
                out[name] = ref.new_zeros((), dtype=torch.float32)
                continue
            out[name] = self.losses[name](outputs, batch).float()
            total = total + weight * out[name]
        out["loss"] = total
        return out


def build_criterion(cfg):
    """``Criterion`` from ``cfg["loss"]`` (weights and the eq. 9-21 hyperparameters)."""
    c = cfg["loss"]
    if c["weights"]["scc"] and not cfg["model"]["vctg"]["image_aid"]:
        raise ValueError("loss.weights.scc must be 0 when model.vctg.image_aid is false: L_Scc (eq. 21) reads S_raw "
                         "of the visual branch (eq. 14), which is not built without it (Table 3 'w/o Image-aid')")
    return Criterion(c["weights"], bsc_eps=c["bsc_eps"], sce_delta=c["sce_delta"], sce_topk=c["sce_topk"],
                     sce_sigma=c["sce_sigma"], asc_lambda=c["asc_lambda"], asc_k2_ratio=c["asc_k2_ratio"],
                     asc_k2_min=c["asc_k2_min"], asc_rest_weight=c["asc_rest_weight"], scc_delta=c["scc_delta"])
