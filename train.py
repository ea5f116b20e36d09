"""Train CIEC with weak (image-level and sentence-level) labels only.

    torchrun --nproc_per_node=8 train.py --config configs/ciec.yaml      # the paper's setting
    python train.py --config configs/demo.yaml                           # one process (CPU demo)
    python train.py --config configs/ciec.yaml --opts train.accum_steps=8  # 1 GPU, global batch 256

The loop reads top-down: distributed init -> data -> model, criterion, optimiser -> automatic
resume from ``<output_dir>/last.pth`` -> epochs of (train, validate, save). The learning rate
is a stateless function of the global step (utils/schedule.py). Checkpoints are written
atomically; ``last.pth`` (everything resuming needs) every epoch (and every ``train.save_every_steps`` optimizer
steps), ``best.pth`` (weights, config and fingerprints only) when the validation AUC improves.
``train.grad_checkpointing`` recomputes activations in backward (models/backbone.py) to fit larger micro-batches.
A non-finite loss stops the run with the loss
dict printed *before* anything is written.
"""
import argparse
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from datasets.dgm4 import build_dataset, collate
from datasets.sampler import BlockDistributedSampler, eval_sampler
from datasets.seeding import SeededDataset
from datasets.text import tokenizer_for
from losses import build_criterion
from models import build_model
from models.pretrained import load_configured
from utils import dist
from utils.config import grad_checkpointing_parts, save_config
from utils.evaluator import evaluate, flatten_metrics
from utils.logger import JsonlWriter, TensorBoardWriter
from utils.loop import (clear_if_stale, file_sha256, resume_state, save_best, save_state, start_run, train_one_epoch,
                        unwrap)
from utils.paths import check_inputs, exit_on_missing, load_entry_config
from utils.training import build_optimizer, to_device


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ciec.yaml")
    parser.add_argument("--opts", nargs="*", default=[], help="overrides such as train.lr=2e-5")
    parser.add_argument("--restart-if-stale", action="store_true",
                        help="delete a last.pth trained under another config or pretrained checkpoint instead of "
                             "refusing it")
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


def weak_losses(criterion, device):
    """The training step's losses: the nine weakly supervised losses of CIEC on the model's outputs."""
    def compute(model, batch, state, micro):
        batch = to_device(batch, device)
        return criterion(model(batch), batch)
    return compute


def main(cfg, restart_if_stale=False):
    rank, world, device, out = start_run(cfg)
    tcfg = cfg["train"]
    print(f"rank {rank}/{world} on {device}; output {out}")

    tokenizer = tokenizer_for(cfg)
    train_loader, val_loader = build_loaders(cfg, world, rank)
    model = build_model(cfg, pad_token_id=tokenizer.pad_token_id)
    model.backbone.set_grad_checkpointing(grad_checkpointing_parts(tcfg["grad_checkpointing"]))
    if model.frozen_by_ablation:  # parameters only a switched-off loss would train keep their init (models/__init__)
        print(f"frozen (no enabled loss trains them): {model.frozen_by_ablation}")
    load_configured(model.backbone, cfg["pretrained"])
    model.to(device)
    # the run is tied to the bytes of its starting point, not only to the path in the config
    identity = {"pretrained_meter_sha256": file_sha256(cfg["pretrained"]["meter"])}
    clear_if_stale(out, cfg, identity, restart_if_stale)
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(model, tcfg["lr"], tcfg["weight_decay"], tcfg["backbone_lr_scale"])
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg["amp"] == "fp16")
    state = resume_state(out, model, optimizer, scaler, cfg, identity)  # refuses a last.pth trained under another config
    if dist.is_main():
        save_config(cfg, str(out / "config.yaml"))
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=has_unused_parameters(cfg)) if world > 1 else model

    sampler = train_loader.sampler
    total_steps = tcfg["epochs"] * sampler.steps_per_epoch
    ctx = {"device": device, "out": out, "total_steps": total_steps, "identity": identity,
           "best_identity": dict(identity, tokenizer_sha256=file_sha256(cfg["data"]["tokenizer"])),
           "jsonl": JsonlWriter(str(out / "log.jsonl"), enabled=dist.is_main()),
           "tb": TensorBoardWriter(str(out / "tb"), enabled=dist.is_main())}
    while state["epoch"] < tcfg["epochs"]:
        t0 = time.time()
        sampler.set_epoch(state["epoch"])
        sampler.set_start(state["step_in_epoch"])
        train_loader.dataset.set_epoch(state["epoch"])
        train_stats = train_one_epoch(ddp, weak_losses(criterion, device), train_loader, optimizer, scaler, cfg,
                                      state, ctx)
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
        save_best(ctx["out"] / "best.pth", model, cfg, state, ctx["best_identity"])  # weights only, for test.py
    save_state(ctx["out"] / "last.pth", model, optimizer, scaler, cfg, state, ctx["identity"])
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


def run(args):
    """Check that the data and pretrained weights are in place (one-line error otherwise), then train."""
    cfg = load_entry_config(args.config, args.opts)
    check_inputs(cfg, ["train", "val"], args.config, args.opts, pretrained=True)
    main(cfg, args.restart_if_stale)


if __name__ == "__main__":
    exit_on_missing(run, parse_args())
