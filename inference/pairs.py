"""One image-caption pair of a user -> the model's inputs, built as ``datasets.dgm4`` builds a test sample.

``prepare_pair(predictor, image_path, text, boxes=None)`` -> ``SimpleNamespace`` with
    sample     the model inputs of one sample (docs/architecture.md "The batch", without labels): image (3,S,S),
               cand_boxes (n,4) normalised cx,cy,w,h zero-padded, cand_mask (n,), input_ids / attention_mask /
               word_tokens / content_mask / word_index (L,); ``datasets.dgm4.collate`` stacks several
    path, text, size (W, H) of the original image
    boxes      (k,4) candidate boxes in the image's own pixels (xyxy), k <= data.num_boxes, in the order given to
               the model; ``detector_scores`` (k,) MTCNN confidences or None; ``source`` "mtcnn" or "user";
               ``detected`` how many faces MTCNN found (only the data.num_boxes best are candidates)
    caption, spans, owner, word_mask   the normalised caption, its word spans, the raw word of every normalised
               word and the content-word flags (alignment for the per-word result)
    timings    {"read_ms", "detect_ms", "text_ms"}
Every step is the dataset's own function: ``read_image_sized`` with the dataset's JPEG draft size and the eval
transform (image); ``preprocess.detect_faces.detect`` with the face cache's MTCNN settings, then
``candidate_pixel_boxes`` / ``candidate_tensors`` (boxes); ``preprocess.stopword_masks.mask_entry`` with the
checkpoint's stop-word list and ``text_inputs`` (normalisation, tokenisation, content mask).
A pair that cannot be used raises ``utils.paths.BadInputError`` naming the reason (unreadable or non-image file,
empty caption, malformed boxes); nothing else is half-done.
"""
import numbers
import time
from types import SimpleNamespace

import numpy as np

from datasets.dgm4 import candidate_pixel_boxes, candidate_tensors, text_inputs
from datasets.records import RecordError, read_image, read_image_sized
from datasets.text import normalize_caption
from preprocess import detect_faces
from preprocess.stopword_masks import mask_entry
from utils.paths import BadInputError


def parse_boxes(spec):
    """``"x1,y1,x2,y2;x1,y1,x2,y2"`` (``--boxes``) -> list of [x1, y1, x2, y2] floats; BadInputError if malformed."""
    boxes = []
    for i, part in enumerate(p for p in spec.split(";") if p.strip()):
        try:
            boxes.append([float(v) for v in part.split(",")])
        except ValueError:
            raise BadInputError(f"--boxes: box {i + 1} {part.strip()!r} is not four numbers x1,y1,x2,y2") from None
    return check_boxes(boxes)


def check_boxes(boxes):
    """A list of [x1, y1, x2, y2] numbers with x1 < x2 and y1 < y2 (pixels), else BadInputError. An empty list
    means "no candidate face" (the model then gives no box, as for an image where MTCNN finds none)."""
    if not isinstance(boxes, (list, tuple)):
        raise BadInputError(f"boxes must be a list of [x1, y1, x2, y2] in pixels, got {boxes!r}")
    for i, box in enumerate(boxes):
        if not isinstance(box, (list, tuple)) or len(box) != 4 or \
                not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box):
            raise BadInputError(f"box {i + 1} {box!r} is not four numbers x1, y1, x2, y2")
        if not (box[0] < box[2] and box[1] < box[3]):
            raise BadInputError(f"box {i + 1} {list(box)} needs x1 < x2 and y1 < y2 (pixels, left top right bottom)")
    return [[float(v) for v in box] for box in boxes]


def _image_error(path, err):
    """The ``BadInputError`` of a ``RecordError`` from reading ``path``; a missing file is named with the rule of
    infer.py's paths (the dataset's message speaks of data.root, which has no part here)."""
    if err.reason == "missing_image":
        return BadInputError(f"image {path} does not exist (paths in a --pairs file are relative to that file; "
                             f"--image is relative to the working directory)")
    return BadInputError(err.message)


def _read(path, draft_size):
    """The image for the model (dataset's draft decode) and its original (W, H); BadInputError if unreadable."""
    try:
        return read_image_sized(path, None, draft_size)
    except RecordError as err:
        raise _image_error(path, err) from None


def _candidates(predictor, path, img, size, boxes):
    """(pixel boxes (k,4), detector scores or None, source, number found): MTCNN on the full image, or ``boxes``."""
    num_boxes = predictor.cfg["data"]["num_boxes"]
    if boxes is not None:
        if len(boxes) > num_boxes:
            raise BadInputError(f"{len(boxes)} boxes given; the model takes at most {num_boxes} (data.num_boxes)")
        kept, _ = candidate_pixel_boxes(boxes, None, size, num_boxes)
        if len(kept) != len(boxes):
            raise BadInputError(f"a given box has no area inside the {size[0]}x{size[1]} image: {boxes}")
        return kept, None, "user", len(boxes)
    if img.size != tuple(size):  # a JPEG decoded at reduced scale for the model: MTCNN gets the full image
        img = _read_full(path)
    found, scores = detect_faces.detect(np.asarray(img))
    kept, kept_scores = candidate_pixel_boxes(found, scores, size, num_boxes)
    return kept, kept_scores, "mtcnn", len(found)


def _read_full(path):
    """The image at full resolution (for MTCNN); BadInputError if unreadable."""
    try:
        return read_image(path)
    except RecordError as err:
        raise _image_error(path, err) from None


def check_caption(text):
    """``text`` if it is a caption the model can read, else BadInputError (empty, not a string, or only punctuation);
    infer.py checks ``--text`` with it before loading the checkpoint."""
    if not isinstance(text, str) or not text.strip():
        raise BadInputError(f"the caption is empty (or not a string): {text!r}")
    if not normalize_caption(text, None):
        raise BadInputError(f"the caption {text!r} is empty once normalised (only punctuation)")
    return text


def prepare_pair(predictor, image_path, text, boxes=None):
    """See the module docstring. ``boxes``: None (MTCNN) or a list of pixel xyxy boxes (``check_boxes``)."""
    check_caption(text)
    boxes = None if boxes is None else check_boxes(boxes)
    t0 = time.perf_counter()
    img, size = _read(image_path, predictor.draft_size)
    image, _ = predictor.transform(img)
    read_s = time.perf_counter() - t0
    if boxes is None:
        detect_faces.init_detector()  # once per process (the face cache's settings), outside the timings
    t1 = time.perf_counter()
    found, scores, source, detected = _candidates(predictor, image_path, img, size, boxes)
    t2 = time.perf_counter()
    d = predictor.cfg["data"]
    word_mask = mask_entry(text, predictor.stopwords)["mask"]
    txt = text_inputs(predictor.tokenizer, text, word_mask, d["max_len"], d["max_words"])
    cand_boxes, cand_mask = candidate_tensors(found, size, d["num_boxes"])
    sample = {"image": image, "cand_boxes": cand_boxes, "cand_mask": cand_mask,
              **{k: txt[k] for k in ("input_ids", "attention_mask", "word_tokens", "content_mask", "word_index")}}
    t3 = time.perf_counter()
    return SimpleNamespace(
        sample=sample, path=image_path, text=text, size=tuple(size), boxes=found, detector_scores=scores,
        source=source, detected=detected, caption=txt["caption"], spans=txt["spans"], owner=txt["owner"],
        word_mask=word_mask[:len(txt["spans"])],
        timings={"read_ms": 1e3 * read_s, "detect_ms": 1e3 * (t2 - t1), "text_ms": 1e3 * (t3 - t2)})
