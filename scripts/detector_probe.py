"""What does pre-training's replaced-unit detector read, zero-shot, before any fine-tuning? The yardstick of VCTG's
sentence decision (paper section 2.4.1, y^t_coarse).

A diagnostic, not part of CIEC: the detector (``pretrain.rud_weight``, ``models.meter_heads.RUDHead``, Linear(D, 1)
on the CFA text stream T-hat, trained on pristine pairs with one unit of the caption swapped) is left out of the
METER export, so it is read from the pre-training run's ``last.pth``. The run's backbone and detector score every
token of a split's pairs (image and caption as given, evaluation mode); no benchmark label trains anything. Printed:

- token AUC per word kind (``word_kinds.json``) over the content tokens of the pairs whose image is pristine, against
  the clean token labels (an image-manipulated pair keeps its original caption: its tokens are labelled 0);
- sentence AUC against y_t, with two sentence scores: ``max``, the most suspicious content token, and ``topk``, the
  mean of the K most suspicious word-token probabilities, the form of y^t_coarse (K = ``model.vctg.topk``); on all
  pairs, on those with a pristine image and on those with a manipulated one (the evaluator's
  ``aux/t_coarse_AUC/pristine_image`` and ``/edited_image``, which a fine-tuned model's test.py run prints beside).

- the same sentence AUCs of a WEAK read-out of the same frozen features: a Linear(D, 1) coarse head (2.4.1) trained
  with eq. 12 alone (L^t_Coarse: BCE of the Top-K mean against the sentence label y_t, no token label) on the train
  split's pairs, every class included as in fine-tuning; once from random weights, once from the detector.

Set beside a fine-tuned model's t_coarse AUC on the same split, the three tell where the text side loses: in the
features (the detector and the weak read-out both low), in the weak read-out (the detector high, the weak head
low), or in the fine-tune's drift (both high, the fine-tuned t_coarse below) (docs/implementation_notes.md "Where
the text side loses").

    python -m scripts.detector_probe --run output/demo_pretrain_rud                 # test split, from the repo root
"""
import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader

from datasets.dgm4 import audited_dataset, collate
from datasets.pretrain import KINDS, load_word_kinds
from datasets.text import tokenizer_for
from losses.text_mil import t_coarse_loss
from models.vctg import topk_masked_mean
from pretrain import build_pretrainer
from scripts.feature_probe import auc_or_none, cache_features
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError, exit_on_user_error
from utils.paths import load_entry_config


def load_detector(run_dir, opts=()):
    """(cfg, MeterPretrainer in eval mode) of the pre-training run in ``run_dir`` (its config.yaml and last.pth);
    ``ConfigError`` if that run trained no detector."""
    cfg = load_entry_config(os.path.join(run_dir, "config.yaml"), opts)
    if not cfg["pretrain"]["rud_weight"] > 0:
        raise ConfigError(f"{run_dir} trained no replaced-unit detector (pretrain.rud_weight = 0 in its config.yaml)")
    cfg["pretrained"]["meter"] = None  # every weight comes from last.pth below
    tokenizer = tokenizer_for(cfg)
    model = build_pretrainer(cfg, tokenizer, torch.device("cpu"))
    load_checkpoint(os.path.join(run_dir, "last.pth"), model=model, strict=True, restore_rng=False)
    return cfg, tokenizer, model.eval()


@torch.no_grad()
def detector_scores(head, feats, words, k):
    """Token probabilities (N,L) of a token ``head`` ((...,D) -> (...,) or (...,1) logits) on cached T-hat, and the
    two sentence scores (N,) ``max`` (over content tokens, -inf where none) and ``topk`` (mean of the ``k`` largest
    over ``words``, y^t_coarse's form)."""
    prob = torch.sigmoid(head(feats["t_hat"].float()).reshape(words.shape))
    return prob, {"max": prob.masked_fill(~feats["content"], float("-inf")).amax(dim=1),
                  "topk": topk_masked_mean(prob, words, k)}


def train_weak_head(feats, words, k, steps, init=None, batch_size=128, lr=3e-3, seed=0):
    """A Linear(D, 1) coarse head trained on cached T-hat with eq. 12 alone (``losses.text_mil.t_coarse_loss`` on
    the Top-K mean of its token probabilities over ``words``, against y_t); starts from ``init`` (a ``RUDHead``,
    whose ``fc`` has the same shape) or from random weights. Returns the head in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(feats["t_hat"].shape[-1], 1)
    if init is not None:
        head.load_state_dict(init.fc.state_dict())
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    n = words.shape[0]
    for _ in range(steps):
        idx = torch.randint(n, (min(batch_size, n),), generator=gen)
        prob = torch.sigmoid(head(feats["t_hat"][idx].float()).squeeze(-1))
        loss = t_coarse_loss({"t_coarse": topk_masked_mean(prob, words[idx], k)}, {"y_t": feats["y_t"][idx]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def detector_report(prob, sentence, feats, kind_names):
    """{"token": {kind: AUC on pristine-image content tokens}, "sentence": {score: {subset: AUC against y_t}}}, in
    percent, None where a set holds one class."""
    pristine = (feats["y_v"] < 0.5).unsqueeze(1)
    valid = feats["content"] & (feats["label"] >= 0) & pristine
    token = {}
    for k, name in enumerate(kind_names):
        m = valid & (feats["kind"] == k) if len(kind_names) > 1 else valid
        token[name] = auc_or_none(feats["label"][m], prob[m])
    subsets = {"all": torch.ones_like(feats["y_v"], dtype=torch.bool), "pristine_image": feats["y_v"] < 0.5,
               "edited_image": feats["y_v"] >= 0.5}
    has = feats["content"].any(dim=1)
    return {"token": token, "sentence": {name: {sub: auc_or_none(feats["y_t"][m & has], score[m & has])
                                                for sub, m in subsets.items()} for name, score in sentence.items()}}


def _fmt(v):
    return "-" if v is None else f"{v:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a pre-training output folder with config.yaml and last.pth")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--weak-steps", type=int, default=1500, help="steps of the weak read-out (0: none)")
    p.add_argument("--opts", nargs="*", default=[], help="overrides of the run's config, such as data.root=...")
    args = p.parse_args(argv)
    cfg, tokenizer, model = load_detector(args.run, args.opts)
    kinds_path = os.path.join(cfg["data"]["root"], "word_kinds.json")
    kinds = load_word_kinds(kinds_path if os.path.isfile(kinds_path) else None)
    kind_names = KINDS[:-1] if kinds else ("all",)
    k = cfg["model"]["vctg"]["topk"]
    splits = (args.split, "train") if args.weak_steps > 0 else (args.split,)
    feats = {split: split_features(cfg, split, tokenizer, model.backbone, kinds) for split in splits}
    evals, train = feats[args.split], feats.get("train")
    prob, sentence = detector_scores(model.rud_score, evals, evals["words"], k)
    report = detector_report(prob, sentence, evals, kind_names)
    print(f"detector of {args.run}, zero-shot on {args.split} ({evals['y_t'].numel()} pairs)")
    print("token AUC, pristine-image pairs: " + _row(report["token"]))
    for name, row in report["sentence"].items():
        print(f"sentence AUC ({name}): " + _row(row), flush=True)
    for start, init in (("random weights", None), ("the detector", model.rud_score)) if train else ():
        head = train_weak_head(train, train["words"], k, args.weak_steps, init=init)
        weak = detector_report(*detector_scores(head, evals, evals["words"], k), evals, kind_names)
        print(f"weak read-out (eq. 12 on frozen T-hat, {args.weak_steps} steps on train) from {start}, sentence AUC "
              f"(topk): " + _row(weak["sentence"]["topk"]), flush=True)


def _row(row):
    return ", ".join(f"{k} {_fmt(v)}" for k, v in row.items())


def split_features(cfg, split, tokenizer, backbone, kinds):
    """``scripts.feature_probe.cache_features`` of ``split`` plus ``words`` (N,L) bool, the word-token masks."""
    ds = audited_dataset(cfg, split, tokenizer, train=False)
    loader = DataLoader(ds, batch_size=cfg["eval"]["batch_size"], collate_fn=collate,
                        num_workers=cfg["data"]["num_workers"])
    words = []
    feats = cache_features(backbone, _keep_words(loader, words), kinds)
    return dict(feats, words=torch.cat(words))


def _keep_words(loader, words):
    """``loader``'s batches, unchanged, appending each batch's word-token mask (B,L) bool to ``words``."""
    for batch in loader:
        words.append(batch["word_tokens"].bool())
        yield batch


if __name__ == "__main__":
    exit_on_user_error(main)  # a run without a detector, a missing file: one `error:` line
