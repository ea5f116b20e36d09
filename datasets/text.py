"""Caption text: the benchmark's caption cleaning, tokenisation, word->token labels, content-word masks.

Implements the text side of the DGM4 protocol (docs/protocol.md 2.3-2.5) used by CIEC's text branch
(paper section 2.4: token labels for evaluation, content-word mask M_c of eqs. 13, 15 and 21, also
the token set of L_Asc, eqs. 18-20).

- ``normalize_caption(text, max_words)``: HAMMER's ``pre_caption`` exactly (one function for the dataset and every
  preprocess script); ``caption_digest(text)``: a short hash of the uncapped normalised caption (the stop-word
  cache stores it, the audit compares it).
- ``encode(tokenizer, caption, max_len)``: ``<s> tokens </s> <pad>...`` with the tokenizer's own pad id; returns
  lists of length ``max_len`` (input_ids, attention_mask), plus offsets and word ids.
- Token labels, two rules, both lists of length ``max_len`` with -100 at ``<s>``, ``</s>`` and padding:
  (a) ``benchmark_token_labels``: the published rule (HF ``word_ids`` of the tokenizer's pre-tokenizer over the
      normalised caption string; every sub-token whose word id is in ``fake_text_pos`` is 1). Its misalignments
      (hyphens, letter-digit glue like "covid19", punctuation) are reproduced on purpose, for comparable numbers.
  (b) ``clean_token_labels``: raw whitespace word -> normalised words (``align_words``) -> tokens by character
      offsets.
  ``count_label_disagreements`` counts the captions on which (a) and (b) differ.
- ``content_word_mask(words)`` (per normalised word) and ``content_token_mask`` (per token).
- ``word_token_mask(attention_mask)``: the real word tokens (no ``<s>``, ``</s>``, padding), ``batch["word_tokens"]``.
"""
import hashlib
import os
import re

import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from utils.errors import ConfigError, MissingDataError

_DELETED = re.compile(r"[,.'!?\"()*#:;~]")
_MULTI_SPACE = re.compile(r"\s{2,}")
IGNORE = -100


def _clean_piece(text):
    """Character edits of ``pre_caption`` (steps 1-3): lowercase, delete, '-' '/' -> ' ', '<person>'."""
    text = _DELETED.sub("", text.lower())
    return text.replace("-", " ").replace("/", " ").replace("<person>", "person")


def normalize_caption(text, max_words=50):
    """HAMMER's ``pre_caption``: the cleaned caption string.

    Steps: lowercase; delete ``, . ' ! ? " ( ) * # : ; ~``; '-' and '/' -> ' '; '<person>' -> 'person';
    runs of 2+ whitespace characters -> one space (a single tab/newline is kept, as in the benchmark);
    ``rstrip('\\n')`` then ``strip(' ')``; keep the first ``max_words`` space-separated words
    (``max_words=None``: no cap).
    """
    caption = _MULTI_SPACE.sub(" ", _clean_piece(text)).rstrip("\n").strip(" ")
    if max_words is not None:
        words = caption.split(" ")
        if len(words) > max_words:
            caption = " ".join(words[:max_words])
    return caption


def align_words(text, max_words=50):
    """Normalise ``text`` while tracking which raw word each normalised word comes from.

    Raw words are ``text.split(' ')`` (the ``fake_text_pos`` convention). Returns ``(caption, spans, owner)``:
    ``caption == normalize_caption(text, max_words)``; ``spans[j] = (start, end)`` character span of normalised word
    j in ``caption``; ``owner[j]`` = index of the raw word it came from. A raw word may give 0 words ("-"), 1, or
    several ("bulmer-rizzi" -> 2).
    """
    chars, owners = [], []
    for i, raw in enumerate(text.split(" ")):
        if i:
            chars.append(" ")
            owners.append(-1)
        piece = _clean_piece(raw)
        chars.extend(piece)
        owners.extend([i] * len(piece))
    out, out_owner = [], []
    joined = "".join(chars)
    pos = 0
    for m in _MULTI_SPACE.finditer(joined):  # collapse with provenance
        out.extend(chars[pos:m.start()])
        out_owner.extend(owners[pos:m.start()])
        out.append(" ")
        out_owner.append(-1)
        pos = m.end()
    out.extend(chars[pos:])
    out_owner.extend(owners[pos:])
    caption = "".join(out).rstrip("\n")
    left = len(caption) - len(caption.lstrip(" "))
    caption = caption.strip(" ")
    return _split_words(caption, out_owner[left:left + len(caption)], max_words)


def _split_words(caption, char_owner, max_words):
    """Split on ' ' with spans and owners; apply the word cap."""
    spans, owner = [], []
    pos = 0
    for word in caption.split(" "):
        end = pos + len(word)
        owned = [o for o in char_owner[pos:end] if o >= 0]
        spans.append((pos, end))
        owner.append(owned[0] if owned else -1)
        pos = end + 1
    if max_words is not None and len(spans) > max_words:
        spans, owner = spans[:max_words], owner[:max_words]
        caption = caption[:spans[-1][1]]
    return caption, spans, owner


def load_tokenizer(folder):
    """RoBERTa-style fast tokenizer from a local folder (vocab.json + merges.txt, or tokenizer.json)."""
    from transformers import RobertaTokenizerFast

    if not os.path.isdir(folder):
        raise MissingDataError(
            f"tokenizer folder {folder!r} does not exist; point data.tokenizer at a local roberta-base folder "
            f"or build a small one with preprocess/train_tokenizer.py")
    return RobertaTokenizerFast.from_pretrained(folder, add_prefix_space=True, local_files_only=True)


def tokenizer_for(cfg):
    """The tokenizer of ``cfg["data"]["tokenizer"]``, checked against the text encoder's sizes."""
    tokenizer = load_tokenizer(cfg["data"]["tokenizer"])
    text = cfg["model"]["text"]
    check_tokenizer_fits(tokenizer, text["vocab_size"], text["max_position_embeddings"], cfg["data"]["max_len"])
    return tokenizer


def check_tokenizer_fits(tokenizer, vocab_size, max_position_embeddings, max_len):
    """Raise if the tokenizer's ids or the padded length do not fit the text encoder's tables."""
    if len(tokenizer) > vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but model.text.vocab_size is {vocab_size}")
    # RoBERTa positions start at pad_id + 1, so max_len + pad_id + 1 rows are needed.
    if max_len + tokenizer.pad_token_id + 1 > max_position_embeddings:
        raise ConfigError(f"data.max_len {max_len} needs {max_len + tokenizer.pad_token_id + 1} position "
                         f"embeddings; model.text.max_position_embeddings is {max_position_embeddings}")


def ordinary_token_range(tokenizer):
    """(lo, hi): the ids of ordinary (non-special) tokens, a contiguous range (RoBERTa: specials 0-3 and <mask>
    last; preprocess/train_tokenizer.py: specials 0-4). Raises if a special token lies inside the range."""
    specials, lo, hi = set(tokenizer.all_special_ids), 0, len(tokenizer)
    while lo in specials:
        lo += 1
    while hi - 1 in specials:
        hi -= 1
    inside = sorted(s for s in specials if lo <= s < hi)
    if inside or lo >= hi:
        raise ValueError(f"special token ids {sorted(specials)} are not at the two ends of the vocabulary")
    return lo, hi


def encode(tokenizer, caption, max_len):
    """Tokenise one normalised caption: ``<s> ... </s> <pad>...`` padded/truncated to ``max_len``.

    Returns a dict of lists of length ``max_len``: ``input_ids``, ``attention_mask``, ``offsets`` ((start, end)
    character spans in ``caption``; (0, 0) for specials/padding), ``word_ids`` (pre-tokenizer word index or None).
    """
    enc = tokenizer(caption, max_length=max_len, truncation=True, padding="max_length",
                    return_offsets_mapping=True)
    return {"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"]),
            "offsets": [tuple(o) for o in enc["offset_mapping"]], "word_ids": enc.word_ids()}


def word_token_mask(attention_mask):
    """Real word tokens: attended positions minus ``<s>`` (position 0) and ``</s>`` (the last attended one), for an
    ``attention_mask`` of shape (..., L) (right padding); a bool tensor of the same shape. The one definition of
    the token set that VCTG's Top-K, its z-score and the text losses work on: the dataset puts it in the batch as
    ``word_tokens``, and the model and the losses read it from there."""
    length = attention_mask.long().sum(dim=-1, keepdim=True)
    pos = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (pos >= 1) & (pos < length - 1)


def benchmark_token_labels(enc, fake_text_pos, max_words=50):
    """Rule (a), the benchmark's: token is 1 iff its pre-tokenizer word id is a fake raw word index.

    Indices >= ``max_words`` are dropped first (HAMMER's 50-long multi-hot). Specials/padding -> -100.
    """
    fake = {int(i) for i in fake_text_pos if int(i) < (max_words if max_words is not None else 1 << 30)}
    return [IGNORE if w is None else int(w in fake) for w in enc["word_ids"]]


def token_words(enc, spans, length):
    """Normalised word index of every token (by its start offset), -1 for specials/padding/spaces."""
    char_word = [-1] * (length + 1)
    for j, (s, e) in enumerate(spans):
        char_word[s:e] = [j] * (e - s)
    return [-1 if w is None else char_word[min(o[0], length)] for w, o in zip(enc["word_ids"], enc["offsets"])]


def clean_token_labels(enc, spans, owner, fake_text_pos):
    """Rule (b): raw fake word -> its normalised words (``owner``) -> tokens by character offsets."""
    fake_raw = {int(i) for i in fake_text_pos}
    fake_word = [o in fake_raw for o in owner]
    length = spans[-1][1] if spans else 0
    return [IGNORE if w is None else int(j >= 0 and fake_word[j])
            for w, j in zip(enc["word_ids"], token_words(enc, spans, length))]


def count_label_disagreements(tokenizer, records, max_len, max_words=50):
    """On how many captions do rules (a) and (b) give different token labels?

    Returns ``(n_disagree, n_total, examples)``; ``examples`` lists up to 10 disagreeing record ids.
    """
    n_bad, examples = 0, []
    for rec in records:
        caption, spans, owner = align_words(rec["text"], max_words)
        enc = encode(tokenizer, caption, max_len)
        a = benchmark_token_labels(enc, rec["fake_text_pos"], max_words)
        b = clean_token_labels(enc, spans, owner, rec["fake_text_pos"])
        if a != b:
            n_bad += 1
            if len(examples) < 10:
                examples.append(rec["id"])
    return n_bad, len(records), examples


def caption_digest(text):
    """First 12 hex digits of the sha256 of ``normalize_caption(text, None)``: which caption a stop-word cache entry
    was made from (two captions with the same word count have different digests)."""
    return hashlib.sha256(normalize_caption(text, None).encode("utf-8")).hexdigest()[:12]


def other_caption_hash(entry, text):
    """The ``caption_hash`` of a stop-word cache entry when it is not ``text``'s (the entry was made from another
    caption), else None (also for entries of caches made before the hash, which have none)."""
    stored = entry.get("caption_hash") if isinstance(entry, dict) else None
    return stored if stored is not None and stored != caption_digest(text) else None


STOPWORD_SOURCE = "sklearn ENGLISH_STOP_WORDS"   # the source id of data.stopwords = "sklearn" (the default)
CONTENT_RULES = ("content word iff: not in the stop-word list (header's stopword_source); "
                 "contains at least one alphanumeric "
                 "character (punctuation-only words are not content); contains at least one letter "
                 "(number-only words such as '2020', '50%', '$5' are not content)")


def load_stopwords(spec):
    """``data.stopwords`` -> (frozenset of stop words, source id recorded in the stop-word cache's header).

    ``"sklearn"``: scikit-learn's ``ENGLISH_STOP_WORDS`` (318 words, among them 'not', 'no', 'nor', 'never',
    'first', 'last', 'two', 'top', 'front', 'back', 'fire': tokens of these can never be predicted fake).
    Otherwise a path to a UTF-8 text file, one word per line (lowercase, as in normalised captions; blank lines
    and lines starting with '#' are ignored); its source id carries the sha256 of its word set, so a cache made
    with another list is refused by the dataset whatever the file is called.
    """
    if spec == "sklearn":
        return frozenset(ENGLISH_STOP_WORDS), STOPWORD_SOURCE
    if not os.path.isfile(spec):
        raise MissingDataError(f"data.stopwords: {spec!r} is neither 'sklearn' nor a word-list file")
    with open(spec, encoding="utf-8") as f:
        words = frozenset(w.strip() for w in f if w.strip() and not w.lstrip().startswith("#"))
    digest = hashlib.sha256("\n".join(sorted(words)).encode("utf-8")).hexdigest()[:16]
    return words, f"word list {os.path.basename(spec)} ({len(words)} words, sha256 {digest})"


def content_word_mask(words, stopwords=ENGLISH_STOP_WORDS):
    """Content-word mask M_c over normalised words (paper 2.4, eqs. 13, 15, 21): list of 0/1.

    A word is a content word (1) iff all hold:
    1. it is not in ``stopwords`` (default sklearn's ``ENGLISH_STOP_WORDS``, 318 words; 'the', 'not', 'no' are
       stop words; ``data.stopwords`` chooses another list, ``load_stopwords``);
    2. it is not punctuation-only: it has at least one alphanumeric character ('$', '&', '—' -> 0);
    3. it is not number-only: it has at least one letter ('2020', '50%', 'us$5' has letters -> 1; '$5' -> 0).
    Words are compared as given (normalised captions are already lowercase, apostrophes removed).
    """
    return [int(w not in stopwords and any(c.isalpha() for c in w)) for w in words]


def content_token_mask(enc, spans, word_mask):
    """Per-token content mask: the mask of the normalised word a token belongs to (specials/padding 0)."""
    length = spans[-1][1] if spans else 0
    return [0 if j < 0 or j >= len(word_mask) else int(word_mask[j]) for j in token_words(enc, spans, length)]
