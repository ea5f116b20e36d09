"""DGM4 metadata records: the ``fake_cls`` table, JSON loading, validation and image reading.

Data side of the DGM4 protocol (docs/protocol.md 1.2-1.3 and 1.5) for CIEC's weak labels (paper section 2.1: the
pair label y_m and the modality labels y_v, y_t come from ``fake_cls``; boxes and word positions are used only
for evaluation).

A metadata file is one UTF-8 JSON array of records ``{id, image, text, fake_cls, fake_image_box, fake_text_pos}``
(``mtcnn_boxes`` optional, unused). ``read_metadata`` reads the files (each record gets ``_file`` and ``_pos``, its
index in the array); ``check_record`` validates one record, its image path included (relative, inside the data
root); ``load_metadata`` (the preprocess scripts) does both, a bad record raising ``RecordError`` (names the record
id, its index and the metadata file) or, with ``on_bad="skip"``, being dropped and counted. Training and evaluation
validate through ``datasets.audit`` instead. ``read_image`` opens an image as PIL RGB, turning every decode failure
into ``RecordError``. ``RecordError`` is a ``utils.errors.BadInputError``: an entry point prints it as one line.
"""
import collections
import os

from PIL import Image

from datasets.caches import read_json_text
from datasets.text import normalize_caption
from utils.errors import BadInputError, MissingDataError

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


class RecordError(BadInputError):
    """A bad record. ``str(err)`` names the record id, its index in the metadata file (when known) and the file;
    ``reason`` is a short category ("bad_box", "missing_image", "duplicate_id", ...) that skip counts group by."""

    def __init__(self, record_id, file, message, reason="invalid", position=None):
        self.record_id, self.file, self.message, self.reason = record_id, file, message, reason
        self.position = position
        where = f" (index {position})" if position is not None else ""
        super().__init__(f"record id={record_id!r}{where} in {file}: {message}")


def record_error(rec, message, reason):
    """``RecordError`` for the loaded record ``rec`` (its id, ``_file`` and ``_pos``)."""
    rid = rec.get("id") if isinstance(rec, dict) else None
    file = rec.get("_file", "<no metadata file>") if isinstance(rec, dict) else "<no metadata file>"
    return RecordError(rid, file, message, reason, rec.get("_pos") if isinstance(rec, dict) else None)


def outside_root(image):
    """True when the image path ``image`` is absolute or climbs out of the data root with ``..`` (a lexical check:
    symbolic links inside the root are allowed)."""
    norm = os.path.normpath(image)
    return os.path.isabs(image) or norm == os.pardir or norm.startswith(os.pardir + os.sep)


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


def validate_record(rec, file, position=None):
    """Raise ``RecordError`` unless ``rec`` is a well-formed DGM4 record (see module docstring)."""
    rid = rec.get("id") if isinstance(rec, dict) else None

    def fail(message, reason):
        raise RecordError(rid, file, message, reason, position)

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
    if outside_root(rec["image"]):
        fail(f"image path {rec['image']!r} is outside the data root (absolute, or climbing out with '..'; image "
             f"paths are relative to data.root)", "outside_data_root")


def check_record(rec):
    """``validate_record`` for a record loaded by ``read_metadata`` (its ``_file`` and ``_pos`` name it)."""
    validate_record(rec["_value"] if "_value" in rec else rec, rec["_file"], rec["_pos"])


def _read_json_array(path):
    if not os.path.exists(path):
        raise MissingDataError(f"metadata file {path} does not exist (data.root and the *_files keys are "
                               f"joined; image paths inside are relative to data.root)")
    data = read_json_text(path, "metadata file")
    if not isinstance(data, list):
        raise BadInputError(f"metadata file {path} must hold a JSON array of records, got {type(data).__name__}")
    return data


def read_metadata(root, files):
    """The raw records of the metadata files ``files`` (relative to ``root``), in file order, NOT validated. A
    record that is a JSON object gets ``_file`` (its metadata path) and ``_pos`` (its index in the array); any
    other value is wrapped as ``{"_file", "_pos", "_value"}`` so that ``check_record`` reports it."""
    records = []
    for name in [files] if isinstance(files, str) else files:
        path = os.path.join(root, name)
        for pos, rec in enumerate(_read_json_array(path)):
            records.append(dict(rec, _file=path, _pos=pos) if isinstance(rec, dict)
                           else {"_file": path, "_pos": pos, "_value": rec})
    return records


def load_metadata(root, files, on_bad="fail"):
    """Read and validate one or more metadata JSON arrays (paths relative to ``root``; the preprocess scripts).

    Returns ``(records, skipped)``: records (dicts, each with ``_file`` = its metadata path and ``_pos``) in file
    order, and a ``collections.Counter`` of skipped records by reason (empty with ``on_bad="fail"``, which raises
    instead). Prints one line per file and one line with the class mix.
    """
    if on_bad not in ("fail", "skip"):
        raise ValueError(f"on_bad must be 'fail' or 'skip', got {on_bad!r}")
    if isinstance(files, str):
        files = [files]
    records, skipped = [], collections.Counter()
    for name in files:
        path = os.path.join(root, name)
        kept, bad = 0, collections.Counter()
        for rec in read_metadata(root, [name]):
            try:
                check_record(rec)
            except RecordError as err:
                if on_bad == "fail":
                    raise
                bad[err.reason] += 1
                continue
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


def image_error(path, err):
    """``(reason, message)`` of an exception raised while opening or decoding the image ``path``."""
    if isinstance(err, FileNotFoundError):
        return "missing_image", (f"image {path} does not exist (image paths are relative to data.root; check it, "
                                 f"and that the archives were extracted at the root)")
    return "bad_image", f"cannot read image {path}: {type(err).__name__}: {err}"


IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open_error(record, path, err):
    reason, message = image_error(path, err)
    return record_error(record or {}, message, reason)


def open_image(path, record=None):
    """Open lazily (header only) and return the PIL image; errors -> ``RecordError``."""
    try:
        return Image.open(path)
    except IMAGE_ERRORS as err:
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
    except IMAGE_ERRORS as err:
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
        raise record_error(record, f"fake_image_box {box} lies outside the {w}x{h} image {record.get('image')!r} "
                           f"(tolerance {tolerance:g} of the size)", "box_outside_image")
