"""utils/checkpoint.py, schedule.py, config.py, box_ops.py, logger.py, dist.py (single process), visualize.py."""
import argparse
import dataclasses
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import boxes_to_cxcywh
from inference import figures
from utils import box_ops, checkpoint, dist, schedule, visualize
from utils.checkpoint import resume_conflicts
from utils.config import DEFAULTS, load_config
from utils.logger import JsonlWriter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- checkpoint
class _Wrapper(torch.nn.Module):
    """Stands in for DDP: the real model is ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def _trained_objects(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt, torch.amp.GradScaler("cpu", init_scale=1024.0)


def _draw_random():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_checkpoint_round_trip_weights_only(tmp_path):
    model, opt, scaler = _trained_objects(0)
    cfg = {"train": {"lr": 1e-5, "epochs": 2}, "data": {"train_files": ["a.json"]}}
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    loop_state = checkpoint.TrainState(epoch=1, step_in_epoch=3, global_step=7, best_metric=91.5)
    payload = checkpoint.checkpoint_payload(model=_Wrapper(model), optimizer=opt, scaler=scaler, config=cfg,
                                            **loop_state.as_dict())
    path = checkpoint.atomic_torch_save(payload, tmp_path / "last.pth")
    expected_draws = _draw_random()  # what the RNGs give right after the save
    raw = torch.load(path, weights_only=True)
    fields = {f.name for f in dataclasses.fields(checkpoint.TrainState)}
    assert set(raw) == {"model", "optimizer", "scaler", "config", "rng", "git"} | fields
    assert set(raw["model"]) == {"weight", "bias"}  # unwrapped: no "module." prefix
    assert raw["config"] == cfg and raw["scaler"]["scale"] == 1024.0

    fresh, fresh_opt, fresh_scaler = _trained_objects(5)
    assert not torch.equal(fresh.weight, model.weight)
    _draw_random()  # move the RNGs on
    state = checkpoint.load_checkpoint(path, model=fresh, optimizer=fresh_opt, scaler=fresh_scaler)
    assert _draw_random() == expected_draws  # RNG states restored exactly
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert state["global_step"] == 7 and state["step_in_epoch"] == 3 and state["best_metric"] == 91.5
    assert checkpoint.find_resume(tmp_path) == os.path.join(tmp_path, "last.pth")
    assert checkpoint.find_resume(tmp_path / "nothing") is None


def test_checkpoint_load_is_strict(tmp_path):
    path = checkpoint.atomic_torch_save(checkpoint.checkpoint_payload(model=torch.nn.Linear(3, 2)), tmp_path / "c.pth")
    with pytest.raises(RuntimeError):
        checkpoint.load_checkpoint(path, model=torch.nn.Linear(3, 4))
    with pytest.raises(KeyError, match="optimizer"):
        checkpoint.load_checkpoint(path, optimizer=torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=1))


def test_checkpoint_rejects_non_plain_values_before_writing(tmp_path):
    with pytest.raises(TypeError, match="state.config"):
        payload = checkpoint.checkpoint_payload(config=argparse.Namespace(lr=1e-5))
        checkpoint.atomic_torch_save(payload, tmp_path / "c.pth")
    assert os.listdir(tmp_path) == []


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    checkpoint.atomic_torch_save(checkpoint.checkpoint_payload(global_step=1), path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_torch_save(checkpoint.checkpoint_payload(global_step=2), path)
    assert os.listdir(tmp_path) == ["last.pth"]  # no temporary file left behind
    assert torch.load(path, weights_only=True)["global_step"] == 1  # the old checkpoint is intact


# ---------------------------------------------------------------- schedule
def test_lr_schedule_known_steps():
    kw = dict(base_lr=1e-4, min_lr=1e-6, warmup_steps=100, total_steps=1100)
    assert schedule.lr_at(0, **kw) == 0.0
    assert schedule.lr_at(50, **kw) == pytest.approx(5e-5)
    assert schedule.lr_at(100, **kw) == pytest.approx(1e-4)
    assert schedule.lr_at(600, **kw) == pytest.approx((1e-4 + 1e-6) / 2)  # half-way through the cosine
    assert schedule.lr_at(350, **kw) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule.lr_at(1100, **kw) == pytest.approx(1e-6)
    assert schedule.lr_at(5000, **kw) == pytest.approx(1e-6)
    assert schedule.lr_at(0, warmup_start_lr=1e-6, **kw) == pytest.approx(1e-6)
    assert schedule.lr_at(0, 1e-4, 1e-6, 0, 10) == pytest.approx(1e-4)  # no warm-up
    lrs = [schedule.lr_at(s, **kw) for s in range(100, 1200)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_set_lr_respects_lr_scale():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "lr_scale": 10.0}], lr=1.0)
    schedule.set_lr(opt, 2e-5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-5, 2e-4])


# ---------------------------------------------------------------- config (utils/config.py)
def test_config_defaults_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 1e-5\n  epochs: 3\nmodel:\n  trps:\n    topk: 4\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  epochs: 5\n")
    cfg = load_config(str(tmp_path / "child.yaml"), opts=["train.batch_size=8", "model.vctg.gate='sigmoid'"])
    assert isinstance(cfg["train"]["lr"], float) and cfg["train"]["lr"] == 1e-5  # YAML's string "1e-5"
    assert cfg["train"]["epochs"] == 5 and cfg["model"]["trps"]["topk"] == 4  # child over base
    assert cfg["train"]["batch_size"] == 8 and cfg["model"]["vctg"]["gate"] == "sigmoid"
    assert cfg["train"]["min_lr"] == DEFAULTS["train"]["min_lr"]
    assert load_config(opts=["train.lr=3"])["train"]["lr"] == 3.0  # int accepted where a float is expected


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    with pytest.raises(KeyError, match="train.lrr"):
        load_config(opts=["train.lrr=1.0"])
    (tmp_path / "bad.yaml").write_text("model:\n  trsp:\n    topk: 4\n")
    with pytest.raises(KeyError, match="model.trsp"):
        load_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(TypeError, match="train.epochs"):
        load_config(opts=["train.epochs='ten'"])
    with pytest.raises(TypeError, match="train.lr"):
        load_config(opts=["train.lr='fast'"])
    with pytest.raises(TypeError, match="model.trps.text_aid"):
        load_config(opts=["model.trps.text_aid=1"])


# ---------------------------------------------------------------- box ops
def test_resume_conflicts_name_every_defining_key():
    saved = load_config(None, ["train.lr=1e-3", "train.epochs=8", "loss.bsc_eps=0.2"])
    same = load_config(None, ["train.lr=1e-3", "train.epochs=8", "loss.bsc_eps=0.2", "data.num_workers=0",
                              "eval.batch_size=7",
                              "train.device=cpu", "train.log_every=3", "train.output_dir=elsewhere"])
    assert resume_conflicts(saved, same) == {}
    other = load_config(None, ["train.lr=5e-4", "train.epochs=6", "model.vit.depth=4", "loss.bsc_eps=0.2"])
    assert resume_conflicts(saved, other) == {"model.vit.depth": (11, 4), "train.epochs": (8, 6),
                                              "train.lr": (1e-3, 5e-4)}
    missing = {k: v for k, v in saved.items() if k != "eval"}
    assert resume_conflicts(missing, saved) == {}  # eval.* may change
    del missing["loss"]  # absent keys are no conflict at their default, but loss.bsc_eps is not at its default
    assert set(resume_conflicts(missing, saved)) == {"loss.bsc_eps"}


def test_resume_tolerates_options_added_later_at_their_default():
    import copy

    from utils.checkpoint import resume_conflicts
    from utils.config import DEFAULTS

    cfg = copy.deepcopy(DEFAULTS)
    old = copy.deepcopy(cfg)
    del old["train"]["backbone_lr_scale"]   # a checkpoint written before the option existed
    assert resume_conflicts(old, cfg) == {}
    cfg["train"]["backbone_lr_scale"] = 0.5
    assert resume_conflicts(old, cfg) == {"train.backbone_lr_scale": (None, 0.5)}


def test_resume_allows_a_new_split_of_the_same_global_batch():
    """8 GPUs x 32 may continue as 1 GPU x 32 x accum 8 (same global batch); a different global batch may not."""
    eight = load_config(None, ["train.batch_size=32", "train.accum_steps=1"])
    one = load_config(None, ["train.batch_size=32", "train.accum_steps=8"])
    assert resume_conflicts(eight, one, saved_world=8, world=1) == {}
    assert resume_conflicts(eight, one) == {"train.accum_steps": (1, 8)}  # world sizes unknown: refuse
    half = load_config(None, ["train.batch_size=16", "train.accum_steps=8"])
    assert set(resume_conflicts(eight, half, saved_world=8, world=1)) == {"train.accum_steps", "train.batch_size"}


def test_box_conversions_torch_and_numpy():
    xyxy = np.array([[10.0, 20.0, 110.0, 70.0], [0.0, 0.0, 200.0, 100.0]])
    norm = np.array([[0.3, 0.45, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(box_ops.norm_cxcywh_to_pixel_xyxy(norm, 200, 100), xyxy)
    back = box_ops.norm_cxcywh_to_pixel_xyxy(torch.tensor(norm), 200, 100)
    assert isinstance(back, torch.Tensor) and torch.allclose(back, torch.tensor(xyxy))
    np.testing.assert_allclose(boxes_to_cxcywh(xyxy, (200, 100)), norm, rtol=1e-6)  # the dataset's inverse
    assert box_ops.cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])).tolist() == pytest.approx([0.4, 0.3, 0.6, 0.7])


# ---------------------------------------------------------------- logger
def test_jsonl_keeps_numbers_as_numbers(tmp_path):
    writer = JsonlWriter(str(tmp_path / "log.jsonl"))
    writer.write({"epoch": 2, "loss": torch.tensor(0.25), "AUC": np.float32(91.5), "EER": float("nan"), "s": "x"})
    writer.write({"epoch": 3})
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first == {"epoch": 2, "loss": 0.25, "AUC": 91.5, "EER": None, "s": "x"}
    assert isinstance(first["epoch"], int) and json.loads(lines[1]) == {"epoch": 3}


TB_SCRIPT = r'''
import sys, numpy as np
from utils.logger import TensorBoardWriter
w = TensorBoardWriter(sys.argv[1])
w.add_scalars({"AUC": 91.5, "n": 3}, step=2, prefix="val/")
w.add_image("pred", np.zeros((8, 8, 3), dtype=np.uint8), step=2)
w.close()
assert "tensorflow" not in sys.modules, "tensorflow was imported"
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1]); acc.Reload()
print(acc.Scalars("val/AUC")[0].value, acc.Scalars("val/AUC")[0].step, len(acc.Images("pred")))
'''


def test_tensorboard_writer_without_tensorflow(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", TB_SCRIPT, str(tmp_path / "tb")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["91.5", "2", "1"]


# ---------------------------------------------------------------- dist (single process)
def test_dist_single_process_fallback(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    rank, world, local_rank, device = dist.init_distributed("cpu")
    assert (rank, world, local_rank, device.type) == (0, 1, 0, "cpu")
    assert not dist.is_dist() and dist.is_main() and dist.get_world_size() == 1
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.reduce_dict({"x": torch.tensor(2.0)})["x"].item() == 2.0
    dist.barrier(), dist.cleanup()
    with pytest.raises(ValueError):
        dist.init_distributed("tpu")


# ---------------------------------------------------------------- visualize
def _count(img, color, box):
    arr = np.asarray(img.crop(box)).reshape(-1, 3)
    return int(np.sum(np.all(arr == color, axis=1)))


def test_render_prediction_colours(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (300, 200), (120, 130, 140)).save(photo)
    words = "a man in a red shirt speaks".split()
    out = visualize.render_prediction(str(photo), words, [0.5, 0.5, 0.3, 0.3], [0.4, 0.5, 0.3, 0.3],
                                      [0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0], tmp_path / "viz" / "p.png")
    img = Image.open(out).convert("RGB")
    h = round(200 * 512 / 300)
    assert img.width == 512 and img.height > h
    photo_box, text_box = (0, 0, 512, h), (0, h, 512, img.height)
    assert _count(img, visualize.RED, photo_box) > 100 and _count(img, visualize.GREEN, photo_box) > 100
    assert _count(img, visualize.GREEN, text_box) > 10  # underline of the true words
    red_words = _count(img, visualize.RED, text_box)
    plain = visualize.render_prediction(str(photo), words, [0, 0, 0, 0], [0, 0, 0, 0], [0] * 7, [0] * 7,
                                        tmp_path / "q.png")
    plain = Image.open(plain).convert("RGB")
    assert red_words > 0 and _count(plain, visualize.RED, (0, 0, 512, plain.height)) == 0
    assert _count(plain, visualize.GREEN, (0, 0, 512, plain.height)) == 0  # zero boxes are not drawn
    assert visualize.word_flags_from_tokens([0, 1, 1, 0, 1], [None, 0, 0, 1, None], 3) == [1, 0, 0]


def test_render_figure3_maps_tokens_to_words(tmp_path):
    from types import SimpleNamespace

    from datasets.text import encode
    from preprocess.train_tokenizer import train_tokenizer

    text = "Bulmer-Rizzi met the Prime Minister in London today"
    corpus = ["bulmer rizzi met the prime minister in london today", "the minister met people in paris"] * 20
    tok = train_tokenizer(corpus, str(tmp_path / "tok"), vocab_size=300)
    (tmp_path / "img").mkdir()
    Image.new("RGB", (320, 240), (90, 100, 110)).save(tmp_path / "img" / "7.jpg")
    rec = {"id": 7, "image": "img/7.jpg", "text": text, "fake_cls": "text_swap", "fake_text_pos": [3],
           "_file": "meta.json"}
    data = SimpleNamespace(root=str(tmp_path), records=[rec], tokenizer=tok, max_len=20, max_words=50)
    enc = encode(tok, "bulmer rizzi met the prime minister in london today", 20)
    # predict exactly the tokens of pre-tokenizer word 5 ("minister"); positions start after <s>
    pred_tokens = [int(w == 5) for w in enc["word_ids"][1:]]
    pred = {"index": 0, "id": 7, "fake_cls": "text_swap", "token_pred": pred_tokens,
            "pred_box": [0, 0, 0, 0], "gt_box": [0, 0, 0, 0]}
    image_path, words, pred_words, true_words = figures._sample_words(data, pred)
    assert image_path == os.path.join(str(tmp_path), "img/7.jpg")
    assert words == ["bulmer", "rizzi", "met", "the", "prime", "minister", "in", "london", "today"]
    assert pred_words == [0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert true_words == [0, 0, 0, 0, 1, 0, 0, 0, 0]  # raw word 3 = "Prime" (the hyphenated word is raw word 0)
    paths = figures.render_predictions(data, [dict(pred, fake_cls="orig"), pred], 5, str(tmp_path / "vis"))
    assert paths == [os.path.join(str(tmp_path / "vis"), "7.png")] and os.path.isfile(paths[0])
    with pytest.raises(ValueError, match="id 8"):
        figures._sample_words(data, dict(pred, id=8))


@pytest.mark.parametrize("path", sorted(
    os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(os.path.join(ROOT, "configs"))
    for f in fs if f.endswith(".yaml")))
def test_every_shipped_config_validates(path):
    """Every YAML under configs/ (paper, demo, debug, each ablation) merges over DEFAULTS without an error."""
    cfg = load_config(os.path.join(ROOT, path))
    assert cfg["data"]["image_size"] % cfg["model"]["vit"]["patch_size"] == 0
    assert set(cfg) == set(DEFAULTS)
