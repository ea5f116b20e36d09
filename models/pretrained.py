"""Pretrained weights for the CIEC backbone (paper section 3.2: "pre-trained backbone weights sourced from METER").

Sources (``cfg["pretrained"]``):
- ``meter``: METER Lightning checkpoint (``meter_clip16_{224,288}_roberta_pretrain.ckpt``). Its
  ``state_dict`` covers the whole backbone: ``vit_model.visual.*`` (CLIP names, renamed to timm),
  ``text_transformer.*`` (HF RobertaModel names, unchanged) and ``cross_modal_*`` /
  ``token_type_embeddings`` (-> ``cfa.*``). The position embedding (1+g*g, D) is resized to the
  model's grid (224 ckpt g=14, 288 ckpt g=18, 256 model G=16) with bicubic, align_corners=False,
  antialias=False, CLS row kept (METER's ``adapt_position_encoding``).
- ``openai_clip``: OpenAI ``ViT-B-16.pt`` (TorchScript archive or plain state dict): the position
  embedding source when ``pos_embed_source == "openai"`` (CSCL's choice), or, without a METER
  checkpoint, the ViT initialisation (blocks >= depth, ``visual.proj`` and the text tower dropped).
- ``roberta``: local roberta-base folder: weights into ``text_transformer`` (no METER checkpoint),
  or only a config check (config.json alone, or when METER provides the weights).

Every load is exact: the renamed keys must equal the model's keys (strict load), and the keys left
over must belong to a known list; anything else raises ``PretrainedKeyError``.

Safe unpickling: files are read with ``torch.load(weights_only=True)`` whenever
``torch.serialization.get_unsafe_globals_in_checkpoint`` (a static opcode scan, nothing executed)
finds no global outside torch's allowlist. A Lightning checkpoint holds such globals (callbacks keyed
by class objects, hyper-parameter containers); it is read with ``torch.load(weights_only=False,
pickle_module=<restricted module>)`` whose ``Unpickler.find_class`` returns only objects on torch's
own weights-only allowlist and, for every other global, an inert ``PickleStub`` subclass that just
stores what the pickle hands it. No module named in the file is imported and none of its code runs.

``python -m models.pretrained --config CFG [--opts k=v ...]`` builds the backbone, loads, prints the
key report and exits with status 1 on any key gap.
"""
import argparse
import json
import os
import pickle
import re
import sys
import types
import zipfile
from collections import Counter

import torch
import torch.nn.functional as F
from torch import serialization
from torch import _weights_only_unpickler

from utils import dist

# --------------------------------------------------------------------------------------------
# Safe loading


class PretrainedKeyError(RuntimeError):
    """A checkpoint does not cover the model exactly (missing, unexpected or mis-shaped keys)."""


class PickleStub:
    """Inert stand-in for a global that is not on torch's allowlist; records what the pickle passes."""

    stub_global = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.stub_args, self.stub_kwargs = args, kwargs

    def __setstate__(self, state):
        self.__dict__["stub_state"] = state

    def __setitem__(self, key, value):
        self.__dict__.setdefault("stub_items", {})[key] = value

    def append(self, item):
        self.__dict__.setdefault("stub_list", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("stub_list", []).extend(items)

    def __repr__(self):
        return f"<PickleStub {self.stub_global}>"


def _restricted_pickle_module(stubbed):
    """A pickle-like module whose Unpickler resolves globals only to torch's allowlist or to stubs."""
    allowed = _weights_only_unpickler._get_allowed_globals()
    stubs = {}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            stubbed.add(full)
            if full not in stubs:
                stubs[full] = type(name, (PickleStub,), {"stub_global": full, "__module__": __name__})
            return stubs[full]

    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("restricted_pickle")
    module.Unpickler, module.load = RestrictedUnpickler, load
    return module


def safe_load(path):
    """Read a ``torch.save`` file without executing anything from it.

    Returns (obj, info) with info = {"path": "weights_only" | "restricted_unpickler", "stubbed": [...]}.
    """
    try:
        unsafe = serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError:  # legacy (non-zip) format: no static scan; weights_only decides
        unsafe = []
    if not unsafe:
        return torch.load(path, map_location="cpu", weights_only=True), {"path": "weights_only", "stubbed": []}
    stubbed = set()
    obj = torch.load(path, map_location="cpu", weights_only=False,
                     pickle_module=_restricted_pickle_module(stubbed))
    return obj, {"path": "restricted_unpickler", "stubbed": sorted(stubbed)}


def _is_torchscript_archive(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def read_openai_clip(path):
    """OpenAI CLIP weights: TorchScript archive (``torch.jit.load(...).state_dict()``) or a plain state dict."""
    if _is_torchscript_archive(path):
        sd, how = dict(torch.jit.load(path, map_location="cpu").state_dict()), "torchscript"
    else:
        obj, info = safe_load(path)
        sd, how = dict(obj.get("state_dict", obj)), info["path"]
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    if "visual.class_embedding" not in sd:
        raise PretrainedKeyError(f"{path}: no 'visual.class_embedding'; not an OpenAI CLIP state dict")
    return sd, how


# --------------------------------------------------------------------------------------------
# CLIP visual (METER / OpenAI names) -> timm VisionTransformer names

# One table of (CLIP name, timm name) templates, read in both directions: {i} a block index, {p} weight or bias.
_VISUAL_NAMES = [
    ("conv1.weight", "patch_embed.proj.weight"),
    ("class_embedding", "cls_token"),
    ("positional_embedding", "pos_embed"),
    ("ln_pre.{p}", "norm_pre.{p}"),
    ("ln_post.{p}", "norm.{p}"),
    ("transformer.resblocks.{i}.ln_1.{p}", "blocks.{i}.norm1.{p}"),
    ("transformer.resblocks.{i}.ln_2.{p}", "blocks.{i}.norm2.{p}"),
    ("transformer.resblocks.{i}.attn.in_proj_{p}", "blocks.{i}.attn.qkv.{p}"),
    ("transformer.resblocks.{i}.attn.out_proj.{p}", "blocks.{i}.attn.proj.{p}"),
    ("transformer.resblocks.{i}.mlp.c_fc.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("transformer.resblocks.{i}.mlp.c_proj.{p}", "blocks.{i}.mlp.fc2.{p}"),
]


def _template_regex(template):
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)"))


_CLIP_TO_TIMM = [(_template_regex(clip), timm) for clip, timm in _VISUAL_NAMES]
_TIMM_TO_CLIP = [(_template_regex(timm), clip) for clip, timm in _VISUAL_NAMES]


def _rename(name, rules):
    for pattern, target in rules:
        match = pattern.fullmatch(name)
        if match:
            return target.format(**match.groupdict())
    return None


def clip_visual_name(name):
    """CLIP visual key (without ``visual.``) -> timm key, or None when no rule matches."""
    return _rename(name, _CLIP_TO_TIMM)


def timm_visual_name(name):
    """timm ViT key -> CLIP visual key (without ``visual.``), or None: the inverse of ``clip_visual_name``."""
    return _rename(name, _TIMM_TO_CLIP)


def resize_pos_embed(pos, grid_size):
    """(1+g*g, D) CLIP position embedding -> (1+H*W, D) for grid (H, W): bicubic, no antialias, CLS kept."""
    n, dim = pos.shape
    g = int(round((n - 1) ** 0.5))
    if g * g != n - 1:
        raise PretrainedKeyError(f"position embedding with {n} rows is not 1 + a square grid")
    if (g, g) == tuple(grid_size):
        return pos
    grid = pos[1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(grid_size), mode="bicubic",
                         align_corners=False, antialias=False).to(pos.dtype)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(-1, dim)], dim=0)


def convert_clip_visual(visual_sd, grid_size, depth):
    """CLIP visual state dict (keys without ``visual.``) -> (timm state dict, unmapped keys, resized).

    Blocks with index >= ``depth`` and keys no rule knows are returned as unmapped.
    """
    out, unmapped, resized = {}, [], []
    for name, value in visual_sd.items():
        target = clip_visual_name(name)
        block = re.match(r"blocks\.(\d+)\.", target or "")
        if target is None or (block and int(block.group(1)) >= depth):
            unmapped.append(name)
            continue
        if target == "cls_token":
            value = value.reshape(1, 1, -1)
        elif target == "pos_embed":
            new = resize_pos_embed(value, grid_size)
            if new.shape != value.shape:
                resized.append({"key": name, "from": list(value.shape), "to": list(new.shape)})
            value = new.unsqueeze(0)
        out[target] = value
    return out, unmapped, resized


# --------------------------------------------------------------------------------------------
# Exact key checks


def check_and_load(module, state_dict, what):
    """Strict load of ``state_dict`` into ``module`` after an exact key and shape comparison."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: {list(state_dict[k].shape)} vs model {list(own[k].shape)}"
                    for k in set(own) & set(state_dict) if state_dict[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise PretrainedKeyError(
            f"{what}: {len(missing)} missing {missing[:20]}, {len(unexpected)} unexpected "
            f"{unexpected[:20]}, {len(shapes)} shape mismatches {shapes[:20]}")
    module.load_state_dict(state_dict, strict=True)
    return len(state_dict)


def _group_leftovers(keys, patterns, what):
    """Count left-over keys per known pattern label; unknown ones raise."""
    groups, unknown = Counter(), []
    for key in keys:
        label = next((lab for lab, pat in patterns if re.fullmatch(pat, key)), None)
        if label is None:
            unknown.append(key)
        else:
            groups[label] += 1
    if unknown:
        raise PretrainedKeyError(f"{what}: {len(unknown)} unexpected keys: {sorted(unknown)[:20]}")
    return dict(sorted(groups.items()))


# --------------------------------------------------------------------------------------------
# METER

METER_LEFTOVERS = [  # (label, full-key regex): present in METER checkpoints, not used by the backbone
    ("mlm_score", r"mlm_score\..*"),
    ("itm_score", r"itm_score\..*"),
    ("vit_model.positional_embedding", r"vit_model\.positional_embedding"),
    ("vit_model.ln_final", r"vit_model\.ln_final\..*"),
    ("text_transformer.embeddings.position_ids", r"text_transformer\.embeddings\.position_ids"),
    ("text_transformer.pooler", r"text_transformer\.pooler\..*"),
]
_REPLACED_POS = ("vit_model.visual.positional_embedding (replaced by OpenAI's)",
                 r"vit_model\.visual\.positional_embedding")
_CFA_KEYS = r"(cross_modal_(text|image)_(transform|layers|pooler)|token_type_embeddings)\..*"


def _cfa_layer(key):
    """Index of the co-attention layer a CFA key belongs to; -1 for transforms, poolers and type embeddings."""
    match = re.match(r"cross_modal_(?:text|image)_layers\.(\d+)\.", key)
    return int(match.group(1)) if match else -1


def meter_to_backbone(sd, backbone, pos_embed=None, what="METER checkpoint"):
    """METER state dict -> (backbone state dict, left-over groups, resized list).

    ``pos_embed`` (1+g*g, D), if given, replaces METER's own visual position embedding (openai source).
    """
    vit = backbone.vit_model
    visual, out, rest = {}, {}, []
    num_cfa = len(backbone.cfa.cross_modal_text_layers)
    patterns = list(METER_LEFTOVERS) + [(f"cross_modal_{side}_layers beyond cfa.num_layers={num_cfa}",
                                         rf"cross_modal_{side}_layers\.\d+\..*") for side in ("text", "image")]
    for key, value in sd.items():
        if any(re.fullmatch(p, key) for _, p in METER_LEFTOVERS):
            rest.append(key)
        elif key.startswith("vit_model.visual."):
            visual[key[len("vit_model.visual."):]] = value
        elif key.startswith("text_transformer."):
            out[key] = value
        elif re.fullmatch(_CFA_KEYS, key) and _cfa_layer(key) < num_cfa:
            out["cfa." + key] = value
        elif re.fullmatch(_CFA_KEYS, key):
            rest.append(key)
        else:
            rest.append(key)
    if pos_embed is not None and "positional_embedding" in visual:
        visual["positional_embedding"] = pos_embed
        rest.append("vit_model.visual.positional_embedding")
        patterns.append(_REPLACED_POS)
    converted, unmapped, resized = convert_clip_visual(visual, vit.patch_embed.grid_size, len(vit.blocks))
    rest += ["vit_model.visual." + k for k in unmapped]
    out.update({"vit_model." + k: v for k, v in converted.items()})
    resized = [dict(r, key="vit_model.visual." + r["key"]) for r in resized]
    return out, _group_leftovers(rest, patterns, what), resized


def load_meter(backbone, path, pos_embed=None):
    """Load a METER checkpoint into the whole backbone (strict). Returns a report dict."""
    ckpt, info = safe_load(path)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise PretrainedKeyError(f"{path}: no state_dict mapping in the checkpoint")
    mapped, leftover, resized = meter_to_backbone(sd, backbone, pos_embed, f"METER checkpoint {path}")
    loaded = check_and_load(backbone, mapped, f"METER checkpoint {path}")
    return {"loaded": loaded, "resized": resized, "left_over": leftover,
            "unpickle_path": info["path"], "stubbed_globals": info["stubbed"]}


# --------------------------------------------------------------------------------------------
# OpenAI CLIP


def openai_pos_embed(sd):
    return sd["visual.positional_embedding"]


def load_openai_vit(vit, sd, path):
    """Initialise the timm ViT from an OpenAI CLIP state dict (strict for the ViT)."""
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    converted, unmapped, resized = convert_clip_visual(visual, vit.patch_embed.grid_size, len(vit.blocks))
    rest = [k for k in sd if not k.startswith("visual.")] + ["visual." + k for k in unmapped]
    patterns = [("visual.proj", r"visual\.proj"),
                (f"visual.transformer.resblocks.>={len(vit.blocks)}", r"visual\.transformer\.resblocks\.\d+\..*"),
                ("text tower", r"(?!visual\.).*")]
    leftover = _group_leftovers(rest, patterns, f"OpenAI CLIP {path}")
    loaded = check_and_load(vit, converted, f"OpenAI CLIP {path}")
    return {"loaded": loaded, "resized": [dict(r, key="visual." + r["key"]) for r in resized],
            "left_over": leftover}


# --------------------------------------------------------------------------------------------
# RoBERTa folder

_TEXT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                "pad_token_id", "hidden_act")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def text_config_from_folder(folder):
    """``cfg["model"]["text"]`` values read from a roberta-base style ``config.json``."""
    with open(os.path.join(folder, "config.json")) as f:
        c = json.load(f)
    return {"vocab_size": c["vocab_size"], "hidden_size": c["hidden_size"],
            "num_layers": c["num_hidden_layers"], "num_heads": c["num_attention_heads"],
            "intermediate_size": c["intermediate_size"],
            "max_position_embeddings": c["max_position_embeddings"], "layer_norm_eps": c["layer_norm_eps"]}


def check_text_config(folder, text_model):
    """Raise if the folder's config.json disagrees with the built RobertaModel's config."""
    with open(os.path.join(folder, "config.json")) as f:
        src = json.load(f)
    dst = text_model.config
    bad = [f"{k}: folder {src.get(k)!r} vs model {getattr(dst, k)!r}" for k in _TEXT_FIELDS
           if src.get(k) != getattr(dst, k)]
    if bad:
        raise PretrainedKeyError(f"{folder}/config.json disagrees with model.text: {bad}")


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


# --------------------------------------------------------------------------------------------
# Entry points


def load_pretrained(backbone, cfg_pretrained):
    """Load what ``cfg["pretrained"]`` names into ``backbone``; returns {source: report}."""
    source = cfg_pretrained.get("pos_embed_source", "meter")
    if source not in ("meter", "openai"):
        raise ValueError(f"pretrained.pos_embed_source must be meter or openai, got {source!r}")
    meter, openai, roberta = (cfg_pretrained.get(k) for k in ("meter", "openai_clip", "roberta"))
    if source == "openai" and meter and not openai:
        raise ValueError("pretrained.pos_embed_source=openai needs pretrained.openai_clip")
    report, clip_sd = {}, None
    if openai:
        clip_sd, how = read_openai_clip(openai)
        report["openai_clip"] = {"path": openai, "format": how}
    if meter:
        pos = openai_pos_embed(clip_sd) if source == "openai" else None
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
    if not any(cfg_pretrained.get(k) for k in ("meter", "openai_clip", "roberta")):
        return None
    report = load_pretrained(backbone, cfg_pretrained)
    if verbose and dist.is_main():
        print(format_report(report), flush=True)
    return report


def _random_parts(report):
    """Backbone parts no source covered (they keep their random init)."""
    if "meter" in report:
        return []
    parts = [] if "loaded" in report.get("openai_clip", {}) else ["vit_model"]
    if not report.get("roberta", {}).get("loaded"):
        parts.append("text_transformer")
    return parts + ["cfa"]


def format_report(report):
    """Human-readable key report."""
    lines = []
    for name, rep in report.items():
        if name == "random_init":
            lines.append(f"random init (not covered by any source): {rep or 'none'}")
            continue
        lines.append(f"[{name}] " + ", ".join(f"{k}={rep[k]}" for k in
                                              ("path", "format", "use", "pos_embed_source", "unpickle_path",
                                               "config_only", "loaded") if k in rep))
        if rep.get("stubbed_globals"):
            lines.append(f"  stubbed pickle globals (never imported): {rep['stubbed_globals']}")
        for r in rep.get("resized", []):
            lines.append(f"  resized {r['key']}: {r['from']} -> {r['to']}")
        for prefix, count in rep.get("left_over", {}).items():
            lines.append(f"  left over {prefix}: {count} keys")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Load cfg.pretrained into the CIEC backbone and report keys.")
    parser.add_argument("--config", default=None)
    parser.add_argument("--opts", nargs="*", default=[])
    parser.add_argument("--pad-token-id", type=int, default=1)
    args = parser.parse_args(argv)
    from models.backbone import build_backbone
    from utils.config import load_config

    cfg = load_config(args.config, args.opts)
    backbone = build_backbone(cfg, pad_token_id=args.pad_token_id)
    try:
        report = load_pretrained(backbone, cfg["pretrained"])
    except PretrainedKeyError as err:
        print(f"KEY GAP: {err}", file=sys.stderr)
        return 1
    except FileNotFoundError as err:
        print(f"MISSING FILE: {err} (see checkpoints/README.md)", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
