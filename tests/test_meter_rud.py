"""The optional replaced-unit detection objective of pre-training (``pretrain.rud_weight``; ELECTRA's token
discriminator on the CFA text stream of the one-unit ITM negatives, not METER's): its token targets, loss and
weight, gradients, validation AUC / F1 and the METER export leaving the head out."""
import math

import pytest
import torch

from datasets.pretrain import itm_pairs, replaced_unit_targets, word_swap_negatives
from losses.meter import meter_losses, rud_loss
from models.meter_export import meter_state_dict
from pretrain import format_pretrain_metrics, pretrain_metrics, rud_histogram, rud_scores
from tests.test_pretrain import _meter_batch, _pretrainer, _words_batch


def _swapped_batch(seed=3):
    ids, mask, word_index, content = _words_batch(b=32, seed=seed)
    kind = torch.where(word_index >= 0, (word_index // 2) % 3, torch.full_like(word_index, -1))
    batch = {"input_ids": ids, "attention_mask": mask, "content_mask": content, "word_index": word_index,
             "word_kind": kind}
    g = torch.Generator().manual_seed(0)
    text, label = itm_pairs(ids, g, neg_prob=0.5)
    itm_ids, itm_mask, itm_label, itm_kind = word_swap_negatives(batch, text, label, g, word_prob=0.5)
    return batch, itm_ids, itm_mask, itm_label, itm_kind


def test_targets_mark_exactly_the_swapped_unit_and_leave_other_caption_rows_out():
    batch, itm_ids, _, _, itm_kind = _swapped_batch()
    assert {0, 1, 2} <= set(itm_kind.tolist())
    labels, mask = replaced_unit_targets(batch, itm_ids, itm_kind)
    words = batch["word_index"] >= 0
    for r in range(itm_kind.numel()):
        if itm_kind[r] == 1:
            assert not mask[r].any()
            continue
        assert torch.equal(mask[r], words[r])
        if itm_kind[r] == 0:
            assert labels[r].sum() == 0
        else:  # one unit: the label is the set of tokens the swap changed, all inside one content run
            changed = itm_ids[r] != batch["input_ids"][r]
            assert torch.equal(labels[r].bool(), changed) and changed.any()
            assert (batch["content_mask"][r, changed] > 0).all()


def test_rud_loss_is_masked_bce():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    manual = -(math.log(torch.sigmoid(torch.tensor(2.0)).item()) + math.log(torch.sigmoid(torch.tensor(1.0)).item())
               + math.log(0.5) + math.log(torch.sigmoid(torch.tensor(2.0)).item())) / 4
    assert rud_loss(logits, labels, mask).item() == pytest.approx(manual, rel=1e-6)
    assert rud_loss(logits, labels, torch.zeros_like(mask)).item() == 0.0


def test_rud_head_reads_the_itm_stream_trains_the_cfa_and_stays_out_of_the_export():
    batch = _meter_batch()
    b, length = batch["input_ids"].shape
    batch["itm_ids"], batch["itm_mask"] = batch["input_ids"].flip(0), batch["attention_mask"].flip(0)
    batch["rud_labels"] = torch.zeros(b, length)
    batch["rud_labels"][0, 2] = 1.0
    batch["rud_mask"] = batch["attention_mask"].bool()
    model = _pretrainer(rud=True).train()
    out = model(batch)
    assert out["rud_logits"].shape == (b, length)
    losses = meter_losses(out, batch)
    assert torch.allclose(losses["loss"], losses["mlm"] + losses["itm"] + losses["rud"])
    weighted = meter_losses(out, batch, rud_weight=10.0)
    assert torch.allclose(weighted["loss"], losses["mlm"] + losses["itm"] + 10 * losses["rud"])
    losses["rud"].backward()
    assert model.backbone.cfa.token_type_embeddings.weight.grad.abs().sum() > 0   # through the fused stream
    assert model.itm_score.fc.weight.grad is None
    exported = meter_state_dict(model)
    assert not [k for k in exported if "rud" in k]
    assert exported.keys() == meter_state_dict(_pretrainer(rud=False)).keys()
    assert "rud_logits" not in _pretrainer(rud=False)(batch)


def test_validation_auc_and_f1_from_score_histograms():
    from sklearn.metrics import roc_auc_score
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, generator=g) * 2
    labels = (torch.rand(3, 40, generator=g) < 0.2).float()
    logits = logits + 2 * labels  # swapped tokens score higher on average
    mask = torch.rand(3, 40, generator=g) < 0.9
    batch = {"rud_labels": labels, "rud_mask": mask}
    hist = rud_histogram({"rud_logits": logits}, batch)
    assert hist.sum() == mask.sum() and hist[1].sum() == labels[mask].sum()
    assert torch.equal(rud_histogram({}, batch), torch.zeros_like(hist))
    scores = rud_scores(hist)
    exact = 100 * roc_auc_score(labels[mask].numpy(), logits[mask].numpy())
    assert scores["rud_auc"] == pytest.approx(exact, abs=1.0) and scores["rud_auc"] > 60
    pred, true = logits[mask] > 0, labels[mask] > 0
    tp, fp, fn = (pred & true).sum().item(), (pred & ~true).sum().item(), (~pred & true).sum().item()
    assert scores["rud_f1"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn), abs=0.01)
    counts, sums = torch.ones(3, 5, dtype=torch.float64), torch.tensor([1, 2, 0.0, 0.0, 0, 0, 0.0], dtype=torch.float64)
    report = format_pretrain_metrics(pretrain_metrics(counts, sums, hist))
    assert f"replaced-unit detection token AUC {scores['rud_auc']}%," in report  # no kind-limited AUC given
    within = mask & (torch.arange(40) % 2 == 0)  # a second token set, e.g. the tokens of the swapped kinds
    kind_hist = rud_histogram({"rud_logits": logits}, batch, within)
    assert kind_hist.sum() == within.sum()
    exact_within = 100 * roc_auc_score(labels[within].numpy(), logits[within].numpy())
    both = pretrain_metrics(counts, sums, hist, kind_hist)
    assert both["rud_auc/swapped_kinds"] == pytest.approx(exact_within, abs=1.0)
    assert f"(tokens of the swapped kinds {both['rud_auc/swapped_kinds']}%)" in format_pretrain_metrics(both)
    off = pretrain_metrics(counts, sums)
    assert off["rud_auc"] is None and "replaced-unit" not in format_pretrain_metrics(off)
