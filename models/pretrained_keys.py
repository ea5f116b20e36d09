"""Key mapping of pretrained weights onto the CIEC backbone, with exact key checks (paper section 3.2).

- CLIP visual tower (METER's ``vit_model.visual.*`` and OpenAI's ``visual.*``) -> timm ``VisionTransformer`` names,
  one table read in both directions (``clip_visual_name`` / ``timm_visual_name``); the (1+g*g, D) position
  embedding is resized to the model's grid with bicubic, align_corners=False, antialias=False, CLS row kept
  (METER's ``adapt_position_encoding``).
- METER (``meter_to_backbone``): ``text_transformer.*`` unchanged (HF RobertaModel names), ``cross_modal_*`` and
  ``token_type_embeddings`` -> ``cfa.*``; the keys not used by the backbone must belong to ``METER_LEFTOVERS``.
- OpenAI CLIP (``openai_to_vit``): the visual tower up to the model's depth; ``visual.proj``, deeper blocks and the
  text tower are left over.
- roberta-base folder: ``config.json`` must agree with the built ``RobertaModel`` (``check_text_config``).

Every mapping is exact: ``check_and_load`` compares keys and shapes before a strict load, and a left-over key
outside the known lists raises ``PretrainedKeyError``. Nothing here reads a checkpoint file (see
``models/pretrained_load.py``).
"""
import json
import os
import re
from collections import Counter

import torch
import torch.nn.functional as F

from utils.errors import CheckpointError, MissingDataError


class PretrainedKeyError(CheckpointError):
    """A checkpoint does not cover the model exactly (missing, unexpected or mis-shaped keys), or a pretrained
    folder's config disagrees with the model."""


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


def group_leftovers(keys, patterns, what):
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


def _split_meter(sd, num_cfa):
    """METER keys -> (visual keys without ``vit_model.visual.``, backbone-named text/CFA keys, left-over keys)."""
    visual, out, rest = {}, {}, []
    for key, value in sd.items():
        if any(re.fullmatch(p, key) for _, p in METER_LEFTOVERS):
            rest.append(key)
        elif key.startswith("vit_model.visual."):
            visual[key[len("vit_model.visual."):]] = value
        elif key.startswith("text_transformer."):
            out[key] = value
        elif re.fullmatch(_CFA_KEYS, key) and _cfa_layer(key) < num_cfa:
            out["cfa." + key] = value
        else:
            rest.append(key)
    return visual, out, rest


def meter_to_backbone(sd, backbone, pos_embed=None, what="METER checkpoint"):
    """METER state dict -> (backbone state dict, left-over groups, resized list).

    ``pos_embed`` (1+g*g, D), if given, replaces METER's own visual position embedding (openai source).
    """
    vit = backbone.vit_model
    num_cfa = len(backbone.cfa.cross_modal_text_layers)
    patterns = list(METER_LEFTOVERS) + [(f"cross_modal_{side}_layers beyond cfa.num_layers={num_cfa}",
                                         rf"cross_modal_{side}_layers\.\d+\..*") for side in ("text", "image")]
    visual, out, rest = _split_meter(sd, num_cfa)
    if pos_embed is not None and "positional_embedding" in visual:
        visual["positional_embedding"] = pos_embed
        rest.append("vit_model.visual.positional_embedding")
        patterns.append(_REPLACED_POS)
    converted, unmapped, resized = convert_clip_visual(visual, vit.patch_embed.grid_size, len(vit.blocks))
    rest += ["vit_model.visual." + k for k in unmapped]
    out.update({"vit_model." + k: v for k, v in converted.items()})
    resized = [dict(r, key="vit_model.visual." + r["key"]) for r in resized]
    return out, group_leftovers(rest, patterns, what), resized


# --------------------------------------------------------------------------------------------
# OpenAI CLIP


def openai_to_vit(sd, vit, what="OpenAI CLIP"):
    """OpenAI CLIP state dict -> (timm ViT state dict, left-over groups, resized list)."""
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    converted, unmapped, resized = convert_clip_visual(visual, vit.patch_embed.grid_size, len(vit.blocks))
    rest = [k for k in sd if not k.startswith("visual.")] + ["visual." + k for k in unmapped]
    patterns = [("visual.proj", r"visual\.proj"),
                (f"visual.transformer.resblocks.>={len(vit.blocks)}", r"visual\.transformer\.resblocks\.\d+\..*"),
                ("text tower", r"(?!visual\.).*")]
    leftover = group_leftovers(rest, patterns, what)
    return converted, leftover, [dict(r, key="visual." + r["key"]) for r in resized]


# --------------------------------------------------------------------------------------------
# roberta-base folder

_TEXT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                "pad_token_id", "hidden_act")


def _read_folder_config(folder):
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise MissingDataError(f"pretrained.roberta: {path} does not exist (a roberta-base folder holds "
                               f"config.json; see checkpoints/README.md)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def text_config_from_folder(folder):
    """``cfg["model"]["text"]`` values read from a roberta-base style ``config.json``."""
    c = _read_folder_config(folder)
    return {"vocab_size": c["vocab_size"], "hidden_size": c["hidden_size"],
            "num_layers": c["num_hidden_layers"], "num_heads": c["num_attention_heads"],
            "intermediate_size": c["intermediate_size"],
            "max_position_embeddings": c["max_position_embeddings"], "layer_norm_eps": c["layer_norm_eps"]}


def check_text_config(folder, text_model):
    """Raise if the folder's config.json disagrees with the built RobertaModel's config."""
    src = _read_folder_config(folder)
    dst = text_model.config
    bad = [f"{k}: folder {src.get(k)!r} vs model {getattr(dst, k)!r}" for k in _TEXT_FIELDS
           if src.get(k) != getattr(dst, k)]
    if bad:
        raise PretrainedKeyError(f"{folder}/config.json disagrees with model.text: {bad}")
