"""DGM4 dataset for CIEC: one weakly labelled image-caption pair per item (paper sections 2.1 and 3.2).

``DGM4Dataset[i]`` returns the per-sample dict of docs/architecture.md ("The batch"), before batching:
image (3,S,S); y_m, y_v, y_t scalars and multi_label (4,) from ``fake_cls`` (the only training labels of the
weakly supervised model); gt_box (4,) and token_label / token_label_clean (L,) for evaluation only;
cand_boxes (n,4) + cand_mask (n,) from the face cache (the candidate set C of section 2.3.2);
input_ids / attention_mask (L,); content_mask (L,) = M_c of eqs. 13, 15, 21 from the stop-word cache; orig_size (2,).
``collate`` stacks them into the batch dict (B, ...), keeping lists for id, fake_cls and caption.
``candidate_pixel_boxes`` / ``candidate_tensors`` (candidate boxes) and ``text_inputs`` (caption -> token inputs and
word alignment) build those inputs from a face list and a raw caption; infer.py builds its pairs with the same three.

Bad inputs. ``on_bad="fail"``: the first bad record raises ``RecordError`` (names id and metadata file): at load
for metadata and cache problems and for a wrong folder layout (``check_layout``: one image per top folder must
exist), in ``__getitem__`` for other image problems. ``on_bad="skip"``: metadata and cache
problems are dropped at load and counted in ``self.skipped``; image problems (missing, corrupt, truncated file,
box outside the image, stale face-cache size) are found by ``check_images()``, a pre-pass run at construction
when ``check_images`` is true (default), which decodes every image once (JPEG draft at 1/8 scale, threads) and
drops the bad ones, so ``__getitem__`` never has to substitute samples (which would corrupt evaluation).
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from datasets.records import (FAKE_CLS, RecordError, check_box_in_image, load_metadata, open_image,
                              read_image_sized)
from datasets.text import (STOPWORD_SOURCE, align_words, benchmark_token_labels, clean_token_labels,
                           content_token_mask, encode, load_stopwords, load_tokenizer, normalize_caption, token_words)
from datasets.transforms import boxes_to_cxcywh, build_transform
from preprocess.cache_io import load_cache


class DGM4Dataset(Dataset):
    def __init__(self, root, files, tokenizer, face_cache, stopword_cache, image_size=256, max_len=50,
                 max_words=50, num_boxes=5, train=False, on_bad="fail", box_tolerance=0.05, jpeg_draft=True,
                 check_images=True, stopword_source=None):
        self.root, self.image_size, self.max_len, self.max_words = root, image_size, max_len, max_words
        self.num_boxes, self.train, self.on_bad, self.box_tolerance = num_boxes, train, on_bad, box_tolerance
        self.draft_size = (2 * image_size, 2 * image_size) if jpeg_draft else None
        self.tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.transform = build_transform(image_size, train)
        records, self.skipped = load_metadata(root, files, on_bad)
        for path in (face_cache, stopword_cache):
            if not os.path.exists(path):
                raise FileNotFoundError(f"cache file {path} does not exist (build it with preprocess/"
                                        f"detect_faces.py and preprocess/stopword_masks.py)")
        _, self.faces, self.face_errors = load_cache(face_cache, "faces")
        header, self.stopwords, _ = load_cache(stopword_cache, "stopwords")
        made_with = header.get("stopword_source", STOPWORD_SOURCE)
        if stopword_source is not None and made_with != stopword_source:
            raise ValueError(f"stop-word cache {stopword_cache} was made with the list '{made_with}', the config's "
                             f"data.stopwords gives '{stopword_source}': rebuild it with preprocess/stopword_masks.py")
        self.face_cache_path, self.stopword_cache_path = face_cache, stopword_cache
        self.records = self._keep(records, map(_catch(self._check_caches), records))
        if on_bad == "skip" and check_images:
            self.check_images()
        elif on_bad == "fail":
            self.check_layout()
        if on_bad == "skip":
            print(f"[data] {len(self.records)} usable records; skipped {sum(self.skipped.values())} "
                  f"{dict(self.skipped)}", flush=True)

    def __len__(self):
        return len(self.records)

    def _keep(self, records, errors):
        """Records whose error (RecordError or None, in order) is None; the first error raises under
        ``on_bad="fail"``, errors are counted in ``self.skipped`` under ``"skip"``."""
        kept = []
        for rec, err in zip(records, errors):
            if err is None:
                kept.append(rec)
            elif self.on_bad == "fail":
                raise err
            else:
                self.skipped[err.reason] += 1
        return kept

    def _check_caches(self, rec):
        """Face and stop-word cache entries exist and fit the record (detectable without the image)."""
        face = self.faces.get(rec["image"])
        if face is None:
            why = self.face_errors.get(rec["image"], "run preprocess/detect_faces.py")
            raise RecordError(rec["id"], rec["_file"], f"no entry for image {rec['image']!r} in face cache "
                              f"{self.face_cache_path} ({why})", "no_cache_entry")
        boxes, scores, size = face.get("boxes"), face.get("scores"), face.get("size")
        if (not isinstance(boxes, list) or not isinstance(scores, list) or len(boxes) != len(scores)
                or any(len(b) != 4 for b in boxes) or not isinstance(size, list) or len(size) != 2):
            raise RecordError(rec["id"], rec["_file"], f"malformed face-cache entry for {rec['image']!r} in "
                              f"{self.face_cache_path}: {face!r}", "bad_cache_entry")
        entry = self.stopwords.get(str(rec["id"]))
        if entry is None:
            raise RecordError(rec["id"], rec["_file"], f"no entry in stop-word cache {self.stopword_cache_path} "
                              f"(run preprocess/stopword_masks.py)", "no_cache_entry")
        n_words = len(normalize_caption(rec["text"], None).split(" "))
        if len(entry.get("mask", ())) != n_words or entry.get("n_words") != n_words:
            raise RecordError(rec["id"], rec["_file"], f"stop-word mask has {len(entry.get('mask', ()))} "
                              f"entries but the normalised caption has {n_words} words (stale cache "
                              f"{self.stopword_cache_path}?)", "stopword_mismatch")

    def _check_size(self, rec, size):
        """Checks that need the image size: box inside the image, face cache computed on this image."""
        check_box_in_image(rec, size, self.box_tolerance)
        cached = tuple(self.faces[rec["image"]]["size"])
        if cached != tuple(size):
            raise RecordError(rec["id"], rec["_file"], f"face cache {self.face_cache_path} has size {cached} "
                              f"for {rec['image']!r} but the image is {tuple(size)}", "stale_face_cache")

    def check_layout(self):
        """Fail fast on a wrong folder layout (DGM4 issue #37): the first image of every top folder
        (first 3 folder components, e.g. ``DGM4/manipulation/infoswap``) must exist under ``root``."""
        first = {}
        for rec in self.records:
            first.setdefault(tuple(os.path.dirname(rec["image"]).split("/")[:3]), rec)
        for rec in first.values():
            path = os.path.join(self.root, rec["image"])
            if not os.path.exists(path):
                raise RecordError(rec["id"], rec["_file"], f"image {path} does not exist: check data.root and "
                                  f"that archives were extracted at the root (paths are used verbatim)",
                                  "missing_image")

    def _check_image(self, rec):
        path = os.path.join(self.root, rec["image"])
        img = open_image(path, rec)
        self._check_size(rec, img.size)
        read_image_sized(path, rec, draft_size=(32, 32))  # full decode (DCT-scaled): catches truncation

    def check_images(self, num_threads=8):
        """Decode every image once; drop bad records (skip) or raise the first error (fail). Returns skipped."""
        with ThreadPoolExecutor(num_threads) as pool:
            errors = tqdm(pool.map(_catch(self._check_image), self.records), total=len(self.records),
                          desc="checking images", disable=len(self.records) < 1000)
            self.records = self._keep(self.records, errors)
        return self.skipped

    def __getitem__(self, index):
        rec = self.records[index]
        img, size = read_image_sized(os.path.join(self.root, rec["image"]), rec, self.draft_size)
        self._check_size(rec, size)
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
    ``content_mask`` (L,) float, ``word_index`` (L,) long (normalised word of every token, -1 at specials and
    padding), the normalised ``caption``, and the alignment: ``enc`` (``datasets.text.encode``), ``spans``,
    ``owner`` (``align_words``)."""
    caption, spans, owner = align_words(text, max_words)
    enc = encode(tokenizer, caption, max_len)
    word_mask = list(word_mask)[:len(spans)]
    return {
        "caption": caption, "enc": enc, "spans": spans, "owner": owner,
        "input_ids": torch.tensor(enc["input_ids"], dtype=torch.long),
        "attention_mask": torch.tensor(enc["attention_mask"], dtype=torch.long),
        "content_mask": torch.tensor(content_token_mask(enc, spans, word_mask), dtype=torch.float32),
        "word_index": torch.tensor(token_words(enc, spans, spans[-1][1] if spans else 0), dtype=torch.long),
    }


def _catch(check):
    """Wrap ``check(rec)`` so it returns the RecordError (or None) instead of raising."""
    def run(rec):
        try:
            check(rec)
        except RecordError as err:
            return err
        return None
    return run


LIST_KEYS = ("id", "fake_cls", "caption")


def collate(samples):
    """List of sample dicts -> batch dict: tensors stacked on a new dim 0, lists for id/fake_cls/caption."""
    return {key: [s[key] for s in samples] if key in LIST_KEYS else torch.stack([s[key] for s in samples])
            for key in samples[0]}


def build_dataset(cfg, split, files=None):
    """``DGM4Dataset`` for ``split`` in train/val/test from ``cfg["data"]`` (train transform only for train);
    ``files`` (relative to ``data.root``) replaces ``data.<split>_files`` (pretrain.py's corpus)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    d = cfg["data"]
    return DGM4Dataset(
        d["root"], d[f"{split}_files"] if files is None else files, d["tokenizer"], os.path.join(d["root"], d["face_cache"]),
        os.path.join(d["root"], d["stopword_cache"]), image_size=d["image_size"], max_len=d["max_len"],
        max_words=d["max_words"], num_boxes=d["num_boxes"], train=split == "train", on_bad=d["on_bad_record"],
        box_tolerance=d["box_tolerance"], jpeg_draft=d["jpeg_draft"], check_images=d["check_images"],
        stopword_source=load_stopwords(d["stopwords"])[1])
