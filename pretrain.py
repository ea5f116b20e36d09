"""Pre-train the CIEC backbone (ViT + RoBERTa + CFA) with METER's objectives on pristine pairs, and export the
result as a METER checkpoint that ``pretrained.meter`` loads (CIEC paper section 3.2 starts from METER).

    python pretrain.py --config configs/demo_pretrain.yaml                 # CPU demo
    torchrun --nproc_per_node=8 pretrain.py --config CFG                   # same code, 8 processes

Objectives (``models/meter_heads.py``, ``losses/meter.py``): masked language modelling on the CFA text stream
conditioned on the true image, and image-text matching on the two poolers with half of the pairs given the caption
of another image of the batch (``datasets/pretrain.py``; optionally the image's own caption with one unit swapped,
``pretrain.itm_word_neg_prob``, and on those pairs replaced-unit detection per token, ``pretrain.rud_weight``;
neither is METER's). Data: ``pretrain.files`` (pristine records only, through the same ``DGM4Dataset`` pipeline as
fine-tuning); the last ``pretrain.val_size`` records are held out. No
manipulation label is read. Every epoch prints validation MLM accuracy per word kind with the true image and with
the image of another pair (the gap is what grounding adds) and ITM accuracy.

Same machinery as train.py: config (``train.*`` for the schedule and output), torch.distributed, per-step lr,
checkpoints with exact resume from ``<output_dir>/last.pth``. A ``last.pth`` written under another config, for
another corpus (fingerprint of the metadata and image bytes) or another tokenizer is refused, or with
``--restart-if-stale`` deleted and trained again. At the end ``<output_dir>/meter_pretrain.ckpt`` is written
(``models/meter_export.py``); a finished run with its export in place is reused as it is. ``--export-now`` writes
the export of a run's ``last.pth`` as it stands (a run stopped early) and trains nothing.
"""
import os
import time

import torch
from torch.utils.data import DataLoader

from datasets.audit import audit_run
from datasets.dgm4 import build_dataset, collate
from datasets.pretrain import (
    KINDS,
    PristinePairs,
    corpus_fingerprint,
    itm_pairs,
    load_word_kinds,
    mask_tokens,
    replaced_unit_targets,
    word_swap_negatives,
)
from datasets.sampler import BlockDistributedSampler, eval_sampler
from datasets.seeding import SeededDataset
from datasets.text import ordinary_token_range, tokenizer_for
from losses.meter import meter_losses
from models.backbone import build_backbone
from models.meter_export import save_meter_checkpoint
from models.meter_heads import MeterPretrainer
from models.pretrained_load import load_configured, load_meter_heads
from utils import dist
from utils.checkpoint import resume
from utils.cli import ArgumentParser
from utils.config import PICTURED_KINDS, grad_checkpointing_parts, save_config
from utils.errors import CheckpointError, ConfigError, exit_on_user_error
from utils.logger import RunLog
from utils.loop import file_sha256, periodic, save_state, start_run, train_one_epoch, unwrap, wrap_ddp
from utils.paths import check_inputs, load_entry_config, require
from utils.training import amp_context, build_optimizer, to_device

EXPORT_NAME = "meter_pretrain.ckpt"
RUD_BINS, RUD_RANGE = 200, 10.0  # logit bins of the replaced-unit detector's validation AUC


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo_pretrain.yaml")
    parser.add_argument("--opts", nargs="*", default=[], help="overrides such as train.lr=5e-4")
    parser.add_argument("--restart-if-stale", action="store_true",
                        help="delete a last.pth written under another config or corpus instead of refusing it")
    parser.add_argument("--export-now", action="store_true",
                        help="write the METER export of the run's last.pth as it is (a run stopped early), without "
                             "training; the same command without the flag continues the run")
    return parser.parse_args(argv)


def build_corpus(cfg, audited, tokenizer, world, rank):
    """(train loader, val loader, corpus fingerprint) of the pristine pre-training corpus (the audited split
    "pretrain" of ``datasets.audit.audit_run``), with the caller's tokenizer."""
    p, tcfg, data = cfg["pretrain"], cfg["train"], cfg["data"]
    kinds_path = p["word_kinds"] and os.path.join(data["root"], p["word_kinds"])
    kinds = load_word_kinds(kinds_path)
    full = build_dataset(cfg, audited, "pretrain", tokenizer, train=True)
    n, n_val = len(full), p["val_size"]
    if not 0 < n_val < n:
        raise ConfigError(f"pretrain.val_size {n_val} must be in (0, {n}): the corpus {p['files']} has {n} usable "
                          f"records")
    train_set = PristinePairs(SeededDataset(full, seed=tcfg["seed"]), kinds, range(n - n_val))
    held_out = build_dataset(cfg, audited, "pretrain", tokenizer, train=False)
    val_set = PristinePairs(held_out, kinds, range(n - n_val, n))
    sampler = BlockDistributedSampler(train_set, world, rank, tcfg["batch_size"], tcfg["accum_steps"],
                                      shuffle=True, seed=tcfg["seed"])
    common = {"num_workers": data["num_workers"], "collate_fn": collate, "pin_memory": torch.cuda.is_available()}
    train_loader = DataLoader(train_set, batch_size=tcfg["batch_size"], sampler=sampler, drop_last=True,
                              generator=torch.Generator().manual_seed(tcfg["seed"]), **common)
    val_loader = DataLoader(val_set, batch_size=cfg["eval"]["batch_size"], generator=torch.Generator(),
                            sampler=eval_sampler(val_set, world, rank), **common)
    return train_loader, val_loader, corpus_fingerprint(data["root"], full.records)


def meter_step(cfg, tokenizer, device, rank):
    """The training step's losses: mask and pair on the CPU (generator of (seed, global step, micro-batch, rank)),
    then METER's two losses on the device."""
    p, seed = cfg["pretrain"], cfg["train"]["seed"]
    vocab_range, n_patches = ordinary_token_range(tokenizer), num_patches(cfg)

    def compute(model, batch, state, micro):
        g = torch.Generator().manual_seed((seed * 1_000_003 + state.global_step * 1009 + micro) * 64 + rank)
        batch = prepare_batch(batch, g, tokenizer.mask_token_id, vocab_range, p, n_patches)
        batch = to_device(batch, device)
        return meter_losses(model(batch), batch, p["rud_weight"], p["mim_weight"])
    return compute


def num_patches(cfg):
    """N, the ViT's patch count at ``data.image_size``."""
    return (cfg["data"]["image_size"] // cfg["model"]["vit"]["patch_size"]) ** 2


def prepare_batch(batch, generator, mask_id, vocab_range, p, n_patches=0):
    """Add mlm_ids / mlm_labels (METER masking) and itm_text / itm_label (ITM pairing) to a CPU batch; with
    ``pretrain.mim_weight`` also mim_mask (B, n_patches) bool, each patch masked with probability ``mim_ratio``."""
    mlm_ids, mlm_labels = mask_tokens(batch["input_ids"], batch["attention_mask"], batch["word_index"],
                                      batch["content_mask"], generator, mask_id, vocab_range, p["mlm_prob"],
                                      p["content_mlm_prob"], p["whole_word"], p["content_spans"],
                                      batch["word_kind"], kind_mlm_probs(p))
    itm_text, itm_label = itm_pairs(batch["input_ids"], generator, p["itm_neg_prob"])
    out = dict(batch, mlm_ids=mlm_ids, mlm_labels=mlm_labels, itm_text=itm_text, itm_label=itm_label)
    if p["itm_word_neg_prob"] > 0:  # not METER's: one-word negatives (docs/implementation_notes.md "Pre-training")
        kinds = tuple(KINDS.index(k) for k in p["word_neg_kinds"]) if p["word_kinds"] else None
        out["itm_ids"], out["itm_mask"], out["itm_label"], out["itm_kind"] = word_swap_negatives(
            batch, itm_text, itm_label, generator, p["itm_word_neg_prob"], kinds)
    if p["rud_weight"] > 0:  # not METER's: replaced-unit detection on the ITM captions (notes "Pre-training")
        out["rud_labels"], out["rud_mask"] = replaced_unit_targets(batch, out["itm_ids"], out["itm_kind"])
        if kinds is not None:  # validation's second AUC: the tokens of the kinds a unit may be swapped from
            out["rud_kind_mask"] = out["rud_mask"] & torch.isin(batch["word_kind"], torch.tensor(kinds))
    if p["mim_weight"] > 0:  # not METER's: SimMIM's masked image modelling (notes "Pre-training")
        out["mim_mask"] = torch.rand(batch["input_ids"].shape[0], n_patches, generator=generator) < p["mim_ratio"]
    return out


def kind_mlm_probs(p):
    """``pretrain.kind_mlm_prob`` as ``mask_tokens``' ``kind_prob`` (one entry per ``KINDS`` but "other"), or None
    when no kind has its own rate."""
    probs = tuple(p["kind_mlm_prob"][kind] for kind in KINDS[:-1])
    return None if all(v is None for v in probs) else probs


def build_pretrainer(cfg, tokenizer, device):
    backbone = build_backbone(cfg, pad_token_id=tokenizer.pad_token_id)
    model = MeterPretrainer(backbone, cfg["model"]["text"]["vocab_size"], itc_dim=cfg["pretrain"]["itc_dim"],
                            rud=cfg["pretrain"]["rud_weight"] > 0, mim=cfg["pretrain"]["mim_weight"] > 0)
    model.backbone.set_grad_checkpointing(grad_checkpointing_parts(cfg["train"]["grad_checkpointing"]))
    load_configured(model.backbone, cfg["pretrained"])
    if cfg["pretrained"]["meter"]:  # a continued pre-training keeps the MLM and ITM heads trained with the backbone
        heads = load_meter_heads(model, cfg["pretrained"]["meter"])
        if dist.is_main():
            print("pre-training heads from pretrained.meter: " + ", ".join(f"{k} {v}" for k, v in heads.items()))
    return model.to(device)


def main(cfg, restart_if_stale=False, export_now=False):
    rank, world, device, out = start_run(cfg)
    tcfg = cfg["train"]
    tokenizer = tokenizer_for(cfg)
    audited = audit_run(cfg, {"pretrain": list(cfg["pretrain"]["files"])})  # checked once, before the model
    train_loader, val_loader, fingerprint = build_corpus(cfg, audited, tokenizer, world, rank)
    identity = {"corpus_sha256": fingerprint, "tokenizer_sha256": file_sha256(cfg["data"]["tokenizer"])}
    model = build_pretrainer(cfg, tokenizer, device)
    optimizer = build_optimizer(model, tcfg["lr"], tcfg["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=tcfg["amp"] == "fp16")
    state = resume(out, model, optimizer, scaler, cfg, identity, restart_if_stale, extra_files=(EXPORT_NAME,))
    if state.epoch >= tcfg["epochs"] and (out / EXPORT_NAME).exists():
        print(f"pre-training already finished ({state.global_step} steps): reusing {out / EXPORT_NAME}")
        return dist.cleanup()
    if export_now:
        if state.global_step == 0:
            raise CheckpointError(f"--export-now: {out / 'last.pth'} does not exist, nothing to export")
        export(out, model, val_loader, device, cfg, tokenizer, state, fingerprint)
        return dist.cleanup()
    if dist.is_main():
        save_config(cfg, str(out / "config.yaml"))
        print(f"rank {rank}/{world} on {device}; {len(train_loader.dataset)} training pairs, "
              f"{len(val_loader.dataset)} held out; output {out}", flush=True)
    ddp = wrap_ddp(model, device)
    log = RunLog(out, dist.is_main(), resumed_step=state.global_step)
    after_step = periodic(out, ddp, optimizer, scaler, cfg, identity, log)  # step rows, last.pth every N steps
    compute = meter_step(cfg, tokenizer, device, rank)
    while state.epoch < tcfg["epochs"]:
        t0 = time.time()
        stats = train_one_epoch(ddp, compute, train_loader, optimizer, scaler, cfg, state, device, after_step)
        metrics = evaluate_pretrain(unwrap(ddp), val_loader, device, cfg, tokenizer)
        state.end_epoch()
        state.best_metric = max(state.best_metric, metrics["mlm_acc"])
        save_state(out / "last.pth", ddp, optimizer, scaler, cfg, state, identity)
        report_epoch(log, cfg, state, stats, metrics, time.time() - t0)
    export(out, unwrap(ddp), val_loader, device, cfg, tokenizer, state, fingerprint)
    log.close()
    dist.cleanup()


def export(out, model, val_loader, device, cfg, tokenizer, state, fingerprint):
    """Validate ``model`` (a ``MeterPretrainer``) and write ``<out>/meter_pretrain.ckpt`` (rank 0), recording the
    epoch and step it was taken at: the end of the schedule, or where ``--export-now`` found the run."""
    metrics = evaluate_pretrain(model, val_loader, device, cfg, tokenizer)
    if dist.is_main():
        save_meter_checkpoint(str(out / EXPORT_NAME), model, config=cfg, global_step=state.global_step,
                              epoch=state.epoch, val=metrics, corpus_sha256=fingerprint)
        print(f"exported {out / EXPORT_NAME} at epoch {state.epoch} of {cfg['train']['epochs']} (step "
              f"{state.global_step}; METER format, pretrained.meter loads it)", flush=True)


def report_epoch(log, cfg, state, stats, metrics, seconds):
    """The epoch's row in log.jsonl / TensorBoard and its line on stdout (rank 0)."""
    if not dist.is_main():
        return
    log.write({"epoch": state.epoch, "global_step": state.global_step, "seconds": round(seconds, 1),
               **{f"train/{k}": v for k, v in stats.items()}, **{f"val/{k}": v for k, v in metrics.items()}})
    print(f"epoch {state.epoch}/{cfg['train']['epochs']} ({seconds:.0f}s, step {state.global_step}): "
          f"loss {stats['loss']:.4f} (mlm {stats['mlm']:.4f}, itm {stats['itm']:.4f}"
          + "".join(f", {k} {stats[k]:.4f}" for k in ("itc", "rud", "mim") if k in stats) + "); "
          + format_pretrain_metrics(metrics), flush=True)


@torch.no_grad()
def evaluate_pretrain(model, loader, device, cfg, tokenizer):
    """Held-out pairs with fixed masks and ITM pairs (``pretrain.val_seed``): MLM accuracy per word kind with the
    true image and with the image of another pair of the batch (``_swapped``), ITM accuracy (also on the one-word
    negatives alone, None without them), both losses (%), and with ``pretrain.rud_weight`` the replaced-unit detector's
    token AUC and precision / recall / F1 at probability 0.5 (None without it)."""
    model.eval()
    p = cfg["pretrain"]
    g = torch.Generator().manual_seed(p["val_seed"])
    vocab_range, n_kinds, n_patches = ordinary_token_range(tokenizer), len(KINDS), num_patches(cfg)
    counts = torch.zeros(3, n_kinds + 1, dtype=torch.float64)   # correct (true image), correct (swapped), total
    sums = torch.zeros(7, dtype=torch.float64)  # itm correct, pairs, mlm loss x n, itm loss x n, the same two counts
    #                                             on one-word negatives (pretrain.itm_word_neg_prob), mim loss x n
    hist = torch.zeros(2, 2, RUD_BINS, dtype=torch.float64)  # replaced-unit scores of clean / swapped tokens: all
    #                                                            word tokens, the tokens of the swapped kinds
    for batch in loader:
        batch = to_device(prepare_batch(batch, g, tokenizer.mask_token_id, vocab_range, p, n_patches), device)
        with amp_context(device, cfg["train"]["amp"]):
            out = model(batch)
            swapped = model.mlm_logits(batch["image"].roll(1, 0), batch["mlm_ids"], batch["attention_mask"],
                                       batch["mlm_labels"])
        losses = meter_losses(out, batch, p["rud_weight"], p["mim_weight"])
        kind = batch["word_kind"][batch["mlm_labels"] != -100].clamp(min=0).cpu()
        for row, logits in enumerate((out["mlm_logits"], swapped)):
            hit = (logits.argmax(-1) == out["mlm_labels"]).double().cpu()
            counts[row, :n_kinds] += torch.zeros(n_kinds, dtype=torch.float64).index_add_(0, kind, hit)
            counts[row, n_kinds] += hit.sum()
        counts[2, :n_kinds] += torch.bincount(kind, minlength=n_kinds).double()
        counts[2, n_kinds] += kind.numel()
        b = batch["itm_label"].numel()
        itm_hit = out["itm_logits"].argmax(-1) == batch["itm_label"]
        word_neg = batch["itm_kind"] == 2 if "itm_kind" in batch else torch.zeros_like(itm_hit)
        sums += torch.tensor([itm_hit.sum().item(), b, losses["mlm"].item() * b, losses["itm"].item() * b,
                              (itm_hit & word_neg).sum().item(), word_neg.sum().item(),
                              losses["mim"].item() * b if "mim" in losses else 0.0], dtype=torch.float64)
        hist[0] += rud_histogram(out, batch)
        if "rud_kind_mask" in batch:
            hist[1] += rud_histogram(out, batch, batch["rud_kind_mask"])
    if dist.is_dist():
        stacked = torch.cat([counts.flatten(), sums, hist.flatten()]).to(device)
        torch.distributed.all_reduce(stacked)
        counts, sums, hist = (part.cpu() for part in stacked.split([counts.numel(), sums.numel(), hist.numel()]))
        counts, hist = counts.view(3, n_kinds + 1), hist.view(2, 2, RUD_BINS)
    return pretrain_metrics(counts, sums, hist[0], hist[1])


def rud_histogram(out, batch, mask=None):
    """(2, RUD_BINS) counts of the replaced-unit logits of the tokens of ``mask`` (default ``batch["rud_mask"]``) in
    bins of 0.1 over [-10, 10] (the ends open), row 0 clean, row 1 swapped (zeros without ``pretrain.rud_weight``):
    rank statistics that sum over batches and processes; the middle bin edge is logit 0 = probability 0.5."""
    hist = torch.zeros(2, RUD_BINS, dtype=torch.float64)
    if "rud_logits" in out:
        mask = batch["rud_mask"] if mask is None else mask
        scaled = (out["rud_logits"][mask].float() + RUD_RANGE) / (2 * RUD_RANGE) * RUD_BINS
        bins = scaled.floor().long().clamp(0, RUD_BINS - 1).cpu()
        hist.index_put_((batch["rud_labels"][mask].long().cpu(), bins), torch.ones(bins.numel(), dtype=hist.dtype),
                        accumulate=True)
    return hist


def rud_scores(hist):
    """Token AUC (ties within a bin count half) and precision / recall / F1 at probability 0.5 from
    ``rud_histogram`` counts, in percent; None where undefined."""
    clean, swapped = hist[0], hist[1]
    n_clean, n_swapped = float(clean.sum()), float(swapped.sum())
    auc = None
    if n_clean and n_swapped:
        below = clean.cumsum(0) - clean
        auc = round(100.0 * float((swapped * (below + 0.5 * clean)).sum()) / (n_clean * n_swapped), 2)
    tp, fp = float(swapped[RUD_BINS // 2:].sum()), float(clean[RUD_BINS // 2:].sum())
    fn = n_swapped - tp
    return {"rud_auc": auc, "rud_precision": _pct(tp, tp + fp), "rud_recall": _pct(tp, tp + fn),
            "rud_f1": _pct(2 * tp, 2 * tp + fp + fn)}


def _pct(a, n):
    return round(100.0 * float(a) / float(n), 2) if n > 0 else None


def pretrain_metrics(counts, sums, rud_hist=None, rud_kind_hist=None):
    """Flat dict of percentages and losses from ``evaluate_pretrain``'s counters; ``rud_auc/swapped_kinds`` is the
    detector's token AUC over the tokens of the kinds a unit may be swapped from (``pretrain.word_neg_kinds``)."""
    empty = torch.zeros(2, RUD_BINS)
    metrics = {"mlm_acc": _pct(counts[0, -1], counts[2, -1]), "mlm_acc_swapped": _pct(counts[1, -1], counts[2, -1]),
               "itm_acc": _pct(sums[0], sums[1]), "mlm_loss": float(sums[2] / max(sums[1], 1)),
               "itm_loss": float(sums[3] / max(sums[1], 1)), "itm_acc/word_negatives": _pct(sums[4], sums[5]),
               **rud_scores(empty if rud_hist is None else rud_hist),
               "rud_auc/swapped_kinds": rud_scores(empty if rud_kind_hist is None else rud_kind_hist)["rud_auc"],
               "mim_loss": float(sums[6] / max(sums[1], 1)) if sums[6] > 0 else None}
    for k, kind in enumerate(KINDS):
        metrics[f"mlm_acc/{kind}"] = _pct(counts[0, k], counts[2, k])
        metrics[f"mlm_acc_swapped/{kind}"] = _pct(counts[1, k], counts[2, k])
        metrics[f"masked/{kind}"] = int(counts[2, k])
    return metrics


def format_pretrain_metrics(m):
    kinds = ", ".join(f"{kind} {m[f'mlm_acc/{kind}']}/{m[f'mlm_acc_swapped/{kind}']}" for kind in KINDS
                      if m[f"masked/{kind}"])
    word = m.get("itm_acc/word_negatives")
    within = m.get("rud_auc/swapped_kinds")
    rud = "" if m.get("rud_auc") is None else (
        f"replaced-unit detection token AUC {m['rud_auc']}%"
        + (f" (tokens of the swapped kinds {within}%)" if within is not None else "")
        + f", P/R/F1 {m['rud_precision']}/{m['rud_recall']}/{m['rud_f1']}%, ")
    return (f"val MLM acc {m['mlm_acc']}% (true/swapped image: {kinds}); ITM acc {m['itm_acc']}%"
            + (f" (one-word negatives {word}%)" if word is not None else "") + ", " + rud +
            f"losses mlm {m['mlm_loss']:.3f} itm {m['itm_loss']:.3f}"
            + (f" mim {m['mim_loss']:.3f}" if m.get("mim_loss") is not None else ""))


def check_pretrain_options(p, data_root):
    """One ``ConfigError`` for a combination of ``pretrain.*`` options that cannot work together."""
    if p["rud_weight"] > 0 and not p["itm_word_neg_prob"] > 0:
        raise ConfigError("pretrain.rud_weight > 0 reads the one-unit ITM negatives: "
                          "set pretrain.itm_word_neg_prob > 0")
    if p["itm_word_neg_prob"] > 0 and not p["word_neg_kinds"]:
        raise ConfigError("pretrain.word_neg_kinds is empty: the one-unit ITM negatives (pretrain.itm_word_neg_prob) "
                          "need at least one kind to swap")
    if set(p["word_neg_kinds"]) != set(PICTURED_KINDS) and not p["word_kinds"]:
        raise ConfigError("pretrain.word_neg_kinds limits the swapped units to kinds that pretrain.word_kinds lists: "
                          "set it (make_synthetic.py writes word_kinds.json)")
    if kind_mlm_probs(p) and not p["word_kinds"]:
        raise ConfigError("pretrain.kind_mlm_prob sets a rate per word kind, which pretrain.word_kinds lists: set it "
                          "(make_synthetic.py writes word_kinds.json)")
    if p["word_kinds"]:
        require(os.path.join(data_root, p["word_kinds"]), "word-kind list",
                "preprocess/make_synthetic.py writes word_kinds.json; or set pretrain.word_kinds to null")


def run(args):
    """Check the config and that the corpus, caches, tokenizer and pretrained weights are in place (one-line error
    otherwise), then pre-train."""
    cfg = load_entry_config(args.config, args.opts)
    check_inputs(cfg, [], args.config, args.opts, pretrained=True, files=cfg["pretrain"]["files"])
    check_pretrain_options(cfg["pretrain"], cfg["data"]["root"])
    main(cfg, args.restart_if_stale, args.export_now)


if __name__ == "__main__":
    exit_on_user_error(lambda: run(parse_args()))  # a bad flag, config value or missing input: one `error:` line
