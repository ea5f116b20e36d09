"""Export a pre-trained CIEC backbone (+ METER's heads) as a METER checkpoint (CIEC paper section 3.2 starts from
METER; pretrain.py produces the same kind of file at toy scale).

``meter_state_dict(pretrainer)`` is the exact inverse of ``models.pretrained_keys.meter_to_backbone``:

    backbone.vit_model.<timm name>       -> vit_model.visual.<CLIP name>   (cls_token (1,1,D) -> class_embedding (D,),
                                            pos_embed (1,1+N,D) -> positional_embedding (1+N,D))
    backbone.text_transformer.*          -> text_transformer.*             (HF RobertaModel names, unchanged)
    backbone.cfa.<METER fusion name>     -> <METER fusion name>            (cross_modal_*, token_type_embeddings)
    mlm_score.*, itm_score.*             -> mlm_score.*, itm_score.*       (METER's head names, unchanged)

``save_meter_checkpoint(path, pretrainer, **meta)`` writes ``{"state_dict": ..., "hyper_parameters": meta}``
atomically (plain tensors and containers: ``torch.load(weights_only=True)`` reads it), so ``pretrained.meter``
loads it through ``models/pretrained.py`` with its exact key report (left over: ``mlm_score``, ``itm_score``).
"""
from models.pretrained_keys import timm_visual_name
from utils.checkpoint import atomic_torch_save


def timm_to_clip_name(name):
    """timm ViT key -> CLIP visual key (without ``visual.``); raises for a key METER's ViT does not have."""
    clip = timm_visual_name(name)
    if clip is None:
        raise KeyError(f"ViT parameter {name!r} has no CLIP/METER name")
    return clip


def meter_state_dict(pretrainer):
    """{METER key: tensor} of a ``MeterPretrainer`` (see the module docstring); tensors are detached CPU copies."""
    out = {}
    for name, value in pretrainer.backbone.state_dict().items():
        value = value.detach().cpu().clone()
        part, rest = name.split(".", 1)
        if part == "vit_model":
            if rest == "cls_token":
                value = value.reshape(-1)
            elif rest == "pos_embed":
                value = value.reshape(value.shape[-2], value.shape[-1])
            out["vit_model.visual." + timm_to_clip_name(rest)] = value
        elif part == "text_transformer":
            out[name] = value
        elif part == "cfa":
            out[rest] = value
        else:
            raise KeyError(f"backbone parameter {name!r} has no METER name")
    for head in ("mlm_score", "itm_score"):
        out.update((f"{head}.{k}", v.detach().cpu().clone()) for k, v in getattr(pretrainer, head).state_dict().items())
    return out


def save_meter_checkpoint(path, pretrainer, **meta):
    """Atomically write ``{"state_dict": meter_state_dict(pretrainer), "hyper_parameters": meta}``."""
    state = {"state_dict": meter_state_dict(pretrainer), "hyper_parameters": dict(meta)}
    atomic_torch_save(state, path)
    return path

