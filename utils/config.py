"""YAML configuration: defaults, merge, validation and ``--opts`` overrides.

A config is a plain nested dict. ``load_config(path, opts)`` merges the YAML file over
``DEFAULTS``, applies ``a.b=value`` overrides (each value parsed as YAML, like the files:
``data.train_files=[a.json,b.json]``, ``pretrained.meter=null``), and validates the result: unknown keys raise,
every value must have the type of its default (ints are accepted where floats are expected; ``None`` defaults
accept anything, and only they accept ``None``), and every key of ``RULES`` must pass its value rule (ranges and
choices, ``utils/config_rules.py``). Keys listed in ``VALIDATORS`` (``train.grad_checkpointing``: a name or a list)
are checked by their own function. Every refusal is a ``ConfigError`` naming the file or key. The YAML reader
(files and ``--opts``) reads ``1e-5`` as a float (YAML 1.2, where PyYAML's YAML 1.1 gives a string) and ``None`` as
null.
"""
import copy
import os
import re

import yaml

from utils.config_rules import (
    FRACTION,
    NON_NEGATIVE,
    ODD,
    PATHS,
    POSITIVE,
    TEXT,
    check_values,
    choice,
    integer,
    optional,
    subset_of,
)
from utils.errors import ConfigError, MissingDataError
from utils.io import atomic_write

# The ops RandomAugment may draw (datasets/transforms.py): ALBEF's RandAugment restricted as in the field's pipeline.
AUGMENT_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness")
# The word kinds of a pre-training word-kinds file that a picture shows (datasets/pretrain.py KINDS adds "other").
PICTURED_KINDS = ("names", "expressions", "colours", "places")

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
        "check_images": True,                 # the up-front audit decodes every image fully (cached by size, mtime);
                                              # false: it reads image headers only (no full decode, no cache)
        "num_workers": 4,
        # training images only: the pool of RandomAugment (datasets/transforms.py), 2 draws with replacement, each
        # applied with p = 0.5; the default is the field's pipeline. [] = flip only. AutoContrast and Equalize act
        # per channel and change hues (docs/implementation_notes.md "Training augmentation").
        "augment_ops": list(AUGMENT_OPS),
    },
    "model": {
        "hidden_size": 768,                   # D of the CFA and of every head
        "vit": {"embed_dim": 768, "depth": 11, "num_heads": 12, "patch_size": 16, "mlp_ratio": 4.0,
                "local_radius": None},        # null = CLIP; r: patches attend within (2r+1)^2 windows (not the paper)
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
            "conv_tokens": "all",             # all | words: positions of T-hat the eq. 13 Conv1d reads
            "coarse_head": "linear",          # linear | mlp: the 2.4.1 projection of T-hat to token scores
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
        "asc_rest_weight": 0.0,               # not in the paper: BCE(S^t, 0) on fake sentences' tokens outside O
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
        "vit_lr_scale": None,                 # train.py: lr factor of the image encoder alone (null: backbone_lr_scale)
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
        "word_kinds": None,                   # JSON {kind: [words]}: MLM accuracy per kind, swap donors
        "mlm_prob": 0.15,                     # METER: 15% of the units, 80/10/10
        "content_mlm_prob": None,             # if set: selection probability of content words (M_c) instead
        # if set: selection probability of the words of that kind (word_kinds), over the two above (not METER's; a
        # whole name follows its first word's draw with content_spans)
        "kind_mlm_prob": {kind: None for kind in PICTURED_KINDS},
        "whole_word": True,                   # units are whole words (False: single tokens)
        "content_spans": False,               # a selected content word also selects its adjacent content words
        "itm_neg_prob": 0.5,                  # METER: half of the pairs get another image's caption
        "itm_word_neg_prob": 0.0,             # 0 = METER; > 0: this share of the negatives is the image's own
                                              # caption with one unit (word, whole name) swapped (harder negatives)
        "word_neg_kinds": list(PICTURED_KINDS),  # the kinds (word_kinds) whose units those negatives swap
        "itc_dim": None,                      # null = METER (MLM + ITM); an int: add ALBEF's contrastive ITC loss on
                                              # the unimodal [CLS] features, projected to this size (not METER's)
        "rud_weight": 0.0,                    # 0 = METER; > 0: add replaced-unit detection (a per-token BCE on the
                                              # CFA text stream of the ITM pairs) at this weight (itm_word_neg_prob > 0)
        "mim_weight": 0.0,                    # 0 = METER; > 0: add SimMIM's masked image modelling (pixels of the
                                              # masked patches from a second ViT pass) at this weight
        "mim_ratio": 0.5,                     # share of the patches masked for it
        "val_seed": 1234,                     # fixed masks and pairs of the validation set
    },
}

# The value rule of every key with a range or a set of choices (checked by load_config after the types).
_SIZE, _COUNT = integer(1), integer(0)
_LOSS_WEIGHTS = {f"loss.weights.{name}": NON_NEGATIVE for name in DEFAULTS["loss"]["weights"]}
RULES = {
    "data.root": TEXT, "data.train_files": PATHS, "data.val_files": PATHS, "data.test_files": PATHS,
    "data.face_cache": TEXT, "data.stopword_cache": TEXT, "data.stopwords": TEXT, "data.tokenizer": TEXT,
    "data.image_size": _SIZE, "data.max_len": integer(3), "data.max_words": _SIZE, "data.num_boxes": _SIZE,
    "data.on_bad_record": choice("fail", "skip"), "data.box_tolerance": NON_NEGATIVE, "data.num_workers": _COUNT,
    "data.augment_ops": subset_of(*AUGMENT_OPS),
    "model.hidden_size": _SIZE, "model.vit.embed_dim": _SIZE, "model.vit.depth": _SIZE, "model.vit.num_heads": _SIZE,
    "model.vit.patch_size": _SIZE, "model.vit.mlp_ratio": POSITIVE, "model.vit.local_radius": optional(_COUNT),
    "model.text.vocab_size": _SIZE, "model.text.hidden_size": _SIZE, "model.text.num_layers": _SIZE,
    "model.text.num_heads": _SIZE, "model.text.intermediate_size": _SIZE,
    "model.text.max_position_embeddings": _SIZE, "model.text.layer_norm_eps": POSITIVE,
    "model.text.dropout": FRACTION,
    "model.cfa.num_layers": _COUNT, "model.cfa.num_heads": _SIZE, "model.cfa.intermediate_size": _SIZE,
    "model.cfa.dropout": FRACTION,
    "model.trps.topk": _SIZE, "model.trps.tau1": POSITIVE, "model.trps.tau2": POSITIVE,
    "model.trps.box_reduce": choice("mean", "sum"), "model.trps.proj_dim": _SIZE,
    "model.vctg.topk": _SIZE, "model.vctg.kernel_size": ODD, "model.vctg.proj_dim": _SIZE,
    "model.vctg.gate": choice("softmax", "sigmoid"), "model.vctg.token_threshold": FRACTION,
    "model.vctg.zscore_tokens": choice("content", "words"), "model.vctg.fine_pool": choice("weighted", "length"),
    "model.vctg.text_decision": choice("fine", "coarse"), "model.vctg.conv_tokens": choice("all", "words"),
    "model.vctg.coarse_head": choice("linear", "mlp"),
    "pretrained.meter": optional(TEXT), "pretrained.openai_clip": optional(TEXT), "pretrained.roberta": optional(TEXT),
    "pretrained.pos_embed_source": choice("meter", "openai"),
    **_LOSS_WEIGHTS, "loss.bsc_eps": FRACTION, "loss.sce_delta": NON_NEGATIVE, "loss.sce_topk": _SIZE,
    "loss.sce_sigma": POSITIVE, "loss.asc_lambda": NON_NEGATIVE, "loss.asc_k2_ratio": FRACTION,
    "loss.asc_k2_min": _COUNT, "loss.asc_rest_weight": NON_NEGATIVE, "loss.scc_delta": NON_NEGATIVE,
    "train.output_dir": TEXT, "train.epochs": _SIZE, "train.batch_size": _SIZE, "train.accum_steps": _SIZE,
    "train.lr": NON_NEGATIVE, "train.backbone_lr_scale": NON_NEGATIVE,
    "train.vit_lr_scale": optional(NON_NEGATIVE), "train.min_lr": NON_NEGATIVE,
    "train.weight_decay": NON_NEGATIVE, "train.warmup_steps": _COUNT, "train.amp": choice("none", "fp16", "bf16"),
    "train.clip_grad": NON_NEGATIVE, "train.seed": _COUNT, "train.log_every": _SIZE, "train.save_every_steps": _COUNT,
    "train.device": choice("auto", "cpu", "cuda"),
    "eval.batch_size": _SIZE, "eval.split": choice("train", "val", "test"),
    "pretrain.files": PATHS, "pretrain.val_size": _SIZE, "pretrain.word_kinds": optional(TEXT),
    "pretrain.mlm_prob": FRACTION, "pretrain.content_mlm_prob": optional(FRACTION),
    **{f"pretrain.kind_mlm_prob.{kind}": optional(FRACTION) for kind in PICTURED_KINDS},
    "pretrain.itm_neg_prob": FRACTION, "pretrain.itm_word_neg_prob": FRACTION,
    "pretrain.word_neg_kinds": subset_of(*PICTURED_KINDS),
    "pretrain.val_seed": _COUNT, "pretrain.itc_dim": optional(_SIZE),
    "pretrain.rud_weight": NON_NEGATIVE, "pretrain.mim_weight": NON_NEGATIVE, "pretrain.mim_ratio": FRACTION,
}


class ConfigKeyError(ConfigError, KeyError):
    """An unknown config key (a ``KeyError`` too, for callers that catch that)."""

    def __str__(self):
        return str(self.args[0])  # KeyError's own str() would quote the message


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type (a ``TypeError`` too, for callers that catch that)."""


def _type_ok(value, default):
    """Whether ``value`` may stand where ``default`` is (ints where floats are; bools only where bools are)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _nullable(key):
    """True when ``DEFAULTS`` holds ``None`` at the dotted ``key`` (an optional setting, e.g. ``pretrained.meter``)."""
    node = DEFAULTS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node is None


def _coerce(value, default, key):
    """Return ``value`` converted to the type of ``default``; raise ``ConfigTypeError`` on a mismatch (``None`` is
    accepted only where the default, or the built-in default in ``DEFAULTS``, is ``None``: a config file that sets
    ``pretrained.meter`` to a path can still be overridden with ``pretrained.meter=null``)."""
    if default is None or (value is None and _nullable(key)):
        return value
    if isinstance(default, float) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not _type_ok(value, default):
        hint = ""
        if isinstance(default, str) and isinstance(value, (bool, int, float)):
            hint = " (YAML read the value as a number or a boolean: quote it)"
        raise ConfigTypeError(f"config key {key}: expected {type(default).__name__}, got {value!r}{hint}")
    return float(value) if isinstance(default, float) else value


GRAD_CHECKPOINTING_PARTS = ("vit", "text", "cfa")


def grad_checkpointing_parts(value):
    """``train.grad_checkpointing`` -> the tuple of parts whose activations are recomputed in backward.

    "none" -> (), "all" -> ("vit", "text", "cfa"), "vit" -> ("vit",), ["vit", "cfa"] -> ("vit", "cfa") (in the
    order of ``GRAD_CHECKPOINTING_PARTS``). Anything else raises ConfigError (a ValueError) naming the allowed values.
    """
    allowed = ("none", "all", *GRAD_CHECKPOINTING_PARTS)
    if isinstance(value, list):
        ok = bool(value) and all(isinstance(v, str) and v in GRAD_CHECKPOINTING_PARTS for v in value)
    else:
        ok = isinstance(value, str) and value in allowed
    if not ok:
        raise ConfigError(f"config key train.grad_checkpointing: expected one of {allowed} or a non-empty list of "
                         f"{GRAD_CHECKPOINTING_PARTS}, got {value!r}")
    names = value if isinstance(value, list) else [value]
    if "all" in names:
        return GRAD_CHECKPOINTING_PARTS
    return tuple(p for p in GRAD_CHECKPOINTING_PARTS if p in names)


# keys whose value is checked by a function of their own instead of by the type of their default
VALIDATORS = {"train.grad_checkpointing": grad_checkpointing_parts}


def merge(base, override, prefix=""):
    """Recursively merge ``override`` into a copy of ``base``; unknown keys raise ``ConfigKeyError``, values of the
    wrong type ``ConfigTypeError`` (both ``ConfigError``)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise ConfigKeyError(f"unknown config key: {path} (known: {sorted(base)})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigTypeError(f"config key {path}: expected a mapping, got {value!r}")
            out[key] = merge(base[key], value, prefix=path + ".")
        elif path in VALIDATORS:
            VALIDATORS[path](value)  # raises on a bad value
            out[key] = value
        else:
            out[key] = _coerce(value, base[key], path)
    return out


def parse_opts(opts):
    """Turn ``["a.b=1", "c=[x, y]"]`` into a nested dict, each value parsed as YAML (as in a config file; an empty
    value is null). A malformed entry is a ``ConfigError`` naming it."""
    nested = {}
    for opt in opts or []:
        key, sep, raw = opt.partition("=")
        parts = key.split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(f"--opts entries look like key.sub=value, got {opt!r}")
        value = _yaml_value(raw, f"--opts {opt}")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--opts {opt}: {part} is given a value by another entry, so it has no keys")
        node[parts[-1]] = value
    return nested


def load_config(path=None, opts=None, base=None):
    """Defaults <- YAML at ``path`` (after its own ``_base_`` chain) <- ``opts``, then the value rules (``RULES``,
    ``VALIDATORS``). Every refusal is a ``ConfigError`` (a missing file a ``MissingDataError``)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = _merge_from(cfg, _read_yaml_chain(path), f"config file {path}")
    cfg = _merge_from(cfg, parse_opts(opts), "--opts")
    check_values(cfg, RULES)
    return cfg


def _merge_from(cfg, override, source):
    """``merge(cfg, override)``; an error names ``source`` (the file or --opts) after the key."""
    try:
        return merge(cfg, override)
    except ConfigError as err:
        raise type(err)(f"{err} (in {source})") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-5`` as a float (YAML 1.2) and ``None`` as null."""


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting the strings that ``_Loader`` would read as floats or null."""


_FLOAT_E = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$")
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_E, list("-+.0123456789"))
    _cls.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^None$"), ["N"])


def _yaml_error(err):
    """One line of a PyYAML error: the problem and where it is."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return f"{problem}{where}"


def _yaml_value(text, source):
    """``text`` parsed as YAML; a parse error is a ``ConfigError`` naming ``source``."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({_yaml_error(err)})") from None


def _read_text(path, what, remedy):
    """The UTF-8 text of the config file ``path``; ``what`` names it in the errors, ``remedy`` says where it goes."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise MissingDataError(f"{what} not found ({remedy})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{what} cannot be read: {err.strerror or err}") from None


def _read_yaml_chain(path, seen=()):
    """Read a YAML file; a top-level ``_base_: other.yaml`` (relative to it) is merged first."""
    what = f"config file {path}" + (f" (the _base_ of {seen[-1]})" if seen else "")
    remedy = ("a _base_ is relative to the file that names it" if seen else "paths are relative to the working "
              "directory: run from the repository root, or pass --config FILE")
    data = _yaml_value(_read_text(path, what, remedy), what)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping of config keys, not a {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{what}: _base_ must be a file name, got {base!r}")
    parent_path = os.path.join(os.path.dirname(path), base)
    if os.path.realpath(parent_path) in {os.path.realpath(p) for p in (*seen, path)}:
        raise ConfigError(f"{what}: its _base_ chain comes back to {parent_path}")
    return _deep_update(_read_yaml_chain(parent_path, (*seen, path)), data)


def _deep_update(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def save_config(cfg, path):
    """Write the resolved config as YAML (floats stay floats), atomically (a full disk: ``DiskFullError``)."""
    atomic_write(path, lambda f: yaml.dump(cfg, f, Dumper=_Dumper, sort_keys=False), binary=False)


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
# Everything else (model.*, data.image_size / max_len / max_words / num_boxes / stopwords, data.jpeg_draft, which
# changes the decoded pixels, ...) changes the model or what it is fed, and is refused. The two VCTG keys are
# read-outs of the same scores (the README's gate on/off table).
EVAL_TIME_SECTIONS = ("train.", "loss.", "eval.", "pretrained.", "pretrain.")
EVAL_TIME_KEYS = ("data.root", "data.train_files", "data.val_files", "data.test_files", "data.face_cache",
                  "data.stopword_cache", "data.tokenizer", "data.num_workers", "data.on_bad_record",
                  "data.check_images", "data.box_tolerance", "data.augment_ops",
                  "model.vctg.gate_tokens_by_text", "model.vctg.token_threshold")


MODEL_EVAL_KEYS = tuple(k for k in EVAL_TIME_KEYS if k.startswith("model."))  # they change the predictions


def _trained_values(saved):
    """The flat config a checkpoint was trained with: its stored ``saved`` config over the defaults (a key the
    checkpoint lacks, an option added later, counts as its default; None = the defaults)."""
    return {**flatten(DEFAULTS), **flatten(saved or {})}


def default_eval_dir(current, split, saved):
    """test.py's default output folder: ``<train.output_dir>/eval_<split>``, plus ``_<name>=<value>`` for each model
    setting evaluated otherwise than the checkpoint's config ``saved`` has it (``MODEL_EVAL_KEYS``: the token gate,
    the token threshold; None = the defaults), so that such a variant never overwrites the trained setting's
    results."""
    old, new = _trained_values(saved), flatten(current)
    tags = "".join(f"_{k.rsplit('.', 1)[1]}={new[k]}" for k in MODEL_EVAL_KEYS if old.get(k) != new.get(k))
    return os.path.join(current["train"]["output_dir"], f"eval_{split}{tags}")


def eval_conflicts(saved, current):
    """``{key: (trained, now)}`` of the keys outside the evaluation-time settings that differ between a checkpoint's
    config and the evaluation config (a key the checkpoint lacks counts as its default)."""
    old, new = _trained_values(saved), flatten(current)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in EVAL_TIME_KEYS and not k.startswith(EVAL_TIME_SECTIONS)}
