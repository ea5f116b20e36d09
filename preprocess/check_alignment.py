"""Count the captions on which the benchmark's word->token label rule and the clean alignment disagree.

    python preprocess/check_alignment.py --data-root DIR --metadata F [F ...] --tokenizer FOLDER [--max-len 50]

The benchmark labels tokens through the tokenizer's pre-tokenizer word ids, which drift from the whitespace
word indices of ``fake_text_pos`` on hyphens, slashes, letter-digit glue and some punctuation
(docs/implementation_notes.md, part 3). The clean rule aligns by character offsets. Prints one line per metadata
file with the number of disagreeing captions and up to 10 example record ids.
"""

from datasets.records import load_metadata
from datasets.text import count_label_disagreements, load_tokenizer
from utils.cli import ArgumentParser, positive_int
from utils.errors import exit_on_user_error


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--metadata", nargs="+", required=True, help="metadata JSON files, relative to --data-root")
    parser.add_argument("--tokenizer", required=True, help="local tokenizer folder (roberta-base format)")
    parser.add_argument("--max-len", type=positive_int, default=50)
    parser.add_argument("--max-words", type=positive_int, default=50)
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    total_bad = total = 0
    for meta in args.metadata:
        records, _ = load_metadata(args.data_root, [meta], on_bad="skip")
        bad, n, examples = count_label_disagreements(tokenizer, records, args.max_len, args.max_words)
        fake = sum(1 for r in records if r["fake_text_pos"])
        print(f"[alignment] {meta}: the two token-label rules disagree on {bad} of {n} captions "
              f"({100.0 * bad / max(n, 1):.2f}%; {fake} captions have manipulated words); examples: {examples}")
        total_bad, total = total_bad + bad, total + n
    print(f"[alignment] total: {total_bad} of {total} captions")
    return total_bad


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad flag or unusable input: one `error:` line
