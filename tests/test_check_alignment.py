"""preprocess/check_alignment.py reports the same count as datasets.text.count_label_disagreements."""
import re

from datasets.records import load_metadata
from datasets.text import count_label_disagreements, load_tokenizer
from tests.conftest import run_script


def test_check_alignment_script_counts(tiny_benchmark):
    files = ["metadata/train.json", "metadata/test.json"]
    out = run_script("preprocess/check_alignment.py", "--data-root", tiny_benchmark["root"], "--metadata", *files,
                     "--tokenizer", tiny_benchmark["tokenizer"]).stdout
    total = re.search(r"total: (\d+) of (\d+) captions", out)
    tok = load_tokenizer(tiny_benchmark["tokenizer"])
    records, _ = load_metadata(tiny_benchmark["root"], files)
    bad, n, _ = count_label_disagreements(tok, records, 50)
    assert total is not None and (int(total.group(1)), int(total.group(2))) == (bad, n) and n == 80
    # the synthetic captions carry the benchmark's traps, so some captions must disagree
    assert bad > 0
