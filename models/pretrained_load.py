"""Loading the pretrained weights ``cfg["pretrained"]`` names into the CIEC backbone, with the exact key report.

Sources (paper section 3.2: "pre-trained backbone weights sourced from METER"):
- ``meter``: METER Lightning checkpoint (``meter_clip16_{224,288}_roberta_pretrain.ckpt``) or the export of
  pretrain.py: its ``state_dict`` covers the whole backbone (``models/pretrained_keys.meter_to_backbone``). It is
  read with ``utils.safe_load.load_with_stand_ins``: Lightning's callbacks and hyper-parameter containers get inert
  stand-ins, nothing from the file runs, and a pickle naming code (``posix.system``) is refused.
- ``openai_clip``: OpenAI ``ViT-B-16.pt`` (TorchScript archive or plain state dict): the position embedding source
  when ``pos_embed_source == "openai"`` (CSCL's choice), or, without a METER checkpoint, the ViT initialisation.
- ``roberta``: local roberta-base folder: weights into ``text_transformer`` (no METER checkpoint), or only a config
  check (config.json alone, or when METER provides the weights).

``load_pretrained`` returns the report {source: {...}, "random_init": [...]}; ``format_key_report`` prints it.
A missing file is a ``MissingDataError``, an unreadable one a ``CheckpointError``, a key gap a
``PretrainedKeyError``, a bad ``pretrained.*`` setting a ``ConfigError``: all ``UserError``s (one ``error:`` line
at the entry points).
"""
import os
import zipfile
from collections import Counter

import torch

from models.pretrained_keys import (
    PretrainedKeyError,
    check_and_load,
    check_text_config,
    meter_to_backbone,
    openai_to_vit,
)
from utils import dist
from utils.errors import ConfigError, MissingDataError
from utils.safe_load import check_file, load_with_stand_ins

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_SOURCES = ("meter", "openai_clip", "roberta")


def _require(path, key):
    if not os.path.exists(path):
        raise MissingDataError(f"pretrained.{key}: {path} does not exist (see checkpoints/README.md for where to "
                               f"get it, or set pretrained.{key}=null)")


def _is_torchscript_archive(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def read_openai_clip(path):
    """OpenAI CLIP weights: TorchScript archive (``torch.jit.load(...).state_dict()``) or a plain state dict."""
    check_file(path)
    if _is_torchscript_archive(path):
        sd, how = dict(torch.jit.load(path, map_location="cpu").state_dict()), "torchscript"
    else:
        obj, info = load_with_stand_ins(path)
        sd, how = dict(obj.get("state_dict", obj)) if isinstance(obj, dict) else {}, info["path"]
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    if "visual.class_embedding" not in sd:
        raise PretrainedKeyError(f"{path}: no 'visual.class_embedding'; not an OpenAI CLIP state dict")
    return sd, how


def load_meter(backbone, path, pos_embed=None):
    """Load a METER checkpoint into the whole backbone (strict). Returns a report dict."""
    ckpt, info = load_with_stand_ins(path)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise PretrainedKeyError(f"{path}: no state_dict mapping in the checkpoint")
    _check_local_radius(ckpt, backbone, path)
    mapped, leftover, resized = meter_to_backbone(sd, backbone, pos_embed, f"METER checkpoint {path}")
    loaded = check_and_load(backbone, mapped, f"METER checkpoint {path}")
    return {"loaded": loaded, "resized": resized, "left_over": leftover,
            "unpickle_path": info["path"], "stubbed_globals": info["stubbed"]}


def load_meter_heads(pretrainer, path):
    """Load METER's pre-training heads ``mlm_score.*`` and ``itm_score.*`` of the checkpoint at ``path`` into
    ``pretrainer`` (a ``MeterPretrainer``) when it holds them, strict per head (keys and shapes exact), so that a
    continued pre-training starts from the heads that were trained with the backbone, as METER's own loading does.
    Returns {head: number of keys loaded, or "not in the checkpoint (random init)"}."""
    ckpt, _ = load_with_stand_ins(path)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    report = {}
    for head in ("mlm_score", "itm_score"):
        keys = {k[len(head) + 1:]: v for k, v in sd.items() if k.startswith(head + ".")}
        report[head] = (check_and_load(getattr(pretrainer, head), keys, f"{head} of METER checkpoint {path}")
                        if keys else "not in the checkpoint (random init)")
    return report


def _check_local_radius(ckpt, backbone, path):
    """Refuse a checkpoint whose ViT attended otherwise than ``model.vit.local_radius`` asks: pretrain.py's exports
    record their config; any other checkpoint (METER's own) counts as CLIP's global attention (null)."""
    recorded = ckpt
    for key in ("hyper_parameters", "config", "model", "vit"):
        recorded = recorded.get(key) if isinstance(recorded, dict) else None
    recorded = recorded.get("local_radius") if isinstance(recorded, dict) else None
    wanted = backbone.local_radius
    if recorded != wanted:
        raise PretrainedKeyError(
            f"{path}: its ViT was trained with model.vit.local_radius={recorded} (null: CLIP's global attention) but "
            f"the config sets {wanted}; set model.vit.local_radius to {recorded} to fine-tune from it")


def load_openai_vit(vit, sd, path):
    """Initialise the timm ViT from an OpenAI CLIP state dict (strict for the ViT)."""
    converted, leftover, resized = openai_to_vit(sd, vit, f"OpenAI CLIP {path}")
    loaded = check_and_load(vit, converted, f"OpenAI CLIP {path}")
    return {"loaded": loaded, "resized": resized, "left_over": leftover}


def load_roberta(text_model, folder):
    """roberta-base folder -> text_transformer (exact keys); only a config check without weights."""
    from transformers import RobertaModel

    check_text_config(folder, text_model)
    if not any(os.path.exists(os.path.join(folder, f)) for f in _WEIGHT_FILES):
        return {"loaded": 0, "config_only": True}
    src, info = RobertaModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False,
                                             output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"] or info["error_msgs"]:
        raise PretrainedKeyError(
            f"{folder}: weights do not cover RobertaModel: missing {sorted(info['missing_keys'])[:20]}, "
            f"mismatched {sorted(map(str, info['mismatched_keys']))[:20]}, errors {list(info['error_msgs'])[:5]}")
    loaded = check_and_load(text_model, src.state_dict(), f"roberta folder {folder}")
    return {"loaded": loaded, "config_only": False,
            "left_over": dict(Counter(k.split(".")[0] for k in info["unexpected_keys"]))}


def _checked_sources(cfg_pretrained):
    """(pos_embed_source, meter, openai_clip, roberta) of ``cfg["pretrained"]``, refused when inconsistent."""
    source = cfg_pretrained.get("pos_embed_source", "meter")
    if source not in ("meter", "openai"):
        raise ConfigError(f"pretrained.pos_embed_source must be meter or openai, got {source!r}")
    meter, openai, roberta = (cfg_pretrained.get(k) for k in _SOURCES)
    if source == "openai" and meter and not openai:
        raise ConfigError("pretrained.pos_embed_source=openai needs pretrained.openai_clip")
    for key, path in zip(_SOURCES, (meter, openai, roberta)):
        if path:
            _require(path, key)
    return source, meter, openai, roberta


def load_pretrained(backbone, cfg_pretrained):
    """Load what ``cfg["pretrained"]`` names into ``backbone``; returns {source: report}."""
    source, meter, openai, roberta = _checked_sources(cfg_pretrained)
    report, clip_sd = {}, None
    if openai:
        clip_sd, how = read_openai_clip(openai)
        report["openai_clip"] = {"path": openai, "format": how}
    if meter:
        pos = clip_sd["visual.positional_embedding"] if source == "openai" else None
        report["meter"] = dict(path=meter, pos_embed_source=source, **load_meter(backbone, meter, pos))
        if openai and source == "meter":
            report["openai_clip"]["use"] = "unused (METER provides the ViT and pos_embed_source=meter)"
    elif openai:
        report["openai_clip"].update(load_openai_vit(backbone.vit_model, clip_sd, openai))
    if roberta:
        if meter:
            check_text_config(roberta, backbone.text_transformer)
            report["roberta"] = {"path": roberta, "config_only": True, "loaded": 0}
        else:
            report["roberta"] = dict(path=roberta, **load_roberta(backbone.text_transformer, roberta))
    report["random_init"] = _random_parts(report)
    return report


def load_configured(backbone, cfg_pretrained, verbose=True):
    """``load_pretrained`` when ``cfg["pretrained"]`` names any source (the report is printed on rank 0 when
    ``verbose``); None when it names none, so the backbone keeps its random init."""
    if not any(cfg_pretrained.get(k) for k in _SOURCES):
        return None
    report = load_pretrained(backbone, cfg_pretrained)
    if verbose and dist.is_main():
        print(format_key_report(report), flush=True)
    return report


def _random_parts(report):
    """Backbone parts no source covered (they keep their random init)."""
    if "meter" in report:
        return []
    parts = [] if "loaded" in report.get("openai_clip", {}) else ["vit_model"]
    if not report.get("roberta", {}).get("loaded"):
        parts.append("text_transformer")
    return parts + ["cfa"]


def format_key_report(report):
    """Human-readable key report of ``load_pretrained``."""
    lines = []
    for name, rep in report.items():
        if name == "random_init":
            lines.append(f"random init (not covered by any source): {rep or 'none'}")
            continue
        lines.append(f"[{name}] " + ", ".join(f"{k}={rep[k]}" for k in
                                              ("path", "format", "use", "pos_embed_source", "unpickle_path",
                                               "config_only", "loaded") if k in rep))
        if rep.get("stubbed_globals"):
            lines.append(f"  pickle globals read as inert stand-ins (never imported): {rep['stubbed_globals']}")
        for r in rep.get("resized", []):
            lines.append(f"  resized {r['key']}: {r['from']} -> {r['to']}")
        for prefix, count in rep.get("left_over", {}).items():
            lines.append(f"  left over {prefix}: {count} keys")
    return "\n".join(lines)
