"""Train a small byte-level BPE tokenizer in roberta-base's file format (stand-in for roberta-base offline).

Supports the text encoder of CIEC (paper section 2.2, RoBERTa text branch) when the real roberta-base files are
not available: the tokenizer is trained on the normalised captions (``datasets.text.normalize_caption``) of the
given metadata files, with RoBERTa's special tokens in RoBERTa's order (``<s>``=0, ``<pad>``=1, ``</s>``=2,
``<unk>``=3, ``<mask>``=4). The output folder holds vocab.json + merges.txt (as roberta-base) plus
tokenizer.json / tokenizer_config.json, and loads with ``datasets.text.load_tokenizer``.

Usage (from the repository root)::

    python preprocess/train_tokenizer.py --data-root data/DGM4 --metadata metadata/train.json --out checkpoints/tok
"""
import os

from datasets.records import load_metadata
from datasets.text import load_tokenizer, normalize_caption
from utils.cli import ArgumentParser, positive_int
from utils.errors import exit_on_user_error

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_tokenizer(captions, out_dir, vocab_size=2000, min_frequency=1, model_max_length=512):
    """Train byte-level BPE on ``captions`` (already normalised strings) and save it to ``out_dir``.

    Returns the tokenizer loaded back through ``load_tokenizer(out_dir)``.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(list(captions), vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    os.makedirs(out_dir, exist_ok=True)
    bpe.save_model(out_dir)  # vocab.json + merges.txt, roberta-base's format
    tok = RobertaTokenizerFast.from_pretrained(out_dir, add_prefix_space=True, local_files_only=True,
                                               model_max_length=model_max_length)
    tok.save_pretrained(out_dir)  # tokenizer.json + tokenizer_config.json
    tok = load_tokenizer(out_dir)
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"special token ids {ids} are not RoBERTa's 0..4")
    return tok


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--metadata", nargs="+", required=True, help="metadata JSON files relative to --data-root")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--vocab-size", type=positive_int, default=2000)
    parser.add_argument("--on-bad", choices=["fail", "skip"], default="fail")
    args = parser.parse_args(argv)
    records, _ = load_metadata(args.data_root, args.metadata, on_bad=args.on_bad)
    captions = [normalize_caption(r["text"], None) for r in records]
    tok = train_tokenizer(captions, args.out, vocab_size=args.vocab_size)
    print(f"[tokenizer] {len(captions)} captions -> vocab {len(tok)} written to {args.out}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad flag or unusable input: one `error:` line
