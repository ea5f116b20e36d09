"""Every entry point turns a user mistake on its command line (a bad ``--opts`` value, a bad flag value, a missing
required flag) into one ``error:`` line with exit status 2 and writes nothing (issue 14 item 2); flags parse with
``utils.cli.ArgumentParser``, whose usage errors are ``BadInputError``s."""
import os
import subprocess
import sys

import pytest

from datasets.sampler import BlockDistributedSampler
from tests.conftest import ROOT
from tests.test_readme_commands import one_error_line
from utils.cli import ArgumentParser, fraction, non_negative_int, positive_int
from utils.errors import BadInputError, ConfigError

DEBUG = os.path.join(ROOT, "configs", "debug.yaml")
BAD_OPTS = [  # (script, its flags, the start of the error line)
    ("train.py", ["--config", DEBUG, "--opts", "train.output_dir=out", "train.batch_size=0"],
     "error: train.batch_size=0: must be an integer >= 1"),
    ("test.py", ["--config", DEBUG, "--opts", "train.output_dir=out", "train.amp=fp8"],
     "error: train.amp='fp8': must be one of none | fp16 | bf16"),
    ("pretrain.py", ["--config", DEBUG, "--opts", "train.output_dir=out", "train.epochs=-1"],
     "error: train.epochs=-1: must be an integer >= 1"),
    ("preprocess/stopword_masks.py", ["--config", DEBUG, "--out", "out/s.json", "--opts", "data.on_bad_record=maybe"],
     "error: data.on_bad_record='maybe': must be one of fail | skip"),
    ("preprocess/detect_faces.py", ["--config", DEBUG, "--out", "out/f.json", "--opts", "train.lrr=1"],
     "error: unknown config key: train.lrr"),
    ("test.py", ["--config", DEBUG, "--split", "dev"], "error: test.py: argument --split: invalid choice: 'dev'"),
    ("preprocess/make_synthetic.py", ["--out", "out", "--train", "-1"],
     "error: make_synthetic.py: --train needs a count >= 0, got -1"),
]


@pytest.mark.parametrize("script,flags,message", BAD_OPTS, ids=[f"{s}:{f[-1]}" for s, f, _ in BAD_OPTS])
def test_bad_command_line_is_one_line_and_writes_nothing(tmp_path, script, flags, message):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    line = one_error_line(proc)
    assert line.startswith(message), line
    assert os.listdir(tmp_path) == []  # no output folder, no cache, no log


def test_module_entry_point_bad_flag_is_one_line(tmp_path):
    """``python -m models.pretrained`` parses its flags with ``utils.cli.ArgumentParser`` like the scripts."""
    proc = subprocess.run([sys.executable, "-m", "models.pretrained", "--bogus"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    prog = "python -m models.pretrained"
    assert one_error_line(proc) == f"error: {prog}: unrecognized arguments: --bogus (see {prog} --help)"
    assert os.listdir(tmp_path) == []


def test_usage_errors_are_user_errors():
    parser = ArgumentParser(prog="tool.py")
    parser.add_argument("--n", type=positive_int, default=1)
    parser.add_argument("--k", type=non_negative_int, default=0)
    parser.add_argument("--p", type=fraction, default=0.5)
    parser.add_argument("--need", required=True)
    args = parser.parse_args(["--need", "x", "--n", "3", "--k", "0", "--p", "1"])
    assert (args.n, args.k, args.p) == (3, 0, 1.0)
    cases = [(["--need", "x", "--n", "0"], "argument --n: '0' is not an integer >= 1"),
             (["--need", "x", "--k", "-1"], "argument --k: '-1' is not an integer >= 0"),
             (["--need", "x", "--n", "two"], "argument --n: 'two' is not an integer >= 1"),
             (["--need", "x", "--p", "1.5"], r"argument --p: '1.5' is not a number in \[0, 1\]"),
             ([], "the following arguments are required: --need"),
             (["--need", "x", "--what"], "unrecognized arguments: --what")]
    for argv, message in cases:
        with pytest.raises(BadInputError, match=rf"^tool\.py: {message} \(see tool\.py --help\)$"):
            parser.parse_args(argv)


def test_entry_point_flags_with_a_range_are_checked():
    import infer
    import train
    from preprocess import detect_faces, make_synthetic
    with pytest.raises(BadInputError, match="--batch-size: '0' is not an integer >= 1"):
        infer.parse_args(["--checkpoint", "c.pth", "--image", "i.jpg", "--text", "t", "--batch-size", "0"])
    with pytest.raises(BadInputError, match="give either --image"):
        infer.parse_args(["--checkpoint", "c.pth"])
    with pytest.raises(BadInputError, match=r"--thresholds: '1\.2' is not a number in \[0, 1\]"):
        detect_faces.parse_args(["--data-root", "d", "--metadata", "m.json", "--out", "o.json",
                                 "--thresholds", "0.6", "0.7", "1.2"])
    with pytest.raises(BadInputError, match="--workers: '0' is not an integer >= 1"):
        make_synthetic.parse_args(["--out", "x", "--workers", "0"])
    with pytest.raises(BadInputError, match="unrecognized arguments: --epochs"):
        train.parse_args(["--epochs", "3"])


def test_training_set_smaller_than_one_global_batch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"12 usable samples, fewer than one global batch .*train\.batch_size 32"):
        BlockDistributedSampler(list(range(12)), num_replicas=1, rank=0, batch_size=32)
    assert BlockDistributedSampler(list(range(64)), num_replicas=1, rank=0, batch_size=32).steps_per_epoch == 2
