"""Weak localisation of manipulated words on twin pairs: sentence labels only (paper 2.4, eqs. 12-21).

The text twin of tests/test_weak_localisation.py. 16 samples: 8 text fakes (``text_swap`` / ``text_attribute``,
image untouched) and, for each, its TWIN: the same image with the ORIGINAL caption, labelled real (``fake_cls`` orig,
no ``fake_text_pos``). A fake and its twin differ only in the replaced words (the generator keeps the word count),
so sentence-level labels y_t carry where the manipulation is: the text weak-supervision problem in its cleanest form.
Whether a word was replaced can be learned here from the 16 captions alone (the replacing names appear only in fake
captions), not only from the picture.

A tiny model (configs/debug.yaml sizes) is trained full-batch with all nine losses and evaluated in eval mode.
What holds: every fake sentence is judged manipulated and every twin is not (t_coarse and t_fine), and no token of a
twin is predicted fake. What does NOT hold (strict xfail, docs/implementation_notes.md "The text twin test"): the
words. The text encoder sees the whole caption, so "this sentence is fake" is available at every token, and eqs.
12-20 leave the tokens of a fake sentence outside the Top-K2 set O without any loss (eq. 19, as the paper says): S^it
learns the sentence label and spreads it over all content tokens, and the top token lies inside the replaced words
on 3 of the 8 fakes (chance about 2.3; token F1 0.40 with the clean labels, the rate of marking every content word).
"""

import pytest

from preprocess import make_synthetic as ms
from tests.conftest import train_full_batch, twin_batch

SEED, STEPS, LR, N_FAKES = 5, 250, 1.0e-3, 8


def twin_records(root):
    """Write the 8 text fakes and their twins (original caption, same image); return (fake, twin, fake, twin, ...)."""
    records = []
    for i in range(400):
        rec, img, extras = ms.make_sample(SEED, "train", i)
        if rec["fake_cls"] not in ("text_swap", "text_attribute"):
            continue
        twin = dict(rec, id=rec["id"] + 500000, text=extras["orig_text"], fake_cls="orig", fake_text_pos=[])
        ms.write_jpeg(root, rec, img, quality=95)  # the twin shares the image file
        records += [rec, twin]
        if len(records) == 2 * N_FAKES:
            return records
    raise AssertionError(f"only {len(records) // 2} text fakes in 400 samples")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("text_twins"))
    cfg, batch, ds = twin_batch(root, twin_records(root), LR)
    out, _ = train_full_batch(cfg, batch, ds.tokenizer.pad_token_id, STEPS, LR)
    batch["token_label"] = batch["token_label_clean"].eq(1)  # the clean rule; -100 (specials, padding) -> 0
    return batch, out


def test_twins_differ_only_in_the_replaced_words(trained, tmp_path):
    batch, _ = trained
    assert batch["y_t"][0::2].eq(1).all() and batch["y_t"][1::2].eq(0).all()
    assert batch["y_v"].eq(0).all() and batch["token_label"][1::2].sum() == 0
    records = twin_records(str(tmp_path))
    for fake, twin in zip(records[0::2], records[1::2]):
        words, orig = fake["text"].split(), twin["text"].split()
        assert len(words) == len(orig) and fake["image"] == twin["image"]
        assert {i for i, (a, b) in enumerate(zip(words, orig)) if a != b} == set(fake["fake_text_pos"])


def test_sentence_decision(trained):
    batch, out = trained
    fake = batch["y_t"] > 0.5
    for key in ("t_coarse", "t_fine"):
        assert (out[key][fake] > 0.5).all() and (out[key][~fake] < 0.5).all(), (key, out[key])
    assert out["token_pred"][~fake].sum() == 0, out["token_pred"][~fake].nonzero().tolist()


def _spread(batch, out):
    """Mean S^it over the content tokens of the fakes that were NOT replaced."""
    fake = batch["y_t"] > 0.5
    rest = (batch["content_mask"][fake] > 0) & batch["word_tokens"][fake].bool() & ~batch["token_label"][fake]
    return out["s_it"][fake][rest].mean().item()


def test_intrinsic_scores_spread_over_fake_sentences(trained):
    """The measured failure mode, asserted so that a change of it is seen: S^it near 1 on unreplaced words."""
    batch, out = trained
    assert _spread(batch, out) > 0.9


XFAIL = pytest.mark.xfail(strict=True, reason="eqs. 12-20 do not localise words when the text encoder sees the "
                                              "sentence-level cue (docs/implementation_notes.md)")


@XFAIL
def test_top_token_is_a_replaced_word(trained):
    batch, out = trained
    fake = batch["y_t"] > 0.5
    top = out["token_prob"][fake].argmax(1)
    labels = batch["token_label"][fake]
    hits = labels.gather(1, top[:, None]).squeeze(1)
    scored = (batch["content_mask"][fake] > 0).sum(1).float()
    chance = (labels.sum(1).float() / scored).sum().item()
    assert hits.sum() >= N_FAKES - 1 and hits.sum() > 3 * chance, (top.tolist(), labels.nonzero().tolist())


@XFAIL
def test_token_f1_on_the_fakes(trained):
    batch, out = trained
    fake = batch["y_t"] > 0.5
    pred, labels = out["token_pred"][fake].bool(), batch["token_label"][fake]
    tp = (pred & labels).sum().item()
    f1 = 2 * tp / max(1, pred.sum().item() + labels.sum().item())
    assert f1 >= 0.5, (f1, pred.nonzero().tolist(), labels.nonzero().tolist())
