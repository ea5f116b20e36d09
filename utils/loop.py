"""Pieces of the training loop shared by train.py (CIEC, weak labels) and pretrain.py (METER objectives).

The epoch loop itself is in each entry point's ``main`` (train, validate, save, log); this module holds its parts:

- ``start_run(cfg)``: process group, output folder, per-rank seed; ``wrap_ddp(model, device)``, ``unwrap(model)``.
- ``train_one_epoch(model, compute_losses, loader, optimizer, scaler, cfg, state, device, after_step)``: one epoch
  of optimizer steps from ``state``'s position (accumulation, DDP no_sync, autocast, per-step lr); advances the
  ``utils.checkpoint.TrainState`` and returns the epoch's mean losses. It saves and logs nothing itself:
  ``after_step(state, means)`` runs after every optimizer step (``periodic``: a log row every ``train.log_every``
  steps, ``last.pth`` every ``train.save_every_steps``).
- ``optimizer_step(model, optimizer, scaler, clip_grad)``: (unscale, clip,) step, update, zero_grad.
- ``check_finite(losses, state)``: every rank stops (exit 3) before anything is written when a loss is not finite.
- ``save_state(path, model, optimizer, scaler, cfg, state, identity)``: collective; rank 0 writes the resume
  checkpoint (``resume_payload``: model, optimizer, scaler, every rank's RNG, world size, the resolved config, the
  ``TrainState`` fields and ``identity``), which ``utils.checkpoint.resume`` reads back.
- ``save_best(path, model, cfg, state, identity)``: collective; rank 0 writes a weights checkpoint (model, config,
  ``identity``, epoch, global step, best metric) for evaluation: no optimizer, scaler or RNG (``best_payload``).
- ``file_sha256(path)``: fingerprint of a file or folder, for a run's ``identity``.
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
from utils.checkpoint import TrainState, atomic_torch_save, checkpoint_payload, weights_payload
from utils.rng import gather_rng_states
from utils.schedule import lr_at, set_lr
from utils.training import amp_context, seed_everything

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


def wrap_ddp(model, device, find_unused_parameters=False):
    """``model`` in DistributedDataParallel when there is more than one process, else ``model`` itself."""
    if dist.get_world_size() == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


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
        print(f"[rank {dist.get_rank()}] non-finite loss at global step {state.global_step} "
              f"(epoch {state.epoch}, step {state.step_in_epoch}): {values}. "
              "Stopping; existing checkpoints were left untouched.", file=sys.stderr, flush=True)
        dist.cleanup()
        sys.exit(3)


def _fields(state, names=None):
    """The loop-state values of a ``TrainState`` (or of a plain dict with those keys), restricted to ``names``."""
    values = state.as_dict() if isinstance(state, TrainState) else dict(state)
    return values if names is None else {k: values[k] for k in names}


def resume_payload(model, optimizer, scaler, cfg, state, identity=None, rng=None):
    """What ``save_state`` writes (``rng``: every rank's RNG states; None: this process's)."""
    extra = {} if rng is None else {"rng": rng}
    return checkpoint_payload(model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                              scaler=scaler.state_dict(), config=cfg, identity=dict(identity or {}),
                              world_size=dist.get_world_size(), **extra, **_fields(state))


def best_payload(model, cfg, state, identity=None):
    """What ``save_best`` writes: weights and what evaluation reads, nothing that only resuming needs."""
    return weights_payload(unwrap(model), config=cfg, identity=dict(identity or {}), **_fields(state, BEST_STATE))


def save_state(path, model, optimizer, scaler, cfg, state, identity=None):
    rng = gather_rng_states()  # collective: every rank's RNG, for an exact per-rank resume
    if dist.is_main():
        atomic_torch_save(resume_payload(model, optimizer, scaler, cfg, state, identity, rng), str(path))
    dist.barrier()


def save_best(path, model, cfg, state, identity=None):
    if dist.is_main():
        atomic_torch_save(best_payload(model, cfg, state, identity), str(path))
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


def periodic(out, model, optimizer, scaler, cfg, identity, log):
    """The ``after_step`` of ``train_one_epoch``: a row of running mean losses and the lr in ``log`` (a
    ``utils.logger.RunLog``) every ``train.log_every`` steps, ``<out>/last.pth`` every ``train.save_every_steps``."""
    tcfg = cfg["train"]

    def after_step(state, means):
        if state.global_step % tcfg["log_every"] == 0:
            reduced = dist.reduce_dict({k: torch.tensor(v) for k, v in means.items()})  # collective
            log.write({"global_step": state.global_step, "epoch": state.epoch,
                       **{f"train/{k}": float(v) for k, v in reduced.items()},
                       "lr": optimizer.param_groups[0]["lr"]})
        if tcfg["save_every_steps"] and state.global_step % tcfg["save_every_steps"] == 0:
            save_state(Path(out) / "last.pth", model, optimizer, scaler, cfg, state, identity)
    return after_step


def place_loader(loader, state):
    """Point the training sampler (and the per-sample augmentation seeds) at ``state``'s epoch, after the
    ``state.step_in_epoch`` steps already done: the sampler's order is a function of (seed, epoch) only."""
    loader.sampler.set_epoch(state.epoch)
    loader.sampler.set_start(state.step_in_epoch)
    loader.dataset.set_epoch(state.epoch)


def train_one_epoch(model, compute_losses, loader, optimizer, scaler, cfg, state, device, after_step=None):
    """The rest of epoch ``state.epoch`` in optimizer steps (each ``accum_steps`` micro-batches); advances ``state``
    and returns the mean losses of the micro-batches run.

    ``compute_losses(model, batch, state, micro)`` -> dict of scalar losses with "loss" (run under autocast);
    ``batch`` is the loader's CPU batch and ``micro`` the micro-batch index in this call. ``after_step(state,
    means)``, if given, runs after every optimizer step with the running means so far.
    """
    tcfg = cfg["train"]
    accum, total_steps = tcfg["accum_steps"], tcfg["epochs"] * loader.sampler.steps_per_epoch
    place_loader(loader, state)
    model.train()
    sums, count = {}, 0
    bar = tqdm(total=len(loader) // accum, disable=not dist.is_main(), desc=f"epoch {state.epoch}",
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
        set_lr(optimizer, lr_at(state.global_step + 1, tcfg["lr"], tcfg["min_lr"], tcfg["warmup_steps"], total_steps))
        optimizer_step(model, optimizer, scaler, tcfg["clip_grad"])
        state.global_step += 1
        state.step_in_epoch += 1
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss'] / count:.4f}", refresh=False)
        if after_step is not None:
            after_step(state, {k: v / count for k, v in sums.items()})
    bar.close()
    return {k: v / max(count, 1) for k, v in sums.items()}
