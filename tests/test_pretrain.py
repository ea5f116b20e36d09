"""METER-style pre-training (pretrain.py): masking and ITM pairing rules, pristine-only data, the METER-format export
loaded back through models/pretrained.py to 1e-6, and pretrain.py end to end (export, reuse, stale refusal, restart).
"""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from datasets.audit import audit_run
from datasets.dgm4 import build_dataset
from datasets.pretrain import (
    KINDS,
    PristinePairs,
    content_units,
    itm_pairs,
    load_word_kinds,
    mask_tokens,
    word_swap_negatives,
)
from datasets.records import RecordError
from datasets.text import tokenizer_for
from losses.meter import meter_losses
from models.backbone import Backbone
from models.meter_export import meter_state_dict, save_meter_checkpoint, timm_to_clip_name
from models.meter_heads import MeterPretrainer
from models.pretrained_keys import PretrainedKeyError, clip_visual_name
from models.pretrained_load import load_meter_heads, load_pretrained
from pretrain import check_pretrain_options, prepare_batch
from tests.conftest import ROOT, run_script, tiny_opts
from tests.test_backbone import TINY_CFA, TINY_HIDDEN, TINY_TEXT, TINY_VIT, randomize_, tiny_batch
from utils.config import DEFAULTS, load_config
from utils.errors import BadInputError, ConfigError


def _words_batch(b=64, length=30, n_words=20, seed=0):
    """ids (B,L) with <s> w w w ... </s> pad; words of 1-2 tokens; word_index per token; half content words."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.ones(b, length, dtype=torch.long)
    word_index = torch.full((b, length), -1)
    for r in range(b):
        pos, w = 1, 0
        while w < n_words and pos < length - 2:
            width = int(torch.randint(1, 3, (1,), generator=g))
            for _ in range(width):
                if pos < length - 2:
                    ids[r, pos], word_index[r, pos] = int(torch.randint(5, 100, (1,), generator=g)), w
                    pos += 1
            w += 1
        ids[r, 0], ids[r, pos] = 0, 2
    mask = (ids != 1).long()
    content = ((word_index % 2 == 0) & (word_index >= 0)).float()
    return ids, mask, word_index, content


def test_mask_tokens_meter_rule_whole_words():
    ids, mask, word_index, content = _words_batch()
    g = torch.Generator().manual_seed(1)
    mlm_ids, labels = mask_tokens(ids, mask, word_index, content, g, mask_id=4, vocab_range=(5, 100))
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert not selected[word_index < 0].any()  # never <s>, </s>, padding
    for r in range(ids.shape[0]):  # whole words: every token of a word shares its fate
        for w in word_index[r].unique().tolist():
            if w >= 0:
                assert selected[r][word_index[r] == w].unique().numel() == 1
    n_words = sum(len(set(word_index[r][word_index[r] >= 0].tolist())) for r in range(ids.shape[0]))
    n_sel_words = sum(len(set(word_index[r][selected[r]].tolist())) for r in range(ids.shape[0]))
    assert 0.11 < n_sel_words / n_words < 0.19
    masked = (mlm_ids == 4) & selected
    kept = (mlm_ids == ids) & selected
    assert 0.72 < masked.sum() / selected.sum() < 0.88
    assert 0.04 < kept.sum() / selected.sum() < 0.17          # 10% unchanged (+ random draws equal to the token)
    assert ((mlm_ids != ids) & ~selected).sum() == 0
    random = selected & ~masked & ~kept
    assert ((mlm_ids[random] >= 5) & (mlm_ids[random] < 100)).all()


def test_mask_tokens_content_probability_and_token_units():
    ids, mask, word_index, content = _words_batch(seed=3)
    g = torch.Generator().manual_seed(2)
    _, labels = mask_tokens(ids, mask, word_index, content, g, 4, (5, 100), mlm_prob=0.0, content_prob=0.5)
    selected = labels != -100
    assert not selected[content == 0].any()
    rate = selected[content > 0].float().mean()
    assert 0.4 < rate < 0.6
    _, labels = mask_tokens(ids, mask, word_index, content, g, 4, (5, 100), mlm_prob=0.5, whole_word=False)
    split = [(labels[r][word_index[r] == w] != -100).unique().numel() for r in range(64)
             for w in word_index[r].unique().tolist() if w >= 0 and (word_index[r] == w).sum() > 1]
    assert max(split) == 2  # single-token units: some multi-token word is partly selected


def test_mask_tokens_rate_per_word_kind():
    ids, mask, word_index, content = _words_batch(seed=7)
    kind = torch.where(word_index >= 0, word_index % 5, torch.full_like(word_index, -1))  # kinds 0-3, 4 = other
    g = torch.Generator().manual_seed(3)
    _, labels = mask_tokens(ids, mask, word_index, content, g, 4, (5, 100), mlm_prob=0.0, content_prob=0.0,
                            word_kind=kind, kind_prob=(None, 1.0, 0.5, None))
    selected = labels != -100
    assert selected[kind == 1].all() and not selected[(kind == 0) | (kind == 3) | (kind == 4) | (kind < 0)].any()
    assert 0.4 < selected[kind == 2].float().mean() < 0.6
    for r in range(ids.shape[0]):  # still whole words
        assert all(selected[r][word_index[r] == w].unique().numel() == 1 for w in word_index[r].unique() if w >= 0)
    _, none = mask_tokens(ids, mask, word_index, content, torch.Generator().manual_seed(3), 4, (5, 100),
                          word_kind=kind, kind_prob=(None,) * 4)
    _, plain = mask_tokens(ids, mask, word_index, content, torch.Generator().manual_seed(3), 4, (5, 100))
    assert torch.equal(none, plain)


def test_content_spans_mask_adjacent_content_words_together():
    ids, mask, word_index, content = _words_batch(seed=5)
    content = (word_index >= 0).float()
    content[word_index % 4 == 3] = 0.0  # runs of three content words separated by a stop word
    g = torch.Generator().manual_seed(4)
    _, plain = mask_tokens(ids, mask, word_index, content, torch.Generator().manual_seed(4), 4, (5, 100))
    _, grown = mask_tokens(ids, mask, word_index, content, g, 4, (5, 100), content_spans=True)
    sel_plain, sel = plain != -100, grown != -100
    assert (sel_plain & ~sel).sum() == 0 and sel.sum() > sel_plain.sum()
    for r in range(ids.shape[0]):
        words = {int(w): bool(sel[r][word_index[r] == w].any()) for w in word_index[r].unique() if w >= 0}
        cont = {int(w): bool(content[r][word_index[r] == w].any()) for w in words}
        for w, on in words.items():
            if cont[w] and not on:  # an unselected content word has no selected content neighbour in the plain draw
                for v in (w - 1, w + 1):
                    assert not (v in words and cont[v] and sel_plain[r][word_index[r] == v].any())
            assert (sel[r][word_index[r] == w].unique().numel() == 1)  # still whole words
    with pytest.raises(ValueError, match="whole_word"):
        mask_tokens(ids, mask, word_index, content, g, 4, (5, 100), whole_word=False, content_spans=True)


def test_itm_pairs_negatives_are_other_captions():
    ids = torch.arange(64 * 5).view(64, 5)
    text, label = itm_pairs(ids, torch.Generator().manual_seed(0))
    assert torch.equal(label == 1, text == torch.arange(64))
    assert 0.35 < (label == 0).float().mean() < 0.65
    same = ids.clone()
    same[1] = same[0]
    text, label = itm_pairs(same, torch.Generator().manual_seed(0), neg_prob=1.0)
    assert (text != torch.arange(64)).all()
    for i in (0, 1):  # an identical caption of another image is a match, not a negative
        assert label[i] == int(torch.equal(same[text[i]], same[i]))


def test_word_swap_negatives_replace_one_unit_of_the_own_caption_by_one_of_its_kind():
    ids, mask, word_index, content = _words_batch(b=64, seed=3)
    kind = torch.where(word_index >= 0, (word_index // 2) % 3, torch.full_like(word_index, -1))  # adjacent content
    content[5] = 0  # a caption without content words keeps its other-caption negative      # words differ in kind
    batch = {"input_ids": ids, "attention_mask": mask, "content_mask": content, "word_index": word_index,
             "word_kind": kind}
    g = torch.Generator().manual_seed(0)
    text, label = itm_pairs(ids, g, neg_prob=1.0)
    itm_ids, itm_mask, label2, itm_kind = word_swap_negatives(batch, text, label, g, word_prob=0.5, kinds=(0, 1))
    assert itm_kind[5] == 1 and 0.3 < (itm_kind == 2).float().mean() < 0.7 and not (itm_kind == 0).any()
    for r in range(64):
        if itm_kind[r] == 1:
            assert torch.equal(itm_ids[r], ids[text[r]]) and torch.equal(itm_mask[r], mask[text[r]])
            assert label2[r] == label[r]
            continue
        diff = (itm_ids[r] != ids[r]).nonzero().flatten()
        assert diff.numel() >= 1 and label2[r] == 0 and torch.equal(itm_mask[r], mask[r])
        assert (content[r, diff] > 0).all() and word_index[r, diff].unique().numel() == 1  # one word here
        assert kind[r, diff[0]] in (0, 1)
        span = itm_ids[r, word_index[r] == word_index[r, diff[0]]]
        assert any(torch.equal(span, ids[o, (word_index[o] == w) & (kind[o] == kind[r, diff[0]])])
                   for o in range(64) if o != r for w in range(20))  # a whole word of that kind elsewhere
    plain = itm_pairs(ids, torch.Generator().manual_seed(0), neg_prob=0.5)
    none = word_swap_negatives(batch, *plain, torch.Generator().manual_seed(1), word_prob=0.0)
    assert torch.equal(none[0], ids[plain[0]]) and torch.equal(none[2], plain[1]) and not (none[3] == 2).any()


def test_word_neg_kinds_limit_the_swapped_units_to_those_kinds():
    ids, mask, word_index, content = _words_batch(b=64, seed=4)
    kind = torch.where(word_index >= 0, word_index % 5, torch.full_like(word_index, -1))  # KINDS index per word
    batch = {"input_ids": ids, "attention_mask": mask, "content_mask": content, "word_index": word_index,
             "word_kind": kind}
    p = dict(copy.deepcopy(DEFAULTS["pretrain"]), word_kinds="kinds.json", itm_neg_prob=1.0, itm_word_neg_prob=1.0,
             rud_weight=1.0, word_neg_kinds=["expressions"])
    out = prepare_batch(batch, torch.Generator().manual_seed(0), 3, (5, 100), p)
    swapped = out["rud_labels"] > 0
    assert (out["itm_kind"] == 2).sum() > 10 and swapped.any()
    assert (kind[swapped] == KINDS.index("expressions")).all()  # every swapped token was an expression word
    p["word_neg_kinds"] = ["expressions", "colours"]
    both = prepare_batch(batch, torch.Generator().manual_seed(0), 3, (5, 100), p)
    assert set(kind[both["rud_labels"] > 0].tolist()) == {KINDS.index("expressions"), KINDS.index("colours")}
    with pytest.raises(ConfigError, match="pretrain.word_neg_kinds is empty"):
        check_pretrain_options(dict(p, word_neg_kinds=[]), "data")
    with pytest.raises(ConfigError, match="limits the swapped units to kinds that pretrain.word_kinds lists"):
        check_pretrain_options(dict(p, word_kinds=None), "data")


def test_word_kinds_file_maps_words_to_kinds_and_refuses_unknown_kinds(tmp_path):
    path = tmp_path / "kinds.json"
    path.write_text(json.dumps({"names": ["anna", "berg"], "expressions": ["smiling"], "colours": ["red"],
                                "places": ["city"], "source": "test"}))
    assert load_word_kinds(str(path)) == {"anna": 0, "berg": 0, "smiling": 1, "red": 2, "city": 3}
    path.write_text(json.dumps({"names": ["anna"], "attributes": ["smiling", "red"]}))  # before 2026-12-02
    with pytest.raises(BadInputError, match=r"unknown word kinds \['attributes'\]"):
        load_word_kinds(str(path))
    path.write_text(json.dumps({"names": ["red"], "colours": ["red"]}))
    with pytest.raises(BadInputError, match="under two kinds"):
        load_word_kinds(str(path))


def test_content_units_join_adjacent_content_words_of_one_kind():
    # <s> [Anna Berg] says [Berg] ' s [orange shirt] </s>: word_index, content flags,
    # kinds (0 names, 2 colours, 4 other words)
    word_index = [-1, 0, 1, 2, 3, 3, 3, 4, 5, -1]
    content = [0, 1, 1, 0, 1, 1, 1, 1, 1, 0]
    kind = [-1, 0, 0, 4, 0, 0, 0, 2, 4, -1]
    assert content_units(word_index, content, kind) == [(1, 3, 0), (4, 7, 0), (7, 8, 2), (8, 9, 4)]


def test_explicit_itm_captions_match_the_row_indexed_path():
    model = _pretrainer().eval()
    batch = _meter_batch()
    explicit = dict(batch, itm_ids=batch["input_ids"][batch["itm_text"]],
                    itm_mask=batch["attention_mask"][batch["itm_text"]])
    with torch.no_grad():
        a, b = model(batch), model(explicit)
    assert torch.allclose(a["itm_logits"], b["itm_logits"], atol=1e-6)
    assert torch.allclose(a["mlm_logits"], b["mlm_logits"], atol=1e-6)
    explicit["itm_ids"] = explicit["itm_ids"].clone()
    explicit["itm_ids"][0, 1] = 7 if explicit["itm_ids"][0, 1] != 7 else 8
    with torch.no_grad():
        c = model(explicit)
    assert not torch.allclose(a["itm_logits"][0], c["itm_logits"][0], atol=1e-6)
    assert torch.allclose(a["itm_logits"][1:], c["itm_logits"][1:], atol=1e-6)


def _pretrainer(seed=0, **heads):
    """A tiny randomised MeterPretrainer; ``heads``: its optional pre-training heads (itc_dim, rud)."""
    torch.manual_seed(seed)
    backbone = Backbone(64, dict(TINY_VIT), dict(TINY_TEXT), dict(TINY_CFA), TINY_HIDDEN)
    return randomize_(MeterPretrainer(backbone, TINY_TEXT["vocab_size"], **heads))


def _meter_batch(seed=1):
    image, ids, mask = tiny_batch(batch=4, seed=seed)
    word_index = torch.where(mask.bool(), torch.arange(ids.shape[1]) - 1, torch.full_like(ids, -1))
    word_index[:, 0] = -1
    g = torch.Generator().manual_seed(seed)
    mlm_ids, labels = mask_tokens(ids, mask, word_index, mask.float(), g, 4, (5, 60), mlm_prob=0.4)
    text, label = itm_pairs(ids, g)
    return {"image": image, "input_ids": ids, "attention_mask": mask, "mlm_ids": mlm_ids, "mlm_labels": labels,
            "itm_text": text, "itm_label": label}


def test_export_loads_back_exactly(tmp_path):
    model = _pretrainer().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = _meter_batch()
    for _ in range(3):  # a few real steps: the exported weights are trained ones
        loss = meter_losses(model(batch), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = str(tmp_path / "meter.ckpt")
    save_meter_checkpoint(path, model, note="test")
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in sd} == {"vit_model", "text_transformer", "cross_modal_text_transform",
                                            "cross_modal_image_transform", "token_type_embeddings",
                                            "cross_modal_text_layers", "cross_modal_image_layers",
                                            "cross_modal_text_pooler", "cross_modal_image_pooler",
                                            "mlm_score", "itm_score"}
    assert sd["vit_model.visual.class_embedding"].shape == (TINY_VIT["embed_dim"],)
    assert sd["vit_model.visual.positional_embedding"].shape == (1 + 16, TINY_VIT["embed_dim"])
    torch.manual_seed(99)
    fresh = Backbone(64, dict(TINY_VIT), dict(TINY_TEXT), dict(TINY_CFA), TINY_HIDDEN)
    report = load_pretrained(fresh, {"meter": path, "openai_clip": None, "roberta": None,
                                     "pos_embed_source": "meter"})
    assert report["random_init"] == []
    assert report["meter"]["left_over"] == {"itm_score": 2, "mlm_score": 6}
    assert report["meter"]["unpickle_path"] == "weights_only"
    model.eval()
    fresh.eval()
    image, ids, mask = tiny_batch()
    with torch.no_grad():
        want, got = model.backbone(image, ids, mask), fresh(image, ids, mask)
    for key in ("v_raw", "t_raw", "v_hat", "t_hat", "v_cls", "t_cls"):
        assert torch.allclose(want[key], got[key], atol=1e-6, rtol=0), key


def test_continued_pretraining_loads_the_heads_of_the_export(tmp_path):
    model = _pretrainer(seed=0)
    path = str(tmp_path / "meter.ckpt")
    save_meter_checkpoint(path, model)
    fresh = _pretrainer(seed=5)
    assert not torch.equal(fresh.mlm_score.decoder.weight, model.mlm_score.decoder.weight)
    assert load_meter_heads(fresh, path) == {"mlm_score": 6, "itm_score": 2}
    for head in ("mlm_score", "itm_score"):
        want, got = getattr(model, head).state_dict(), getattr(fresh, head).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), head
    sd = torch.load(path, map_location="cpu", weights_only=True)
    headless = str(tmp_path / "headless.ckpt")
    torch.save({"state_dict": {k: v for k, v in sd["state_dict"].items() if not k.startswith("itm_score.")}}, headless)
    before = fresh.itm_score.fc.weight.clone()
    torch.nn.init.normal_(fresh.itm_score.fc.weight)
    report = load_meter_heads(fresh, headless)
    assert report["mlm_score"] == 6 and report["itm_score"].startswith("not in the checkpoint")
    assert not torch.equal(fresh.itm_score.fc.weight, before)  # left as it was
    other_vocab = MeterPretrainer(fresh.backbone, TINY_TEXT["vocab_size"] + 1)
    with pytest.raises(PretrainedKeyError, match="mlm_score of METER checkpoint .*shape mismatches"):
        load_meter_heads(other_vocab, path)


def test_export_names_are_meters():
    names = meter_state_dict(_pretrainer())
    for key in names:
        if key.startswith("vit_model.visual."):
            assert clip_visual_name(key[len("vit_model.visual."):]) is not None, key
    with pytest.raises(KeyError):
        timm_to_clip_name("head.weight")


def test_pristine_pairs_refuse_manipulated_records(tiny_benchmark, tmp_path):
    b = tiny_benchmark
    root = b["root"]
    cfg = load_config("configs/debug.yaml", tiny_opts(b, str(tmp_path)))
    audited = audit_run(cfg, {"train": ["metadata/train.json"], "pretrain": ["metadata/pretrain.json"]})
    tokenizer = tokenizer_for(cfg)
    ds = build_dataset(cfg, audited, "train", tokenizer)
    with pytest.raises(RecordError, match="pristine pairs only"):
        PristinePairs(ds)
    pre = build_dataset(cfg, audited, "pretrain", tokenizer)
    pairs = PristinePairs(pre, load_word_kinds(os.path.join(root, "word_kinds.json")), indices=[3, 5])
    item = pairs[1]
    assert set(item) == {"index", "image", "input_ids", "attention_mask", "content_mask", "word_index", "word_kind"}
    assert int(item["index"]) == 1
    assert (item["word_kind"] >= 0).sum() == (item["word_index"] >= 0).sum()
    assert (item["word_kind"][item["word_index"] >= 0] == 0).any()  # every caption names a person


def _pretrain(bench, out, *extra):
    opts = tiny_opts(bench, out, **{"pretrain.val_size": 16, "pretrain.word_kinds": "word_kinds.json",
                                    "train.batch_size": 8, "train.epochs": 1})
    return ["pretrain.py", "--config", "configs/debug.yaml", "--opts", *opts, *extra]


def test_pretrain_script_exports_reuses_and_refuses(tiny_benchmark, tmp_path):
    out = str(tmp_path / "pt")
    proc = run_script(*_pretrain(tiny_benchmark, out))
    assert "val MLM acc" in proc.stdout and "names" in proc.stdout and "ITM acc" in proc.stdout
    ckpt = os.path.join(out, "meter_pretrain.ckpt")
    report = run_script("-m", "models.pretrained", "--config", "configs/debug.yaml", "--opts",
                        f"pretrained.meter={ckpt}", f"data.tokenizer={tiny_benchmark['tokenizer']}")
    assert "random init (not covered by any source): none" in report.stdout
    assert "left over mlm_score: 6 keys" in report.stdout
    again = run_script(*_pretrain(tiny_benchmark, out))
    assert "reusing" in again.stdout
    other = subprocess.run([sys.executable, *_pretrain(tiny_benchmark, out), "pretrain.mlm_prob=0.3"], cwd=ROOT,
                           capture_output=True, text=True)
    assert other.returncode != 0 and "pretrain.mlm_prob: checkpoint 0.15, now 0.3" in other.stderr
    no_negatives = subprocess.run([sys.executable, *_pretrain(tiny_benchmark, out), "pretrain.rud_weight=1"], cwd=ROOT,
                                  capture_output=True, text=True)
    assert no_negatives.returncode != 0 and "set pretrain.itm_word_neg_prob > 0" in no_negatives.stderr
    no_kinds = subprocess.run([sys.executable, *_pretrain(tiny_benchmark, out), "pretrain.word_kinds=null",
                               "pretrain.kind_mlm_prob.expressions=0.9"], cwd=ROOT, capture_output=True, text=True)
    assert no_kinds.returncode != 0 and "which pretrain.word_kinds lists" in no_kinds.stderr
    restart = run_script(*_pretrain(tiny_benchmark, out), "pretrain.mlm_prob=0.3", "pretrain.itm_word_neg_prob=0.5",
                         "pretrain.rud_weight=5", "pretrain.kind_mlm_prob.expressions=1.0",
                         "pretrain.word_neg_kinds=[names, colours]", "pretrain.mim_weight=0.5", "--restart-if-stale")
    assert "starting over" in restart.stdout and "exported" in restart.stdout
    assert "one-word negatives" in restart.stdout and "replaced-unit detection token AUC" in restart.stdout
    assert "(tokens of the swapped kinds " in restart.stdout
    assert ", mim " in restart.stdout and " itm " in restart.stdout.split("losses mlm")[-1]  # train and val MIM loss
    report = run_script("-m", "models.pretrained", "--config", "configs/debug.yaml", "--opts",
                        f"pretrained.meter={ckpt}", f"data.tokenizer={tiny_benchmark['tokenizer']}")
    assert "left over itm_score: 2 keys" in report.stdout and "rud" not in report.stdout  # export: METER's keys
    continued = run_script(*_pretrain(tiny_benchmark, str(tmp_path / "pt2"), f"pretrained.meter={ckpt}"))
    assert "pre-training heads from pretrained.meter: mlm_score 6, itm_score 2" in continued.stdout
    probe = run_script("-m", "scripts.detector_probe", "--run", out, "--split", "val", "--weak-steps", "5")
    assert "zero-shot on val (16 pairs)" in probe.stdout and "token AUC, pristine-image pairs: names " in probe.stdout
    assert "sentence AUC (topk): all " in probe.stdout and ", edited_image " in probe.stdout
    assert "5 steps on train) from random weights" in probe.stdout and "from the detector, sentence" in probe.stdout
    no_detector = subprocess.run([sys.executable, "-m", "scripts.detector_probe", "--run", str(tmp_path / "pt2")],
                                 cwd=ROOT, capture_output=True, text=True)
    assert no_detector.returncode != 0 and "trained no replaced-unit detector" in no_detector.stderr


def test_export_now_writes_a_stopped_run_and_the_run_continues(tiny_benchmark, tmp_path):
    out = str(tmp_path / "pt")
    args = [sys.executable, "-u", *_pretrain(tiny_benchmark, out, "train.epochs=2")]
    nothing = subprocess.run([*args, "--export-now"], cwd=ROOT, capture_output=True, text=True)
    assert nothing.returncode != 0 and "nothing to export" in nothing.stderr
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # last.pth is written before the epoch's line: stop the run there
        if line.startswith("epoch 1/2 ("):
            proc.kill()
            break
    proc.wait()
    ckpt = os.path.join(out, "meter_pretrain.ckpt")
    assert not os.path.exists(ckpt)
    now = run_script(*_pretrain(tiny_benchmark, out, "train.epochs=2"), "--export-now")
    assert "at epoch 1 of 2" in now.stdout and "epoch 2/2 (" not in now.stdout
    partial = torch.load(ckpt, weights_only=True)
    assert partial["hyper_parameters"]["epoch"] == 1
    state = torch.load(os.path.join(out, "last.pth"), weights_only=True)
    assert torch.equal(partial["state_dict"]["text_transformer.embeddings.word_embeddings.weight"],
                       state["model"]["backbone.text_transformer.embeddings.word_embeddings.weight"])
    rest = run_script(*_pretrain(tiny_benchmark, out, "train.epochs=2"))
    assert "epoch 2/2 (" in rest.stdout and "at epoch 2 of 2" in rest.stdout


def test_stale_run_refused_or_cleared(tmp_path):
    """utils.checkpoint.resume: a last.pth is tied to its config and identity (corpus, tokenizer, pretrained-file
    fingerprints); refused with the key named, or with restart_if_stale deleted."""
    from utils.checkpoint import TrainState, resume, stale_reasons
    from utils.config import load_config
    from utils.errors import CheckpointError
    from utils.loop import file_sha256, save_state

    cfg = load_config("configs/debug.yaml")
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = TrainState(epoch=1, step_in_epoch=0, global_step=5, best_metric=0.5)
    (tmp_path / "a.bin").write_bytes(b"one")
    identity = {"pretrained_meter_sha256": file_sha256(str(tmp_path / "a.bin"))}
    save_state(tmp_path / "last.pth", model, opt, scaler, cfg, state, identity)
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    assert stale_reasons(saved, cfg, identity) == {}
    (tmp_path / "a.bin").write_bytes(b"two")
    other = {"pretrained_meter_sha256": file_sha256(str(tmp_path / "a.bin"))}
    assert set(stale_reasons(saved, cfg, other)) == {"pretrained_meter_sha256"}
    with pytest.raises(CheckpointError, match="pretrained_meter_sha256") as refused:
        resume(tmp_path, model, opt, scaler, cfg, other)
    assert "\n" not in str(refused.value)  # one line at the entry point
    assert resume(tmp_path, model, opt, scaler, cfg, identity) == state
    assert resume(tmp_path, model, opt, scaler, cfg, identity, restart_if_stale=True) == state  # same: kept
    assert (tmp_path / "last.pth").exists()
    (tmp_path / "meter_pretrain.ckpt").write_bytes(b"x")
    fresh = resume(tmp_path, model, opt, scaler, cfg, other, restart_if_stale=True,
                   extra_files=("meter_pretrain.ckpt",))
    assert fresh == TrainState()
    assert not (tmp_path / "last.pth").exists() and not (tmp_path / "meter_pretrain.ckpt").exists()


def test_backbone_lr_scale_groups():
    from utils.schedule import set_lr
    from utils.training import build_optimizer

    model = _pretrainer()
    one = build_optimizer(model, 1e-3, 0.0)
    assert len(one.param_groups) == 1
    opt = build_optimizer(model, 1e-3, 0.0, backbone_lr_scale=0.1)
    set_lr(opt, 1e-3)
    inner = {id(p) for p in model.backbone.parameters()}
    (low, high) = sorted(opt.param_groups, key=lambda g: g["lr"])
    assert low["lr"] == pytest.approx(1e-4) and high["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in low["params"]} == inner
    assert {id(p) for p in high["params"]} == {id(p) for p in model.parameters()} - inner != set()
    split = build_optimizer(model, 1e-3, 0.0, backbone_lr_scale=0.1, vit_lr_scale=1.0)
    set_lr(split, 1e-3)
    vit = {id(p) for p in model.backbone.vit_model.parameters()}
    (low, high) = sorted(split.param_groups, key=lambda g: g["lr"])   # the ViT joins the heads' factor
    assert low["lr"] == pytest.approx(1e-4) and {id(p) for p in low["params"]} == inner - vit
    assert {id(p) for p in high["params"]} == {id(p) for p in model.parameters()} - (inner - vit)
    assert len(build_optimizer(model, 1e-3, 0.0, backbone_lr_scale=0.1, vit_lr_scale=0.5).param_groups) == 3


def test_export_records_local_radius_and_loading_refuses_another(tmp_path):
    torch.manual_seed(0)
    vit = dict(TINY_VIT, local_radius=1)
    model = randomize_(MeterPretrainer(Backbone(64, vit, dict(TINY_TEXT), dict(TINY_CFA), TINY_HIDDEN),
                                       TINY_TEXT["vocab_size"])).eval()
    path = str(tmp_path / "meter.ckpt")
    save_meter_checkpoint(path, model, config={"model": {"vit": vit}})
    sources = {"meter": path, "openai_clip": None, "roberta": None, "pos_embed_source": "meter"}
    same = Backbone(64, dict(vit), dict(TINY_TEXT), dict(TINY_CFA), TINY_HIDDEN).eval()
    assert load_pretrained(same, sources)["random_init"] == []
    image, ids, mask = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(same(image, ids, mask)["v_hat"], model.backbone(image, ids, mask)["v_hat"])
    for radius in (None, 2):   # global attention (METER's own checkpoints) or another window: one clear error
        other = Backbone(64, dict(TINY_VIT, local_radius=radius), dict(TINY_TEXT), dict(TINY_CFA), TINY_HIDDEN)
        with pytest.raises(PretrainedKeyError, match=f"local_radius=1 .* the config sets {radius}"):
            load_pretrained(other, sources)
