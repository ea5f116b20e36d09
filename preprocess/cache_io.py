"""JSON caches written by the preprocess step: one header, one entry per key, atomic writes.

File format (UTF-8 JSON object)::

    {"header": {"kind": "faces" | "stopwords", "created": ISO-8601, "git": sha, ...},
     "entries": {key: value, ...},
     "errors": {key: "message", ...}}

``entries`` is keyed by image path (faces) or record id as a string (stop words).
``save_cache`` writes to a temporary file in the same folder and renames it, so a kill
never leaves a half-written cache; a rerun loads what exists and skips finished keys.
"""
import datetime
import json
import os
import subprocess
import tempfile


def git_revision():
    """Short git SHA of the code (with '-dirty'), or 'unknown' outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def make_header(kind, **fields):
    """A cache header: kind, creation time, git revision and caller-supplied fields."""
    header = {"kind": kind, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "git": git_revision()}
    header.update(fields)
    return header


def load_cache(path, kind=None):
    """Return ``(header, entries, errors)``; empty dicts when ``path`` does not exist."""
    if not os.path.exists(path):
        return {}, {}, {}
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a valid cache file ({e})") from None
    if not isinstance(data, dict) or "entries" not in data or "header" not in data:
        raise ValueError(f"{path}: not a cache file (expected keys 'header' and 'entries')")
    if kind is not None and data["header"].get("kind") != kind:
        raise ValueError(f"{path}: cache kind is {data['header'].get('kind')!r}, expected {kind!r}")
    return data["header"], data["entries"], data.get("errors", {})


def save_cache(path, header, entries, errors=None):
    """Atomically write the cache (temporary file in the same folder, then ``os.replace``)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"header": header, "entries": entries, "errors": errors or {}}, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
