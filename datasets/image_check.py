"""Decode every image of an audit once, in threads, remembering the result in a cache keyed by (path, size, mtime).

``check_images(paths, cache_path, full=True)`` returns ``{path: {"size": [W, H]}}`` for an image that decodes, or
``{path: {"reason": "missing_image" | "bad_image", "error": message}}``. ``full=True`` decodes every pixel
(``Image.load()``: a truncated or corrupt JPEG fails here, not in the middle of an epoch); ``full=False`` reads the
header only (``data.check_images: false``, size and format only). Decoding runs in a thread pool (PIL releases the
GIL while decoding) with a tqdm bar on stderr.

The cache (``cache_path``, JSON ``{"kind": "image_audit", "version": 1, "entries": {absolute path: {"stat":
[bytes, mtime_ns], "size" | "reason" + "error"}}}``) holds full-decode results only; an entry is reused while the
file keeps its size and modification time, so a rerun decodes only new or changed files. An unreadable cache is
ignored (and rewritten); a cache that cannot be written (read-only folder) is reported and skipped.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm import tqdm

from datasets.records import IMAGE_ERRORS, image_error
from utils.io import atomic_write

CACHE_KIND, CACHE_VERSION = "image_audit", 1


def decode_size(path, full=True):
    """(W, H) of the image ``path``; ``full`` decodes all of it. Raises what PIL raises."""
    with Image.open(path) as img:
        size = img.size
        if full:
            img.load()
    return size


def probe(path, full=True):
    """``(stat or None, result)`` of one image (see the module docstring); never raises on a bad file."""
    try:
        st = os.stat(path)
    except OSError as err:
        return None, _error(path, err)
    stat = [st.st_size, st.st_mtime_ns]
    try:
        return stat, {"size": list(decode_size(path, full))}
    except IMAGE_ERRORS as err:
        return stat, _error(path, err)


def _error(path, err):
    reason, message = image_error(path, err)
    return {"reason": reason, "error": message}


def load_image_cache(path):
    """Entries of the audit cache at ``path`` ({} when missing or unreadable)."""
    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        print(f"[audit] ignoring the unreadable image cache {path} ({type(err).__name__}); it is rebuilt",
              flush=True)
        return {}
    ok = isinstance(data, dict) and data.get("kind") == CACHE_KIND and data.get("version") == CACHE_VERSION
    return data.get("entries", {}) if ok and isinstance(data.get("entries"), dict) else {}


def save_image_cache(path, entries):
    """Write the audit cache atomically; a folder that cannot be written is reported, not fatal."""
    payload = {"kind": CACHE_KIND, "version": CACHE_VERSION, "entries": entries}
    try:
        atomic_write(path, lambda f: json.dump(payload, f), binary=False)
    except OSError as err:  # a read-only folder, a full disk (utils.errors.DiskFullError is an OSError)
        print(f"[audit] could not write the image cache {path} ({err}); the next run decodes again", flush=True)


def check_images(paths, cache_path=None, full=True, threads=None):
    """Results for the distinct ``paths`` (module docstring); returns ``(results, n_decoded, n_from_cache)``."""
    use_cache = full and cache_path is not None
    cache = load_image_cache(cache_path) if use_cache else {}
    results, todo = {}, []
    for path in dict.fromkeys(paths):
        entry = cache.get(os.path.abspath(path))
        if isinstance(entry, dict) and _same_file(path, entry.get("stat")):
            results[path] = {k: v for k, v in entry.items() if k != "stat"}
        else:
            todo.append(path)
    threads = threads or min(32, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(threads) as pool, tqdm(total=len(todo), desc="audit: decoding images", unit="img",
                                                       disable=None if len(todo) >= 100 else True) as bar:
            for path, (stat, result) in zip(todo, pool.map(lambda p: probe(p, full), todo)):
                results[path] = result
                if stat is not None:
                    cache[os.path.abspath(path)] = {"stat": stat, **result}
                bar.update(1)
    finally:
        if use_cache and todo:
            save_image_cache(cache_path, cache)
    return results, len(todo), len(results) - len(todo)


def _same_file(path, stat):
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat == [st.st_size, st.st_mtime_ns]
