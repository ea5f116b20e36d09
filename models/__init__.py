"""Model builder: ``build_model(cfg, pad_token_id)`` -> ``CIEC`` (backbone + CFA, TRPS, VCTG, eq. 1 head).

Ablations (Tables 2-3) switch losses off with ``loss.weights.<name>: 0``. Parameters that only that loss trains
(``ONLY_TRAINED_BY``) then keep their initial values: ``build_model`` freezes them (``requires_grad=False``) and
lists them in ``model.frozen_by_ablation``. Without this they would still move on N GPUs (DDP hands unused
parameters a zero gradient, and AdamW's decoupled weight decay shrinks them) but not on one (no gradient, AdamW skips
them), so the same ablation would differ with the world size. docs/implementation_notes.md "Ablations".
"""
from models.backbone import build_backbone
from models.ciec import CIEC
from models.heads import BinaryHead
from models.trps import build_trps
from models.vctg import build_vctg

# loss -> parameter name prefixes that no other loss reaches (tests/test_ablations.py checks the table against
# autograd for every shipped ablation)
ONLY_TRAINED_BY = {
    "bic": ("bin_head.",),                                       # eq. 1 head
    "v_fine": ("trps.v_proj.", "trps.t_proj.", "trps.alpha_raw"),  # S^ev of eq. 4 and alpha: read only by v_fine
    "t_coarse": ("vctg.coarse_head.",),                         # 2.4.1 token anomaly map
    "t_fine": ("vctg.fine_head.",),                             # 2.4.2 sentence prediction
}


def build_model(cfg, pad_token_id=1):
    """All parts from ``cfg["model"]``; TRPS grid = data.image_size // model.vit.patch_size."""
    model = CIEC(backbone=build_backbone(cfg, pad_token_id=pad_token_id), trps=build_trps(cfg),
                 vctg=build_vctg(cfg), bin_head=BinaryHead(cfg["model"]["hidden_size"]))
    model.frozen_by_ablation = freeze_untrained(model, cfg["loss"]["weights"])
    return model


def freeze_untrained(model, weights):
    """Freeze the parameters of ``ONLY_TRAINED_BY[loss]`` for every loss whose weight is 0; returns their names."""
    prefixes = tuple(p for loss, group in ONLY_TRAINED_BY.items() if weights.get(loss, 1.0) == 0 for p in group)
    frozen = [n for n, p in model.named_parameters() if prefixes and n.startswith(prefixes)]
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return frozen
