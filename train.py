"""Train CIEC with weak (image-level and sentence-level) labels only.

    torchrun --nproc_per_node=8 train.py --config configs/ciec.yaml      # the paper's setting
    python train.py --config configs/demo.yaml                           # one process (CPU demo)
    python train.py --config configs/ciec.yaml --opts train.accum_steps=8  # 1 GPU, global batch 256

The loop reads top-down: distributed init -> data -> model, criterion, optimiser -> automatic
resume from ``<output_dir>/last.pth`` -> epochs of (train, validate, save). The learning rate
is a stateless function of the global step (utils/schedule.py). Checkpoints are written
atomically; ``last.pth`` every epoch (and every ``train.save_every_steps`` optimizer steps),
``best.pth`` when the validation AUC improves. A non-finite loss stops the run with the loss
dict printed *before* anything is written.
"""
import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.dgm4 import build_dataset, collate
from datasets.sampler import BlockDistributedSampler, eval_sampler
from datasets.seeding import SeededDataset
from datasets.text import tokenizer_for
from losses import build_criterion
from models import build_model
from models.pretrained import load_pretrained
from utils import dist
from utils.checkpoint import find_resume, gather_rng_states, load_checkpoint, save_checkpoint, saved_world_size
from utils.config import load_config, resume_conflicts, save_config
from utils.evaluator import evaluate, flatten_metrics
from utils.logger import JsonlWriter, TensorBoardWriter
from utils.schedule import lr_at, set_lr
from utils.training import amp_context, build_optimizer, seed_everything, to_device


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ciec.yaml")
    parser.add_argument("--opts", nargs="*", default=[], help="overrides such as train.lr=2e-5")
    return parser.parse_args(argv)


def build_loaders(cfg, world, rank):
    data, train = cfg["data"], cfg["train"]
    train_set = SeededDataset(build_dataset(cfg, "train"), seed=train["seed"])
    val_set = build_dataset(cfg, "val")
    sampler = BlockDistributedSampler(train_set, world, rank, train["batch_size"], train["accum_steps"],
                                      shuffle=True, seed=train["seed"])
    train_loader = DataLoader(train_set, batch_size=train["batch_size"], sampler=sampler,
                              num_workers=data["num_workers"], collate_fn=collate,
                              pin_memory=torch.cuda.is_available(), drop_last=True,
                              generator=torch.Generator().manual_seed(train["seed"]))
    val_loader = DataLoader(val_set, batch_size=cfg["eval"]["batch_size"],
                            sampler=eval_sampler(val_set, world, rank), num_workers=data["num_workers"],
                            collate_fn=collate, pin_memory=torch.cuda.is_available(),
                            generator=torch.Generator())  # own generator: validation leaves the global RNG alone
    return train_loader, val_loader


def check_finite(losses, state):
    """Stop every rank, before any checkpoint is touched, if any rank saw a non-finite loss."""
    bad = torch.tensor(float(not math.isfinite(losses["loss"].item())))
    if dist.get_world_size() > 1:
        torch.distributed.all_reduce(bad)
    if bad.item() > 0:
        values = {k: float(v) for k, v in losses.items()}
        print(f"[rank {dist.get_rank()}] non-finite loss at global step {state['global_step']} "
              f"(epoch {state['epoch']}, step {state['step_in_epoch']}): {values}. "
              "Stopping; existing checkpoints were left untouched.", file=sys.stderr, flush=True)
        dist.cleanup()
        sys.exit(3)


def train_one_epoch(model, criterion, loader, optimizer, scaler, cfg, state, ctx):
    """One epoch of optimizer steps (each ``accum_steps`` micro-batches); updates ``state``."""
    tcfg = cfg["train"]
    accum, device = tcfg["accum_steps"], ctx["device"]
    model.train()
    sums, count = {}, 0
    bar = tqdm(total=len(loader) // accum, disable=not dist.is_main(), desc=f"epoch {state['epoch']}",
               dynamic_ncols=True, leave=False)
    for i, batch in enumerate(loader):
        batch = to_device(batch, device)
        last_micro = (i + 1) % accum == 0
        sync = model.no_sync() if (isinstance(model, DistributedDataParallel) and not last_micro) \
            else contextlib.nullcontext()
        with sync:
            with amp_context(device, tcfg["amp"]):
                losses = criterion(model(batch), batch)
            check_finite(losses, state)
            scaler.scale(losses["loss"] / accum).backward()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        count += 1
        if not last_micro:
            continue
        # the lr of the update that makes global step g+1 (warm-up never spends a step at lr 0)
        set_lr(optimizer, lr_at(state["global_step"] + 1, tcfg["lr"], tcfg["min_lr"], tcfg["warmup_steps"],
                                ctx["total_steps"]))
        optimizer_step(model, optimizer, scaler, tcfg)
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        bar.update(1)
        if state["global_step"] % tcfg["log_every"] == 0:
            log_train(sums, count, optimizer, state, ctx)
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        if tcfg["save_every_steps"] and state["global_step"] % tcfg["save_every_steps"] == 0:
            save(ctx["out"] / "last.pth", model, optimizer, scaler, cfg, state)
    bar.close()
    return {k: v / max(count, 1) for k, v in sums.items()}


def optimizer_step(model, optimizer, scaler, tcfg):
    if tcfg["clip_grad"] > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["clip_grad"])
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def log_train(sums, count, optimizer, state, ctx):
    means = dist.reduce_dict({k: torch.tensor(v / count) for k, v in sums.items()})
    if dist.is_main():
        row = {f"train/{k}": float(v) for k, v in means.items()}
        row["lr"] = optimizer.param_groups[0]["lr"]
        ctx["jsonl"].write({"global_step": state["global_step"], "epoch": state["epoch"], **row})
        ctx["tb"].add_scalars(row, state["global_step"])


def save(path, model, optimizer, scaler, cfg, state):
    rng = gather_rng_states()  # collective: every rank's RNG, for an exact per-rank resume
    if dist.is_main():
        save_checkpoint(str(path), model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                        scaler=scaler.state_dict(), rng=rng, config=cfg, **state)
    dist.barrier()


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def refuse_other_config(path, saved, cfg):
    """Stop before a stale run in output_dir continues silently under a changed config (``saved``: the checkpoint)."""
    conflicts = resume_conflicts(saved["config"], cfg, saved_world_size(saved), dist.get_world_size())
    if conflicts:
        lines = "\n".join(f"  {key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in conflicts.items())
        raise SystemExit(f"{path} was trained with another config:\n{lines}\n"
                         f"choose another train.output_dir, or delete {path} to start over")


def resume(out, model, optimizer, scaler, cfg):
    """Restore everything from ``<out>/last.pth`` if it exists; return the loop state."""
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": -1.0}
    path = find_resume(str(out))
    if path is None:
        return state
    ckpt = load_checkpoint(path, model=model, optimizer=optimizer, scaler=scaler, strict=True,  # and RNG
                           check=lambda saved: refuse_other_config(path, saved, cfg))
    state.update({k: ckpt[k] for k in state})
    print(f"resumed from {path}: epoch {state['epoch']}, step {state['step_in_epoch']} of the epoch, "
          f"global step {state['global_step']}")
    return state


def main(cfg):
    rank, world, _, device = dist.init_distributed(cfg["train"]["device"])
    tcfg = cfg["train"]
    out = Path(tcfg["output_dir"])
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(tcfg["seed"] + rank, tcfg["deterministic"])
    print(f"rank {rank}/{world} on {device}; output {out}")

    tokenizer = tokenizer_for(cfg)
    train_loader, val_loader = build_loaders(cfg, world, rank)
    model = build_model(cfg, pad_token_id=tokenizer.pad_token_id)
    if any(cfg["pretrained"][k] for k in ("meter", "openai_clip", "roberta")):
        load_pretrained(model.backbone, cfg["pretrained"])
    model.to(device)
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(model, tcfg["lr"], tcfg["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg["amp"] == "fp16")
    state = resume(out, model, optimizer, scaler, cfg)  # refuses a last.pth trained under another config
    if dist.is_main():
        save_config(cfg, str(out / "config.yaml"))
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=has_unused_parameters(cfg)) if world > 1 else model

    sampler = train_loader.sampler
    total_steps = tcfg["epochs"] * sampler.steps_per_epoch
    ctx = {"device": device, "out": out, "total_steps": total_steps,
           "jsonl": JsonlWriter(str(out / "log.jsonl"), enabled=dist.is_main()),
           "tb": TensorBoardWriter(str(out / "tb"), enabled=dist.is_main())}
    while state["epoch"] < tcfg["epochs"]:
        t0 = time.time()
        sampler.set_epoch(state["epoch"])
        sampler.set_start(state["step_in_epoch"])
        train_loader.dataset.set_epoch(state["epoch"])
        train_stats = train_one_epoch(ddp, criterion, train_loader, optimizer, scaler, cfg, state, ctx)
        metrics, _ = evaluate(unwrap(ddp), val_loader, device, amp_dtype=amp_dtype(tcfg["amp"]))
        state["epoch"] += 1
        state["step_in_epoch"] = 0
        end_of_epoch(ddp, optimizer, scaler, cfg, state, ctx, train_stats, metrics, time.time() - t0)
    ctx["tb"].close()
    dist.cleanup()


def end_of_epoch(model, optimizer, scaler, cfg, state, ctx, train_stats, metrics, seconds):
    improved = metrics["AUC"] > state["best_metric"]
    if improved:
        state["best_metric"] = metrics["AUC"]
        save(ctx["out"] / "best.pth", model, optimizer, scaler, cfg, state)
    save(ctx["out"] / "last.pth", model, optimizer, scaler, cfg, state)
    if dist.is_main():
        row = {"epoch": state["epoch"], "global_step": state["global_step"], "seconds": round(seconds, 1),
               **{f"train/{k}": v for k, v in train_stats.items()},
               **flatten_metrics(metrics, prefix="val/")}
        ctx["jsonl"].write(row)
        ctx["tb"].add_scalars({k: v for k, v in row.items() if "/" in k}, state["global_step"])
        brief = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("AUC", "ACC", "IoU_mean", "IoU50", "F1"))
        print(f"epoch {state['epoch']}/{cfg['train']['epochs']} ({seconds:.0f}s): "
              f"loss {train_stats.get('loss', float('nan')):.4f}; val {brief}"
              + (" [best]" if improved else ""), flush=True)


def has_unused_parameters(cfg):
    """Ablations that switch a loss or a branch off leave parameters without gradients; DDP must know."""
    m = cfg["model"]
    return (any(w == 0 for w in cfg["loss"]["weights"].values()) or not m["trps"]["text_aid"]
            or not m["vctg"]["image_aid"] or m["cfa"]["num_layers"] == 0)


def amp_dtype(amp):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


if __name__ == "__main__":
    args = parse_args()
    main(load_config(args.config, args.opts))
