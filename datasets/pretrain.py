"""Pre-training data (pretrain.py): pristine image-caption pairs, METER's MLM masking and ITM pairing.

The CIEC backbone starts from METER (CIEC paper section 3.2); METER pre-trains with masked language modelling
conditioned on the image and image-text matching (METER section 3.3). This file prepares both from pairs that
go through the same ``DGM4Dataset`` pipeline as fine-tuning (same transforms, tokenizer, caches):

- ``PristinePairs(dataset, word_kinds)``: the pairs of a pre-training corpus. Every record must be ``orig``
  (checked at construction: a manipulated record raises ``RecordError`` naming it); items carry only image,
  input_ids, attention_mask, content_mask, word_index and word_kind (L,) (``KINDS`` index, -1 = not a word):
  no manipulation label leaves this class.
- ``mask_tokens(input_ids, attention_mask, word_index, content_mask, generator, ...)``: METER's rule (BERT's):
  each unit is selected with probability ``mlm_prob`` (15%); a selected token becomes ``<mask>`` (80%), a random
  ordinary token (10%) or stays (10%); labels are -100 elsewhere. Units are whole words (``whole_word``: every
  sub-token of a selected word) or single tokens. ``content_prob``, if set, replaces ``mlm_prob`` for content
  words (stop-word cache M_c), and ``content_spans`` extends a selected content word to its adjacent content words
  (names are masked whole, so the caption cannot give them away), and ``kind_prob`` sets the rate of one word kind
  (say expressions), choices of this codebase (docs/implementation_notes.md "Pre-training").
- ``itm_pairs(input_ids, generator, neg_prob)``: image i keeps its caption or, with ``neg_prob`` (1/2), gets the
  caption of another image of the batch; label 1 iff the caption paired with it is identical to its own.
- ``word_swap_negatives(batch, itm_text, itm_label, generator, word_prob, kinds)`` (optional,
  ``pretrain.itm_word_neg_prob``; not METER's): a share ``word_prob`` of those negatives becomes the image's OWN
  caption with ONE content unit (a word, or adjacent content words of one kind such as a two-word name) replaced by
  a unit of the same kind and length from another caption of the batch: the harder negative that differs from the
  true caption where a manipulated one does (docs/implementation_notes.md "Pre-training").
- ``replaced_unit_targets(batch, itm_ids, itm_kind)`` (optional, ``pretrain.rud_weight``; not METER's): the token labels
  of replaced-unit detection on those ITM captions: 1 on the swapped unit's tokens, 0 on every other word token of
  the own-caption and one-unit rows; other-caption rows are left out (every word of them is another pair's).

Masking and pairing draw from a ``torch.Generator`` seeded by (seed, global step, rank) in the training step, so
they do not depend on loader workers and a resumed run draws the same masks.
"""
import hashlib
import json
import os

import torch
from torch.utils.data import Dataset

from datasets.caches import read_json_text
from datasets.records import RecordError
from utils.config import PICTURED_KINDS
from utils.errors import BadInputError, MissingDataError

KINDS = (*PICTURED_KINDS, "other")
ITEM_KEYS = ("index", "image", "input_ids", "attention_mask", "content_mask", "word_index")


def load_word_kinds(path):
    """word -> kind index (``KINDS``) from a word-kinds JSON ({kind: [normalised words]}, kinds from ``KINDS``
    without "other", plus an optional "source"); None path -> {}. An unknown kind is an error (the file of a
    generation before 2026-12-02 lists "attributes": regenerate it)."""
    if path is None:
        return {}
    if not os.path.isfile(path):
        raise MissingDataError(f"word-kinds file {path} not found (pretrain.word_kinds, relative to data.root; "
                               f"make_synthetic.py --pretrain writes one, or set it to null)")
    data = read_json_text(path, "word-kinds file")
    if not isinstance(data, dict):
        raise BadInputError(f"word-kinds file {path} must hold a JSON object {{kind: [words]}}")
    unknown = sorted(set(data) - set(KINDS[:-1]) - {"source"})
    if unknown:
        raise BadInputError(f"{path}: unknown word kinds {unknown}; expected {list(KINDS[:-1])} (files written "
                            f"before 2026-12-02 list 'attributes': rerun preprocess/make_synthetic.py)")
    table = {}
    for k, kind in enumerate(KINDS[:-1]):
        for word in data.get(kind, []):
            if word in table:
                raise BadInputError(f"{path}: word {word!r} is listed under two kinds")
            table[word] = k
    return table


def corpus_fingerprint(root, records):
    """sha256 over the records (without loader-added fields) and the bytes of their images: a pre-training run
    continues only on the corpus it started on."""
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}, sort_keys=True).encode())
        with open(os.path.join(root, rec["image"]), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


class PristinePairs(Dataset):
    """Label-free view of a ``DGM4Dataset`` (or ``SeededDataset`` around one) whose records are all pristine."""

    def __init__(self, dataset, word_kinds=None, indices=None):
        self.dataset, self.kinds = dataset, word_kinds or {}
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        for rec in dataset.records:
            if rec["fake_cls"] != "orig":
                raise RecordError(rec["id"], rec["_file"], f"pre-training uses pristine pairs only, but this "
                                  f"record is {rec['fake_cls']!r}", "not_pristine")

    def __len__(self):
        return len(self.indices)

    def set_epoch(self, epoch):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, i):
        sample = self.dataset[self.indices[i]]
        item = {k: sample[k] for k in ITEM_KEYS}
        item["index"] = torch.tensor(i, dtype=torch.long)
        item["word_kind"] = token_word_kinds(sample["caption"], sample["word_index"], self.kinds)
        return item


def token_word_kinds(caption, word_index, kinds):
    """(L,) long: the ``KINDS`` index of the word of each token (``kinds``: word -> index from ``load_word_kinds``;
    words not listed are "other"), -1 off words. ``word_index`` (L,) indexes ``caption.split(" ")``."""
    words = caption.split(" ")
    return torch.tensor([-1 if j < 0 else kinds.get(words[j], len(KINDS) - 1) for j in word_index.tolist()],
                        dtype=torch.long)


def _select_units(word_index, attention_mask, unit_prob, whole_word, generator):
    """(B,L) bool: tokens whose unit (word or token) was drawn, with per-unit probabilities ``unit_prob`` (B,L)."""
    words = word_index >= 0
    draw = torch.rand(word_index.shape, generator=generator) < unit_prob
    if not whole_word:
        return draw & words
    # a word is selected iff the draw of its first token is; every token of the word follows it
    b, n = word_index.shape
    first = torch.full((b, n + 1), n, dtype=torch.long)
    pos = torch.arange(n).expand(b, n)
    slot = torch.where(words, word_index, torch.full_like(word_index, n))
    first.scatter_reduce_(1, slot, pos, reduce="amin")
    head = torch.gather(first, 1, slot.clamp(max=n))
    return words & torch.gather(draw & words, 1, head.clamp(max=n - 1))


def _grow_content_spans(selected, word_index, content_mask):
    """Also select a content word whose neighbouring word (one word left or right) is a selected content word, so
    that adjacent content words (a person's first and last name) are masked together. (B,L) bool -> (B,L) bool."""
    b, n = word_index.shape
    slot = torch.where(word_index >= 0, word_index, torch.full_like(word_index, n))
    per_word = torch.zeros(b, n + 1, dtype=torch.long)
    per_word.scatter_reduce_(1, slot, (selected & (content_mask > 0)).long(), reduce="amax")
    content_word = torch.zeros(b, n + 1, dtype=torch.long)
    content_word.scatter_reduce_(1, slot, (content_mask > 0).long(), reduce="amax")
    sel, cont = per_word[:, :n].bool(), content_word[:, :n].bool()
    left = torch.nn.functional.pad(sel[:, :-1], (1, 0))
    right = torch.nn.functional.pad(sel[:, 1:], (0, 1))
    grown = sel | ((left | right) & cont)
    grown = torch.cat([grown, torch.zeros(b, 1, dtype=torch.bool)], dim=1)
    return selected | (torch.gather(grown, 1, slot) & (word_index >= 0))


def mask_tokens(input_ids, attention_mask, word_index, content_mask, generator, mask_id, vocab_range,
                mlm_prob=0.15, content_prob=None, whole_word=True, content_spans=False, word_kind=None,
                kind_prob=None):
    """METER/BERT masking; returns (mlm_ids (B,L), mlm_labels (B,L) with -100 off the selected tokens).

    ``vocab_range`` (lo, hi): ordinary token ids for the 10% random replacements. ``content_spans``: a selected
    content word also selects the adjacent content words (``_grow_content_spans``; needs ``whole_word``).
    ``kind_prob`` (one entry per ``KINDS`` but "other": a probability or None), with ``word_kind`` (B,L) from
    ``token_word_kinds``: the selection probability of the words of that kind, over ``content_prob`` and ``mlm_prob``
    (``pretrain.kind_mlm_prob``; not METER's). All tensors on the CPU.
    """
    prob = torch.full(input_ids.shape, float(mlm_prob))
    if content_prob is not None:
        prob = torch.where(content_mask > 0, torch.full_like(prob, float(content_prob)), prob)
    for k, p_k in enumerate(kind_prob or ()):
        if p_k is not None:
            prob = torch.where(word_kind == k, torch.full_like(prob, float(p_k)), prob)
    selected = _select_units(word_index, attention_mask, prob, whole_word, generator)
    if content_spans:
        if not whole_word:
            raise ValueError("pretrain.content_spans needs pretrain.whole_word")
        selected = _grow_content_spans(selected, word_index, content_mask)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    u = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_range[0], vocab_range[1], input_ids.shape, generator=generator)
    ids = torch.where(selected & (u < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    ids = torch.where(selected & (u >= 0.8) & (u < 0.9), random_ids, ids)
    return ids, labels


def itm_pairs(input_ids, generator, neg_prob=0.5):
    """(itm_text (B,) long, itm_label (B,) long): caption row paired with each image, and 1 = matched."""
    b = input_ids.shape[0]
    rows = torch.arange(b)
    if b < 2:
        return rows, torch.ones(b, dtype=torch.long)
    negative = torch.rand(b, generator=generator) < neg_prob
    other = (rows + torch.randint(1, b, (b,), generator=generator)) % b  # uniform over the other rows
    text = torch.where(negative, other, rows)
    same = (input_ids[text] == input_ids).all(dim=1)
    return text, same.long()


def content_units(word_index, content, kind):
    """Per row, the (start, end, kind) token ranges of the maximal runs of adjacent words that are content words of
    one kind (a two-word name is one unit). Rows are (L,) lists; kind -1 = not a word."""
    units, prev = [], None
    for t, (w, c, k) in enumerate(zip(word_index, content, kind)):
        if w < 0 or not c:
            prev = None
            continue
        if prev is not None and w in (prev[0], prev[0] + 1) and k == prev[1]:
            units[-1][1] = t + 1
        else:
            units.append([t, t + 1, k])
        prev = (w, k)
    return [tuple(u) for u in units]


def word_swap_negatives(batch, itm_text, itm_label, generator, word_prob, kinds=None):
    """Turn a share ``word_prob`` of the other-caption ITM negatives into one-unit negatives.

    batch: input_ids, attention_mask, content_mask, word_index, word_kind (B,L); itm_text, itm_label (B,) from
    ``itm_pairs``. A negative image i (itm_text[i] != i) is chosen with probability ``word_prob``; its ITM caption
    becomes its OWN caption with one unit (``content_units``: a run of adjacent content words of one kind, uniform over
    the row's units) replaced by a unit of another caption of the batch with the same kind and token length and no
    token in common (uniform over those; "Anna Berg's" does not replace "Anna Berg"). ``kinds`` (kind indices)
    limits the units to those kinds (None: every content word). A row without a unit or without a donor keeps its
    other-caption negative. Returns (itm_ids (B,L) long: the caption paired with each image, itm_mask (B,L),
    itm_label (B,) long, itm_kind (B,) long: 0 own caption, 1 another caption, 2 one unit swapped). CPU; a loop over
    the B rows (data preparation, not the model).
    """
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b = ids.shape[0]
    content = batch["content_mask"] > 0
    if kinds is not None:
        content &= torch.isin(batch["word_kind"], torch.tensor(kinds))
    units = [content_units(w, c, k) for w, c, k in zip(batch["word_index"].tolist(), content.tolist(),
                                                    batch["word_kind"].tolist())]
    draw, rows = (torch.rand(b, generator=generator) < word_prob).tolist(), ids.tolist()
    itm_ids, itm_mask, label = ids[itm_text].clone(), mask[itm_text].clone(), itm_label.clone()
    kind = (itm_text != torch.arange(b)).long()
    for r in range(b):
        if not (draw[r] and kind[r] == 1 and units[r]):
            continue
        s, e, k = units[r][int(torch.randint(len(units[r]), (1,), generator=generator))]
        own = set(rows[r][s:e])
        donors = [(r2, s2) for r2 in range(b) if r2 != r for s2, e2, k2 in units[r2]
                  if k2 == k and e2 - s2 == e - s and own.isdisjoint(rows[r2][s2:e2])]
        if not donors:
            continue
        r2, s2 = donors[int(torch.randint(len(donors), (1,), generator=generator))]
        itm_ids[r], itm_mask[r] = ids[r], mask[r]
        itm_ids[r, s:e] = ids[r2, s2:s2 + e - s]
        label[r], kind[r] = 0, 2
    return itm_ids, itm_mask, label, kind


def replaced_unit_targets(batch, itm_ids, itm_kind):
    """(rud_labels (B,L) float, rud_mask (B,L) bool) for replaced-unit detection (``pretrain.rud_weight``).

    batch: input_ids, attention_mask, word_index (B,L) of the own captions; itm_ids (B,L) and itm_kind (B,) from
    ``word_swap_negatives`` (0 own caption, 1 another caption, 2 one unit swapped). A label is 1 where a one-unit
    row's token differs from the own caption (the donor unit shares no token with the replaced one, so these are
    exactly the swapped tokens); the mask keeps the word tokens (word_index >= 0, attention on) of rows of kind 0
    and 2. Self-supervised: built from pristine captions only, no manipulation label is read."""
    words = (batch["word_index"] >= 0) & (batch["attention_mask"] > 0)
    swapped = (itm_kind == 2)[:, None] & (itm_ids != batch["input_ids"]) & words
    return swapped.float(), words & (itm_kind != 1)[:, None]
