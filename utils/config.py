"""YAML configuration: defaults, merge, validation and ``--opts`` overrides.

A config is a plain nested dict. ``load_config(path, opts)`` merges the YAML file over
``DEFAULTS``, applies ``a.b=value`` overrides (parsed with ``ast.literal_eval``), and
validates the result: unknown keys raise, and every value must have the type of its default
(ints are accepted where floats are expected; ``None`` defaults accept anything). Strings that
look like numbers (PyYAML reads ``1e-5`` as the string "1e-5") are converted where the
default is a float. Keys listed in ``VALIDATORS`` (``train.grad_checkpointing``: a name or a list)
are checked by their own function instead.
"""
import ast
import copy
import os

import yaml

# Every key the code reads. Sizes here are paper size (section 3.2 of the CIEC paper);
# configs/demo.yaml shrinks them.
DEFAULTS = {
    "data": {
        "root": "data",                       # image paths in records are relative to this folder
        "train_files": ["DGM4/metadata/train.json"],  # relative to root; a list, so train+val is a choice
        "val_files": ["DGM4/metadata/val.json"],
        "test_files": ["DGM4/metadata/test.json"],
        "face_cache": "DGM4/faces.json",      # relative to root (preprocess/detect_faces.py)
        "stopword_cache": "DGM4/stopwords.json",  # relative to root (preprocess/stopword_masks.py)
        "stopwords": "sklearn",               # M_c's stop-word list: sklearn's 318 words, or a word-list file
        "tokenizer": "checkpoints/roberta-base",  # local folder, RoBERTa-style fast tokenizer
        "image_size": 256,                    # section 3.2
        "max_len": 50,                        # section 3.2: text padded to 50 tokens
        "max_words": 50,                      # benchmark's pre_caption word cap
        "num_boxes": 5,                       # n, section 3.2
        "on_bad_record": "fail",              # fail | skip
        "box_tolerance": 0.05,                # fake_image_box may leave the image by this fraction of W/H (MTCNN boxes)
        "jpeg_draft": True,                   # decode JPEGs at 1/2-1/8 scale when still >= 2x image_size (speed)
        "check_images": True,                 # with on_bad_record=skip: decode every image once at load, drop bad ones
        "num_workers": 4,
    },
    "model": {
        "hidden_size": 768,                   # D of the CFA and of every head
        "vit": {"embed_dim": 768, "depth": 11, "num_heads": 12, "patch_size": 16, "mlp_ratio": 4.0},
        "text": {"vocab_size": 50265, "hidden_size": 768, "num_layers": 12, "num_heads": 12,
                 "intermediate_size": 3072, "max_position_embeddings": 514, "layer_norm_eps": 1.0e-5,
                 "dropout": 0.1},                 # roberta-base's hidden and attention dropout
        "cfa": {"num_layers": 6, "num_heads": 12, "intermediate_size": 3072, "dropout": 0.1},
        "trps": {
            "topk": 8,                        # Top-K of the coarse patch prediction (2.3.1)
            "tau1": 2.0,                      # eq. 3
            "tau2": 0.1,                      # eqs. 6-7
            "box_reduce": "mean",             # mean | sum: normalisation of Sum in S^iv, S^ev (eq. 4)
            "proj_dim": 256,                  # shared space of Sim(V_pat, T_cls)
            "text_aid": True,                 # S^ev branch (Table 2 "w/o Text-aid")
        },
        "vctg": {
            "topk": 3,                        # Top-K of the coarse token prediction (2.4.1)
            "kernel_size": 3,                 # eq. 13
            "proj_dim": 256,                  # shared space of Sim(T_tok, V_pat), eq. 14
            "image_aid": True,                # S^et branch (Table 3 "w/o Image-aid")
            "gate": "softmax",                # softmax | sigmoid: form of W^it, W^et in eq. 16
            "gate_tokens_by_text": True,      # token predictions zeroed when the text is judged real
            "token_threshold": 0.5,
            "zscore_tokens": "content",       # content | words: tokens whose mean/std give the z-score of eq. 15
            "fine_pool": "weighted",          # weighted | length: sum_i S^t_i T_i / sum_i S^t_i or / #content (2.4.2)
            "text_decision": "fine",          # fine | coarse: sentence score (> 0.5) that gates token_pred
        },
    },
    "pretrained": {
        "meter": None,                        # METER Lightning .ckpt
        "openai_clip": None,                  # OpenAI ViT-B-16.pt (position-embedding source)
        "roberta": None,                      # local roberta-base folder (weights)
        "pos_embed_source": "meter",          # meter | openai
    },
    "loss": {
        "weights": {"bic": 1.0, "v_coarse": 1.0, "v_fine": 1.0, "bsc": 1.0, "sce": 1.0,
                    "t_coarse": 1.0, "t_fine": 1.0, "asc": 1.0, "scc": 1.0},
        "bsc_eps": 0.1,                       # epsilon, eq. 9
        "sce_delta": 0.2,                     # delta_1, eq. 11
        "sce_topk": 8,                        # K_1, eq. 11
        "sce_sigma": 0.25,                    # width of the spatial weighting in H (grid units / N)
        "asc_lambda": 2.0,                    # lambda, eq. 20
        "asc_k2_ratio": 0.1,                  # K_2 = max(k2_min, ceil(ratio * #content tokens)), eq. 19
        "asc_k2_min": 1,
        "scc_delta": 0.1,                     # delta_2, eq. 21
    },
    "train": {
        "output_dir": "output/ciec",
        "epochs": 50,
        "batch_size": 32,                     # per GPU (8 GPUs -> 256)
        "accum_steps": 1,
        "grad_checkpointing": "none",         # none | vit | text | cfa | all, or a list such as [vit, cfa]
        "lr": 1.0e-5,
        "backbone_lr_scale": 1.0,             # train.py: lr factor of model.backbone's parameters (1.0: the paper)
        "min_lr": 1.0e-6,
        "weight_decay": 0.02,
        "warmup_steps": 1000,
        "amp": "bf16",                        # bf16 | fp16 | none
        "clip_grad": 0.0,                     # 0 disables
        "seed": 777,
        "deterministic": False,
        "log_every": 50,
        "save_every_steps": 0,                # 0: checkpoint only at epoch end
        "device": "auto",                     # auto | cpu | cuda
    },
    "eval": {
        "batch_size": 64,
        "split": "test",
    },
    # pretrain.py only (METER's objectives on pristine pairs; docs/implementation_notes.md "Pre-training").
    # It trains with train.* (epochs, batch, lr, schedule, amp, output_dir) and exports
    # <train.output_dir>/meter_pretrain.ckpt for pretrained.meter.
    "pretrain": {
        "files": ["metadata/pretrain.json"],  # relative to data.root; pristine records only
        "val_size": 256,                      # the corpus's last records, held out for validation
        "word_kinds": None,                   # JSON {names, attributes, places: [words]} for per-kind MLM accuracy
        "mlm_prob": 0.15,                     # METER: 15% of the units, 80/10/10
        "content_mlm_prob": None,             # if set: selection probability of content words (M_c) instead
        "whole_word": True,                   # units are whole words (False: single tokens)
        "content_spans": False,               # a selected content word also selects its adjacent content words
        "itm_neg_prob": 0.5,                  # METER: half of the pairs get another image's caption
        "val_seed": 1234,                     # fixed masks and pairs of the validation set
    },
}


def _coerce(value, default, key):
    """Return ``value`` converted to the type of ``default``; raise on a mismatch."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"config key {key}: expected bool, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise TypeError(f"config key {key}: expected float, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"config key {key}: expected float, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"config key {key}: expected int, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError(f"config key {key}: expected str, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise TypeError(f"config key {key}: expected list, got {value!r}")
        return value
    return value


GRAD_CHECKPOINTING_PARTS = ("vit", "text", "cfa")


def grad_checkpointing_parts(value):
    """``train.grad_checkpointing`` -> the tuple of parts whose activations are recomputed in backward.

    "none" -> (), "all" -> ("vit", "text", "cfa"), "vit" -> ("vit",), ["vit", "cfa"] -> ("vit", "cfa") (in the
    order of ``GRAD_CHECKPOINTING_PARTS``). Anything else raises ValueError naming the allowed values.
    """
    allowed = ("none", "all", *GRAD_CHECKPOINTING_PARTS)
    if isinstance(value, list):
        ok = bool(value) and all(isinstance(v, str) and v in GRAD_CHECKPOINTING_PARTS for v in value)
    else:
        ok = isinstance(value, str) and value in allowed
    if not ok:
        raise ValueError(f"config key train.grad_checkpointing: expected one of {allowed} or a non-empty list of "
                         f"{GRAD_CHECKPOINTING_PARTS}, got {value!r}")
    names = value if isinstance(value, list) else [value]
    if "all" in names:
        return GRAD_CHECKPOINTING_PARTS
    return tuple(p for p in GRAD_CHECKPOINTING_PARTS if p in names)


# keys whose value is checked by a function of their own instead of by the type of their default
VALIDATORS = {"train.grad_checkpointing": grad_checkpointing_parts}


def merge(base, override, prefix=""):
    """Recursively merge ``override`` into a copy of ``base``; unknown keys raise KeyError."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise KeyError(f"unknown config key: {path} (known: {sorted(base)})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise TypeError(f"config key {path}: expected a mapping, got {value!r}")
            out[key] = merge(base[key], value, prefix=path + ".")
        elif path in VALIDATORS:
            VALIDATORS[path](value)  # raises on a bad value
            out[key] = value
        else:
            out[key] = _coerce(value, base[key], path)
    return out


def parse_opts(opts):
    """Turn ``["a.b=1", "c=x"]`` into a nested dict, values parsed with literal_eval."""
    nested = {}
    for opt in opts or []:
        if "=" not in opt:
            raise ValueError(f"--opts entries look like key.sub=value, got {opt!r}")
        key, raw = opt.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare string
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_config(path=None, opts=None, base=None):
    """Defaults <- ``base`` file's own ``_base_`` chain <- YAML at ``path`` <- ``opts``."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = merge(cfg, _read_yaml_chain(path))
    return merge(cfg, parse_opts(opts))


def _read_yaml_chain(path):
    """Read a YAML file; a top-level ``_base_: other.yaml`` (relative to it) is merged first."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise TypeError(f"{path}: a config file must hold a mapping")
    base = data.pop("_base_", None)
    if base is None:
        return data
    parent = _read_yaml_chain(os.path.join(os.path.dirname(path), base))
    return _deep_update(parent, data)


def _deep_update(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def save_config(cfg, path):
    """Write the resolved config as YAML (floats stay floats)."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


# Keys a resumed run may change: where and how often things are written, loader workers, the device and the
# evaluation settings. Everything else defines the run (data, model, losses, optimisation, schedule).
# train.grad_checkpointing only trades compute for memory: the recomputation replays the same operations with the
# same RNG state (torch.utils.checkpoint's preserve_rng_state), so the losses, gradients and RNG stream are those of
# the run without it (tests/test_grad_checkpointing.py).
RESUMABLE_CHANGES = ("data.num_workers", "train.output_dir", "train.log_every", "train.save_every_steps",
                     "train.device", "train.grad_checkpointing", "eval.batch_size", "eval.split")


def flatten(values, prefix="", sep="."):
    """``{"a": 1, "b": {"c": 2}}`` -> ``{"a": 1, "b.c": 2}`` (``sep`` between the levels)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}{sep}", sep))
        else:
            flat[prefix + key] = value
    return flat


# test.py: what may differ between the config a checkpoint was trained with and the config it is evaluated under.
# Everything else (model.*, data.image_size / max_len / max_words / num_boxes / stopwords, ...) changes the model or
# what it is fed, and is refused. The two VCTG keys are read-outs of the same scores (the README's gate on/off table).
EVAL_TIME_SECTIONS = ("train.", "loss.", "eval.", "pretrained.", "pretrain.")
EVAL_TIME_KEYS = ("data.root", "data.train_files", "data.val_files", "data.test_files", "data.face_cache",
                  "data.stopword_cache", "data.tokenizer", "data.num_workers", "data.on_bad_record",
                  "data.check_images", "data.box_tolerance", "data.jpeg_draft",
                  "model.vctg.gate_tokens_by_text", "model.vctg.token_threshold")


def eval_conflicts(saved, current):
    """``{key: (trained, now)}`` of the keys outside the evaluation-time settings that differ between a checkpoint's
    config and the evaluation config (a key the checkpoint lacks counts as its default)."""
    defaults = flatten(DEFAULTS)
    old, new = {**defaults, **flatten(saved)}, flatten(current)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in EVAL_TIME_KEYS and not k.startswith(EVAL_TIME_SECTIONS)}


def resume_conflicts(saved, current, saved_world=None, world=None):
    """Dotted keys (outside RESUMABLE_CHANGES) whose values differ between a checkpoint's config and the current
    one, as ``{key: (saved, current)}``; empty when the run may continue. Given both world sizes, a new split of
    the same global batch (world x train.accum_steps x train.batch_size, e.g. 8 GPUs -> 1 GPU with accum_steps=8)
    is allowed: the sampler draws identical global batches for every factorisation. A key the checkpoint's config
    does not have (an option added to the code later) is no conflict while it keeps its default, since a new option's
    default reproduces the behaviour from before it existed."""
    old, new, defaults = flatten(saved), flatten(current), flatten(DEFAULTS)
    conflicts = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                 if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)
                 and not (k not in old and k in defaults and new.get(k) == defaults[k])}
    split = ("train.accum_steps", "train.batch_size")
    if saved_world and world and all(k in old and k in new for k in split):
        if saved_world * old[split[0]] * old[split[1]] == world * new[split[0]] * new[split[1]]:
            for key in split:
                conflicts.pop(key, None)
    return conflicts
