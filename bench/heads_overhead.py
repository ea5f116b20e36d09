"""Cost of the CIEC heads and losses (paper sections 2.3-2.4) over the bare backbone + eq. 1 head, at paper size.

Times, on the CPU and with the paper's sizes (ViT-B/16 at 256x256, RoBERTa-base, 6 CFA layers, 50 tokens, n = 5
candidate boxes; batch 2 by default), one training step of
    full: CIEC forward (backbone, TRPS, VCTG, eq. 1 head), all nine losses (``build_criterion``), backward;
    base: backbone forward, eq. 1 head, BCE, backward (same model object, so the same weights).
The two steps alternate (base, full, base, full, ...) after one warm-up of each, so drifts in machine load hit both.
Prints ONE JSON line: ``overhead_ratio`` = median over repeats of full/base (target <= 1.05), both medians in seconds,
and ``min_ratio`` = min(full) / min(base), the least load-sensitive estimate on a shared machine.

One thread by default: on a loaded machine, multi-threaded runs of the many small head ops wait on descheduled
threads (measured here: the heads and losses alone took 0.07 s with 1 thread and 1.3 s with 2 threads at load 3.4
on 2 cores), which measures the machine's load, not the heads' cost. ``--threads 0`` keeps torch's default.

Usage::

    python bench/heads_overhead.py [--repeats 3] [--batch 2] [--threads 1]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from datasets.text import word_token_mask
from losses import build_criterion
from models import build_model
from utils.config import DEFAULTS, merge


def paper_batch(cfg, batch_size, seed=0):
    """Random batch with the shapes of ``datasets.dgm4.collate`` at the config's sizes; half the pairs fake."""
    g = torch.Generator().manual_seed(seed)
    S, L, n = cfg["data"]["image_size"], cfg["data"]["max_len"], cfg["data"]["num_boxes"]
    ids = torch.randint(3, 1000, (batch_size, L), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    y_v = (torch.arange(batch_size) % 2).float()
    y_t = ((torch.arange(batch_size) // 2) % 2).float()
    boxes = torch.rand(batch_size, n, 4, generator=g) * 0.3 + torch.tensor([0.35, 0.35, 0.05, 0.05])
    return {"image": torch.randn(batch_size, 3, S, S, generator=g), "input_ids": ids,
            "attention_mask": torch.ones(batch_size, L, dtype=torch.long),
            "word_tokens": word_token_mask(torch.ones(batch_size, L, dtype=torch.long)),
            "content_mask": (torch.rand(batch_size, L, generator=g) > 0.5).float(),
            "cand_boxes": boxes, "cand_mask": torch.ones(batch_size, n, dtype=torch.bool),
            "y_v": y_v, "y_t": y_t, "y_m": torch.maximum(y_v, y_t)}


def full_step(model, criterion, batch):
    criterion(model(batch), batch)["loss"].backward()


def base_step(model, criterion, batch):
    feats = model.backbone(batch["image"], batch["input_ids"], batch["attention_mask"])
    logit = model.bin_head(feats["v_cls"], feats["t_cls"])
    F.binary_cross_entropy_with_logits(logit.float(), batch["y_m"]).backward()


def timed(step, model, criterion, batch):
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    step(model, criterion, batch)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = merge(DEFAULTS, {"model": {"cfa": {"dropout": 0.0}}})  # paper sizes; no dropout noise in timings
    model, criterion = build_model(cfg).train(), build_criterion(cfg)
    batch = paper_batch(cfg, args.batch)
    timed(base_step, model, criterion, batch)
    timed(full_step, model, criterion, batch)
    base, full = [], []
    for _ in range(args.repeats):
        base.append(timed(base_step, model, criterion, batch))
        full.append(timed(full_step, model, criterion, batch))
    ratio = statistics.median(f / b for f, b in zip(full, base))
    print(json.dumps({"overhead_ratio": round(ratio, 4), "full_step_median_s": round(statistics.median(full), 4),
                      "base_step_median_s": round(statistics.median(base), 4),
                      "min_ratio": round(min(full) / min(base), 4), "repeats": args.repeats,
                      "batch": args.batch, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
