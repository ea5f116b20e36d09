"""DGM4 dataset for CIEC: one weakly labelled image-caption pair per item (paper sections 2.1 and 3.2).

``DGM4Dataset[i]`` returns the per-sample dict of docs/architecture.md ("The batch"), before batching:
image (3,S,S); y_m, y_v, y_t scalars and multi_label (4,) from ``fake_cls`` (the only training labels of the
weakly supervised model); gt_box (4,) and token_label / token_label_clean (L,) for evaluation only;
cand_boxes (n,4) + cand_mask (n,) from the face cache (the candidate set C of section 2.3.2);
input_ids / attention_mask (L,); content_mask (L,) = M_c of eqs. 13, 15, 21 from the stop-word cache; word_tokens (L,)
bool (``datasets.text.word_token_mask``: the real word tokens, read by the model and the losses); orig_size (2,).
``collate`` stacks them into the batch dict (B, ...), keeping lists for id, fake_cls and caption.
``candidate_pixel_boxes`` / ``candidate_tensors`` (candidate boxes) and ``text_inputs`` (caption -> token inputs and
word alignment) build those inputs from a face list and a raw caption; infer.py builds its pairs with the same three.

The dataset is a thin map from records to tensors: the records and caches come from ``datasets.audit.audit_run``
(which checked every record, its caches and its image once, before the model was built) and the tokenizer is
built once by the caller (``datasets.text.tokenizer_for``) and passed in. ``build_dataset(cfg, data, split,
tokenizer)`` makes one from the audited ``RunData``. It prints nothing.
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.audit import audit_run, split_files
from datasets.records import FAKE_CLS, read_image_sized
from datasets.text import (
    align_words,
    benchmark_token_labels,
    clean_token_labels,
    content_token_mask,
    encode,
    token_words,
    word_token_mask,
)
from datasets.transforms import AUG_OPS, boxes_to_cxcywh, build_transform


class DGM4Dataset(Dataset):
    """Audited ``records`` (dicts with ``_file``) under ``root``; ``faces`` / ``stopwords``: the entries of the face
    and stop-word caches (``datasets.caches.load_cache``)."""

    def __init__(self, records, root, faces, stopwords, tokenizer, image_size=256, max_len=50, max_words=50,
                 num_boxes=5, train=False, jpeg_draft=True, augment_ops=AUG_OPS):
        self.records, self.root, self.faces, self.stopwords = list(records), root, faces, stopwords
        self.tokenizer, self.image_size, self.max_len, self.max_words = tokenizer, image_size, max_len, max_words
        self.num_boxes, self.train = num_boxes, train
        self.draft_size = (2 * image_size, 2 * image_size) if jpeg_draft else None
        self.transform = build_transform(image_size, train, augment_ops)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        rec = self.records[index]
        img, size = read_image_sized(os.path.join(self.root, rec["image"]), rec, self.draft_size)
        image, flipped = self.transform(img)
        labels = FAKE_CLS[rec["fake_cls"]]
        box = rec["fake_image_box"]
        gt_box = boxes_to_cxcywh(box, size, flipped)[0] if box else np.zeros(4, np.float32)
        cand_boxes, cand_mask = self._candidates(rec, size, flipped)
        sample = {
            "index": torch.tensor(index, dtype=torch.long), "id": rec["id"], "fake_cls": rec["fake_cls"],
            "image": image,
            "y_m": torch.tensor(float(any(labels))), "y_v": torch.tensor(float(any(labels[:2]))),
            "y_t": torch.tensor(float(any(labels[2:]))),
            "multi_label": torch.tensor(labels, dtype=torch.float32), "gt_box": torch.from_numpy(gt_box),
            "cand_boxes": cand_boxes, "cand_mask": cand_mask,
            "orig_size": torch.tensor(size, dtype=torch.long),
        }
        sample.update(self._text(rec))
        return sample

    def _candidates(self, rec, size, flipped):
        """Top ``num_boxes`` face-cache boxes by score as model inputs (``candidate_tensors``)."""
        face = self.faces[rec["image"]]
        boxes, _ = candidate_pixel_boxes(face["boxes"], face["scores"], size, self.num_boxes)
        return candidate_tensors(boxes, size, self.num_boxes, flipped)

    def _text(self, rec):
        word_mask = self.stopwords[str(rec["id"])]["mask"]
        text = text_inputs(self.tokenizer, rec["text"], word_mask, self.max_len, self.max_words)
        enc, spans, owner, pos = text.pop("enc"), text.pop("spans"), text.pop("owner"), rec["fake_text_pos"]
        text["token_label"] = torch.tensor(benchmark_token_labels(enc, pos, self.max_words), dtype=torch.long)
        text["token_label_clean"] = torch.tensor(clean_token_labels(enc, spans, owner, pos), dtype=torch.long)
        return text


def candidate_pixel_boxes(boxes, scores, size, num_boxes):
    """Candidate set C (paper 2.3.2) of one image in its own pixels: the ``num_boxes`` best ``boxes`` (xyxy) by
    ``scores`` (stable order; ``scores=None`` keeps the given order), clipped to the (W, H) image, boxes without
    area dropped. Returns ``(boxes (k, 4) float64, scores (k,) float64 or None)``, k <= num_boxes. Shared by the
    dataset (face cache) and infer.py (MTCNN or the user's boxes)."""
    w, h = size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order], scores[order]
    boxes = np.clip(boxes, 0, [w, h, w, h])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep][:num_boxes], None if scores is None else scores[keep][:num_boxes]


def candidate_tensors(boxes, size, num_boxes, flipped=False):
    """Pixel xyxy boxes (k, 4), k <= num_boxes, of an image of ``size`` -> ``cand_boxes`` (num_boxes, 4) normalised
    cx,cy,w,h (mirrored when ``flipped``), zero-padded, and ``cand_mask`` (num_boxes,) bool."""
    out = torch.zeros(num_boxes, 4)
    out[:len(boxes)] = torch.from_numpy(boxes_to_cxcywh(boxes, size, flipped))
    mask = torch.zeros(num_boxes, dtype=torch.bool)
    mask[:len(boxes)] = True
    return out, mask


def text_inputs(tokenizer, text, word_mask, max_len, max_words):
    """The model's text inputs of one raw caption (shared by the dataset and infer.py).

    ``word_mask``: content-word flags of the uncapped normalised words (stop-word cache entry, or
    ``preprocess.stopword_masks.mask_entry``). Returns tensors ``input_ids``, ``attention_mask`` (L,),
    ``word_tokens`` (L,) bool (``word_token_mask``), ``content_mask`` (L,) float, ``word_index`` (L,) long
    (normalised word of every token, -1 at specials and padding), the normalised ``caption``, and the alignment:
    ``enc`` (``datasets.text.encode``), ``spans``, ``owner`` (``align_words``)."""
    caption, spans, owner = align_words(text, max_words)
    enc = encode(tokenizer, caption, max_len)
    word_mask = list(word_mask)[:len(spans)]
    attention_mask = torch.tensor(enc["attention_mask"], dtype=torch.long)
    return {
        "caption": caption, "enc": enc, "spans": spans, "owner": owner,
        "input_ids": torch.tensor(enc["input_ids"], dtype=torch.long),
        "attention_mask": attention_mask, "word_tokens": word_token_mask(attention_mask),
        "content_mask": torch.tensor(content_token_mask(enc, spans, word_mask), dtype=torch.float32),
        "word_index": torch.tensor(token_words(enc, spans, spans[-1][1] if spans else 0), dtype=torch.long),
    }


LIST_KEYS = ("id", "fake_cls", "caption")


def collate(samples):
    """List of sample dicts -> batch dict: tensors stacked on a new dim 0, lists for id/fake_cls/caption."""
    return {key: [s[key] for s in samples] if key in LIST_KEYS else torch.stack([s[key] for s in samples])
            for key in samples[0]}


def build_dataset(cfg, data, split, tokenizer, train=None):
    """``DGM4Dataset`` over the audited records of ``split`` in ``data`` (``datasets.audit.RunData``) with the sizes
    of ``cfg["data"]``; the training transform when ``train`` (default: ``split == "train"``)."""
    if split not in data.splits:
        raise ValueError(f"split {split!r} was not audited for this run (audited: {sorted(data.splits)})")
    d = cfg["data"]
    return DGM4Dataset(data.splits[split], data.root, data.faces, data.stopwords, tokenizer,
                       image_size=d["image_size"], max_len=d["max_len"], max_words=d["max_words"],
                       num_boxes=d["num_boxes"], train=split == "train" if train is None else train,
                       jpeg_draft=d["jpeg_draft"], augment_ops=d["augment_ops"])


def audited_dataset(cfg, split, tokenizer, train=None):
    """Audit ``split`` alone (``datasets.audit.audit_run``) and build its dataset (``train`` as in ``build_dataset``):
    for scripts and tests that read one split; the entry points audit all the splits of a run at once."""
    return build_dataset(cfg, audit_run(cfg, split_files(cfg, [split])), split, tokenizer, train=train)
