"""Diagnostic: does a pre-trained backbone already 'see' manipulated words? (docs/implementation_notes.md
"Pre-training: where a step's time goes, and what the demo sizes learn", "Where the information is, and is not")

For every content word of the evaluation split's captions, the word is masked (all its tokens, one word at a time) and
the pre-trained MLM head scores the original tokens with the pair's own image: surprise = mean -log p(token). A
manipulated word (token label 1, text_swap / text_attribute) that the picture contradicts should be surprising. Prints
the ROC AUC of the surprise for manipulated vs. genuine content words, per word kind (``word_kinds.json``), with the
true image and with another pair's image (the gap is what the picture contributes). Also prints the top-1 accuracy of
the masked GENUINE words (every token of the word predicted exactly) per kind and per number of detector boxes in
the picture (1 or 2+; the benchmark's boxes are its faces, up to misses and false positives): where a caption names
one of several pictured people, the picture alone does not say which. Reads the labels of the split it evaluates;
nothing is trained. ``--units`` masks a whole unit (adjacent content words of one kind, such as a two-word name)
at a time instead of one word: the label of a unit is that of its first word. Last, the ROC AUC of a zero-shot
sentence decision, text-manipulated caption or not, scored by its most surprising content word (unit) with the true
image: what an explicit comparison of each word with the picture gives without any fine-tuning.

    python scripts/mlm_mismatch_probe.py --config configs/demo_pretrain.yaml --checkpoint output/demo_pretrain/last.pth
"""
import argparse
import os

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from datasets.dgm4 import audited_dataset, collate
from datasets.pretrain import KINDS, content_units, load_word_kinds, token_word_kinds
from datasets.text import tokenizer_for
from models.backbone import build_backbone
from models.meter_heads import MeterPretrainer
from utils.config import load_config


def masked_targets(batch, token_kinds=None):
    """(rows, first word indices, (W,L) bool tokens to mask): every content word of the batch, one at a time, or
    with ``token_kinds`` ((B,L) word kind per token) every unit of adjacent content words of one kind (a whole
    name; ``datasets.pretrain.content_units``), so the caption cannot give one half of a name away."""
    rows, words, targets = [], [], []
    n = batch["input_ids"].shape[1]
    for r in range(batch["input_ids"].shape[0]):
        wi = batch["word_index"][r]
        content = (batch["content_mask"][r] > 0) & (wi >= 0)
        if token_kinds is None:
            spans = [(wi == w) for w in wi[content].unique().tolist()]
        else:
            units = content_units(wi.tolist(), content.tolist(), token_kinds[r].tolist())
            spans = [(torch.arange(n) >= s) & (torch.arange(n) < e) for s, e, _ in units]
        for span in spans:
            rows.append(r)
            words.append(int(wi[span][0]))
            targets.append(span)
    return rows, words, (torch.stack(targets) if targets else None)


@torch.no_grad()
def word_surprise(model, batch, mask_id, image, token_kinds=None):
    """[(sample row, first word index, surprise, top-1 correct)] for every content word (or unit, see
    ``masked_targets``) of the batch, masked one at a time."""
    v = model.backbone.encode_image(image)
    rows, words, target = masked_targets(batch, token_kinds)
    if not rows:
        return []
    rows_t = torch.tensor(rows)
    ids = torch.where(target, torch.full_like(target, mask_id, dtype=torch.long), batch["input_ids"][rows_t])
    mask = batch["attention_mask"][rows_t]
    t = model.backbone.encode_text(ids, mask)
    t_hat = model.backbone.cfa(v[rows_t], t, text_mask=mask)["t_hat"]
    logp = F.log_softmax(model.mlm_score(t_hat).float(), dim=-1)
    nll = -logp.gather(-1, batch["input_ids"][rows_t].unsqueeze(-1)).squeeze(-1)
    surprise = (nll * target).sum(1) / target.sum(1)
    correct = ((logp.argmax(-1) == batch["input_ids"][rows_t]) | ~target).all(1)
    return list(zip(rows, words, surprise.tolist(), correct.tolist()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_pretrain.yaml")
    p.add_argument("--checkpoint", default="output/demo_pretrain/last.pth")
    p.add_argument("--split", default="test")
    p.add_argument("--opts", nargs="*", default=[])
    p.add_argument("--units", action="store_true",
                   help="mask whole units (adjacent content words of one kind: a two-word name) instead of words")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.opts)
    tok = tokenizer_for(cfg)
    kinds = load_word_kinds(os.path.join(cfg["data"]["root"], cfg["pretrain"]["word_kinds"]))
    model = MeterPretrainer(build_backbone(cfg, tok.pad_token_id), cfg["model"]["text"]["vocab_size"],
                            itc_dim=cfg["pretrain"]["itc_dim"])
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    ds = audited_dataset(cfg, args.split, tok)
    scores, sentences = {"true": [], "swapped": []}, {}
    for start in range(0, len(ds), 64):
        batch = collate([ds[i] for i in range(start, min(len(ds), start + 64))])
        token_kinds = None
        if args.units:  # (B,L) word kind per token
            token_kinds = torch.stack([token_word_kinds(c, w, kinds) for c, w in zip(batch["caption"],
                                                                                       batch["word_index"])])
        for name, image in (("true", batch["image"]), ("swapped", batch["image"].roll(1, 0))):
            for r, w, s, ok in word_surprise(model, batch, tok.mask_token_id, image, token_kinds):
                label = int(batch["token_label_clean"][r][batch["word_index"][r] == w].max())
                kind = kinds.get(batch["caption"][r].split(" ")[w], len(KINDS) - 1)
                scores[name].append((kind, label, s, ok, int(batch["cand_mask"][r].sum())))
                if name == "true":  # sentence score: the most surprising content word (unit) of the caption
                    fake = int(batch["token_label_clean"][r].max())
                    sentences[start + r] = (fake, max(s, sentences.get(start + r, (0, s))[1]))
    print_auc(scores)
    print_accuracy(scores)
    labels, values = zip(*sentences.values())
    print(f"sentence decision from the most surprising content {'unit' if args.units else 'word'} (true image): "
          f"AUC {100 * roc_auc_score(labels, values):.1f} over {len(labels)} captions ({sum(labels)} text-manipulated)")


def print_auc(scores):
    """Surprise ROC AUC, manipulated vs. genuine words, per kind."""
    scores = {name: [(k, lab, s) for k, lab, s, _, _ in rows] for name, rows in scores.items()}
    for k, kind in enumerate(KINDS):
        parts = []
        for name in ("true", "swapped"):
            rows = [(lab, s) for kk, lab, s in scores[name] if kk == k]
            labels = [lab for lab, _ in rows]
            if 0 < sum(labels) < len(labels):
                parts.append(f"{name} image AUC {100 * roc_auc_score(labels, [s for _, s in rows]):.1f}")
        n_fake = sum(lab for kk, lab, _ in scores["true"] if kk == k)
        print(f"{kind:10s} {len([1 for kk, _, _ in scores['true'] if kk == k]):5d} words, {n_fake:4d} manipulated: "
              + (", ".join(parts) or "no manipulated words"))


def print_accuracy(scores):
    """Top-1 accuracy (%) of the masked genuine words per kind, by boxes in the picture, true / another image."""
    for k, kind in enumerate(KINDS):
        parts = []
        for label, keep in (("1 box", lambda b: b == 1), ("2+ boxes", lambda b: b >= 2)):
            acc = {name: [ok for kk, lab, _, ok, b in rows if kk == k and lab == 0 and keep(b)]
                   for name, rows in scores.items()}
            if acc["true"]:
                parts.append(f"{label}: {100 * sum(acc['true']) / len(acc['true']):.1f} / "
                             f"{100 * sum(acc['swapped']) / len(acc['swapped']):.1f} ({len(acc['true'])} words)")
        print(f"{kind:10s} top-1 accuracy of genuine words, true / another image: " + "; ".join(parts))


if __name__ == "__main__":
    main()
