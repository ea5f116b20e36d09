"""Diagnostic: which of eq. 4's scores picks the manipulated face among several candidates (docs/
implementation_notes.md "Ablation study", the w/o Text-aid finding).

For every image-manipulated pair of the split with two or more candidate boxes, one of which overlaps the true box
with IoU >= 0.5 (the "true candidate", the best-overlapping one), counts how often the argmax of S^iv (implicit,
from the patch map), S^ev (explicit, text-image similarity of the raw features) and S^v (their combination, C*)
is the true candidate, beside the expected count of a uniform choice. Also prints alpha. Nothing is trained.

    python scripts/box_score_probe.py --config configs/demo.yaml --checkpoint output/demo/best.pth [--opts ...]
"""
import torch
from torch.utils.data import DataLoader

from datasets.dgm4 import audited_dataset, collate
from datasets.text import tokenizer_for
from models import build_model
from utils.checkpoint import load_checkpoint
from utils.cli import ArgumentParser
from utils.errors import exit_on_user_error
from utils.metrics import candidate_hits
from utils.paths import load_entry_config

SCORES = {"S^iv": "s_iv", "S^ev": "s_ev", "S^v": "box_scores"}


def count_hits(out, batch):
    """{"pairs", "uniform", "S^iv", "S^ev", "S^v"} of one batch (``utils.metrics.candidate_hits``)."""
    fake = batch["y_v"] > 0.5
    counts = {}
    for label, key in SCORES.items():
        hits, pairs, uniform = candidate_hits(out[key].float(), batch["cand_boxes"], batch["cand_mask"],
                                              batch["gt_box"], fake)
        counts.update({label: hits, "pairs": pairs, "uniform": uniform})
    return counts


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--opts", nargs="*", default=[])
    args = p.parse_args(argv)
    cfg = load_entry_config(args.config, args.opts)
    tokenizer = tokenizer_for(cfg)
    dataset = audited_dataset(cfg, args.split, tokenizer)
    model = build_model(cfg, pad_token_id=tokenizer.pad_token_id)
    load_checkpoint(args.checkpoint, model=model, strict=True, restore_rng=False)
    model.eval()
    total = {}
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=cfg["eval"]["batch_size"], collate_fn=collate):
            for key, value in count_hits(model(batch), batch).items():
                total[key] = total.get(key, 0) + value
    alpha = model.trps.alpha
    print(f"{args.checkpoint}: {total['pairs']} image fakes with several candidates; argmax on the true candidate: "
          + ", ".join(f"{k} {total[k]}" for k in SCORES) + f" (uniform choice {total['uniform']:.1f}); alpha "
          + ("none (text_aid off)" if alpha is None else f"{float(alpha.detach()):.3f}"))
    return total


if __name__ == "__main__":
    exit_on_user_error(main)
