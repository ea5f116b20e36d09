"""Test-suite setup: offline mode, quiet TensorFlow, and a tiny
synthetic DGM4-format benchmark (generated, preprocessed and tokenised once per session)."""
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args, cwd=ROOT, timeout=600):
    """Run ``python <args>`` from the repository root; fail the test with its output on error."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """A synthetic benchmark of 64/16/16 samples (and 48 pristine pre-training pairs) with face cache, stop-word
    masks and tokenizer.

    Returns a dict of paths: root, tokenizer, faces, stopwords.
    """
    root = tmp_path_factory.mktemp("synthetic")
    splits = ["metadata/train.json", "metadata/val.json", "metadata/test.json", "metadata/pretrain.json"]
    run_script("preprocess/make_synthetic.py", "--out", str(root), "--train", "64", "--val", "16",
               "--test", "16", "--pretrain", "48", "--seed", "0")
    run_script("preprocess/detect_faces.py", "--data-root", str(root), "--metadata", *splits,
               "--out", str(root / "faces.json"), "--from-metadata")
    run_script("preprocess/stopword_masks.py", "--data-root", str(root), "--metadata", *splits,
               "--out", str(root / "stopwords.json"))
    run_script("preprocess/train_tokenizer.py", "--data-root", str(root), "--metadata", splits[0],
               "--out", str(root / "tokenizer"), "--vocab-size", "600")
    return {"root": str(root), "tokenizer": str(root / "tokenizer"), "faces": "faces.json",
            "stopwords": "stopwords.json"}


def tiny_opts(bench, output_dir, **extra):
    """``--opts`` pointing configs/debug.yaml at the tiny benchmark."""
    opts = [f"data.root={bench['root']}", f"data.tokenizer={bench['tokenizer']}",
            f"train.output_dir={output_dir}"]
    opts += [f"{k}={v}" for k, v in extra.items()]
    return opts


def train_full_batch(cfg, batch, pad_token_id, steps, lr, seed=0):
    """Train a fresh model (``cfg`` sizes, all losses) on one fixed ``batch`` with AdamW (no weight decay) on 2
    threads; return (eval-mode outputs on ``batch``, the training loss of every step)."""
    import torch

    from losses import build_criterion
    from models import build_model
    from utils.training import build_optimizer

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = build_model(cfg, pad_token_id=pad_token_id).train()
        criterion = build_criterion(cfg)
        opt = build_optimizer(model, lr, 0.0)
        losses = []
        for _ in range(steps):
            loss = criterion(model(batch), batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            return model.eval()(batch), losses
    finally:
        torch.set_num_threads(threads)


def twin_batch(root, records, lr):
    """Write ``records`` (images already under ``root``) as the one split of a benchmark, build its face cache,
    stop-word masks and tokenizer with the preprocess scripts, and return (debug config, the whole split as one
    eval-transform batch, its dataset). Shared by the image and text twin tests."""
    import json

    from datasets.dgm4 import audited_dataset, collate
    from datasets.text import tokenizer_for
    from utils.config import load_config

    os.makedirs(os.path.join(root, "metadata"))
    with open(os.path.join(root, "metadata", "train.json"), "w") as f:
        json.dump(records, f)
    meta = ["--data-root", str(root), "--metadata", "metadata/train.json"]
    run_script("preprocess/detect_faces.py", *meta, "--out", os.path.join(root, "faces.json"), "--from-metadata")
    run_script("preprocess/stopword_masks.py", *meta, "--out", os.path.join(root, "stopwords.json"))
    run_script("preprocess/train_tokenizer.py", *meta, "--out", os.path.join(root, "tokenizer"))
    split = "['metadata/train.json']"
    cfg = load_config("configs/debug.yaml", [
        f"data.root={root}", f"data.tokenizer={os.path.join(root, 'tokenizer')}",
        f"train.output_dir={os.path.join(root, 'out')}", f"data.train_files={split}", f"data.val_files={split}",
        f"data.test_files={split}", f"train.lr={lr}", "train.weight_decay=0.0"])
    ds = audited_dataset(cfg, "val", tokenizer_for(cfg))  # eval transform: fixed images
    return cfg, collate([ds[i] for i in range(len(ds))]), ds
