"""Evaluate a CIEC checkpoint with the DGM4 protocol and print a Table 1 row beside the paper's.

    python test.py                                   # best.pth of configs/ciec.yaml on the DGM4 test split
    python test.py --config configs/demo.yaml --checkpoint output/demo/best.pth --out output/demo/test
    torchrun --nproc_per_node=8 test.py --config configs/ciec.yaml   # same numbers, 8x faster

Writes ``metrics.json`` (the nine Table 1 keys in percent, the subset tables and diagnostics) and
``predictions.jsonl`` (one line per sample) into ``--out`` (default ``<train.output_dir>/eval_<split>``; a token gate
or threshold evaluated otherwise than trained, ``--opts model.vctg.gate_tokens_by_text=false``, gets its own folder,
``eval_test_gate_tokens_by_text=False``); ``--visualize N`` also renders N pictures in the style of the paper's
Figure 3.

Before anything is written: the split is audited (``datasets.audit``; its ids also against the config's train and
val metadata, where those files exist), and the checkpoint must be one of train.py whose stored config equals this
one outside the evaluation-time settings (``utils/config.py``: ``EVAL_TIME_KEYS``, ``EVAL_TIME_SECTIONS``). Every
refusal is one ``error:`` line with exit status 2.
"""
import json
import os
import time

import torch
from torch.utils.data import DataLoader

from datasets.audit import audit_run, reference_files, split_files
from datasets.dgm4 import build_dataset, collate
from datasets.sampler import eval_sampler
from datasets.text import tokenizer_for
from inference.figures import render_predictions
from models import build_model
from utils import dist
from utils.checkpoint import load_checkpoint
from utils.cli import ArgumentParser, non_negative_int
from utils.config import default_eval_dir, eval_conflicts
from utils.errors import CheckpointError, exit_on_user_error
from utils.evaluator import evaluate
from utils.paths import check_inputs, load_entry_config
from utils.report import format_report, json_safe, write_predictions


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ciec.yaml")
    parser.add_argument("--checkpoint", default=None, help="default: <train.output_dir>/best.pth")
    parser.add_argument("--split", default=None, choices=["train", "val", "test"], help="default: eval.split")
    parser.add_argument("--out", default=None, help="default: <train.output_dir>/eval_<split>, plus "
                        "_<name>=<value> for a token gate or threshold evaluated otherwise than trained")
    parser.add_argument("--visualize", type=non_negative_int, default=0, metavar="N")
    parser.add_argument("--opts", nargs="*", default=[])
    return parser.parse_args(argv)


def main(args):
    cfg = load_entry_config(args.config, args.opts)
    split = args.split or cfg["eval"]["split"]
    ckpt_path = args.checkpoint or os.path.join(cfg["train"]["output_dir"], "best.pth")
    check_inputs(cfg, [split], args.config, args.opts, checkpoint=ckpt_path)  # one-line error for missing data
    rank, world, _, device = dist.init_distributed(cfg["train"]["device"])

    tokenizer = tokenizer_for(cfg)
    # every record checked once, before the model is built; ids also against the train and val files that exist
    audited = audit_run(cfg, split_files(cfg, [split]), references=reference_files(cfg, split))
    dataset = build_dataset(cfg, audited, split, tokenizer)
    loader = DataLoader(dataset, batch_size=cfg["eval"]["batch_size"], sampler=eval_sampler(dataset, world, rank),
                        num_workers=cfg["data"]["num_workers"], collate_fn=collate,
                        pin_memory=torch.cuda.is_available())
    model = build_model(cfg, pad_token_id=tokenizer.pad_token_id)
    ckpt = load_checkpoint(ckpt_path, model=model, strict=True, check=lambda s: check_trained_config(ckpt_path, s, cfg))
    model.to(device)
    out = args.out or default_eval_dir(cfg, split, ckpt.get("config"))
    print(f"checkpoint {ckpt_path} (epoch {ckpt.get('epoch')}, global step {ckpt.get('global_step')}); "
          f"split {split}: {len(dataset)} samples")
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[cfg["train"]["amp"]]
    start = time.perf_counter()
    metrics, predictions = evaluate(model, loader, device, amp_dtype=amp)
    seconds = time.perf_counter() - start
    if dist.is_main():
        print(f"evaluated {len(dataset)} pairs in {seconds:.1f} s: {len(dataset) / seconds:.1f} pairs/s "
              f"({world} process(es), eval.batch_size {cfg['eval']['batch_size']}, loading included)", flush=True)
        os.makedirs(out, exist_ok=True)
        print(format_report(metrics, split))
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(json_safe(metrics), f, indent=1, allow_nan=False)
        write_predictions(predictions, os.path.join(out, "predictions.jsonl"))
        if args.visualize:
            render_predictions(dataset, predictions, args.visualize, os.path.join(out, "vis"))
        print(f"wrote {out}/metrics.json and predictions.jsonl")
    dist.cleanup()


def check_trained_config(path, state, cfg):
    """Refuse (``CheckpointError``) a checkpoint trained with another model or input config
    (``utils.config.eval_conflicts``: every key outside ``EVAL_TIME_KEYS`` / ``EVAL_TIME_SECTIONS``), naming the keys,
    before any weight is loaded; a shape mismatch that gets past it is refused by ``utils.checkpoint.apply_checkpoint``,
    naming the parameters."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} stores no training config: not a checkpoint of train.py")
    conflicts = eval_conflicts(saved, cfg)
    if conflicts:
        listed = "; ".join(f"{k}: trained {a!r}, now {b!r}" for k, a, b in ((k, *v) for k, v in conflicts.items()))
        raise CheckpointError(f"checkpoint {path} was trained with another config ({listed}); evaluate it with its "
                              f"training config (train.output_dir/config.yaml), changing only evaluation-time settings")


if __name__ == "__main__":
    exit_on_user_error(lambda: main(parse_args()))  # a bad flag, config value or missing input: one `error:` line
