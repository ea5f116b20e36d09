"""Content-word masks per record: the M_c of CIEC's text branch (paper section 2.4, eqs. 13,
15 and 21; also the token set of L_Asc, eqs. 18-20).

For every record, the normalised caption (``datasets.text.normalize_caption`` with NO word cap, so one cache
serves any ``data.max_words``) is split on spaces and each word gets 1 (content word) or 0 (stop word,
punctuation-only or number-only; rules in ``datasets.text.content_word_mask``; the stop-word list is
``--stopwords`` / ``data.stopwords``: "sklearn" or a word-list file, ``datasets.text.load_stopwords``). The cache
header records the list's source id; a cache made with another list is refused (here and by the dataset). The cache
(format in datasets/caches.py) has ``kind "stopwords"`` and entries keyed by ``str(record id)``:
``{"mask": [0/1 per normalised word], "n_words": k, "caption_hash": h}``, ``h`` the first 12 hex digits of the
sha256 of the normalised caption (``datasets.text.caption_digest``), which the audit compares with the record's
caption (entries of caches made before it have no hash; the audit then compares the word count only). The dataset
maps the word mask to tokens by offsets.

Resumable: existing entries are kept and skipped, except one whose ``caption_hash`` differs from its record's
caption (the caption changed under the same id), which is made again; the cache is rewritten atomically every
``--chunk`` records.
Two records with the same id but different captions are an error (the cache key would be ambiguous).

Usage (from the repository root)::

    python preprocess/stopword_masks.py      # every record of configs/ciec.yaml's train, val and test files
    python preprocess/stopword_masks.py [--config CFG] [--opts ...] [--data-root data] \
        [--metadata DGM4/metadata/train.json ...] [--out data/DGM4/stopwords.json]

Flags not given come from the config (default configs/ciec.yaml, ``--opts`` as in train.py) through
``utils.paths.data_paths``: ``data.root``, the train, val and test files, ``data.root/data.stopword_cache``.
A missing metadata file or config ends with one ``error:`` line naming it (exit status 2).
"""
import time

from tqdm import tqdm

from datasets.caches import load_cache, make_header, save_cache
from datasets.records import RecordError, load_metadata
from datasets.text import (
    CONTENT_RULES,
    STOPWORD_SOURCE,
    caption_digest,
    content_word_mask,
    load_stopwords,
    normalize_caption,
    other_caption_hash,
)
from utils.cli import ArgumentParser, positive_int
from utils.config import load_config
from utils.errors import BadInputError, exit_on_user_error
from utils.paths import add_config_args, require_metadata, resolve_preprocess_args


def mask_entry(text, stopwords=None):
    """Cache entry for one raw caption: ``{"mask": [...], "n_words": k, "caption_hash": h}`` over the uncapped
    normalised words (``h``: ``datasets.text.caption_digest``)."""
    words = normalize_caption(text, None).split(" ")
    mask = content_word_mask(words) if stopwords is None else content_word_mask(words, stopwords)
    return {"mask": mask, "n_words": len(words), "caption_hash": caption_digest(text)}


def build_masks(records, out, chunk=10000, progress=True, stopwords="sklearn"):
    """Add the entries of ``records`` missing from the cache at ``out`` (``stopwords``: "sklearn" or a word-list
    file), and make again those whose caption hash is not their caption's; returns ``(n_new, n_total)``. A cache
    made with another stop-word list raises BadInputError."""
    words, source = load_stopwords(stopwords)
    header, entries, errors = load_cache(out, "stopwords")
    old = header.get("stopword_source", STOPWORD_SOURCE)
    if entries and old != source:
        raise BadInputError(f"{out} was made with the stop-word list '{old}', this run uses '{source}': delete it "
                         f"(or write elsewhere with --out) to rebuild every entry with the new list")
    header = make_header("stopwords", stopword_source=source, rules=CONTENT_RULES, max_words=None,
                         resumed_from=header.get("created"))
    captions, first = {}, {}
    for rec in records:
        key = str(rec["id"])
        if key in captions and captions[key] != rec["text"]:
            other = first[key]
            raise RecordError(rec["id"], rec["_file"], f"duplicate id: the record at index {other.get('_pos')} of "
                              f"{other['_file']} has the same id and another caption (the stop-word cache is keyed "
                              f"by id; ids must be unique)", "duplicate_id", rec.get("_pos"))
        captions.setdefault(key, rec["text"])
        first.setdefault(key, rec)
    todo = [key for key in captions if key not in entries or other_caption_hash(entries[key], captions[key])]
    for n, key in enumerate(tqdm(todo, desc="stop-word masks", disable=not progress), 1):
        entries[key] = mask_entry(captions[key], words)
        if n % chunk == 0:
            save_cache(out, header, entries, errors)
    save_cache(out, header, entries, errors)
    return len(todo), len(entries)


def main(argv=None):
    parser = ArgumentParser(description="content-word masks per record id (stop-word cache)")
    add_config_args(parser, out_help="cache JSON file (default data.root/data.stopword_cache)")
    parser.add_argument("--chunk", type=positive_int, default=10000, help="records between atomic saves")
    parser.add_argument("--on-bad", choices=["fail", "skip"], default="fail")
    parser.add_argument("--stopwords", default=None, help="'sklearn' or a word-list file (default: the config's "
                        "data.stopwords when a config is read, else 'sklearn')")
    args = resolve_preprocess_args(parser.parse_args(argv), "stopword_cache")
    if args.stopwords is None:
        args.stopwords = load_config(args.config, args.opts)["data"]["stopwords"] if args.config else "sklearn"
    t_start = time.perf_counter()
    require_metadata(args.data_root, args.metadata)
    records, _ = load_metadata(args.data_root, args.metadata, on_bad=args.on_bad)
    n_new, n_total = build_masks(records, args.out, chunk=args.chunk, stopwords=args.stopwords)
    print(f"[stopwords] wrote {args.out}: {n_new} new entries, {n_total} in the cache, in "
          f"{time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    exit_on_user_error(main)
