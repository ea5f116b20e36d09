"""infer.py batch-mode throughput on the CPU: pairs per second, and the share of the time in MTCNN vs the model.

Runs ``infer.run_batch`` in this process (checkpoint loading, MTCNN start-up and a 2-pair warm-up run are timed
apart or not at all, not in the rate)
on ``--n`` pairs: the first records of the checkpoint config's test split when its data is on disk (after
scripts/demo.sh: the synthetic test images, about 400x300), else copies of scikit-image's astronaut (512x512) with
one caption. Twice: with MTCNN finding the candidate faces (the default of infer.py), then with the boxes MTCNN found
given as ``"boxes"`` (model only). Without the demo checkpoint (``output/demo/best.pth``) it makes an untrained one of
``configs/demo.yaml``'s sizes (``inference.untrained``, as tests/test_infer.py does; same cost, meaningless outputs)
and says so. Prints one summary line and one JSON line.

Usage::

    python bench/infer_speed.py [--checkpoint output/demo/best.pth] [--n 64] [--batch-size 64] [--threads 2]
"""
import argparse
import json
import os
import tempfile
import time
from types import SimpleNamespace

import torch
from PIL import Image

import infer
from inference.loading import load_for_inference
from inference.untrained import untrained_checkpoint
from preprocess import detect_faces
from preprocess.train_tokenizer import train_tokenizer
from utils.config import load_config

DEMO_CONFIG = "configs/demo.yaml"
CAPTION = "Astronaut Eileen Collins poses at NASA's Johnson Space Center in Houston before the STS-93 mission."


def stand_in_checkpoint(folder):
    """An untrained checkpoint of the demo's sizes; the demo's tokenizer if present, else a small one made here."""
    opts = ["pretrained.meter=None"]
    if not os.path.isdir(load_config(DEMO_CONFIG)["data"]["tokenizer"]):
        tok = os.path.join(folder, "tokenizer")
        train_tokenizer([CAPTION.lower(), "a man speaks at a rally in washington"] * 20, tok, vocab_size=2000)
        opts.append(f"data.tokenizer={tok}")
    return untrained_checkpoint(load_config(DEMO_CONFIG, opts), os.path.join(folder, "untrained.pth"))


def write_pairs(cfg, folder, n):
    """``folder/pairs.jsonl`` with ``n`` pairs; returns (path, description of the images)."""
    d = cfg["data"]
    meta = os.path.join(d["root"], d["test_files"][0])
    if os.path.isfile(meta):
        with open(meta) as f:
            records = json.load(f)[:n]
        pairs = [{"image": os.path.abspath(os.path.join(d["root"], r["image"])), "text": r["text"]} for r in records]
        what = f"{len(pairs)} records of {meta}"
    else:
        from skimage.data import astronaut
        Image.fromarray(astronaut()).save(os.path.join(folder, "astronaut.jpg"), quality=95)
        pairs = [{"image": "astronaut.jpg", "text": CAPTION}] * n
        what = f"{n} x skimage astronaut 512x512"
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    return path, what


def timed_batch(predictor, pairs, out, batch_size):
    """(rows, seconds) of one batch-mode run."""
    args = SimpleNamespace(pairs=pairs, out=out, out_image=None, amp="none", batch_size=batch_size)
    start = time.perf_counter()
    rows = infer.run_batch(predictor, args)
    return rows, time.perf_counter() - start


def with_found_boxes(pairs, rows, folder):
    """The same pairs with the boxes MTCNN found, so the second run skips the detector."""
    path = os.path.join(folder, "pairs_boxes.jsonl")
    with open(pairs) as src, open(path, "w") as dst:
        for line, row in zip(src, rows):
            dst.write(json.dumps(dict(json.loads(line), boxes=[c["box"] for c in row["candidates"]])) + "\n")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="output/demo/best.pth")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size of the checkpoint")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: no contention with MTCNN's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        note = f"checkpoint {args.checkpoint}"
        if not os.path.isfile(args.checkpoint):
            args.checkpoint = stand_in_checkpoint(folder)
            note = f"no {note}: an untrained checkpoint of {DEMO_CONFIG}'s sizes made here (same cost)"
        t0 = time.perf_counter()
        predictor = load_for_inference(args.checkpoint, "cpu")
        t1 = time.perf_counter()
        detect_faces.init_detector()
        t2 = time.perf_counter()
        pairs, what = write_pairs(predictor.cfg, folder, args.n)
        size = args.batch_size or predictor.cfg["eval"]["batch_size"]
        with open(pairs) as f:  # warm-up (first-call costs of torch and TensorFlow), not timed
            warm = os.path.join(folder, "warm.jsonl")
            with open(warm, "w") as w:
                w.writelines(f.readlines()[:2])
        timed_batch(predictor, warm, os.path.join(folder, "warm_out.jsonl"), size)
        rows, seconds = timed_batch(predictor, pairs, os.path.join(folder, "out.jsonl"), size)
        boxed, seconds_boxed = timed_batch(predictor, with_found_boxes(pairs, rows, folder),
                                           os.path.join(folder, "out_boxes.jsonl"), size)
    ok = [r for r in rows if "error" not in r]
    share = {k: sum(r["timings_ms"][k] for r in ok) / (1e3 * seconds) for k in ("detect_ms", "model_ms", "read_ms")}
    result = {"pairs": len(rows), "errors": len(rows) - len(ok), "batch_size": size, "threads": args.threads,
              "pairs_per_s": len(rows) / seconds, "pairs_per_s_boxes_given": len(boxed) / seconds_boxed,
              "share_mtcnn": share["detect_ms"], "share_model": share["model_ms"], "share_read": share["read_ms"],
              "load_s": t1 - t0, "mtcnn_startup_s": t2 - t1, "images": what, "note": note}
    print(f"infer.py batch mode, CPU ({args.threads} threads), {what}, batch {size}: {result['pairs_per_s']:.2f} "
          f"pairs/s with MTCNN (time: MTCNN {100 * share['detect_ms']:.0f}%, model {100 * share['model_ms']:.0f}%, "
          f"image reading {100 * share['read_ms']:.0f}%), {result['pairs_per_s_boxes_given']:.2f} pairs/s with the "
          f"boxes given; start-up: checkpoint {t1 - t0:.1f} s, MTCNN {t2 - t1:.1f} s. {note}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return result


if __name__ == "__main__":
    main()
