"""DGM4 metadata records: the ``fake_cls`` table, JSON loading, validation and image reading.

Data side of the DGM4 protocol (dgm4_protocol.md 1.2-1.3, 7.9) for CIEC's weak labels (paper section 2.1: the
pair label y_m and the modality labels y_v, y_t come from ``fake_cls``; boxes and word positions are used only
for evaluation).

A metadata file is one JSON array of records ``{id, image, text, fake_cls, fake_image_box, fake_text_pos}``
(``mtcnn_boxes`` optional, unused). ``load_metadata`` validates every record; a bad record raises
``RecordError`` (names the record id and the metadata file) or, with ``on_bad="skip"``, is dropped and counted.
``read_image`` opens an image as PIL RGB, turning every decode failure into ``RecordError``.
"""
import collections
import json
import os

from PIL import Image

from datasets.text import normalize_caption

# fake_cls -> [FS, FA, TS, TA]
FAKE_CLS = {
    "orig": (0, 0, 0, 0),
    "face_swap": (1, 0, 0, 0),
    "face_attribute": (0, 1, 0, 0),
    "text_swap": (0, 0, 1, 0),
    "text_attribute": (0, 0, 0, 1),
    "face_swap&text_swap": (1, 0, 1, 0),
    "face_swap&text_attribute": (1, 0, 0, 1),
    "face_attribute&text_swap": (0, 1, 1, 0),
    "face_attribute&text_attribute": (0, 1, 0, 1),
}
REQUIRED_FIELDS = ("id", "image", "text", "fake_cls", "fake_image_box", "fake_text_pos")


class RecordError(ValueError):
    """A bad record. ``str(err)`` names the record id and the metadata file; ``reason`` is a short category."""

    def __init__(self, record_id, file, message, reason="invalid"):
        self.record_id, self.file, self.message, self.reason = record_id, file, message, reason
        super().__init__(f"record id={record_id!r} in {file}: {message}")


def has_image_fake(fake_cls):
    return any(FAKE_CLS[fake_cls][:2])


def has_text_fake(fake_cls):
    return any(FAKE_CLS[fake_cls][2:])


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_box(rec, fail):
    box = rec["fake_image_box"]
    if not isinstance(box, list):
        fail(f"fake_image_box must be a list, got {box!r}", "bad_box")
    if not has_image_fake(rec["fake_cls"]):
        if box:
            fail(f"fake_image_box {box} given for fake_cls {rec['fake_cls']!r} (no image manipulation)", "bad_box")
        return
    if len(box) != 4 or not all(_is_number(v) for v in box):
        fail(f"fake_image_box must be 4 numbers [x1,y1,x2,y2] for {rec['fake_cls']!r}, got {box!r}", "bad_box")
    if not (box[0] < box[2] and box[1] < box[3]):
        fail(f"fake_image_box {box} needs x1<x2 and y1<y2", "bad_box")


def _check_text_pos(rec, fail):
    pos = rec["fake_text_pos"]
    if not isinstance(pos, list):
        fail(f"fake_text_pos must be a list, got {pos!r}", "bad_text_pos")
    if not has_text_fake(rec["fake_cls"]):
        if pos:
            fail(f"fake_text_pos {pos} given for fake_cls {rec['fake_cls']!r} (no text manipulation)",
                 "bad_text_pos")
        return
    n_words = len(rec["text"].split(" "))
    if not pos:
        fail(f"fake_text_pos is empty for {rec['fake_cls']!r}", "bad_text_pos")
    bad = [p for p in pos if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < n_words]
    if bad:
        fail(f"fake_text_pos {bad} out of range for a caption of {n_words} space-separated words",
             "bad_text_pos")


def validate_record(rec, file):
    """Raise ``RecordError`` unless ``rec`` is a well-formed DGM4 record (see module docstring)."""
    rid = rec.get("id") if isinstance(rec, dict) else None

    def fail(message, reason):
        raise RecordError(rid, file, message, reason)

    if not isinstance(rec, dict):
        fail(f"record must be a JSON object, got {type(rec).__name__}", "missing_field")
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if missing:
        fail(f"missing field(s) {missing}", "missing_field")
    if not isinstance(rid, (int, str)) or isinstance(rid, bool):
        fail(f"id must be an int or str, got {rid!r}", "missing_field")
    if not isinstance(rec["image"], str) or not rec["image"]:
        fail(f"image must be a non-empty path, got {rec['image']!r}", "missing_field")
    if not isinstance(rec["fake_cls"], str) or rec["fake_cls"] not in FAKE_CLS:
        fail(f"unknown fake_cls {rec['fake_cls']!r} (known: {sorted(FAKE_CLS)})", "unknown_fake_cls")
    if not isinstance(rec["text"], str) or not rec["text"].strip():
        fail("caption (text) is empty", "empty_caption")
    if not normalize_caption(rec["text"], None):
        fail(f"caption {rec['text']!r} is empty after normalisation", "empty_caption")
    _check_box(rec, fail)
    _check_text_pos(rec, fail)


def _read_json_array(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"metadata file {path} does not exist (data.root and the *_files keys are "
                                f"joined; image paths inside are relative to data.root)")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"metadata file {path} is not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"metadata file {path} must hold a JSON array of records, got {type(data).__name__}")
    return data


def load_metadata(root, files, on_bad="fail"):
    """Read and validate one or more metadata JSON arrays (paths relative to ``root``).

    Returns ``(records, skipped)``: records (dicts, each with ``_file`` = its metadata path) in file order, and a
    ``collections.Counter`` of skipped records by reason (empty with ``on_bad="fail"``, which raises instead).
    Prints one line per file and one line with the class mix.
    """
    if on_bad not in ("fail", "skip"):
        raise ValueError(f"on_bad must be 'fail' or 'skip', got {on_bad!r}")
    if isinstance(files, str):
        files = [files]
    records, skipped = [], collections.Counter()
    for name in files:
        path = os.path.join(root, name)
        kept, bad = 0, collections.Counter()
        for rec in _read_json_array(path):
            try:
                validate_record(rec, path)
            except RecordError as err:
                if on_bad == "fail":
                    raise
                bad[err.reason] += 1
                continue
            rec["_file"] = path
            records.append(rec)
            kept += 1
        skipped.update(bad)
        extra = f", skipped {sum(bad.values())} {dict(bad)}" if bad else ""
        print(f"[data] {path}: {kept} records{extra}", flush=True)
    print(f"[data] class mix: {format_class_mix(records)}", flush=True)
    return records, skipped


def format_class_mix(records):
    counts = collections.Counter(r["fake_cls"] for r in records)
    n = max(len(records), 1)
    return f"{len(records)} total; " + ", ".join(
        f"{k} {counts[k]} ({100.0 * counts[k] / n:.1f}%)" for k in FAKE_CLS if counts[k])


def _open_error(record, path, err):
    rid = record.get("id") if record else None
    file = record.get("_file", "<no metadata file>") if record else "<no metadata file>"
    reason = "missing_image" if isinstance(err, FileNotFoundError) else "bad_image"
    return RecordError(rid, file, f"cannot read image {path}: {type(err).__name__}: {err}", reason)


def open_image(path, record=None):
    """Open lazily (header only) and return the PIL image; errors -> ``RecordError``."""
    try:
        return Image.open(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _open_error(record, path, err) from None


def read_image_sized(path, record=None, draft_size=None):
    """Decode ``path`` to PIL RGB; return ``(image, (W, H))`` with the ORIGINAL size.

    ``draft_size=(w, h)``: JPEG draft mode (libjpeg DCT scaling by 1/2, 1/4 or 1/8, chosen by PIL so that the
    decoded image stays at least ``w x h``). Much faster on large photos; the returned image is then smaller than
    (W, H), which is why the original size is returned too. Grayscale, CMYK, palette, RGBA and PNG content in a
    ``.jpg`` are converted to RGB. Missing, unreadable, truncated or corrupt files raise ``RecordError``.
    """
    img = open_image(path, record)
    try:
        size = img.size
        if draft_size is not None and img.format == "JPEG":
            img.draft(img.mode, draft_size)
        img.load()
        return _to_rgb(img), size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _open_error(record, path, err) from None


def _to_rgb(img):
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high bit-depth grayscale: rescale to 8 bit
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def read_image(path, record=None):
    """PIL RGB image of ``path`` (full resolution); errors -> ``RecordError`` naming id and file."""
    return read_image_sized(path, record)[0]


def check_box_in_image(record, size, tolerance=0.0):
    """Raise ``RecordError`` if ``fake_image_box`` leaves the (W, H) image by more than ``tolerance`` * W or H."""
    box = record.get("fake_image_box") or []
    if not box:
        return
    w, h = size
    tx, ty = tolerance * w, tolerance * h
    if box[0] < -tx or box[1] < -ty or box[2] > w + tx or box[3] > h + ty:
        raise RecordError(record.get("id"), record.get("_file", "<no metadata file>"),
                          f"fake_image_box {box} lies outside the {w}x{h} image "
                          f"(tolerance {tolerance:g} of the size)", "box_outside_image")
