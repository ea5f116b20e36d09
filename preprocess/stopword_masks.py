"""Content-word masks per record: the M_c of CIEC's anomaly-aware loss (paper section 2.4.3, eqs. 19-20).

For every record, the normalised caption (``datasets.text.normalize_caption`` with NO word cap, so one cache
serves any ``data.max_words``) is split on spaces and each word gets 1 (content word) or 0 (stop word,
punctuation-only or number-only; rules in ``datasets.text.content_word_mask``). The cache (format in
preprocess/cache_io.py) has ``kind "stopwords"`` and entries keyed by ``str(record id)``:
``{"mask": [0/1 per normalised word], "n_words": k}``. The dataset maps the word mask to tokens by offsets.

Resumable: existing entries are kept and skipped; the cache is rewritten atomically every ``--chunk`` records.
Two records with the same id but different captions are an error (the cache key would be ambiguous).

Usage (from the repository root)::

    python preprocess/stopword_masks.py --data-root data/DGM4 --metadata metadata/train.json \
        metadata/val.json metadata/test.json --out data/DGM4/stopwords.json
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from datasets.records import RecordError, load_metadata  # noqa: E402
from datasets.text import CONTENT_RULES, STOPWORD_SOURCE, content_word_mask, normalize_caption  # noqa: E402
from preprocess.cache_io import load_cache, make_header, save_cache  # noqa: E402


def mask_entry(text):
    """Cache entry for one raw caption: ``{"mask": [...], "n_words": k}`` over the uncapped normalised words."""
    words = normalize_caption(text, None).split(" ")
    return {"mask": content_word_mask(words), "n_words": len(words)}


def build_masks(records, out, chunk=10000, progress=True):
    """Add the entries of ``records`` missing from the cache at ``out``; returns ``(n_new, n_total)``."""
    header, entries, errors = load_cache(out, "stopwords")
    header = make_header("stopwords", stopword_source=STOPWORD_SOURCE, rules=CONTENT_RULES, max_words=None,
                         resumed_from=header.get("created"))
    captions = {}
    for rec in records:
        key = str(rec["id"])
        if key in captions and captions[key] != rec["text"]:
            raise RecordError(rec["id"], rec["_file"], "another record with the same id has a different caption; "
                              "the stop-word cache is keyed by id", "duplicate_id")
        captions[key] = rec["text"]
    todo = [key for key in captions if key not in entries]
    for n, key in enumerate(tqdm(todo, desc="stop-word masks", disable=not progress), 1):
        entries[key] = mask_entry(captions[key])
        if n % chunk == 0:
            save_cache(out, header, entries, errors)
    save_cache(out, header, entries, errors)
    return len(todo), len(entries)


def main(argv=None):
    parser = argparse.ArgumentParser(description="content-word masks per record id (stop-word cache)")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--metadata", nargs="+", required=True, help="metadata JSON files relative to --data-root")
    parser.add_argument("--out", required=True, help="cache JSON file")
    parser.add_argument("--chunk", type=int, default=10000, help="records between atomic saves")
    parser.add_argument("--on-bad", choices=["fail", "skip"], default="fail")
    args = parser.parse_args(argv)
    records, _ = load_metadata(args.data_root, args.metadata, on_bad=args.on_bad)
    n_new, n_total = build_masks(records, args.out, chunk=args.chunk)
    print(f"[stopwords] {n_new} new entries, {n_total} in {args.out}")


if __name__ == "__main__":
    main()
