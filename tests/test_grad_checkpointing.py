"""Activation checkpointing (``train.grad_checkpointing``, models/backbone.py, models/cfa.py) and the two checkpoint
kinds (utils/checkpoint.py, utils/loop.py): issue 13.

- the config accepts none | vit | text | cfa | all or a list of parts, and nothing else;
- every setting gives the losses and gradients of ``none`` (small model, dropout off), in fp32 and under bf16
  autocast, while the autograd graph really keeps fewer bytes (so a switch that did nothing would fail);
- with dropout on, the recomputation replays the same masks and leaves the RNG where ``none`` leaves it (why a run
  may resume under another setting);
- two ranks with checkpointing match one rank with accumulation and without it (DDP + accumulation);
- best.pth holds weights, config and fingerprints but no optimizer state, test.py reads it, last.pth still resumes.
"""
import copy
import os

import pytest
import torch

from datasets.text import word_token_mask
from tests.conftest import run_script, tiny_opts
from tests.test_train import _losses, _train
from utils.checkpoint import load_checkpoint, serialized_nbytes
from utils.config import grad_checkpointing_parts, load_config
from utils.memory import SavedTensorMeter

SETTINGS = ["vit", "text", "cfa", "all", ["vit", "cfa"]]


def _batch(cfg, batch_size=4, seed=0):
    """Random batch with the shapes of ``datasets.dgm4.collate``; half the images and half the texts fake."""
    g = torch.Generator().manual_seed(seed)
    S, L, n = cfg["data"]["image_size"], cfg["data"]["max_len"], cfg["data"]["num_boxes"]
    ids = torch.randint(3, cfg["model"]["text"]["vocab_size"], (batch_size, L), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones(batch_size, L, dtype=torch.long)
    mask[0, L // 2:] = 0  # one padded caption: the masks travel through the checkpointed layers
    y_v = (torch.arange(batch_size) % 2).float()
    y_t = ((torch.arange(batch_size) // 2) % 2).float()
    return {"image": torch.randn(batch_size, 3, S, S, generator=g), "input_ids": ids, "attention_mask": mask,
            "word_tokens": word_token_mask(mask),
            "content_mask": (torch.rand(batch_size, L, generator=g) > 0.5).float() * mask,
            "cand_boxes": torch.rand(batch_size, n, 4, generator=g) * 0.3 + torch.tensor([0.35, 0.35, 0.05, 0.05]),
            "cand_mask": torch.ones(batch_size, n, dtype=torch.bool), "y_v": y_v, "y_t": y_t,
            "y_m": torch.maximum(y_v, y_t)}


def _parts(backbone):
    """(part, module) for every layer that ``train.grad_checkpointing`` can recompute."""
    cfa = backbone.cfa
    return ([("vit", m) for m in backbone.vit_model.blocks]
            + [("text", m) for m in backbone.text_transformer.encoder.layer]
            + [("cfa", m) for m in (*cfa.cross_modal_text_layers, *cfa.cross_modal_image_layers)])


def _step(model, setting, batch, amp=None):
    """Losses, gradients and saved-for-backward bytes per part ({vit, text, cfa, ""}) of one training step of a copy
    of ``model``."""
    from losses import build_criterion

    model = copy.deepcopy(model)
    model.backbone.set_grad_checkpointing(grad_checkpointing_parts(setting))
    criterion = build_criterion(_cfg())
    with SavedTensorMeter(exclude=model.parameters()) as meter, \
            torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        meter.track(_parts(model.backbone))
        losses = criterion(model(batch), batch)
    saved = meter.live_bytes(by_label=True)
    losses["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in losses.items()}, grads, saved


def _cfg(dropout=0.0):
    return load_config("configs/debug.yaml", [f"model.text.dropout={dropout}", f"model.cfa.dropout={dropout}"])


@pytest.fixture(scope="module")
def small_model():
    from models import build_model

    torch.manual_seed(0)
    return build_model(_cfg()).train()


def test_config_accepts_the_settings_and_nothing_else():
    for value, parts in [("none", ()), ("all", ("vit", "text", "cfa")), ("text", ("text",)),
                         (["cfa", "vit"], ("vit", "cfa"))]:
        cfg = load_config(opts=[f"train.grad_checkpointing={value!r}"])
        assert grad_checkpointing_parts(cfg["train"]["grad_checkpointing"]) == parts
    for bad in ["'everything'", "['vit', 'mlp']", "[]", "['none']", "3", "True"]:
        with pytest.raises(ValueError, match="train.grad_checkpointing"):
            load_config(opts=[f"train.grad_checkpointing={bad}"])


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_setting_gives_the_losses_and_gradients_of_none(small_model, setting):
    batch = _batch(_cfg())
    ref_losses, ref_grads, ref_saved = _step(small_model, "none", batch)
    losses, grads, saved = _step(small_model, setting, batch)
    assert losses.keys() == ref_losses.keys() and len(losses) == 10
    for k in losses:
        assert losses[k] == pytest.approx(ref_losses[k], abs=1e-5), k
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-5, msg=n)
    _check_saved(saved, ref_saved, setting)


def _check_saved(saved, ref_saved, setting):
    """A recomputed part keeps at most its layers' inputs (vit, cfa: none reach the meter inside the checkpoint;
    text: transformers checkpoints inside the layer call), far below what it keeps without checkpointing; the
    other parts keep exactly what they kept."""
    for part in ("vit", "text", "cfa"):
        assert ref_saved[part] > 0, part
        if part in grad_checkpointing_parts(setting):
            assert saved.get(part, 0) < 0.5 * ref_saved[part], (setting, part, saved, ref_saved)
        else:
            assert saved[part] == ref_saved[part], (setting, part)
    assert saved[""] >= ref_saved[""]  # the layer inputs the checkpoints keep are saved outside the layers


def test_bf16_autocast_with_checkpointing(small_model):
    batch = _batch(_cfg())
    ref_losses, ref_grads, ref_saved = _step(small_model, "none", batch, amp=torch.bfloat16)
    losses, grads, saved = _step(small_model, "all", batch, amp=torch.bfloat16)
    for k in losses:
        assert losses[k] == pytest.approx(ref_losses[k], abs=1e-5), k
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-5, msg=n)
    _check_saved(saved, ref_saved, "all")


def test_dropout_masks_and_rng_stream_are_those_of_none():
    from models import build_model

    torch.manual_seed(0)
    model = build_model(_cfg(dropout=0.3)).train()
    batch = _batch(_cfg())
    results = {}
    for setting in ("none", "all"):
        torch.manual_seed(123)
        losses, grads, _ = _step(model, setting, batch)
        results[setting] = losses, grads, torch.rand(4)  # the RNG stream after the step
    (ref_losses, ref_grads, ref_next), (losses, grads, nxt) = results["none"], results["all"]
    torch.manual_seed(124)
    assert _step(model, "none", batch)[0]["loss"] != pytest.approx(ref_losses["loss"], abs=1e-5)  # dropout acts
    assert losses == pytest.approx(ref_losses, abs=1e-5)
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-5, msg=n)
    assert torch.equal(nxt, ref_next)


def test_two_ranks_with_checkpointing_match_one_rank_with_accumulation(tiny_benchmark, tmp_path):
    common = ["train.batch_size=2", "train.epochs=1", "train.lr=0.001"]
    _train(tiny_benchmark, str(tmp_path / "ddp"), *common, "train.accum_steps=1", "train.grad_checkpointing='all'",
           launcher=2)
    _train(tiny_benchmark, str(tmp_path / "one"), *common, "train.accum_steps=2")
    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert ddp.keys() == one.keys() and len(ddp) >= 8
    for step in ddp:
        assert abs(ddp[step] - one[step]) < 1e-5, (step, ddp[step], one[step])
    wa = torch.load(tmp_path / "ddp" / "last.pth", map_location="cpu", weights_only=True)["model"]
    wb = torch.load(tmp_path / "one" / "last.pth", map_location="cpu", weights_only=True)["model"]
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4


def test_best_is_weights_only_and_last_still_resumes(tiny_benchmark, tmp_path):
    from models import build_model

    out = str(tmp_path / "run")
    extra = ["train.grad_checkpointing='all'", "train.amp='bf16'"]
    _train(tiny_benchmark, out, *extra)
    best = torch.load(os.path.join(out, "best.pth"), map_location="cpu", weights_only=True)
    last = torch.load(os.path.join(out, "last.pth"), map_location="cpu", weights_only=True)
    assert set(best) == {"model", "config", "identity", "epoch", "global_step", "best_metric", "git"}
    assert {"optimizer", "scaler", "rng", "step_in_epoch"} <= set(last)
    assert set(best["identity"]) == {"pretrained_meter_sha256", "tokenizer_sha256"}
    assert best["identity"]["tokenizer_sha256"] is not None and best["epoch"] == 1
    assert os.path.getsize(os.path.join(out, "best.pth")) < 0.5 * os.path.getsize(os.path.join(out, "last.pth"))
    for name, raw in (("best.pth", best), ("last.pth", last)):  # the byte count bench/memory.py relies on
        assert serialized_nbytes(raw) == os.path.getsize(os.path.join(out, name)), name
    cfg = load_config("configs/debug.yaml", tiny_opts(tiny_benchmark, out))
    load_checkpoint(os.path.join(out, "best.pth"), model=build_model(cfg, pad_token_id=1), strict=True)
    res = run_script("test.py", "--config", "configs/debug.yaml", "--out", str(tmp_path / "eval"),
                     "--opts", *tiny_opts(tiny_benchmark, out), *extra)
    assert "pairs/s" in res.stdout
    again = _train(tiny_benchmark, out, *extra)  # everything resume needs is still in last.pth
    assert "resumed from" in again.stdout and "epoch 1, step 0" in again.stdout
