"""Pieces of the training loop shared by train.py (CIEC, weak labels) and pretrain.py (METER objectives).

- ``train_one_epoch(model, compute_losses, loader, optimizer, scaler, cfg, state, ctx)``: one epoch of optimizer
  steps (accumulation, DDP no_sync, autocast, per-step lr, logging, step checkpoints).
- ``start_run(cfg)``: process group, output folder, per-rank seed.
- ``unwrap(model)``: the module inside DDP.
- ``optimizer_step(model, optimizer, scaler, clip_grad)``: (unscale, clip,) step, update, zero_grad.
- ``check_finite(losses, state)``: every rank stops (exit 3) before anything is written when a loss is not finite.
- ``save_state(path, model, optimizer, scaler, cfg, state, identity)``: collective; rank 0 writes the checkpoint
  (model, optimizer, scaler, every rank's RNG, the resolved config, the loop ``state`` and ``identity``).
- ``save_best(path, model, cfg, state, identity)``: collective; rank 0 writes a weights checkpoint (model, config,
  ``identity``, epoch, global step, best metric) for evaluation: no optimizer, scaler or RNG (``best_payload``).
- ``clear_if_stale(...)``: the opt-in alternative to that refusal (``--restart-if-stale``): delete and start over.
- ``resume_state(out, model, optimizer, scaler, cfg, identity)``: restores all of it from ``<out>/last.pth`` and
  returns the loop state ({epoch, step_in_epoch, global_step, best_metric}); it refuses (SystemExit naming the
  differing keys) a checkpoint written under another config (``utils.config.resume_conflicts``) or with another
  ``identity`` (e.g. a fingerprint of the data), so a stale run never continues silently.
"""
import contextlib
import hashlib
import math
import os
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from utils import dist
from utils.checkpoint import (atomic_torch_save, checkpoint_payload, find_resume, gather_rng_states, load_checkpoint,
                              saved_world_size, weights_payload)
from utils.config import resume_conflicts
from utils.schedule import lr_at, set_lr
from utils.training import amp_context, seed_everything

LOOP_STATE = ("epoch", "step_in_epoch", "global_step", "best_metric")
BEST_STATE = ("epoch", "global_step", "best_metric")  # what a weights checkpoint keeps of the loop state


def start_run(cfg):
    """Join the process group, create ``train.output_dir`` (rank 0) and seed this rank.
    Returns (rank, world_size, device, output folder as a Path)."""
    rank, world, _, device = dist.init_distributed(cfg["train"]["device"])
    out = Path(cfg["train"]["output_dir"])
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg["train"]["seed"] + rank, cfg["train"]["deterministic"])
    return rank, world, device, out


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def optimizer_step(model, optimizer, scaler, clip_grad):
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


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


def resume_payload(model, optimizer, scaler, cfg, state, identity=None, rng=None):
    """What ``save_state`` writes (``rng``: every rank's RNG states; None: this process's)."""
    extra = {} if rng is None else {"rng": rng}
    return checkpoint_payload(model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                              scaler=scaler.state_dict(), config=cfg, identity=dict(identity or {}),
                              **extra, **{k: state[k] for k in LOOP_STATE})


def best_payload(model, cfg, state, identity=None):
    """What ``save_best`` writes: weights and what evaluation reads, nothing that only resuming needs."""
    return weights_payload(unwrap(model), config=cfg, identity=dict(identity or {}),
                           **{k: state[k] for k in BEST_STATE})


def save_state(path, model, optimizer, scaler, cfg, state, identity=None):
    rng = gather_rng_states()  # collective: every rank's RNG, for an exact per-rank resume
    if dist.is_main():
        atomic_torch_save(resume_payload(model, optimizer, scaler, cfg, state, identity, rng), str(path))
    dist.barrier()


def save_best(path, model, cfg, state, identity=None):
    if dist.is_main():
        atomic_torch_save(best_payload(model, cfg, state, identity), str(path))
    dist.barrier()


def stale_reasons(saved, cfg, identity=None):
    """{key: (checkpoint value, current value)} that forbid continuing ``saved`` under ``cfg`` / ``identity``."""
    reasons = resume_conflicts(saved["config"], cfg, saved_world_size(saved), dist.get_world_size())
    old = saved.get("identity", {})
    for key, value in (identity or {}).items():
        if old.get(key) != value:
            reasons[key] = (old.get(key), value)
    return reasons


def refuse_stale(path, saved, cfg, identity=None):
    reasons = stale_reasons(saved, cfg, identity)
    if reasons:
        lines = "\n".join(f"  {key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in reasons.items())
        raise SystemExit(f"{path} was trained with another config:\n{lines}\n"
                         f"choose another train.output_dir, or delete {path} to start over")


def clear_if_stale(out, cfg, identity, restart, extra_files=()):
    """With ``restart``: delete ``<out>/last.pth`` (and ``extra_files`` in ``out``) when it was written under another
    config or ``identity``, so the run starts over instead of being refused. Collective."""
    path = find_resume(str(out))
    if restart and path is not None and dist.is_main():
        reasons = stale_reasons(torch.load(path, map_location="cpu", weights_only=True), cfg, identity)
        if reasons:
            print(f"{path} was trained under other settings ({', '.join(sorted(reasons))}); starting over", flush=True)
            for name in ("last.pth", "best.pth", *extra_files):
                if os.path.exists(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
    dist.barrier()


def file_sha256(path):
    """sha256 of a file's bytes, or of a folder's files in name order (a tokenizer folder); None for None."""
    if path is None:
        return None
    h = hashlib.sha256()
    files = [os.path.join(path, n) for n in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    for name in files:
        if os.path.isfile(name):
            h.update(os.path.basename(name).encode())
            with open(name, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def resume_state(out, model, optimizer, scaler, cfg, identity=None):
    """Restore everything from ``<out>/last.pth`` if it exists; return the loop state."""
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_metric": -1.0}
    path = find_resume(str(out))
    if path is None:
        return state
    ckpt = load_checkpoint(path, model=model, optimizer=optimizer, scaler=scaler, strict=True,  # and RNG
                           check=lambda saved: refuse_stale(path, saved, cfg, identity))
    state.update({k: ckpt[k] for k in LOOP_STATE})
    print(f"resumed from {path}: epoch {state['epoch']}, step {state['step_in_epoch']} of the epoch, "
          f"global step {state['global_step']}")
    return state


def train_one_epoch(model, compute_losses, loader, optimizer, scaler, cfg, state, ctx):
    """One epoch of optimizer steps (each ``accum_steps`` micro-batches); updates ``state``, returns mean losses.

    ``compute_losses(model, batch, state, micro)`` -> dict of scalar losses with "loss" (run under autocast);
    ``batch`` is the loader's CPU batch and ``micro`` the micro-batch index in the epoch. ``ctx``: device, out,
    total_steps, jsonl, tb and optionally identity (stored in the step checkpoints).
    """
    tcfg = cfg["train"]
    accum, device = tcfg["accum_steps"], ctx["device"]
    model.train()
    sums, count = {}, 0
    bar = tqdm(total=len(loader) // accum, disable=not dist.is_main(), desc=f"epoch {state['epoch']}",
               dynamic_ncols=True, leave=False)
    for i, batch in enumerate(loader):
        last_micro = (i + 1) % accum == 0
        sync = model.no_sync() if (isinstance(model, DistributedDataParallel) and not last_micro) \
            else contextlib.nullcontext()
        with sync:
            with amp_context(device, tcfg["amp"]):
                losses = compute_losses(model, batch, state, i)
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
        optimizer_step(model, optimizer, scaler, tcfg["clip_grad"])
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        bar.update(1)
        if state["global_step"] % tcfg["log_every"] == 0:
            log_train(sums, count, optimizer, state, ctx)
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        if tcfg["save_every_steps"] and state["global_step"] % tcfg["save_every_steps"] == 0:
            save_state(ctx["out"] / "last.pth", model, optimizer, scaler, cfg, state, ctx.get("identity"))
    bar.close()
    return {k: v / max(count, 1) for k, v in sums.items()}


def log_train(sums, count, optimizer, state, ctx):
    means = dist.reduce_dict({k: torch.tensor(v / count) for k, v in sums.items()})
    if dist.is_main():
        row = {f"train/{k}": float(v) for k, v in means.items()}
        row["lr"] = optimizer.param_groups[0]["lr"]
        ctx["jsonl"].write({"global_step": state["global_step"], "epoch": state["epoch"], **row})
        ctx["tb"].add_scalars(row, state["global_step"])
