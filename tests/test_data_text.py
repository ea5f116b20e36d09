"""Caption normalisation, word->token label rules (benchmark vs clean), content-word masks (datasets/text.py)."""
import random

import pytest

from datasets.text import (
    IGNORE,
    align_words,
    benchmark_token_labels,
    clean_token_labels,
    content_token_mask,
    content_word_mask,
    count_label_disagreements,
    encode,
    load_tokenizer,
    normalize_caption,
)
from preprocess.train_tokenizer import train_tokenizer

CORPUS = ["the bulmer rizzi family won the award", "covid19 cases rose sharply in the city",
          "the company paid us$5m to smith for 50% of the g7 deal", "the president met leaders in paris london",
          "a man is holding a red umbrella on tuesday"] * 10


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(CORPUS, str(tmp_path_factory.mktemp("tok")), vocab_size=300)


def squash(text):
    return "".join(text.split())


def labelled_text(caption, enc, labels):
    """The caption characters covered by the tokens labelled 1, joined with '|' between words."""
    words, last = [], None
    for (s, e), lab in zip(enc["offsets"], labels):
        if lab == 1:
            chunk = caption[s:e]
            if words and last == s:
                words[-1] += chunk
            else:
                words.append(chunk)
            last = e
    return "|".join(words)


def test_normalize_caption_rules():
    raw = 'Prime Minister Bulmer-Rizzi, said: "We (all) won!" <PERSON> #1 in Paris/London ~ ok;*?'
    assert normalize_caption(raw) == "prime minister bulmer rizzi said we all won person 1 in paris london ok"
    assert normalize_caption("  A  -  B  ") == "a b"
    assert normalize_caption("it's Obama's") == "its obamas"
    # the benchmark collapses only runs of 2+ whitespace: a single tab survives inside a word
    assert normalize_caption("rose\tfast") == "rose\tfast"
    assert normalize_caption("rose \tfast\n") == "rose fast"
    long = " ".join(f"w{i}" for i in range(70))
    assert normalize_caption(long).split(" ") == [f"w{i}" for i in range(50)]
    assert normalize_caption(long, max_words=5) == "w0 w1 w2 w3 w4"
    assert len(normalize_caption(long, max_words=None).split(" ")) == 70


def test_align_words_matches_normalize_on_random_captions():
    rng = random.Random(0)
    alphabet = list("abcXYZ19") + list(" -/.,'\"!?()*#:;~$%&\t") + ["<person>", "  "]
    for _ in range(500):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        for cap in (50, 3, None):
            caption, spans, owner = align_words(raw, cap)
            assert caption == normalize_caption(raw, cap)
            if caption:
                assert [caption[s:e] for s, e in spans] == caption.split(" ")
            raw_words = raw.split(" ")
            assert owner == sorted(owner)
            for (s, e), o in zip(spans, owner):
                if e > s:  # every normalised word's characters come from its owner raw word
                    assert squash(caption[s:e]) in squash(normalize_caption(raw_words[o], None))


def test_align_words_hyphen_and_dash():
    caption, spans, owner = align_words("The Bulmer-Rizzi family - all of them")
    assert caption.split(" ") == ["the", "bulmer", "rizzi", "family", "all", "of", "them"]
    assert owner == [0, 1, 1, 2, 4, 5, 6]  # raw word 3 ("-") vanished


def test_encode_padding_uses_real_pad_id(tok):
    enc = encode(tok, "a man is holding a red umbrella", 24)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = sum(mask)
    assert len(ids) == len(mask) == 24
    assert ids[0] == tok.bos_token_id == 0 and ids[n - 1] == tok.eos_token_id == 2
    assert tok.pad_token_id == 1 and ids[n:] == [1] * (24 - n) and mask[n:] == [0] * (24 - n)
    assert tok.decode(ids[1:n - 1]).strip() == "a man is holding a red umbrella"


@pytest.mark.parametrize("raw,pos,bench,clean", [
    ("The Bulmer-Rizzi family won", [2], "rizzi", "family"),          # hyphen split shifts later indices
    ("Covid19 cases rose sharply", [1], "19", "cases"),               # letter-digit glue: 2 pre-tokens
    ("The company paid us$5m to Smith", [4], "$", "to"),              # '$' is its own pre-token
    ("The company paid us$5m to Smith", [3], "us", "us$5m"),          # sub-words of one raw word
    ("The president met leaders - in Paris", [5], "paris", "in"),      # a standalone '-' vanishes
    ("A man is holding a red umbrella", [5, 6], "red|umbrella", "red|umbrella"),  # no trap: agree
])
def test_label_rules_on_trap_cases(tok, raw, pos, bench, clean):
    caption, spans, owner = align_words(raw)
    enc = encode(tok, caption, 32)
    a = benchmark_token_labels(enc, pos)
    b = clean_token_labels(enc, spans, owner, pos)
    assert labelled_text(caption, enc, a) == bench
    assert labelled_text(caption, enc, b) == clean
    specials = [i for i, w in enumerate(enc["word_ids"]) if w is None]
    assert all(a[i] == IGNORE and b[i] == IGNORE for i in specials)
    assert all(a[i] in (0, 1) and b[i] in (0, 1) for i in range(32) if i not in specials)


def test_count_label_disagreements(tok):
    recs = [{"id": 1, "text": "The Bulmer-Rizzi family won", "fake_text_pos": [2]},
            {"id": 2, "text": "Covid19 cases rose sharply", "fake_text_pos": [1]},
            {"id": 3, "text": "A man is holding a red umbrella", "fake_text_pos": [5]},
            {"id": 4, "text": "The Bulmer-Rizzi family won", "fake_text_pos": []},
            {"id": 5, "text": "The Bulmer-Rizzi family won", "fake_text_pos": [0]}]
    n_bad, n, examples = count_label_disagreements(tok, recs, 32)
    assert (n_bad, n, examples) == (2, 5, [1, 2])


def test_word_cap_and_truncation_drop_labels(tok):
    raw = " ".join(["umbrella"] * 60)
    caption, spans, owner = align_words(raw, 50)
    enc = encode(tok, caption, 128)
    a = benchmark_token_labels(enc, [10, 55], 50)
    b = clean_token_labels(enc, spans, owner, [10, 55])
    assert sum(x == 1 for x in a) == sum(x == 1 for x in b) > 0  # word 55 is past the cap
    assert a == b
    short = encode(tok, caption, 8)  # truncation keeps </s> last
    assert short["input_ids"][-1] == tok.eos_token_id and len(short["input_ids"]) == 8
    assert benchmark_token_labels(short, [40]) == [IGNORE] + [0] * 6 + [IGNORE]


def test_content_word_mask_rules():
    words = ["the", "president", "not", "2020", "50%", "$", "us$5m", "covid19", "g7", "—", "umbrella", "of"]
    assert content_word_mask(words) == [0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0]


def test_content_token_mask_follows_words(tok):
    caption, spans, owner = align_words("The president of Bulmer-Rizzi holding covid19")
    words = caption.split(" ")
    wmask = content_word_mask(words)
    enc = encode(tok, caption, 32)
    tmask = content_token_mask(enc, spans, wmask)
    for (s, e), w, m in zip(enc["offsets"], enc["word_ids"], tmask):
        if w is None:
            assert m == 0
            continue
        word = next(j for j, (ws, we) in enumerate(spans) if ws <= s < we or (s == e == ws))
        assert m == wmask[word], (caption[s:e], words[word])
    assert sum(tmask) > 0 and sum(tmask) < sum(enc["attention_mask"]) - 2


def test_load_tokenizer_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tokenizer"):
        load_tokenizer(str(tmp_path / "nope"))


def test_trained_tokenizer_files_and_special_ids(tok, tmp_path):
    folder = tmp_path / "t2"
    t2 = train_tokenizer(CORPUS, str(folder), vocab_size=300)
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in
                                                                                      folder.iterdir()}
    assert [t2.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]] == [0, 1, 2, 3, 4]
    reloaded = load_tokenizer(str(folder))
    assert reloaded("covid19 cases")["input_ids"] == t2("covid19 cases")["input_ids"]
