"""Train CIEC with weak (image-level and sentence-level) labels only.

    torchrun --nproc_per_node=8 train.py --config configs/ciec.yaml      # the paper's setting
    python train.py --config configs/demo.yaml                           # one process (CPU demo)
    python train.py --config configs/ciec.yaml --opts train.accum_steps=8  # 1 GPU, global batch 256

The loop reads top-down in ``main``: distributed init -> data -> model, criterion, optimiser -> automatic
resume from ``<output_dir>/last.pth`` (``utils.checkpoint.resume`` -> a ``TrainState``) -> epochs of (train, validate,
pick the best, save, log). The learning rate is a stateless function of the global step (utils/schedule.py); a
resumed run first drops the rows of ``log.jsonl`` beyond its global step, which it trains again. Checkpoints are written
atomically; ``last.pth`` (everything resuming needs) every epoch (and every ``train.save_every_steps`` optimizer
steps), ``best.pth`` (weights, config and fingerprints only) when the validation AUC improves.
``train.grad_checkpointing`` recomputes activations in backward (models/backbone.py) to fit larger micro-batches.
A non-finite loss stops the run with the loss
dict printed *before* anything is written.
"""
import time

import torch
from torch.utils.data import DataLoader

from datasets.audit import audit_run, split_files
from datasets.dgm4 import build_dataset, collate
from datasets.sampler import BlockDistributedSampler, eval_sampler
from datasets.seeding import SeededDataset
from datasets.text import tokenizer_for
from losses import build_criterion
from models import build_model
from models.pretrained_load import load_configured
from utils import dist
from utils.checkpoint import resume
from utils.cli import ArgumentParser
from utils.config import grad_checkpointing_parts, save_config
from utils.errors import exit_on_user_error
from utils.evaluator import evaluate, flatten_metrics
from utils.logger import RunLog
from utils.loop import file_sha256, periodic, save_best, save_state, start_run, train_one_epoch, unwrap, wrap_ddp
from utils.paths import check_inputs, load_entry_config
from utils.training import build_optimizer, to_device


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ciec.yaml")
    parser.add_argument("--opts", nargs="*", default=[], help="overrides such as train.lr=2e-5")
    parser.add_argument("--restart-if-stale", action="store_true",
                        help="delete a last.pth trained under another config or pretrained checkpoint instead of "
                             "refusing it")
    return parser.parse_args(argv)


def build_loaders(cfg, audited, tokenizer, world, rank):
    """Train and val loaders over the audited records (``datasets.audit.audit_run``) with the caller's tokenizer."""
    data, train = cfg["data"], cfg["train"]
    train_set = SeededDataset(build_dataset(cfg, audited, "train", tokenizer), seed=train["seed"])
    val_set = build_dataset(cfg, audited, "val", tokenizer)
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
    audited = audit_run(cfg, split_files(cfg, ["train", "val"]))  # every record checked once, before the model
    train_loader, val_loader = build_loaders(cfg, audited, tokenizer, world, rank)
    model = build_ciec(cfg, tokenizer, device)
    # the run is tied to the bytes of its starting point, not only to the path in the config
    identity = {"pretrained_meter_sha256": file_sha256(cfg["pretrained"]["meter"])}
    best_identity = dict(identity, tokenizer_sha256=file_sha256(cfg["data"]["tokenizer"]))
    criterion = build_criterion(cfg)
    optimizer = build_optimizer(model, tcfg["lr"], tcfg["weight_decay"], tcfg["backbone_lr_scale"],
                                tcfg["vit_lr_scale"])
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg["amp"] == "fp16")
    state = resume(out, model, optimizer, scaler, cfg, identity, restart_if_stale)  # or refuse another config's run
    if dist.is_main():
        save_config(cfg, str(out / "config.yaml"))
    ddp = wrap_ddp(model, device, find_unused_parameters=has_unused_parameters(cfg))
    log = RunLog(out, dist.is_main(), resumed_step=state.global_step)
    after_step = periodic(out, ddp, optimizer, scaler, cfg, identity, log)  # step rows, last.pth every N steps
    while state.epoch < tcfg["epochs"]:
        t0 = time.time()
        stats = train_one_epoch(ddp, weak_losses(criterion, device), train_loader, optimizer, scaler, cfg, state,
                                device, after_step)
        metrics, _ = evaluate(unwrap(ddp), val_loader, device, amp_dtype=amp_dtype(tcfg["amp"]))
        state.end_epoch()
        improved = metrics["AUC"] > state.best_metric
        if improved:
            state.best_metric = metrics["AUC"]
            save_best(out / "best.pth", ddp, cfg, state, best_identity)  # weights only, for test.py
        save_state(out / "last.pth", ddp, optimizer, scaler, cfg, state, identity)
        report_epoch(log, cfg, state, stats, metrics, time.time() - t0, improved)
    log.close()
    dist.cleanup()


def build_ciec(cfg, tokenizer, device):
    """The CIEC model with the configured gradient checkpointing and pretrained weights, on ``device``."""
    model = build_model(cfg, pad_token_id=tokenizer.pad_token_id)
    model.backbone.set_grad_checkpointing(grad_checkpointing_parts(cfg["train"]["grad_checkpointing"]))
    if model.frozen_by_ablation:  # parameters only a switched-off loss would train keep their init (models/__init__)
        print(f"frozen (no enabled loss trains them): {model.frozen_by_ablation}")
    load_configured(model.backbone, cfg["pretrained"])
    return model.to(device)


def report_epoch(log, cfg, state, train_stats, metrics, seconds, improved):
    """The epoch's row in log.jsonl / TensorBoard and its line on stdout (rank 0)."""
    if not dist.is_main():
        return
    log.write({"epoch": state.epoch, "global_step": state.global_step, "seconds": round(seconds, 1),
               **{f"train/{k}": v for k, v in train_stats.items()}, **flatten_metrics(metrics, prefix="val/")})
    brief = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("AUC", "ACC", "IoU_mean", "IoU50", "F1"))
    print(f"epoch {state.epoch}/{cfg['train']['epochs']} ({seconds:.0f}s): "
          f"loss {train_stats.get('loss', float('nan')):.4f}; val {brief}" + (" [best]" if improved else ""),
          flush=True)


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
    exit_on_user_error(lambda: run(parse_args()))  # a bad flag, config value or missing input: one `error:` line
