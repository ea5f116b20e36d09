"""Face-box cache: MTCNN candidate boxes C for TRPS (CIEC paper section 2.3.2 and 3.2: "the prior facial
candidate boxes are obtained by MTCNN", n = 5 of them are used per image).

Usage (from the repository root)::

    python preprocess/detect_faces.py        # every image of configs/ciec.yaml's train, val and test files
    python preprocess/detect_faces.py [--config CFG] [--opts data.root=DIR ...] [--data-root DIR] \
        [--metadata metadata/train.json ...] [--out DIR/faces.json] [--workers K] [--from-metadata] \
        [--min-face-size 20] [--thresholds 0.6 0.7 0.8] [--chunk 64]

Without ``--data-root``, ``--metadata`` or ``--out``, the config (``--config``, default configs/ciec.yaml, with
``--opts`` overrides like train.py) supplies them through ``utils.paths.data_paths``: ``data.root``, the train,
val and test files, and ``data.root/data.face_cache``; the explicit flags win. ``--workers`` defaults to one
detector process per CPU core (never more than the images to do), and to 1 with ``--from-metadata``.
A missing metadata file or config ends with one ``error:`` line naming it (exit status 2).

Runs MTCNN (package ``mtcnn``, TensorFlow; imported lazily, only here) once on every distinct image that the
metadata names and writes the cache with ``datasets/caches.py``::

    header:  {kind: "faces", detector: "mtcnn" | "metadata", package: "mtcnn 1.0.0" | null, thresholds: [p, r, o],
              min_face_size, data_root, metadata, created, git, (updated)}
    entries: {record["image"]: {"boxes": [[x1, y1, x2, y2], ...] ints in original pixels, best first,
                                "scores": [...] descending, "size": [W, H]}}
    errors:  {record["image"]: "message naming the record id and metadata file"}

``--from-metadata`` builds the same cache from the records' ``mtcnn_boxes`` without a detector (DGM4 ships
them): scores are 1.0, 0.99, 0.98, ... in list order (the metadata has no scores), so "best first" is simply
the metadata order. Resumable: a rerun skips images already in ``entries`` (images in ``errors`` are retried);
the cache is saved atomically after every chunk, so a kill loses at most the chunk in flight. Unreadable
images are recorded in ``errors`` and summarised at the end; they are not fatal, unless not one image of the
metadata could be read (most likely ``data.root`` / ``--data-root`` is not where DGM4 was extracted): then the
command ends with one ``error:`` line naming the count and the first failure (exit status 2; the cache keeps the
errors). A record whose image path is
absolute or climbs out of the data root with ``..`` is a bad record (reason ``outside_data_root``,
``datasets.records.validate_record``): never read, skipped and counted (or fatal with ``--on-bad-record fail``).

``init_detector`` + ``detect`` (with ``DEFAULT_MIN_FACE_SIZE`` and ``DEFAULT_THRESHOLDS``) are also what infer.py
runs on a user's photo, so its candidate boxes are found exactly as the cache's.
"""
import collections
import datetime
import os
import re
import time

import numpy as np
from tqdm import tqdm

from datasets.caches import load_cache, make_header, save_cache
from datasets.records import RecordError, load_metadata, read_image, read_image_sized
from utils.cli import ArgumentParser, fraction, positive_int
from utils.errors import BadInputError, exit_on_user_error
from utils.paths import add_config_args, require_metadata, resolve_preprocess_args

DEFAULT_THRESHOLDS = (0.6, 0.7, 0.8)  # mtcnn 1.0.0 defaults for PNet, RNet, ONet
DEFAULT_MIN_FACE_SIZE = 20
_WORKER = {}  # per-process detector state


def parse_args(argv=None):
    p = ArgumentParser(description="MTCNN face-box cache for CIEC's candidate boxes")
    add_config_args(p, out_help="cache file (JSON; default data.root/data.face_cache)")
    p.add_argument("--workers", type=positive_int, default=None, help="detector processes (1: run in this process; "
                   "default: one per CPU core, 1 with --from-metadata)")
    p.add_argument("--from-metadata", action="store_true", help="use the records' mtcnn_boxes, no detector")
    p.add_argument("--min-face-size", type=positive_int, default=DEFAULT_MIN_FACE_SIZE)
    p.add_argument("--thresholds", type=fraction, nargs=3, default=list(DEFAULT_THRESHOLDS),
                   metavar=("PNET", "RNET", "ONET"))
    p.add_argument("--chunk", type=positive_int, default=64, help="images per saved chunk")
    p.add_argument("--on-bad-record", choices=("fail", "skip"), default="skip",
                   help="invalid metadata records: stop, or skip them (counted)")
    return resolve_preprocess_args(p.parse_args(argv), "face_cache")


def cpu_cores():
    """CPU cores this process may run on (the affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------------------------
# Per-image work (runs in worker processes)
# ---------------------------------------------------------------------------------------------------------------
def init_detector(min_face_size=DEFAULT_MIN_FACE_SIZE, thresholds=DEFAULT_THRESHOLDS, threads=0):
    """Import mtcnn (and TensorFlow) and build one detector for this process; a no-op when one with the same
    settings exists already (infer.py calls it once per run, the cache's workers once per process)."""
    if _WORKER.get("min_face_size") == min_face_size and _WORKER.get("thresholds") == tuple(thresholds):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from mtcnn import MTCNN
    _WORKER.update(detector=MTCNN(stages="face_and_landmarks_detection"), min_face_size=min_face_size,
                   thresholds=tuple(thresholds))


def mtcnn_version():
    from importlib.metadata import PackageNotFoundError, version
    try:
        return f"mtcnn {version('mtcnn')}"
    except PackageNotFoundError:
        return "mtcnn (version unknown)"


def detect(image):
    """MTCNN on one RGB uint8 array (H, W, 3): (boxes [[x1,y1,x2,y2] ints, clipped], scores), best first.
    The one detection function of the face cache and of infer.py (``init_detector`` first)."""
    p, r, o = _WORKER["thresholds"]
    faces = _WORKER["detector"].detect_faces(image, box_format="xyxy", min_face_size=_WORKER["min_face_size"],
                                             threshold_pnet=p, threshold_rnet=r, threshold_onet=o)
    h, w = image.shape[:2]
    out = []
    for face in faces:
        x1, y1, x2, y2 = (int(round(float(v))) for v in face["box"])
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
        if x2 > x1 and y2 > y1:
            out.append(([x1, y1, x2, y2], round(float(face["confidence"]), 6)))
    out.sort(key=lambda item: -item[1])
    return [b for b, _ in out], [s for _, s in out]


def process_item(item):
    """One image: ``(key, entry, None)`` or ``(key, None, error message)``; never raises on a bad image."""
    key, path, record, from_metadata = item
    try:
        if from_metadata:
            _, (w, h) = read_image_sized(path, record, draft_size=(1, 1))
            boxes = [[int(v) for v in b] for b in record.get("mtcnn_boxes") or []]
            return key, {"boxes": boxes, "scores": [round(1.0 - 0.01 * i, 2) for i in range(len(boxes))],
                         "size": [w, h]}, None
        image = np.asarray(read_image(path, record))
        boxes, scores = detect(image)
        return key, {"boxes": boxes, "scores": scores, "size": [image.shape[1], image.shape[0]]}, None
    except RecordError as err:
        return key, None, str(err)


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------
def distinct_images(records):
    """{image key: first record naming it}, in metadata order."""
    images = {}
    for rec in records:
        images.setdefault(rec["image"], rec)
    return images


def cache_header(args):
    detector = "metadata" if args.from_metadata else "mtcnn"
    return make_header("faces", detector=detector,
                       package=None if args.from_metadata else mtcnn_version(),
                       thresholds=None if args.from_metadata else list(args.thresholds),
                       min_face_size=None if args.from_metadata else args.min_face_size,
                       data_root=os.path.abspath(args.data_root), metadata=list(args.metadata),
                       score_note=("scores are 1.0, 0.99, ... in mtcnn_boxes list order" if args.from_metadata
                                   else "MTCNN ONet confidence"))


def check_resumable(old, new, path):
    """A cache may only be continued with the same detector settings."""
    for key in ("kind", "detector", "thresholds", "min_face_size"):
        if old.get(key) != new.get(key):
            raise BadInputError(f"{path}: existing cache has {key}={old.get(key)!r} but this run asks for "
                             f"{new.get(key)!r}; use another --out or delete the file")


def run_chunks(pending, args, header, entries, errors):
    """Process ``pending`` items chunk by chunk, saving the cache after each chunk; returns the seconds spent
    after detector start-up (the per-image cost)."""
    pool = None
    if args.workers > 1:
        import multiprocessing as mp
        threads = max(1, cpu_cores() // args.workers)
        pool = mp.get_context("spawn").Pool(args.workers, initializer=None if args.from_metadata else init_detector,
                                            initargs=() if args.from_metadata else
                                            (args.min_face_size, args.thresholds, threads))
    elif not args.from_metadata:
        init_detector(args.min_face_size, args.thresholds)
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(pending), desc="faces", unit="img", dynamic_ncols=True) as bar:
            for start in range(0, len(pending), args.chunk):
                chunk = pending[start:start + args.chunk]
                results = pool.imap(process_item, chunk) if pool else map(process_item, chunk)
                for key, entry, error in results:
                    if entry is not None:
                        entries[key] = entry
                        errors.pop(key, None)
                    else:
                        errors[key] = error
                    bar.update(1)
                header["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
                save_cache(args.out, header, entries, errors)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return time.perf_counter() - t0


def summarise_errors(errors):
    """Print the count of unreadable images by error type and the first few messages."""
    if not errors:
        return
    kinds = collections.Counter((re.findall(r": (\w+(?:Error|Exception)):", msg) or ["other"])[0]
                                for msg in errors.values())
    print(f"[faces] {len(errors)} image(s) could not be read (kept in the cache's 'errors'): {dict(kinds)}")
    for key, msg in list(errors.items())[:5]:
        print(f"  {key}: {msg}")
    if len(errors) > 5:
        print(f"  ... and {len(errors) - 5} more")


def require_some_image(images, entries, errors, out):
    """``BadInputError`` when the metadata names images but none of them is in the cache (every read failed), naming
    the count and the first failure; partial failures pass (they are summarised, not fatal)."""
    if not images or any(key in entries for key in images):
        return
    first = next(iter(images))
    raise BadInputError(f"none of the {len(images)} image(s) of the metadata could be read; the first: "
                        f"{errors.get(first, first)} (every failure is listed under 'errors' in {out})")


def main(argv=None):
    """Build or continue the cache; returns a summary dict (counts and seconds per image)."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    require_metadata(args.data_root, args.metadata)
    records, skipped = load_metadata(args.data_root, args.metadata, on_bad=args.on_bad_record)
    images = distinct_images(records)
    header = cache_header(args)
    old_header, entries, errors = load_cache(args.out, kind="faces")
    if old_header:
        check_resumable(old_header, header, args.out)
        header = {**old_header, "metadata": sorted(set(old_header.get("metadata", [])) | set(args.metadata))}
    pending = [(k, os.path.join(args.data_root, k), rec, args.from_metadata)
               for k, rec in images.items() if k not in entries]
    if args.workers is None:
        args.workers = 1 if args.from_metadata else cpu_cores()
    args.workers = max(1, min(args.workers, len(pending)))
    print(f"[faces] {len(images)} distinct images; {len(images) - len(pending)} already in {args.out}; "
          f"{len(pending)} to do with {'metadata mtcnn_boxes' if args.from_metadata else 'MTCNN'}, "
          f"{args.workers} worker(s)")
    seconds, verb = 0.0, "wrote" if pending or not os.path.exists(args.out) else "nothing new for"
    if pending:
        seconds = run_chunks(pending, args, header, entries, errors)
    elif verb == "wrote":
        save_cache(args.out, header, entries, errors)
    require_some_image(images, entries, errors, args.out)
    per_image = seconds / len(pending) if pending else 0.0
    done = sum(1 for k in images if k in entries)
    print(f"[faces] {verb} {args.out}: {done}/{len(images)} images in the cache, {len(errors)} errors, in "
          f"{time.perf_counter() - t_start:.1f} s ({seconds:.1f} s for {len(pending)} images after start-up, "
          f"{per_image:.3f} s/image)")
    summarise_errors(errors)
    return {"images": len(images), "processed": len(pending), "skipped": len(images) - len(pending),
            "errors": len(errors), "seconds_per_image": per_image, "skipped_records": dict(skipped)}


if __name__ == "__main__":
    exit_on_user_error(main)
