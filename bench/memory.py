"""Which micro-batch fits which GPU: device-independent memory accounting of one CIEC training step
(docs/implementation_notes.md "Activation checkpointing, checkpoint files, memory and speed at paper size").

At the config's sizes (paper size by default: ViT-B/16 at 256x256, RoBERTa-base, 6 CFA layers, 50 tokens) and for
each ``train.grad_checkpointing`` setting, on the CPU:

- weights, gradients and AdamW state: fp32 parameters, fp32 gradients, two fp32 moments (+ one step scalar) per
  trainable parameter; under DDP also one flat fp32 copy of the gradients (the bucket buffers);
- activations: the bytes the autograd graph keeps for backward after the forward and the nine losses
  (``utils.memory.SavedTensorMeter``: ``saved_tensors_hooks``, storages counted once, parameters left out), measured
  at two batch sizes (``--probe``), split into a per-pair slope and a fixed part (e.g. autocast's bf16 weight copies);
- the recomputation peak of a checkpointed setting: the largest layer that backward re-runs (its bytes without
  checkpointing, ViT block, RoBERTa layer or co-attention step).

Attention: on the CPU, ``F.scaled_dot_product_attention`` with dropout falls back to the unfused kernel that keeps
the (L x L) probabilities and dropout mask; fused GPU kernels keep q, k, v, the output and the log-sum-exp (plus a
seed) with or without dropout. The accounting therefore runs attention with dropout 0 (``--cpu-attention`` keeps the
CPU's kernel; the difference is printed). Everything else (LayerNorm, GELU, dropout masks, linear inputs) saves the
same tensors on every device.

A step at micro-batch b needs  static + fixed + b * (per pair + recompute per pair)  bytes, plus the step's
``--reserve-gib`` (CUDA context, cuBLAS / NCCL workspaces) and ``--fragmentation`` (allocator slack) of the card.
For 24, 40 and 80 GB cards (GiB) it prints the largest micro-batch and, for 1, 2, 4 and 8 GPUs, the micro-batch
(a power of two, so that it divides the paper's global batch of 256) and ``train.accum_steps`` that give 256. Then
the exact sizes of ``best.pth`` and ``last.pth`` at these sizes (``utils.checkpoint.serialized_nbytes``, no file).

Usage::

    python bench/memory.py [--config configs/ciec.yaml] [--batch 32] [--amp bf16 none] [--threads 1]
"""
import argparse
import contextlib
import gc
import json
import math

import torch
import torch.nn.functional as F

from bench.heads_overhead import paper_batch
from losses import build_criterion
from models import build_model
from utils.checkpoint import capture_rng_state, serialized_nbytes
from utils.config import load_config
from utils.loop import best_payload, resume_payload
from utils.memory import SavedTensorMeter
from utils.training import amp_context, build_optimizer

GIB = 1024 ** 3
SETTINGS = ("none", "vit", "text", "cfa", "all")
PARTS = {"none": (), "vit": ("vit",), "text": ("text",), "cfa": ("cfa",), "all": ("vit", "text", "cfa")}
CARDS_GIB = (24, 40, 80)
WORLDS = (1, 2, 4, 8)
GLOBAL_BATCH = 256


def static_bytes(model):
    """fp32 weights, gradients and AdamW moments (exp_avg, exp_avg_sq and a float32 step per tensor)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * 4 for p in trainable)
    adamw = 2 * grads + 4 * len(trainable)
    return {"params": params, "grads": grads, "adamw": adamw, "ddp_buckets": grads,
            "n_params": sum(p.numel() for p in model.parameters())}


def segments(backbone):
    """(label, module) of every unit a checkpointed setting recomputes on its own in backward."""
    cfa = backbone.cfa
    return ([(f"vit.{i}", m) for i, m in enumerate(backbone.vit_model.blocks)]
            + [(f"text.{i}", m) for i, m in enumerate(backbone.text_transformer.encoder.layer)]
            + [(f"cfa.{i}", m) for i, m in enumerate(cfa.cross_modal_text_layers)]
            + [(f"cfa.{i}", m) for i, m in enumerate(cfa.cross_modal_image_layers)])


@contextlib.contextmanager
def fused_attention(enabled):
    """Run SDPA without dropout: it then keeps what a fused GPU kernel keeps with dropout (see the docstring)."""
    original = F.scaled_dot_product_attention

    def no_dropout(query, key, value, attn_mask=None, dropout_p=0.0, *args, **kwargs):
        return original(query, key, value, attn_mask, 0.0, *args, **kwargs)

    if enabled:
        F.scaled_dot_product_attention = no_dropout
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def saved_bytes(model, criterion, batch, amp, fused):
    """{segment label or "": bytes} the graph keeps after the forward and the nine losses."""
    with SavedTensorMeter(exclude=model.parameters()) as meter, fused_attention(fused), \
            amp_context(torch.device("cpu"), amp):
        meter.track(segments(model.backbone))
        losses = criterion(model(batch), batch)
    by_label = meter.live_bytes(by_label=True)
    del losses
    gc.collect()
    return by_label


def bench_batch(cfg, batch_size):
    """``bench.heads_overhead.paper_batch`` with token ids inside the config's vocabulary."""
    batch = paper_batch(cfg, batch_size)
    batch["input_ids"].clamp_(max=cfg["model"]["text"]["vocab_size"] - 1)
    return batch


def linear_fit(values, sizes):
    """(fixed, per pair) of values measured at two batch sizes."""
    (b1, b2), (v1, v2) = sizes, values
    per = (v2 - v1) / (b2 - b1)
    return v1 - b1 * per, per


def account(model, criterion, cfg, amp, probe, fused):
    """Per setting: fixed and per-pair saved bytes, and the recompute peak (fixed, per pair) of its largest unit."""
    batches = [bench_batch(cfg, b) for b in probe]
    rows, none_segments = {}, None
    for setting in SETTINGS:
        model.backbone.set_grad_checkpointing(PARTS[setting])
        measured = [saved_bytes(model, criterion, batch, amp, fused) for batch in batches]
        fixed, per = linear_fit([sum(m.values()) for m in measured], probe)
        if setting == "none":
            labels = {k for m in measured for k in m if k}
            none_segments = {k: linear_fit([m.get(k, 0) for m in measured], probe) for k in labels}
            parts = {p: sum(v[1] for k, v in none_segments.items() if k.startswith(p + ".")) for p in PARTS["all"]}
            print(json.dumps({"amp": amp, "per_pair_MiB_by_part_without_checkpointing": {
                **{k: round(v / 2 ** 20, 1) for k, v in parts.items()},
                "heads_losses_and_layer_inputs": round((per - sum(parts.values())) / 2 ** 20, 1)}}), flush=True)
        units = [v for k, v in none_segments.items() if k.split(".")[0] in PARTS[setting]]
        peak = max(units, key=lambda fp: fp[1]) if units else (0.0, 0.0)
        rows[setting] = {"fixed": fixed, "per_pair": per, "recompute_fixed": peak[0], "recompute_per_pair": peak[1]}
    model.backbone.set_grad_checkpointing(())
    return rows


def step_bytes(row, static, batch, world):
    """Bytes of a training step at micro-batch ``batch`` on one of ``world`` GPUs (without the reserve)."""
    base = static["params"] + static["grads"] + static["adamw"] + (static["ddp_buckets"] if world > 1 else 0)
    activations = row["fixed"] + row["recompute_fixed"] + batch * (row["per_pair"] + row["recompute_per_pair"])
    return base + max(activations, static["params"])  # AdamW's foreach temporaries come after backward


def largest_batch(row, static, card_gib, world, reserve_gib, fragmentation):
    usable = card_gib * GIB * (1 - fragmentation) - reserve_gib * GIB
    if step_bytes(row, static, 1, world) > usable:
        return 0
    per = row["per_pair"] + row["recompute_per_pair"]
    return int((usable - step_bytes(row, static, 0, world)) // per)


def split_global_batch(largest, world):
    """(micro-batch, accum_steps) with micro x accum x world = 256, micro the largest power of two that fits."""
    if largest < 1:
        return None
    micro = min(2 ** int(math.log2(largest)), GLOBAL_BATCH // world)
    return micro, GLOBAL_BATCH // (world * micro)


def fit_table(rows, static, args):
    lines = ["| setting | activations / pair | card | largest micro-batch (1 GPU / DDP) | "
             + " | ".join(f"{w} GPU{'s' if w > 1 else ''}: micro x accum" for w in WORLDS) + " |",
             "|---|---|---|---|" + "---|" * len(WORLDS)]
    for setting, row in rows.items():
        per = (row["per_pair"] + row["recompute_per_pair"]) / 2 ** 20
        for card in CARDS_GIB:
            big = {w: largest_batch(row, static, card, w, args.reserve_gib, args.fragmentation) for w in WORLDS}
            cells = []
            for w in WORLDS:
                split = split_global_batch(big[w], w)
                cells.append(f"{split[0]} x {split[1]}" if split else "does not fit")
            lines.append(f"| {setting} | {per:.0f} MiB | {card} GB | {big[1]} / {big[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checkpoint_sizes(model, cfg):
    """Exact bytes of best.pth and last.pth (single process) after one AdamW step, and the tensors' own bytes."""
    optimizer = build_optimizer(model, 1e-5, 0.02)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros((), dtype=p.dtype).expand_as(p)  # a zero gradient without its bytes
    for group in optimizer.param_groups:
        group["foreach"] = False  # per-tensor updates: no temporaries of the size of all the parameters
    optimizer.step()
    for group in optimizer.param_groups:
        group["foreach"] = None  # as train.py's optimizer has it (state_dict() stores the flag)
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = {"epoch": 3, "step_in_epoch": 0, "global_step": 1500, "best_metric": 95.5}
    identity = {"pretrained_meter_sha256": "0" * 64}
    best = best_payload(model, cfg, state, dict(identity, tokenizer_sha256="0" * 64))
    last = resume_payload(model, optimizer, scaler, cfg, state, identity, rng=[capture_rng_state()])
    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                  if torch.is_tensor(t))
    return {"best_bytes": serialized_nbytes(best), "last_bytes": serialized_nbytes(last),
            "model_tensor_bytes": tensors, "adamw_tensor_bytes": moments}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/ciec.yaml")
    p.add_argument("--batch", type=int, default=None, help="also print the step's bytes at this micro-batch")
    p.add_argument("--amp", nargs="+", default=None, help="bf16 | fp16 | none (default: the config's train.amp)")
    p.add_argument("--probe", type=int, nargs=2, default=[2, 4], help="the two batch sizes measured")
    p.add_argument("--reserve-gib", type=float, default=1.0, help="CUDA context, cuBLAS and NCCL workspaces")
    p.add_argument("--fragmentation", type=float, default=0.05, help="fraction of the card the allocator loses")
    p.add_argument("--cpu-attention", action="store_true", help="keep the CPU's attention kernel (see docstring)")
    p.add_argument("--no-checkpoint-sizes", action="store_true")
    p.add_argument("--checkpoint-sizes-only", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); bytes do not depend "
                   "on it, the run time does (two threads on a loaded 2-core machine took 2.5x longer)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model, criterion = build_model(cfg).train(), build_criterion(cfg)
    static = static_bytes(model)
    print(json.dumps({"config": args.config, **{k: v if k == "n_params" else round(v / GIB, 3)
                                                for k, v in static.items()}, "unit": "GiB"}), flush=True)
    for amp in [] if args.checkpoint_sizes_only else args.amp or [cfg["train"]["amp"]]:
        report(model, criterion, cfg, amp, static, args)
    if not args.no_checkpoint_sizes:
        sizes = checkpoint_sizes(model, cfg)
        print(json.dumps({**sizes, **{k.replace("bytes", "GB"): round(v / 1e9, 3) for k, v in sizes.items()}}))


def report(model, criterion, cfg, amp, static, args):
    rows = account(model, criterion, cfg, amp, args.probe, fused=not args.cpu_attention)
    if not args.cpu_attention:
        model.backbone.set_grad_checkpointing(())
        cpu = linear_fit([sum(saved_bytes(model, criterion, bench_batch(cfg, b), amp, False).values())
                          for b in args.probe], args.probe)
        print(json.dumps({"amp": amp, "cpu_attention_kernel_extra_per_pair_MiB":
                          round((cpu[1] - rows["none"]["per_pair"]) / 2 ** 20, 1)}))
    for setting, row in rows.items():
        line = {"amp": amp, "setting": setting, **{k: round(v / 2 ** 20, 1) for k, v in row.items()}, "unit": "MiB"}
        if args.batch:
            line[f"step_GiB_at_batch_{args.batch}"] = round(step_bytes(row, static, args.batch, 1) / GIB, 2)
            line[f"ddp_step_GiB_at_batch_{args.batch}"] = round(step_bytes(row, static, args.batch, 2) / GIB, 2)
        print(json.dumps(line), flush=True)
    print(f"\namp {amp}; reserve {args.reserve_gib} GiB + {args.fragmentation:.0%} of the card; "
          f"global batch {GLOBAL_BATCH}\n" + fit_table(rows, static, args) + "\n", flush=True)


if __name__ == "__main__":
    main()
