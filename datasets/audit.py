"""The up-front data audit: every record of every split a run reads is checked once, before the model is built.

``audit_run(cfg, splits, references)`` is what the entry points call (train.py: train + val, test.py: its split,
pretrain.py: its corpus). test.py also passes ``references`` (``reference_files``): the config's train and val
metadata files that exist, read as records only (no record, cache or image check) so that an id of the evaluated split
that is also in train or val is a ``duplicate_id``; a missing train or val file is no error there. Every rank reads
the metadata and the two caches (``load_run_data``, paths from ``utils.paths.data_paths``; a file that is missing, not
UTF-8 or not JSON is a ``UserError`` naming it, and the line); rank 0 then audits (``audit_records``) while the other
ranks wait, and sends them the verdict over a gloo group with a long timeout (a first full audit of DGM4 may take
minutes; NCCL's watchdog would kill waiting ranks after 10). Per record, the first failing check gives its reason:

- the record is well formed (``datasets.records.validate_record``: fields, fake_cls, box, word positions) and its
  image path stays inside ``data.root`` (reason ``outside_data_root``);
- its id is unique within and across the run's splits and the reference records (``duplicate_id``, naming both
  records: file and index);
- the face cache holds a well-formed entry for its image and the stop-word cache an entry for its id whose mask
  matches the normalised caption: its word count and, where the entry stores one, its ``caption_hash``
  (``no_cache_entry``, ``bad_cache_entry``, ``stopword_mismatch``);
- its image decodes fully (``missing_image``, ``bad_image``; ``datasets.image_check``, in threads, cached by path,
  size and mtime in ``<train.output_dir>/audit_cache.json``), its box lies inside the decoded image
  (``box_outside_image``, within ``data.box_tolerance``) and the face cache was made on an image of that size
  (``stale_face_cache``).

``data.on_bad_record: fail`` stops with one ``BadRecordsError`` line listing the first bad records (file, index,
id, reason) and how many there are; ``skip`` leaves them out and says how many per reason. One summary line is
printed (rank 0) in any case. The returned ``RunData`` holds the usable records per split and the caches, which
``datasets.dgm4.build_dataset`` turns into datasets without checking anything again.
"""
import collections
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch.distributed as tdist

from datasets.caches import load_cache
from datasets.image_check import check_images
from datasets.records import RecordError, check_box_in_image, check_record, read_metadata, record_error
from datasets.text import STOPWORD_SOURCE, caption_digest, load_stopwords, normalize_caption, other_caption_hash
from utils.errors import BadInputError, MissingDataError, UserError
from utils.paths import data_paths

SHOWN = 5  # bad records listed in a failure message
AUDIT_CACHE = "audit_cache.json"


class BadRecordsError(BadInputError):
    """The audit found bad records under ``data.on_bad_record: fail`` (or left a split empty under ``skip``)."""


@dataclass
class RunData:
    """The records of a run per split (loaded with ``_file``/``_pos``) and the two caches they are read with;
    ``references``: ``{split: records}`` read for the cross-split id check only (test.py's train and val)."""
    root: str
    splits: dict
    faces: dict
    face_errors: dict
    stopwords: dict
    face_cache: str
    stopword_cache: str
    references: dict = field(default_factory=dict)


def split_files(cfg, names):
    """``{split: data.<split>_files}`` for the split names ``names`` (``utils.paths.data_paths``)."""
    metadata = data_paths(cfg)["metadata"]
    return {name: list(metadata[name]) for name in names}


def reference_files(cfg, split, names=("train", "val")):
    """test.py's reference metadata for the cross-split id check of ``split``: ``{name: files}`` of the splits
    ``names`` other than ``split``, keeping the files that exist and are not among ``split``'s own files (a file
    compared with itself would flag every record); splits without such a file are left out."""
    paths = data_paths(cfg)
    own = set(paths["metadata"][split])
    found = {name: [f for f in paths["metadata"][name] if f not in own and
                    os.path.isfile(os.path.join(paths["root"], f))] for name in names if name != split}
    return {name: files for name, files in found.items() if files}


def load_run_data(cfg, splits, references=None):
    """Read the metadata of ``splits`` and ``references`` ({name: files relative to data.root}) and both caches;
    not validated. Of the reference records only those with an ``id`` are kept."""
    paths = data_paths(cfg)
    face_path, stop_path = paths["face_cache"], paths["stopword_cache"]
    for path, script in ((face_path, "detect_faces.py"), (stop_path, "stopword_masks.py")):
        if not os.path.exists(path):
            raise MissingDataError(f"cache file {path} not found: make it with `python preprocess/{script}`")
    header, stopwords, _ = load_cache(stop_path, "stopwords")
    made_with, wanted = header.get("stopword_source", STOPWORD_SOURCE), load_stopwords(cfg["data"]["stopwords"])[1]
    if made_with != wanted:
        raise BadInputError(f"stop-word cache {stop_path} was made with the list '{made_with}', the config's "
                            f"data.stopwords gives '{wanted}': rebuild it with preprocess/stopword_masks.py")
    _, faces, face_errors = load_cache(face_path, "faces")
    records = {name: read_metadata(paths["root"], files) for name, files in splits.items()}
    refs = {name: [r for r in read_metadata(paths["root"], files) if "id" in r]
            for name, files in (references or {}).items()}
    return RunData(paths["root"], records, faces, face_errors, stopwords, face_path, stop_path, refs)


def _checked(check, rec):
    """``check(rec)`` -> None, or the ``RecordError`` it raised."""
    try:
        check(rec)
    except RecordError as err:
        return err
    return None


def duplicate_errors(items):
    """``{key: RecordError}`` for every record (``items``: (key, record) in run order) whose id an earlier record
    already has; the message names both records (file and index). Ids compare as strings (the stop-word key)."""
    first, errors = {}, {}
    for key, rec in items:
        rid = str(rec["id"])
        if rid in first:
            other = first[rid]
            errors[key] = record_error(rec, f"duplicate id: the record at index {other['_pos']} of {other['_file']} "
                                       f"has the same id (ids must be unique within and across the splits of a "
                                       f"run)", "duplicate_id")
        else:
            first[rid] = rec
    return errors


def cache_error(data, rec):
    """The face-cache and stop-word-cache checks of ``rec`` that need no image (None when fine)."""
    face = data.faces.get(rec["image"])
    if face is None:
        why = data.face_errors.get(rec["image"], "run preprocess/detect_faces.py")
        return record_error(rec, f"no entry for image {rec['image']!r} in face cache {data.face_cache} ({why})",
                            "no_cache_entry")
    boxes, scores, size = face.get("boxes"), face.get("scores"), face.get("size")
    if (not isinstance(boxes, list) or not isinstance(scores, list) or len(boxes) != len(scores)
            or any(not isinstance(b, list) or len(b) != 4 for b in boxes) or not isinstance(size, list)
            or len(size) != 2):
        return record_error(rec, f"malformed face-cache entry for {rec['image']!r} in {data.face_cache}: "
                            f"{face!r}", "bad_cache_entry")
    return stopword_error(data, rec)


def stopword_error(data, rec):
    """The stop-word-cache check of ``rec``: an entry for its id whose mask has one value per word of the
    normalised caption and, when the entry stores a ``caption_hash`` (caches made before it do not), whose hash is
    the caption's (a mask of another caption with the same word count is caught). None when fine."""
    entry = data.stopwords.get(str(rec["id"]))
    if not isinstance(entry, dict):
        return record_error(rec, f"no entry in stop-word cache {data.stopword_cache} (run "
                            f"preprocess/stopword_masks.py)", "no_cache_entry")
    n_words = len(normalize_caption(rec["text"], None).split(" "))
    mask = entry.get("mask")
    if not isinstance(mask, list) or len(mask) != n_words or entry.get("n_words") != n_words:
        return record_error(rec, f"the stop-word entry does not match the caption: its mask has "
                            f"{len(mask) if isinstance(mask, list) else mask!r} entries but the normalised "
                            f"caption has {n_words} words (cache {data.stopword_cache} made from other metadata? "
                            f"rebuild it with preprocess/stopword_masks.py)", "stopword_mismatch")
    stored = other_caption_hash(entry, rec["text"])
    if stored is not None:
        return record_error(rec, f"the stop-word entry was made from another caption (caption hash "
                            f"{stored!r}, this caption's {caption_digest(rec['text'])!r}; cache "
                            f"{data.stopword_cache} made from other metadata? rerun preprocess/stopword_masks.py, "
                            f"which makes such entries again)", "stopword_mismatch")
    return None


def image_record_error(data, rec, result, box_tolerance):
    """The checks of ``rec`` against its decoded image (``result`` of ``datasets.image_check``)."""
    if "size" not in result:
        return record_error(rec, result["error"], result["reason"])
    size = tuple(result["size"])
    err = _checked(lambda r: check_box_in_image(r, size, box_tolerance), rec)
    cached = tuple(data.faces[rec["image"]]["size"])
    if err is None and cached != size:
        err = record_error(rec, f"face cache {data.face_cache} has size {cached} for {rec['image']!r} but the image "
                           f"is {size} (stale cache: rebuild it with preprocess/detect_faces.py)", "stale_face_cache")
    return err


def audit_records(data, box_tolerance=0.05, cache_path=None, full_decode=True):
    """Check every record of ``data`` (module docstring). Returns ``(errors, stats)``: ``{(split, index in split):
    RecordError}`` in run order (the first failing check of each bad record) and counts for the summary line."""
    start = time.perf_counter()
    items = [((name, i), rec) for name, recs in data.splits.items() for i, rec in enumerate(recs)]
    refs = [(("reference", name, i), rec) for name, recs in data.references.items() for i, rec in enumerate(recs)]
    errors = {key: err for key, rec in items if (err := _checked(check_record, rec)) is not None}
    dups = duplicate_errors(refs + [(k, r) for k, r in items if k not in errors])  # references first: never blamed
    errors.update({key: err for key, err in dups.items() if key[0] != "reference"})
    errors.update({key: err for key, rec in items if key not in errors and (err := cache_error(data, rec))})
    paths = {k: os.path.join(data.root, r["image"]) for k, r in items if k not in errors}
    results, decoded, cached = check_images(paths.values(), cache_path, full_decode)
    for key, rec in items:
        if key in paths:
            err = image_record_error(data, rec, results[paths[key]], box_tolerance)
            if err is not None:
                errors[key] = err
    stats = {"splits": {name: len(recs) for name, recs in data.splits.items()}, "records": len(items),
             "images": len(results), "decoded": decoded, "cached": cached, "full": full_decode,
             "seconds": time.perf_counter() - start}
    return {k: errors[k] for k, _ in items if k in errors}, stats


def reason_counts(errors):
    counts = collections.Counter(err.reason for err in errors.values())
    return ", ".join(f"{reason} {n}" for reason, n in counts.most_common())


def summary_line(errors, stats):
    """The one line an audit prints."""
    splits = ", ".join(f"{name} {n}" for name, n in stats["splits"].items())
    how = "decoded" if stats["full"] else "headers read (data.check_images: false)"
    line = (f"[audit] {stats['records']} records ({splits}), {stats['images']} images ({stats['decoded']} {how}, "
            f"{stats['cached']} unchanged since the last audit) in {stats['seconds']:.1f} s: ")
    if not errors:
        return line + "all usable"
    return line + f"{len(errors)} left out (data.on_bad_record: skip): {reason_counts(errors)}"


def failure_message(errors):
    """One line: how many bad records, per reason, and the first ``SHOWN`` of them (file, index, id, reason)."""
    shown = "; ".join(f"[{err.reason}] {err}" for err in list(errors.values())[:SHOWN])
    more = f"; ... and {len(errors) - SHOWN} more" if len(errors) > SHOWN else ""
    text = (f"the data audit found {len(errors)} bad record(s) ({reason_counts(errors)}): {shown}{more}. Fix or "
            f"remove them, or set data.on_bad_record=skip to leave them out")
    return " ".join(text.split("\n"))


def verdict(data, cfg, cache_path):
    """Rank 0's audit, as a picklable dict for the other ranks: ``{"drop": [keys], "line": summary}`` or
    ``{"error": message}``."""
    d = cfg["data"]
    try:
        errors, stats = audit_records(data, d["box_tolerance"], cache_path, d["check_images"])
        if errors and d["on_bad_record"] == "fail":
            raise BadRecordsError(failure_message(errors))
        for name, recs in data.splits.items():
            if recs and all((name, i) in errors for i in range(len(recs))):
                own = {k: e for k, e in errors.items() if k[0] == name}
                raise BadRecordsError(f"no usable record left in split {name!r} ({len(recs)} bad: "
                                      f"{reason_counts(own)}); the first: {own[(name, 0)]}")
    except UserError as err:
        return {"error": str(err), "type": type(err).__name__}
    return {"drop": list(errors), "line": summary_line(errors, stats)}


def _audit_group():
    """A gloo group for the verdict (None in a single process): the waiting ranks may wait long."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return None
    return tdist.new_group(backend="gloo", timeout=timedelta(hours=12))


def _share(message, group):
    """Rank 0's ``message`` on every rank (itself in a single process)."""
    if group is None:
        return message
    box = [message]
    tdist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def audit_run(cfg, splits, references=None):
    """Audit the records of ``splits`` ({name: metadata files}, e.g. ``split_files(cfg, ["train", "val"])``) once:
    rank 0 checks, every rank gets the same usable records. ``references`` ({name: files}, test.py:
    ``reference_files``) are read for the cross-split id check only. Returns ``RunData`` without the bad records;
    raises ``BadRecordsError`` (every rank) when the audit refuses the data. The image cache is
    ``<train.output_dir>/audit_cache.json``."""
    data = load_run_data(cfg, splits, references)
    group = _audit_group()
    rank0 = group is None or tdist.get_rank() == 0
    try:
        result = verdict(data, cfg, os.path.join(cfg["train"]["output_dir"], AUDIT_CACHE)) if rank0 else None
    except Exception:
        _share({"error": "the data audit failed on rank 0 (its traceback is above)", "crash": True}, group)
        raise
    result = _share(result, group)
    if group is not None:
        tdist.destroy_process_group(group)
    if "error" in result:
        if result.get("crash"):
            raise RuntimeError(result["error"])
        raise BadRecordsError(result["error"])
    if rank0:
        print(result["line"], flush=True)
    drop = set(map(tuple, result["drop"]))
    data.splits = {name: [r for i, r in enumerate(recs) if (name, i) not in drop] for name, recs in data.splits.items()}
    return data
