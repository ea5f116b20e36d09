"""Where a pre-training step's time goes (pretrain.py, METER objectives), at a config's model sizes on the CPU.

For each image size and autocast setting, times (median of ``--repeats`` after one warm-up, random batch with the
shapes of the pre-training batch) the forward pieces of ``MeterPretrainer`` one by one, then the whole training
step (forward, both losses, backward, AdamW step):

    vit      ViT on B images                   text   RoBERTa on 2B captions (masked + plain)
    cfa      CFA on 2B pairs                   heads  MLM head on the masked tokens + ITM head
    step     forward + losses + backward + optimizer step

Prints one JSON line per setting (seconds and the step's pairs per second) and a ratio table.

Usage::

    python bench/pretrain_step.py [--config configs/demo_pretrain.yaml] [--sizes 128 96 64] [--amp none bf16]
                                  [--opts model.vit.local_radius=1 ...]
"""
import argparse
import json
import statistics
import time

import torch

from datasets.pretrain import itm_pairs, mask_tokens
from losses.meter import meter_losses
from models.backbone import build_backbone
from models.meter_heads import MeterPretrainer
from utils.config import load_config
from utils.training import amp_context, build_optimizer


def random_batch(cfg, size, batch_size, seed=0):
    """Pre-training batch: images, captions of 16-24 words (one token each), METER masks and ITM pairs."""
    g = torch.Generator().manual_seed(seed)
    L, vocab = cfg["data"]["max_len"], 600
    ids = torch.randint(5, vocab, (batch_size, L), generator=g)
    lengths = torch.randint(18, 27, (batch_size,), generator=g).clamp(max=L)
    pos = torch.arange(L).unsqueeze(0)
    mask = (pos < lengths.unsqueeze(1)).long()
    ids = torch.where(mask.bool(), ids, torch.ones_like(ids))
    ids[:, 0] = 0
    ids[torch.arange(batch_size), lengths - 1] = 2
    word_index = torch.where((pos >= 1) & (pos < lengths.unsqueeze(1) - 1), pos - 1, torch.full_like(pos, -1))
    content = (torch.rand(batch_size, L, generator=g) < 0.6).float() * (word_index >= 0).float()
    mlm_ids, mlm_labels = mask_tokens(ids, mask, word_index, content, g, 4, (5, vocab))
    itm_text, itm_label = itm_pairs(ids, g)
    image = torch.randn(batch_size, 3, size, size, generator=g)
    return {"image": image, "input_ids": ids, "attention_mask": mask, "mlm_ids": mlm_ids, "mlm_labels": mlm_labels,
            "itm_text": itm_text, "itm_label": itm_label}


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pieces(model, batch, amp, repeats):
    """Forward time of each piece (no grad) and of the whole training step."""
    bb, b = model.backbone, batch["image"].shape[0]
    dev = torch.device("cpu")
    mask2 = torch.cat([batch["attention_mask"]] * 2)
    ids2 = torch.cat([batch["mlm_ids"], batch["input_ids"]])
    with torch.no_grad(), amp_context(dev, amp):
        v = bb.encode_image(batch["image"])
        t = bb.encode_text(ids2, mask2)
        fused = bb.cfa(torch.cat([v, v]), t, text_mask=mask2)
        out = {"vit": timed(lambda: bb.encode_image(batch["image"]), repeats),
               "text": timed(lambda: bb.encode_text(ids2, mask2), repeats),
               "cfa": timed(lambda: bb.cfa(torch.cat([v, v]), t, text_mask=mask2), repeats),
               "heads": timed(lambda: (model.mlm_score(fused["t_hat"][:b][batch["mlm_labels"] != -100]),
                                       model.itm_score(fused["t_cls"][b:], fused["v_cls"][b:])), repeats)}
    opt = build_optimizer(model, 1e-4, 0.0)

    def step():
        with amp_context(dev, amp):
            loss = meter_losses(model(batch), batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out["step"] = timed(step, repeats)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_pretrain.yaml")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 96, 64])
    p.add_argument("--amp", nargs="+", default=["none", "bf16"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0 keeps torch's default")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides, key=value (as in pretrain.py)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        cfg = load_config(args.config, [*args.opts, f"data.image_size={size}"])
        torch.manual_seed(0)
        model = MeterPretrainer(build_backbone(cfg), cfg["model"]["text"]["vocab_size"]).train()
        batch = random_batch(cfg, size, args.batch)
        for amp in args.amp:
            t = pieces(model, batch, amp, args.repeats)
            row = {"image_size": size, "amp": amp, "opts": args.opts, "batch": args.batch,
                   "threads": torch.get_num_threads(),
                   **{k: round(v, 4) for k, v in t.items()}, "pairs_per_s": round(args.batch / t["step"], 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["step"]
    print("step time relative to the first setting: " + ", ".join(
        f"{r['image_size']}px/{r['amp']} {r['step'] / base:.2f}" for r in rows))


if __name__ == "__main__":
    main()
