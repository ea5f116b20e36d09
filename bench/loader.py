"""Data-loader throughput: samples/s of ONE worker for the full training pipeline (paper 3.2 input pipeline).

Measures ``DGM4Dataset.__getitem__`` in a single process (no DataLoader workers): JPEG decode, flip, resize,
RandomAugment, normalisation, face candidates, tokenisation and both token-label rules. Without ``--config``
it builds its own temporary benchmark (600x400 photo-like JPEGs, metadata, face and stop-word caches, a small
byte-level BPE tokenizer). Prints one JSON line with ``samples_per_s_per_worker``.

Usage::

    python bench/loader.py [--n 400] [--config configs/ciec.yaml [--opts data.root=...]]
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from datasets.caches import make_header, save_cache
from datasets.dgm4 import DGM4Dataset, audited_dataset
from datasets.records import FAKE_CLS, read_metadata
from datasets.text import tokenizer_for
from preprocess.stopword_masks import mask_entry
from preprocess.train_tokenizer import train_tokenizer

WORDS = ("president minister said the people at a rally in washington on tuesday covid19 vaccine g7 "
         "summit leaders meet bulmer-rizzi celebrate event won election protest police city new york").split()


def photo_like(rng, w=600, h=400):
    """A smooth colour image with texture, so the JPEG has a realistic size (~40-80 KB)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / rng.uniform(20, 80) + c) * np.cos(yy / rng.uniform(20, 80)) for c in range(3)], -1)
    img = 128 + 80 * base + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_benchmark(folder, n_images=32, seed=0):
    """Write images, metadata, caches and a tokenizer under ``folder``; return DGM4Dataset kwargs (records, root,
    cache entries, tokenizer: the benchmark is made here, so it needs no audit)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    records, faces, classes = [], {}, list(FAKE_CLS)
    for i in range(n_images):
        path = f"img/{i:04d}.jpg"
        photo_like(rng).save(os.path.join(folder, path), quality=90)
        cls = classes[i % len(classes)]
        words = list(rng.choice(WORDS, size=int(rng.integers(10, 25))))
        box = [100, 80, 220, 230] if any(FAKE_CLS[cls][:2]) else []
        pos = [1, 3] if any(FAKE_CLS[cls][2:]) else []
        records.append({"id": i, "image": path, "text": " ".join(words).capitalize() + ".", "fake_cls": cls,
                        "fake_image_box": box, "fake_text_pos": pos})
        faces[path] = {"boxes": [[100, 80, 220, 230], [300, 50, 380, 150]], "scores": [0.99, 0.9],
                       "size": [600, 400]}
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(records, f)
    stopwords = {str(r["id"]): mask_entry(r["text"]) for r in records}
    save_cache(os.path.join(folder, "faces.json"), make_header("faces"), faces)
    save_cache(os.path.join(folder, "stopwords.json"), make_header("stopwords"), stopwords)
    tok = train_tokenizer([r["text"].lower() for r in records], os.path.join(folder, "tok"), vocab_size=500)
    return dict(records=read_metadata(folder, ["meta.json"]), root=folder, faces=faces, stopwords=stopwords,
                tokenizer=tok)


def measure(dataset, n):
    """``(wall, cpu)`` samples/s of ``dataset[i]`` over ``n`` items after a short warm-up.

    The CPU-time rate (``time.process_time``, one thread) is robust to other processes sharing the cores.
    """
    for i in range(min(8, len(dataset))):
        dataset[i]
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(n):
        dataset[k % len(dataset)]
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def main(argv=None):
    parser = argparse.ArgumentParser(description="single-worker data pipeline throughput")
    parser.add_argument("--n", type=int, default=400, help="samples to time")
    parser.add_argument("--config", default=None, help="benchmark the train split of this config instead")
    parser.add_argument("--opts", nargs="*", default=[])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.config:
        from utils.config import load_config
        cfg = load_config(args.config, args.opts)
        dataset, source = audited_dataset(cfg, "train", tokenizer_for(cfg)), cfg["data"]["root"]
        rate, cpu_rate = measure(dataset, args.n)
    else:
        with tempfile.TemporaryDirectory() as folder:
            dataset = DGM4Dataset(**make_benchmark(folder), image_size=256, max_len=50, max_words=50,
                                  num_boxes=5, train=True)
            source = "synthetic 600x400 JPEGs"
            rate, cpu_rate = measure(dataset, args.n)
    print(json.dumps({"samples_per_s_per_worker": round(rate, 1), "cpu_samples_per_s": round(cpu_rate, 1),
                      "n": args.n, "data": source,
                      "image_size": dataset.image_size, "train_transform": True}))


if __name__ == "__main__":
    main()
