"""Model builder: ``build_model(cfg, pad_token_id)`` -> ``CIEC`` (backbone + CFA, TRPS, VCTG, eq. 1 head)."""
from models.backbone import build_backbone
from models.ciec import CIEC
from models.heads import BinaryHead
from models.trps import build_trps
from models.vctg import build_vctg


def build_model(cfg, pad_token_id=1):
    """All parts from ``cfg["model"]``; TRPS grid = data.image_size // model.vit.patch_size."""
    return CIEC(backbone=build_backbone(cfg, pad_token_id=pad_token_id), trps=build_trps(cfg),
                vctg=build_vctg(cfg), bin_head=BinaryHead(cfg["model"]["hidden_size"]))
