"""End-to-end checks of train.py / test.py on the tiny synthetic benchmark (issue: training and evaluation).

- a smoke run of train.py then test.py (files written, metrics present and in range);
- two processes on gloo under torchrun give the same losses and weights as one process with the
  same global batch (accumulation);
- a run killed mid-epoch (SIGKILL) and resumed reaches the same final weights as an uninterrupted run.
"""
import copy
import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import ROOT, run_script, tiny_opts
from utils.config import default_eval_dir, load_config


def _train(bench, out, *extra, launcher=None):
    args = ["train.py", "--config", "configs/debug.yaml", "--opts", *tiny_opts(bench, out), *extra]
    if launcher is None:
        return run_script(*args)
    return run_script("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={launcher}", *args)


def _losses(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    return {r["global_step"]: r["train/loss"] for r in rows if "lr" in r}


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_train_then_test_smoke(tiny_benchmark, tmp_path):
    out = str(tmp_path / "run")
    proc = _train(tiny_benchmark, out)
    assert "epoch 1/1" in proc.stdout
    for name in ("best.pth", "last.pth", "config.yaml", "log.jsonl"):
        assert os.path.exists(os.path.join(out, name)), name
    res = run_script("test.py", "--config", "configs/debug.yaml", "--out", str(tmp_path / "eval"),
                     "--visualize", "2", "--opts", *tiny_opts(tiny_benchmark, out))
    assert "CIEC paper (Table 1)" in res.stdout
    metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
    for key in ("AUC", "EER", "ACC", "IoU_mean", "IoU50", "IoU75", "Precision", "Recall", "F1"):
        assert 0.0 <= metrics[key] <= 100.0, (key, metrics[key])
    preds = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl")]
    assert len(preds) == 16 and len({p["id"] for p in preds}) == len(preds)
    first = preds[0]
    assert set(first) >= {"id", "score", "label", "pred_box", "gt_box", "token_pred", "token_label", "fake_cls"}
    assert len(first["token_pred"]) == len(first["token_label"])
    assert len(os.listdir(tmp_path / "eval" / "vis")) == 2
    with open(os.path.join(out, "config.yaml")) as f:
        before = f.read()
    other = subprocess.run([sys.executable, "train.py", "--config", "configs/debug.yaml", "--opts",
                            *tiny_opts(tiny_benchmark, out), "train.lr=0.123"],
                           cwd=ROOT, capture_output=True, text=True)
    assert other.returncode != 0 and "was trained with another config" in other.stderr
    assert "train.lr: checkpoint" in other.stderr and "0.123" in other.stderr
    with open(os.path.join(out, "config.yaml")) as f:
        assert f.read() == before  # the refused run left the output folder as it was
    # test.py refuses a model or input setting that differs from training, before any weight is loaded ...
    bad = subprocess.run([sys.executable, "test.py", "--config", "configs/debug.yaml", "--out", str(tmp_path / "e2"),
                          "--opts", *tiny_opts(tiny_benchmark, out), "model.vctg.proj_dim=8", "data.max_len=30"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and not (tmp_path / "e2").exists()
    assert "trained with another config (data.max_len: trained 40, now 30; model.vctg.proj_dim: trained 16, now 8)" \
        in bad.stderr
    # ... and accepts evaluation-time settings (the token gate off, other workers, another lr in train.*)
    # (written beside the trained setting's eval_test, not over it)
    run_script("test.py", "--config", "configs/debug.yaml", "--opts",
               *tiny_opts(tiny_benchmark, out), "model.vctg.gate_tokens_by_text=False", "train.lr=0.5")
    assert os.path.exists(os.path.join(out, "eval_test_gate_tokens_by_text=False", "metrics.json"))
    assert not os.path.exists(os.path.join(out, "eval_test"))


def test_default_out_names_the_model_settings_evaluated_otherwise():
    cfg = load_config(os.path.join(ROOT, "configs/debug.yaml"), ["train.output_dir=runs/a"])
    trained = copy.deepcopy(cfg)
    assert default_eval_dir(cfg, "test", trained) == os.path.join("runs/a", "eval_test")
    assert default_eval_dir(cfg, "val", None) == os.path.join("runs/a", "eval_val")  # no stored config: the defaults
    cfg["model"]["vctg"]["gate_tokens_by_text"] = not trained["model"]["vctg"]["gate_tokens_by_text"]
    cfg["model"]["vctg"]["token_threshold"] = 0.25
    cfg["data"]["num_workers"] = 7  # evaluation-time, but not a model setting: no tag
    gate = cfg["model"]["vctg"]["gate_tokens_by_text"]
    assert default_eval_dir(cfg, "test", trained) == os.path.join(
        "runs/a", f"eval_test_gate_tokens_by_text={gate}_token_threshold=0.25")


def test_two_ranks_match_one_rank_with_accumulation(tiny_benchmark, tmp_path):
    common = ["train.batch_size=2", "train.epochs=1", "train.lr=0.001"]
    _train(tiny_benchmark, str(tmp_path / "ddp"), *common, "train.accum_steps=1", launcher=2)
    _train(tiny_benchmark, str(tmp_path / "one"), *common, "train.accum_steps=2")
    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert ddp.keys() == one.keys() and len(ddp) >= 8
    for step in ddp:
        assert abs(ddp[step] - one[step]) < 1e-5, (step, ddp[step], one[step])
    wa, wb = _weights(tmp_path / "ddp" / "last.pth"), _weights(tmp_path / "one" / "last.pth")
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-4


def test_kill_mid_epoch_then_resume_matches_uninterrupted(tiny_benchmark, tmp_path):
    common = ["train.batch_size=2", "train.epochs=2", "train.save_every_steps=1"]
    full = str(tmp_path / "full")
    _train(tiny_benchmark, full, *common)

    killed = str(tmp_path / "killed")
    args = [sys.executable, "train.py", "--config", "configs/debug.yaml", "--opts",
            *tiny_opts(tiny_benchmark, killed), *common]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = os.path.join(killed, "last.pth")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(last):
            try:
                state = torch.load(last, map_location="cpu", weights_only=True)
            except (RuntimeError, EOFError):
                state = None  # the atomic rename raced with our open; try again
            if state is not None and state["epoch"] == 1 and state["step_in_epoch"] >= 3:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run was not killed mid-epoch: {proc.stderr.read()[-2000:]}"
    resumed_from = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed_from["epoch"] == 1 and resumed_from["step_in_epoch"] > 0
    with open(os.path.join(killed, "log.jsonl"), "a") as f:  # a row logged after the last save, then a torn one
        f.write(json.dumps({"global_step": resumed_from["global_step"] + 1, "train/loss": 123.0, "lr": 0.0}) + "\n")
        f.write('{"global_step": 99, "train/lo')

    res = _train(tiny_benchmark, killed, *common)
    assert "resumed from" in res.stdout
    wa, wb = _weights(os.path.join(full, "last.pth")), _weights(last)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # log.jsonl holds each step once, as the uninterrupted run's does (issue 14 item 6)
    rows = [json.loads(line) for line in open(os.path.join(killed, "log.jsonl"))]
    steps = [r["global_step"] for r in rows if "lr" in r]
    assert len(steps) == len(set(steps)) and set(steps) == set(_losses(full))
    assert 123.0 not in [r["train/loss"] for r in rows if "lr" in r]
    assert [r["epoch"] for r in rows if "lr" not in r] == [1, 2]  # one row per epoch
