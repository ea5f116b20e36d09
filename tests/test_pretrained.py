"""Pretrained loaders (paper section 3.2, METER weights): reading with stand-ins, exact METER key table,
position-embedding resize, METER / OpenAI CLIP / roberta-base round trips, CLI.

METER-format checkpoints are assembled from modules that carry METER's own key names (the
reference ``MeterVisual`` of test_backbone, an HF ``RobertaModel`` with pooler and the 4.x persistent
``position_ids``) plus random tensors for the names listed in ``meter_key_table`` (written from the
METER key table of docs/protocol.md section 5, independent of our modules), and saved as Lightning-style
dicts whose callbacks / hyper-parameters are instances of classes from a throwaway module (and from a throwaway
``pytorch_lightning.utilities.parsing`` whose ``AttributeDict`` has Lightning's global name).
"""
import importlib
import os
import pickle
import re
import shutil
import sys
import uuid
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from transformers import RobertaModel

from models.backbone import build_backbone
from models.pretrained import main
from models.pretrained_keys import (
    PretrainedKeyError,
    check_and_load,
    meter_to_backbone,
    resize_pos_embed,
    text_config_from_folder,
)
from models.pretrained_load import load_pretrained
from tests.test_backbone import (
    TINY_CFA,
    TINY_HIDDEN,
    TINY_TEXT,
    TINY_VIT,
    MeterVisual,
    randomize_,
    ref_cfa,
    tiny_backbone,
    tiny_batch,
)
from utils.errors import UserError, exit_on_user_error
from utils.safe_load import PickleStub, load_with_stand_ins

IMAGE = 256  # model grid 16x16, as in the paper


def meter_key_table(width, blocks, grid, text, hidden, layers, inter, clip_text_width=16):
    """{METER state_dict key: shape} of ``METERTransformerSS`` pretrain checkpoints (docs/protocol.md 5.2-5.4)."""
    t, v = {}, "vit_model.visual."
    t.update({v + "conv1.weight": (width, 3, 16, 16), v + "class_embedding": (width,),
              v + "positional_embedding": (grid * grid + 1, width)})
    for name in ("ln_pre", "ln_post"):
        t.update({f"{v}{name}.weight": (width,), f"{v}{name}.bias": (width,)})
    for i in range(blocks):
        b = f"{v}transformer.resblocks.{i}."
        t.update({b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,),
                  b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,),
                  b + "mlp.c_fc.weight": (4 * width, width), b + "mlp.c_fc.bias": (4 * width,),
                  b + "mlp.c_proj.weight": (width, 4 * width), b + "mlp.c_proj.bias": (width,)})
        for ln in ("ln_1", "ln_2"):
            t.update({f"{b}{ln}.weight": (width,), f"{b}{ln}.bias": (width,)})
    t.update({"vit_model.positional_embedding": (77, clip_text_width),
              "vit_model.ln_final.weight": (clip_text_width,), "vit_model.ln_final.bias": (clip_text_width,)})
    t.update(_roberta_table(**text))
    t.update(_fusion_table(hidden, width, text["hidden_size"], layers, inter, text["vocab_size"]))
    return t


def _bert_layer(prefix, d, inter, cross):
    t = {}
    for block in ("attention", "crossattention") if cross else ("attention",):
        for n in ("query", "key", "value"):
            t.update({f"{prefix}{block}.self.{n}.weight": (d, d), f"{prefix}{block}.self.{n}.bias": (d,)})
        t.update({f"{prefix}{block}.output.dense.weight": (d, d), f"{prefix}{block}.output.dense.bias": (d,),
                  f"{prefix}{block}.output.LayerNorm.weight": (d,), f"{prefix}{block}.output.LayerNorm.bias": (d,)})
    t.update({f"{prefix}intermediate.dense.weight": (inter, d), f"{prefix}intermediate.dense.bias": (inter,),
              f"{prefix}output.dense.weight": (d, inter), f"{prefix}output.dense.bias": (d,),
              f"{prefix}output.LayerNorm.weight": (d,), f"{prefix}output.LayerNorm.bias": (d,)})
    return t


def _roberta_table(vocab_size, hidden_size, num_layers, intermediate_size, max_position_embeddings, **_):
    e, d = "text_transformer.embeddings.", hidden_size
    t = {e + "word_embeddings.weight": (vocab_size, d), e + "position_embeddings.weight": (max_position_embeddings, d),
         e + "token_type_embeddings.weight": (1, d), e + "LayerNorm.weight": (d,), e + "LayerNorm.bias": (d,),
         e + "position_ids": (1, max_position_embeddings),
         "text_transformer.pooler.dense.weight": (d, d), "text_transformer.pooler.dense.bias": (d,)}
    for i in range(num_layers):
        t.update(_bert_layer(f"text_transformer.encoder.layer.{i}.", d, intermediate_size, cross=False))
    return t


def _fusion_table(h, image_dim, text_dim, layers, inter, vocab):
    t = {"cross_modal_text_transform.weight": (h, text_dim), "cross_modal_text_transform.bias": (h,),
         "cross_modal_image_transform.weight": (h, image_dim), "cross_modal_image_transform.bias": (h,),
         "token_type_embeddings.weight": (2, h)}
    for stream in ("text", "image"):
        for i in range(layers):
            t.update(_bert_layer(f"cross_modal_{stream}_layers.{i}.", h, inter, cross=True))
        t.update({f"cross_modal_{stream}_pooler.dense.weight": (h, h), f"cross_modal_{stream}_pooler.dense.bias": (h,)})
    t.update({"mlm_score.transform.dense.weight": (h, h), "mlm_score.transform.dense.bias": (h,),
              "mlm_score.transform.LayerNorm.weight": (h,), "mlm_score.transform.LayerNorm.bias": (h,),
              "mlm_score.decoder.weight": (vocab, h), "mlm_score.bias": (vocab,),
              "itm_score.fc.weight": (2, 2 * h), "itm_score.fc.bias": (2,)})
    return t


def tiny_table(grid):
    return meter_key_table(TINY_VIT["embed_dim"], TINY_VIT["depth"], grid, TINY_TEXT, TINY_HIDDEN,
                           TINY_CFA["num_layers"], TINY_CFA["intermediate_size"])


def tiny_meter(grid, seed=7):
    """(METER state dict, reference visual at the checkpoint resolution, reference RobertaModel)."""
    torch.manual_seed(seed)
    visual = randomize_(MeterVisual(grid * 16, 16, TINY_VIT["embed_dim"], TINY_VIT["depth"] + 1, 2))
    text = randomize_(tiny_backbone().text_transformer)
    roberta = RobertaModel(text.config, add_pooling_layer=True)
    roberta.load_state_dict(text.state_dict(), strict=False)
    sd = OrderedDict(("vit_model.visual." + k, v) for k, v in visual.state_dict().items())
    sd.update(("text_transformer." + k, v) for k, v in roberta.state_dict().items())
    sd["text_transformer.embeddings.position_ids"] = torch.arange(TINY_TEXT["max_position_embeddings"])[None]
    table = tiny_table(grid)
    g = torch.Generator().manual_seed(seed)
    for key, shape in table.items():
        if key not in sd:
            sd[key] = torch.randn(shape, generator=g) * 0.2 + (1.0 if "LayerNorm.weight" in key else 0.0)
    assert {k: tuple(v.shape) for k, v in sd.items()} == table  # exactly METER's names and shapes
    return sd, visual.eval(), roberta.eval()


THROWAWAY = '''
import pathlib
LOG = pathlib.Path({log!r})
MARK = pathlib.Path({mark!r})
with LOG.open("a") as f:
    f.write("imported " + __name__ + "\\n")
def touch(*args):
    MARK.write_text("ran")
    return {{}}
class ModelCheckpoint:
    def __init__(self):
        self.monitor = "val/the_metric"
    def __setstate__(self, state):
        touch()
        self.__dict__.update(state)
class AttributeDict(dict):
    def __setitem__(self, key, value):
        touch()
        super().__setitem__(key, value)
class Payload:
    def __reduce__(self):
        return (touch, ("payload",))
'''
LIGHTNING = ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing")


def _write_modules(folder, name):
    """The throwaway module ``name`` and a fake ``pytorch_lightning.utilities.parsing`` (same code) in ``folder``."""
    log, mark = folder / "import.log", folder / "marker"
    code = THROWAWAY.format(log=str(log), mark=str(mark))
    (folder / f"{name}.py").write_text(code)
    package = folder / "pytorch_lightning" / "utilities"
    package.mkdir(parents=True)
    (folder / "pytorch_lightning" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "parsing.py").write_text(code)
    return log, mark


def save_lightning(path, state_dict, tmp_path, monkeypatch, keep_module=False):
    """Lightning-style checkpoint whose non-tensor objects come from throwaway modules.

    The modules' folder is on ``sys.path`` while saving; with ``keep_module`` it stays there (and the modules stay
    on disk) until the test ends, so that a reader could import them if it tried. ``monkeypatch`` restores
    ``sys.path`` either way.
    """
    assert importlib.util.find_spec("pytorch_lightning") is None  # the fake package must not shadow a real one
    name = "throwaway_" + uuid.uuid4().hex[:8]
    folder = tmp_path / name
    folder.mkdir()
    log, mark = _write_modules(folder, name)
    with monkeypatch.context() as during_save:
        (monkeypatch if keep_module else during_save).syspath_prepend(str(folder))
        try:
            mod, parsing = importlib.import_module(name), importlib.import_module(LIGHTNING[-1])
            ckpt = {"epoch": 9, "global_step": 100, "pytorch-lightning_version": "1.3.2",
                    "state_dict": OrderedDict(state_dict),
                    "callbacks": {mod.ModelCheckpoint: {"best_model_score": torch.tensor(0.5),
                                                        "cb": mod.ModelCheckpoint()}},
                    "hyper_parameters": parsing.AttributeDict(config={"max_text_len": 50}), "payload": mod.Payload(),
                    "optimizer_states": [], "lr_schedulers": []}
            torch.save(ckpt, path)
        finally:
            for module in (name, *LIGHTNING):
                del sys.modules[module]
    if not keep_module:
        os.remove(folder / f"{name}.py")
        shutil.rmtree(folder / "pytorch_lightning")
    return name, log, mark


# --------------------------------------------------------------------------------------------
# Reading with stand-ins


@pytest.mark.parametrize("keep_module", [False, True])
def test_stand_ins_run_nothing_from_the_file(tmp_path, monkeypatch, keep_module):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    path = tmp_path / "lightning.ckpt"
    name, log, mark = save_lightning(path, sd, tmp_path, monkeypatch, keep_module)
    imported = log.read_text()
    assert imported.count("imported") == 2 and not mark.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    obj, info = load_with_stand_ins(path)
    assert log.read_text() == imported and not mark.exists()  # nothing imported, nothing run
    assert name not in sys.modules and "pytorch_lightning" not in sys.modules
    assert info["path"] == "stand_ins"
    assert set(info["stubbed"]) == {f"{name}.ModelCheckpoint", f"{name}.touch", LIGHTNING[-1] + ".AttributeDict"}
    assert obj["epoch"] == 9 and set(obj["state_dict"]) == {"w", "b"}
    torch.testing.assert_close(obj["state_dict"]["w"], sd["w"])
    assert torch.equal(obj["state_dict"]["b"], sd["b"])
    (key, value), = obj["callbacks"].items()
    assert issubclass(key, PickleStub) and key.stub_global == f"{name}.ModelCheckpoint"
    assert isinstance(value["cb"], PickleStub) and value["cb"].stub_state == {"monitor": "val/the_metric"}
    assert type(obj["hyper_parameters"]) is dict and obj["hyper_parameters"] == {"config": {"max_text_len": 50}}
    assert isinstance(obj["payload"], PickleStub) and obj["payload"].stub_args == ("payload",)


def test_plain_state_dict_uses_weights_only(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": {"a": torch.ones(2)}}, path)
    obj, info = load_with_stand_ins(path)
    assert info == {"path": "weights_only", "stubbed": []} and torch.equal(obj["state_dict"]["a"], torch.ones(2))


# --------------------------------------------------------------------------------------------
# Position embedding


@pytest.mark.parametrize("grid", [14, 18])
def test_resize_pos_embed_matches_plain_bicubic(grid):
    pos = torch.randn(grid * grid + 1, 8)
    out = resize_pos_embed(pos, (16, 16))
    assert out.shape == (257, 8)
    assert torch.equal(out[0], pos[0])
    img = pos[1:].reshape(1, grid, grid, 8).permute(0, 3, 1, 2)
    want = F.interpolate(img, size=(16, 16), mode="bicubic", align_corners=False, antialias=False)
    torch.testing.assert_close(out[1:], want.permute(0, 2, 3, 1).reshape(256, 8), atol=0, rtol=0)
    aa = F.interpolate(img, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    assert (out[1:] - aa.permute(0, 2, 3, 1).reshape(256, 8)).abs().max() > 1e-3
    assert resize_pos_embed(out, (16, 16)) is out
    with pytest.raises(PretrainedKeyError):
        resize_pos_embed(torch.randn(200, 8), (16, 16))


# --------------------------------------------------------------------------------------------
# METER round trip


def _expected_pos(visual):
    """Plain bicubic (align_corners=False, antialias=False) on the patch rows, CLS row unchanged."""
    pos = visual.positional_embedding.detach()
    g = int((pos.shape[0] - 1) ** 0.5)
    grid = F.interpolate(pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2), size=(16, 16), mode="bicubic",
                         align_corners=False, antialias=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(256, -1)])


def _reference_visual_at_model_size(visual, pos):
    ref = MeterVisual(IMAGE, 16, TINY_VIT["embed_dim"], TINY_VIT["depth"] + 1, 2)
    sd = dict(visual.state_dict(), positional_embedding=pos)
    ref.load_state_dict(sd)
    return ref.eval()


def _check_outputs(bb, sd, ref_visual, roberta):
    image, ids, mask = tiny_batch(image_size=IMAGE)
    with torch.no_grad():
        out = bb.eval()(image, ids, mask)
        torch.testing.assert_close(out["v_raw"], ref_visual(image), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["t_raw"], roberta(input_ids=ids, attention_mask=mask).last_hidden_state)
        fusion = {k: v for k, v in sd.items() if k.startswith(("cross_modal_", "token_type_embeddings"))}
        want = ref_cfa(fusion, out["v_raw"], out["t_raw"], mask, TINY_CFA["num_layers"], TINY_CFA["num_heads"])
    for key in ("v_hat", "t_hat", "v_cls", "t_cls"):
        torch.testing.assert_close(out[key], want[key], atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [14, 18])  # the 224 and the 288 METER checkpoints
def test_meter_lightning_checkpoint_round_trip(tmp_path, monkeypatch, grid):
    sd, visual, roberta = tiny_meter(grid)
    path = tmp_path / f"meter_clip16_{grid * 16}_roberta_pretrain.ckpt"
    save_lightning(path, sd, tmp_path, monkeypatch)
    bb = tiny_backbone(IMAGE, seed=99)
    report = load_pretrained(bb, {"meter": str(path), "openai_clip": None, "roberta": None,
                                  "pos_embed_source": "meter"})
    rep = report["meter"]
    assert rep["loaded"] == len(bb.state_dict()) and rep["unpickle_path"] == "stand_ins"
    assert rep["resized"] == [{"key": "vit_model.visual.positional_embedding", "from": [grid * grid + 1, 32],
                               "to": [257, 32]}]
    assert rep["left_over"] == {"itm_score": 2, "mlm_score": 6, "text_transformer.embeddings.position_ids": 1,
                                "text_transformer.pooler": 2, "vit_model.ln_final": 2,
                                "vit_model.positional_embedding": 1}
    assert report["random_init"] == []
    pos = _expected_pos(visual)
    torch.testing.assert_close(bb.vit_model.pos_embed[0], pos, atol=0, rtol=0)
    assert torch.equal(bb.vit_model.pos_embed[0, 0], sd["vit_model.visual.positional_embedding"][0])
    _check_outputs(bb, sd, _reference_visual_at_model_size(visual, pos), roberta)


@pytest.mark.parametrize("change", ["missing", "unexpected", "extra_block", "shape"])
def test_meter_key_gaps_fail_loudly(tmp_path, change):
    sd, _, _ = tiny_meter(14)
    bad = {"missing": "cross_modal_text_layers.1.output.dense.bias", "unexpected": "snli_classifier.0.weight",
           "extra_block": "vit_model.visual.transformer.resblocks.2.ln_1.weight",
           "shape": "token_type_embeddings.weight"}[change]
    if change == "missing":
        del sd[bad]
    elif change == "shape":
        sd[bad] = torch.randn(3, TINY_HIDDEN)  # NLVR2-style 3 token types
    else:
        sd[bad] = torch.randn(32)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, path)
    bb = tiny_backbone(IMAGE)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with pytest.raises(PretrainedKeyError, match=re.escape(bad)):
        load_pretrained(bb, {"meter": str(path), "pos_embed_source": "meter"})
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())  # nothing half-loaded


def test_paper_size_meter_key_names_and_shapes_on_meta():
    from utils.config import load_config

    text = {"vocab_size": 50265, "hidden_size": 768, "num_layers": 12, "intermediate_size": 3072,
            "max_position_embeddings": 514}
    table = meter_key_table(768, 11, 14, text, 768, 6, 3072, clip_text_width=512)
    assert len([k for k in table if ".resblocks." in k]) == 11 * 12
    with torch.device("meta"):
        bb = build_backbone(load_config(), pad_token_id=1)
        sd = {k: torch.empty(shape) for k, shape in table.items()}
    own = {k: tuple(v.shape) for k, v in bb.state_dict().items()}
    mapped, leftover, resized = meter_to_backbone(sd, bb)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == own
    assert resized == [{"key": "vit_model.visual.positional_embedding", "from": [197, 768], "to": [257, 768]}]
    assert leftover == {"itm_score": 2, "mlm_score": 6, "text_transformer.embeddings.position_ids": 1,
                        "text_transformer.pooler": 2, "vit_model.ln_final": 2, "vit_model.positional_embedding": 1}
    assert sum(v.numel() for v in mapped.values()) == 318_597_888 == sum(p.numel() for p in bb.parameters())
    assert check_and_load(bb, mapped, "meta") == len(own)


# --------------------------------------------------------------------------------------------
# OpenAI CLIP


class TinyClip(nn.Module):
    """OpenAI CLIP layout: ``visual`` (12-block style tower with proj) plus the text tower."""

    def __init__(self):
        super().__init__()
        self.visual = randomize_(MeterVisual(224, 16, 32, TINY_VIT["depth"] + 2, 2))  # one block too many
        self.visual.proj = nn.Parameter(torch.randn(32, 8))
        self.positional_embedding = nn.Parameter(torch.randn(12, 16))
        self.token_embedding = nn.Embedding(30, 16)
        self.ln_final = nn.LayerNorm(16)
        self.text_projection = nn.Parameter(torch.randn(16, 8))
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x):
        return x * self.logit_scale


def _openai_file(tmp_path, kind):
    clip = TinyClip()
    path = tmp_path / f"ViT-B-16-{kind}.pt"
    if kind == "jit":
        torch.jit.trace(clip, torch.randn(2)).save(str(path))
    else:
        torch.save(clip.state_dict(), path)
    return clip, path


@pytest.mark.parametrize("kind", ["jit", "state_dict"])
def test_openai_clip_initialises_the_vit(tmp_path, kind):
    clip, path = _openai_file(tmp_path, kind)
    bb = tiny_backbone(IMAGE)
    report = load_pretrained(bb, {"meter": None, "openai_clip": str(path), "roberta": None,
                                  "pos_embed_source": "meter"})
    rep = report["openai_clip"]
    assert rep["format"] == ("torchscript" if kind == "jit" else "weights_only")
    assert rep["loaded"] == len(bb.vit_model.state_dict()) and report["random_init"] == ["text_transformer", "cfa"]
    assert rep["left_over"] == {"text tower": 6, "visual.proj": 1, "visual.transformer.resblocks.>=2": 12}
    assert rep["resized"] == [{"key": "visual.positional_embedding", "from": [197, 32], "to": [257, 32]}]
    pos = resize_pos_embed(clip.visual.positional_embedding.detach(), (16, 16))
    ref = MeterVisual(IMAGE, 16, 32, TINY_VIT["depth"] + 1, 2)
    vis = {k: v for k, v in clip.visual.state_dict().items() if k != "proj" and ".resblocks.2." not in k}
    ref.load_state_dict(dict(vis, positional_embedding=pos))
    image = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(bb.vit_model.eval().forward_features(image), ref.eval()(image),
                                   atol=1e-5, rtol=1e-5)


def test_meter_with_openai_position_embedding(tmp_path):
    clip, clip_path = _openai_file(tmp_path, "jit")
    sd, _, _ = tiny_meter(18)
    path = tmp_path / "meter.ckpt"
    torch.save({"state_dict": sd}, path)
    bb = tiny_backbone(IMAGE)
    cfg = {"meter": str(path), "openai_clip": str(clip_path), "roberta": None, "pos_embed_source": "openai"}
    report = load_pretrained(bb, cfg)
    want = resize_pos_embed(clip.visual.positional_embedding.detach(), (16, 16))
    torch.testing.assert_close(bb.vit_model.pos_embed[0], want, atol=0, rtol=0)
    assert report["meter"]["left_over"]["vit_model.visual.positional_embedding (replaced by OpenAI's)"] == 1
    assert report["meter"]["resized"][0]["from"] == [197, 32]
    with pytest.raises(ValueError, match="openai_clip"):
        load_pretrained(bb, dict(cfg, openai_clip=None))


# --------------------------------------------------------------------------------------------
# roberta-base folder


def test_roberta_folder_weights_and_config_only(tmp_path):
    text = tiny_backbone().text_transformer
    src = randomize_(RobertaModel(text.config, add_pooling_layer=True))
    src.save_pretrained(tmp_path / "roberta")
    bb = tiny_backbone(IMAGE, seed=3)
    report = load_pretrained(bb, {"meter": None, "openai_clip": None, "roberta": str(tmp_path / "roberta"),
                                  "pos_embed_source": "meter"})
    assert report["roberta"]["loaded"] == len(bb.text_transformer.state_dict())
    assert report["roberta"]["left_over"] == {"pooler": 2} and report["random_init"] == ["vit_model", "cfa"]
    own = bb.text_transformer.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.state_dict().items() if not k.startswith("pooler."))
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "config.json").write_text((tmp_path / "roberta" / "config.json").read_text())
    report = load_pretrained(bb, {"roberta": str(tmp_path / "cfg_only"), "pos_embed_source": "meter"})
    assert report["roberta"]["config_only"] and "text_transformer" in report["random_init"]
    assert text_config_from_folder(tmp_path / "cfg_only") == TINY_TEXT
    text.config.layer_norm_eps = 1e-12
    text.config.save_pretrained(tmp_path / "bad_cfg")
    with pytest.raises(PretrainedKeyError, match="layer_norm_eps"):
        load_pretrained(bb, {"roberta": str(tmp_path / "bad_cfg"), "pos_embed_source": "meter"})


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_reports_and_fails_on_gaps(tmp_path, monkeypatch, capsys):
    sd, _, _ = tiny_meter(14)
    path = tmp_path / "meter.ckpt"
    save_lightning(path, sd, tmp_path, monkeypatch)
    cfg = {"data": {"image_size": IMAGE}, "model": {"hidden_size": TINY_HIDDEN, "vit": TINY_VIT, "text": TINY_TEXT,
                                                   "cfa": TINY_CFA}, "pretrained": {"meter": str(path)}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp_path / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    assert "resized vit_model.visual.positional_embedding: [197, 32] -> [257, 32]" in out
    assert "left over mlm_score: 6 keys" in out
    assert "unpickle_path=stand_ins" in out and "read as inert stand-ins (never imported)" in out
    del sd["cross_modal_image_pooler.dense.weight"]
    torch.save({"state_dict": sd}, tmp_path / "bad.ckpt")
    err = _cli_error(capsys, "--config", str(tmp_path / "tiny.yaml"), "--opts",
                     f"pretrained.meter={tmp_path / 'bad.ckpt'}")
    assert "cfa.cross_modal_image_pooler.dense.weight" in err and "1 missing" in err


def test_cli_missing_file_exits_2(tmp_path, capsys):
    cfg = {"data": {"image_size": IMAGE}, "model": {"hidden_size": TINY_HIDDEN, "vit": TINY_VIT, "text": TINY_TEXT,
                                                   "cfa": TINY_CFA},
           "pretrained": {"meter": str(tmp_path / "absent.ckpt")}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    err = _cli_error(capsys, "--config", str(tmp_path / "tiny.yaml"))
    assert f"pretrained.meter: {tmp_path / 'absent.ckpt'} does not exist" in err and "checkpoints/README.md" in err


def _cli_error(capsys, *argv):
    """Run the CLI as ``python -m models.pretrained`` does; assert exit status 2 and one ``error:`` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        exit_on_user_error(main, list(argv))
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    return captured.err


def test_key_error_is_a_user_error():
    assert issubclass(PretrainedKeyError, UserError)
