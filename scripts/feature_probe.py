"""Does a backbone's fused text stream tell manipulated words apart? Token probes on FROZEN CFA features.

A diagnostic for VCTG (paper section 2.4), not part of CIEC: it reads the token labels that CIEC never trains on.
The backbone (a METER export, as ``pretrained.meter`` loads it, or a train.py checkpoint) runs once, in evaluation
mode, over the train and val splits; its CFA text features T-hat (B,L,D), the features eqs. 12-13 read, are kept.
Two probes map each token's T-hat to p(word manipulated), trained with the CLEAN token labels (docs/protocol.md) on
the pairs whose image is pristine (an image-manipulated pair keeps its original caption, which may name a person who
is no longer pictured, with token labels 0):

- ``linear``: Linear(D, 1), what the 2.4.1 coarse head is with ``model.vctg.coarse_head: linear``;
- ``mlp``: Linear(D, 2D) -> LayerNorm -> GELU -> Linear(2D, 1) (``coarse_head: mlp``).

Printed per probe: the val token AUC for each word kind (``word_kinds.json`` of the synthetic benchmark; one row
"all" without it) over the content tokens of pristine-image pairs, and the sentence AUC of the most suspicious token.
A fully supervised probe on frozen features bounds what a read-out of the same features can learn; if the MLP
separates the words and the linear probe does not, the comparison with the picture is in the features but not
linearly (docs/implementation_notes.md, "What the fused features hold").

    python scripts/feature_probe.py --config configs/demo.yaml                         # pretrained.meter's export
    python scripts/feature_probe.py --config configs/demo.yaml --checkpoint output/demo/best.pth
"""
import argparse
import os

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.dgm4 import audited_dataset, collate
from datasets.pretrain import KINDS, load_word_kinds, token_word_kinds
from datasets.text import tokenizer_for
from models import build_model
from models.pretrained_load import load_configured
from models.vctg import token_score_head
from utils.checkpoint import load_checkpoint
from utils.paths import load_entry_config

PROBES = ("linear", "mlp")


@torch.no_grad()
def cache_features(backbone, loader, kinds):
    """Run ``backbone`` over ``loader``; returns {t_hat (N,L,D) float16, label (N,L) clean token labels (-100 off
    words), content (N,L) bool (content word tokens), kind (N,L) word-kind index (-1 off words), y_t, y_v (N,)}."""
    keep = {k: [] for k in ("t_hat", "label", "content", "kind", "y_t", "y_v")}
    for batch in tqdm(loader, desc="features", leave=False):
        keep["t_hat"].append(backbone(batch["image"], batch["input_ids"], batch["attention_mask"])["t_hat"].half())
        keep["label"].append(batch["token_label_clean"])
        keep["content"].append((batch["content_mask"] > 0) & batch["word_tokens"].bool())
        keep["kind"].append(torch.stack([token_word_kinds(c, w, kinds)
                                         for c, w in zip(batch["caption"], batch["word_index"])]))
        keep["y_t"].append(batch["y_t"])
        keep["y_v"].append(batch["y_v"])
    return {k: torch.cat(v) for k, v in keep.items()}


def pristine_image(feats):
    """The rows of ``feats`` whose image is pristine (y_v = 0)."""
    keep = feats["y_v"] < 0.5
    return {k: v[keep] for k, v in feats.items()}


def train_probe(feats, form, steps=1500, batch_size=128, lr=3e-3, seed=0):
    """A ``token_score_head`` of ``form`` trained with BCE on the labelled content tokens of ``feats``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = token_score_head(feats["t_hat"].shape[-1], form)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    valid = feats["content"] & (feats["label"] >= 0)
    n = valid.shape[0]
    for _ in range(steps):
        idx = torch.randint(n, (min(batch_size, n),), generator=gen)
        v = valid[idx]
        logits = head(feats["t_hat"][idx].float()).squeeze(-1)[v]
        loss = F.binary_cross_entropy_with_logits(logits, feats["label"][idx][v].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def auc_or_none(labels, scores):
    """ROC AUC in percent, None when only one class is present."""
    labels = labels.numpy()
    return None if labels.min() == labels.max() else 100.0 * roc_auc_score(labels, scores.numpy())


@torch.no_grad()
def probe_report(head, feats, kind_names):
    """{kind name: token AUC or None, "sentence": AUC of the max token score against y_t} on ``feats``."""
    scores = head(feats["t_hat"].float()).squeeze(-1)
    valid = feats["content"] & (feats["label"] >= 0)
    out = {}
    for k, name in enumerate(kind_names):
        m = valid & (feats["kind"] == k) if len(kind_names) > 1 else valid
        out[name] = auc_or_none(feats["label"][m], scores[m])
    top = scores.masked_fill(~valid, float("-inf")).amax(dim=1)
    has = valid.any(dim=1)
    out["sentence"] = auc_or_none(feats["y_t"][has], top[has])
    return out


def load_backbone(cfg, checkpoint, pad_token_id):
    """The CIEC model's backbone: from a train.py ``checkpoint``, or from ``pretrained`` (a METER export)."""
    model = build_model(cfg, pad_token_id=pad_token_id)
    if checkpoint:
        load_checkpoint(checkpoint, model=model, strict=True, restore_rng=False)
    else:
        load_configured(model.backbone, cfg["pretrained"])
    return model.backbone.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--checkpoint", default=None, help="a train.py checkpoint (default: pretrained.meter's export)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--opts", nargs="*", default=[])
    args = p.parse_args(argv)
    cfg = load_entry_config(args.config, args.opts)
    tok = tokenizer_for(cfg)
    kinds_path = os.path.join(cfg["data"]["root"], "word_kinds.json")
    kinds = load_word_kinds(kinds_path if os.path.isfile(kinds_path) else None)
    kind_names = KINDS[:-1] if kinds else ("all",)
    backbone = load_backbone(cfg, args.checkpoint, tok.pad_token_id)
    feats = {}
    for split in ("train", "val"):
        ds = audited_dataset(cfg, split, tok, train=False)
        loader = DataLoader(ds, batch_size=cfg["eval"]["batch_size"], collate_fn=collate,
                            num_workers=cfg["data"]["num_workers"])
        feats[split] = pristine_image(cache_features(backbone, loader, kinds))
    for form in PROBES:
        head = train_probe(feats["train"], form, steps=args.steps)
        report = probe_report(head, feats["val"], kind_names)
        print(f"{form:6s} probe, val token AUC: " + ", ".join(
            f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in report.items()), flush=True)


if __name__ == "__main__":
    main()
