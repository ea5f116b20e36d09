"""Config values are checked when the config loads (utils/config.py RULES, utils/config_rules.py): every refused
value is a ConfigError naming the key, the value and the rule; ``--opts`` values parse as YAML like the files; a
broken config file (bad YAML, not a mapping, not UTF-8, a missing or looping ``_base_``) is a ConfigError or a
MissingDataError naming the file (issue 14 items 2 and 4)."""
import glob
import os

import pytest

from tests.conftest import ROOT
from utils.config import DEFAULTS, RULES, VALIDATORS, flatten, load_config, parse_opts, save_config
from utils.errors import ConfigError, MissingDataError

REFUSED = [  # (--opts entry, the start of the message)
    ("train.batch_size=0", "train.batch_size=0: must be an integer >= 1"),
    ("train.amp=fp8", "train.amp='fp8': must be one of none | fp16 | bf16"),
    ("train.epochs=-1", "train.epochs=-1: must be an integer >= 1"),
    ("train.accum_steps=0", "train.accum_steps=0: must be an integer >= 1"),
    ("train.lr=-1e-5", "train.lr=-1e-05: must be a number >= 0"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1: must be a number >= 0"),
    ("train.device=gpu", "train.device='gpu': must be one of auto | cpu | cuda"),
    ("model.vctg.token_threshold=1.5", "model.vctg.token_threshold=1.5: must be a number in [0, 1]"),
    ("pretrain.mlm_prob=-0.1", "pretrain.mlm_prob=-0.1: must be a number in [0, 1]"),
    ("pretrain.content_mlm_prob=2", "pretrain.content_mlm_prob=2: must be null or a number in [0, 1]"),
    ("model.trps.topk=0", "model.trps.topk=0: must be an integer >= 1"),
    ("model.vctg.kernel_size=4", "model.vctg.kernel_size=4: must be an odd integer >= 1"),
    ("loss.weights.bsc=-1", "loss.weights.bsc=-1.0: must be a number >= 0"),
    ("loss.sce_topk=0", "loss.sce_topk=0: must be an integer >= 1"),
    ("data.num_workers=-2", "data.num_workers=-2: must be an integer >= 0"),
    ("data.image_size=0", "data.image_size=0: must be an integer >= 1"),
    ("data.on_bad_record=ignore", "data.on_bad_record='ignore': must be one of fail | skip"),
    ("data.train_files=[a.json, 3]", "data.train_files=['a.json', 3]: must be a list of file paths"),
    ("eval.split=dev", "eval.split='dev': must be one of train | val | test"),
    ("model.text.dropout=.nan", "model.text.dropout=nan: must be a number in [0, 1]"),
    ("pretrained.meter=''", "pretrained.meter='': must be null or a non-empty string"),
    ("data.augment_ops=[Identity, Solarize]", "data.augment_ops=['Identity', 'Solarize']: must be a list of distinct "
     "names from Identity | AutoContrast | Equalize | Brightness | Sharpness"),
    ("data.augment_ops=[Brightness, Brightness]", "data.augment_ops=['Brightness', 'Brightness']: must be a list"),
]


@pytest.mark.parametrize("opt,message", REFUSED, ids=[o for o, _ in REFUSED])
def test_refused_values_name_the_key_and_the_rule(opt, message):
    with pytest.raises(ConfigError) as err:
        load_config(os.path.join(ROOT, "configs/debug.yaml"), [opt])
    assert str(err.value).startswith(message), str(err.value)


def test_refused_value_in_a_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"^train\.batch_size=0: must be an integer >= 1$"):
        load_config(str(tmp_path / "c.yaml"))


@pytest.mark.parametrize("opt,key,kind", [
    ("train.lrr=1.0", "train.lrr", KeyError), ("model.trsp.topk=4", "model.trsp", KeyError),
    ("train.epochs=ten", "train.epochs", TypeError), ("train.epochs=2.5", "train.epochs", TypeError),
    ("model.trps.text_aid=1", "model.trps.text_aid", TypeError),
    ("train.batch_size=null", "train.batch_size", TypeError),
    ("data.train_files=a.json", "data.train_files", TypeError), ("model.vit=3", "model.vit", TypeError),
    ("train.output_dir=yes", "train.output_dir", TypeError),
])
def test_unknown_keys_and_wrong_types_are_config_errors(opt, key, kind):
    with pytest.raises(ConfigError, match=rf"config key:? {key}\b.*\(in --opts\)$") as err:
        load_config(opts=[opt])
    assert isinstance(err.value, kind)  # still the KeyError / TypeError callers caught before
    assert not str(err.value).startswith("'")  # KeyError's quoting is not in the message


def test_null_overrides_a_path_set_by_the_config_file():
    """README's from-scratch command: demo.yaml sets pretrained.meter to a path, --opts sets it back to null."""
    for null in ("null", "None", "~"):
        cfg = load_config(os.path.join(ROOT, "configs/demo.yaml"), [f"pretrained.meter={null}"])
        assert cfg["pretrained"]["meter"] is None
    cfg = load_config(os.path.join(ROOT, "configs/demo_pretrain.yaml"), ["pretrain.content_mlm_prob=null"])
    assert cfg["pretrain"]["content_mlm_prob"] is None
    with pytest.raises(ConfigError, match="train.lr"):        # a key whose default is a value stays non-null
        load_config(os.path.join(ROOT, "configs/demo.yaml"), ["train.lr=null"])


def test_opts_parse_as_yaml_like_the_files():
    cfg = load_config(opts=["data.train_files=[a.json,b.json]", "pretrained.meter=null", "pretrained.roberta=None",
                            "pretrain.content_mlm_prob=5e-1", "model.vctg.gate='sigmoid'", "train.lr=2e-5",
                            "train.grad_checkpointing=[vit, cfa]", "model.trps.text_aid=False",
                            "model.vit={depth: 2, num_heads: 4}", "data.root=/data/my dir"])
    assert cfg["data"]["train_files"] == ["a.json", "b.json"]
    assert cfg["pretrained"]["meter"] is None and cfg["pretrained"]["roberta"] is None
    assert cfg["pretrain"]["content_mlm_prob"] == 0.5 and isinstance(cfg["pretrain"]["content_mlm_prob"], float)
    assert cfg["model"]["vctg"]["gate"] == "sigmoid" and cfg["train"]["lr"] == 2e-5
    assert cfg["train"]["grad_checkpointing"] == ["vit", "cfa"] and cfg["model"]["trps"]["text_aid"] is False
    assert cfg["model"]["vit"]["depth"] == 2
    assert cfg["model"]["vit"]["embed_dim"] == DEFAULTS["model"]["vit"]["embed_dim"]
    assert cfg["data"]["root"] == "/data/my dir"
    assert parse_opts(["a.b="]) == {"a": {"b": None}}  # an empty value is null, as in a file


@pytest.mark.parametrize("opts,message", [
    (["train.lr"], "--opts entries look like key.sub=value, got 'train.lr'"),
    (["train..lr=1"], "--opts entries look like key.sub=value"),
    (["train.lr=[1,"], "--opts train.lr=[1,: not valid YAML"),
    (["train.lr=1", "train.lr.x=2"], "--opts train.lr.x=2: lr is given a value by another entry"),
])
def test_malformed_opts_name_the_entry(opts, message):
    with pytest.raises(ConfigError) as err:
        load_config(opts=opts)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("text,message", [
    (b"- a\n- b\n", "must hold a mapping of config keys, not a list"),
    (b"train: {lr: [1,\n", "not valid YAML (.* at line 2, column 1)"),
    (b"\xff\xfe train: 1", "is not UTF-8 text"),
    (b"_base_: absent.yaml\n", r"absent\.yaml \(the _base_ of .*c\.yaml\) not found"),
    (b"_base_: c.yaml\n", "its _base_ chain comes back to"),
    (b"_base_: [a]\n", "_base_ must be a file name"),
])
def test_broken_config_files_name_the_file(tmp_path, text, message):
    (tmp_path / "c.yaml").write_bytes(text)
    with pytest.raises((ConfigError, MissingDataError), match=message) as err:
        load_config(str(tmp_path / "c.yaml"))
    assert "c.yaml" in str(err.value)


def test_every_key_has_a_rule_and_every_shipped_config_passes(tmp_path):
    keys = flatten(DEFAULTS)
    assert set(RULES) <= set(keys)
    unruled = {k for k in keys if k not in RULES and k not in VALIDATORS}
    assert all(isinstance(keys[k], bool) for k in unruled), unruled  # bools are checked by their type
    configs = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
    assert len(configs) >= 5
    for path in configs:
        cfg = load_config(path)
        save_config(cfg, str(tmp_path / "saved.yaml"))
        assert load_config(str(tmp_path / "saved.yaml")) == cfg, path  # the written config reads back the same


def test_strings_that_look_like_numbers_or_null_round_trip(tmp_path):
    cfg = load_config(opts=["train.output_dir='1e5'", "data.root='None'"])
    assert cfg["train"]["output_dir"] == "1e5" and cfg["data"]["root"] == "None"
    save_config(cfg, str(tmp_path / "c.yaml"))
    assert load_config(str(tmp_path / "c.yaml")) == cfg
