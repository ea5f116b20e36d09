"""JSON caches of the preprocess step (face boxes, stop-word masks): one header, one entry per key, atomic writes.

File format (UTF-8 JSON object)::

    {"header": {"kind": "faces" | "stopwords", "created": ISO-8601, "git": sha, ...},
     "entries": {key: value, ...},
     "errors": {key: "message", ...}}

``entries`` is keyed by image path (faces) or record id as a string (stop words). ``save_cache`` writes through
``utils.io.atomic_write`` (temporary file, then rename, ordinary file mode), so a kill never leaves a half-written
cache; a rerun loads what exists and skips finished keys. The preprocess scripts write these files and the
dataset side (``datasets.audit``) reads them, so the module lives here and ``preprocess/`` imports it.
"""
import datetime
import json
import os

from utils.errors import BadInputError
from utils.io import atomic_write, git_revision


def make_header(kind, **fields):
    """A cache header: kind, creation time, git revision and caller-supplied fields."""
    header = {"kind": kind, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "git": git_revision()}
    header.update(fields)
    return header


def read_json_text(path, what):
    """Parse the UTF-8 JSON file ``path``; text that is not UTF-8 or not JSON raises ``BadInputError`` naming
    ``what``, the file and the line."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise BadInputError(f"{what} {path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at line {line} "
                            f"(byte offset {err.start}); save it as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInputError(f"{what} {path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                            f"{err.msg})") from None


def load_cache(path, kind=None):
    """Return ``(header, entries, errors)``; empty dicts when ``path`` does not exist. A file that is not a cache
    (of ``kind``) raises ``BadInputError`` naming it."""
    if not os.path.exists(path):
        return {}, {}, {}
    data = read_json_text(path, "cache file")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict) or "header" not in data:
        raise BadInputError(f"{path}: not a cache file (expected keys 'header' and 'entries')")
    if kind is not None and data["header"].get("kind") != kind:
        raise BadInputError(f"{path}: cache kind is {data['header'].get('kind')!r}, expected {kind!r}")
    return data["header"], data["entries"], data.get("errors", {})


def save_cache(path, header, entries, errors=None):
    """Atomically write the cache (``utils.io.atomic_write``)."""
    payload = {"header": header, "entries": entries, "errors": errors or {}}
    atomic_write(path, lambda f: json.dump(payload, f), binary=False)
