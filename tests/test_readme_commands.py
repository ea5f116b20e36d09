"""The README's commands exactly as written (issue 15): ``python preprocess/detect_faces.py``,
``python preprocess/stopword_masks.py``, ``python train.py`` and ``python test.py`` with no arguments, run in a
folder laid out as the README says (a small synthetic set at the DGM4 paths of configs/ciec.yaml, a small
configs/ciec.yaml there), and the one-line ``error:`` (exit status 2, no traceback) when the data is missing.
``utils/paths.py`` (the config -> paths function and the missing-data checks) is tested in-process.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from datasets.caches import load_cache
from preprocess import detect_faces as df
from preprocess import make_synthetic as ms
from preprocess import train_tokenizer
from tests.conftest import ROOT
from utils.config import load_config
from utils.errors import exit_on_user_error
from utils.paths import DEFAULT_CONFIG, MissingDataError, check_inputs, data_paths, metadata_files

PATH_KEYS = ("root", "train_files", "val_files", "test_files", "face_cache", "stopword_cache", "tokenizer")


def write_small_config(folder):
    """``folder/configs/ciec.yaml``: configs/debug.yaml's sizes with every path of the paper config."""
    with open(os.path.join(ROOT, "configs", "debug.yaml")) as f:
        small = yaml.safe_load(f)
    paper = load_config(os.path.join(ROOT, DEFAULT_CONFIG))
    small["data"].update({k: paper["data"][k] for k in PATH_KEYS})
    small["train"]["output_dir"] = paper["train"]["output_dir"]
    os.makedirs(os.path.join(folder, "configs"), exist_ok=True)
    with open(os.path.join(folder, DEFAULT_CONFIG), "w") as f:
        yaml.safe_dump(small, f, sort_keys=False)


def run_here(folder, script, *args):
    """``python <repo>/<script> args`` with ``folder`` as the working directory (exit status not checked)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=folder, capture_output=True,
                          text=True, timeout=600)


def one_error_line(proc):
    """Assert exit status 2 and a stderr of exactly one ``error:`` line without a traceback; return the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    """A working directory as the README lays it out: DGM4 (8/4/4 synthetic samples) under data/, the metadata
    at data/DGM4/metadata/{train,val,test}.json, a tokenizer at checkpoints/roberta-base, configs/ciec.yaml."""
    folder = tmp_path_factory.mktemp("readme")
    write_small_config(folder)
    paths = data_paths(load_config(str(folder / DEFAULT_CONFIG)))  # relative to folder, the working directory
    root = folder / paths["root"]
    ms.main(["--out", str(root), "--train", "8", "--val", "4", "--test", "4", "--seed", "3"])
    meta = [os.path.join(paths["root"], f) for f in metadata_files(paths)]
    os.makedirs(os.path.dirname(folder / meta[0]), exist_ok=True)
    for split, path in zip(("train", "val", "test"), meta):
        shutil.move(str(root / "metadata" / f"{split}.json"), str(folder / path))
    train_tokenizer.main(["--data-root", str(root), "--metadata", metadata_files(paths)[0],
                          "--out", str(folder / paths["tokenizer"]), "--vocab-size", "600"])
    records = {split: json.load(open(folder / path)) for split, path in zip(("train", "val", "test"), meta)}
    return {"dir": folder, "paths": paths, "records": records}


def all_records(layout):
    """The train, val and test records of the layout, in that order."""
    return [r for split in ("train", "val", "test") for r in layout["records"][split]]


@pytest.fixture(scope="module")
def preprocessed(readme_dir):
    """The two preprocess commands with no arguments (MTCNN for real), then detect_faces.py once more."""
    procs = {name: run_here(readme_dir["dir"], f"preprocess/{name}.py") for name in ("detect_faces", "stopword_masks")}
    procs["detect_faces_again"] = run_here(readme_dir["dir"], "preprocess/detect_faces.py")
    return {**readme_dir, "procs": procs}


def test_detect_faces_without_arguments(preprocessed):
    folder, paths, procs = preprocessed["dir"], preprocessed["paths"], preprocessed["procs"]
    first, again = procs["detect_faces"], procs["detect_faces_again"]
    assert first.returncode == 0, first.stderr[-4000:]
    images = {r["image"] for r in all_records(preprocessed)}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert f"{len(images)} to do with MTCNN, {min(cores, len(images))} worker(s)" in first.stdout
    assert re.search(rf"\[faces\] wrote {re.escape(paths['face_cache'])}: {len(images)}/{len(images)} images "
                     rf"in the cache, 0 errors, in \d+\.\d s", first.stdout), first.stdout
    assert "faces: 100%" in first.stderr  # the progress bar
    header, entries, errors = load_cache(str(folder / paths["face_cache"]), kind="faces")
    assert header["detector"] == "mtcnn" and not errors and set(entries) == images
    assert header["metadata"] == metadata_files(paths)
    for key, entry in entries.items():
        with Image.open(folder / paths["root"] / key) as im:
            assert entry["size"] == list(im.size)
    assert again.returncode == 0 and f"{len(images)} already in {paths['face_cache']}; 0 to do" in again.stdout
    assert f"nothing new for {paths['face_cache']}" in again.stdout


def test_stopword_masks_without_arguments(preprocessed):
    folder, paths, proc = preprocessed["dir"], preprocessed["paths"], preprocessed["procs"]["stopword_masks"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    ids = {str(r["id"]) for r in all_records(preprocessed)}
    assert re.search(rf"\[stopwords\] wrote {re.escape(paths['stopword_cache'])}: {len(ids)} new entries, "
                     rf"{len(ids)} in the cache, in \d+\.\d s", proc.stdout), proc.stdout
    _, entries, _ = load_cache(str(folder / paths["stopword_cache"]), kind="stopwords")
    assert set(entries) == ids


def test_train_then_test_without_arguments(preprocessed):
    folder = preprocessed["dir"]
    out = load_config(str(folder / DEFAULT_CONFIG))["train"]["output_dir"]
    train = run_here(folder, "train.py")
    assert train.returncode == 0, train.stderr[-4000:]
    assert "epoch 1/1" in train.stdout and os.path.isfile(folder / out / "best.pth")
    test = run_here(folder, "test.py")
    assert test.returncode == 0, test.stderr[-4000:]
    assert f"checkpoint {out}/best.pth" in test.stdout and "CIEC paper (Table 1)" in test.stdout
    metrics = json.load(open(folder / out / "eval_test" / "metrics.json"))
    assert all(0.0 <= metrics[k] <= 100.0 for k in ("AUC", "ACC", "IoU_mean", "F1"))
    with open(folder / out / "eval_test" / "predictions.jsonl") as f:
        assert sorted(json.loads(line)["id"] for line in f) == sorted(r["id"] for r in preprocessed["records"]["test"])


@pytest.mark.parametrize("script,split", [("preprocess/detect_faces.py", "train"),
                                          ("preprocess/stopword_masks.py", "train"), ("test.py", "test")])
def test_missing_dgm4_is_one_line(tmp_path, script, split):
    write_small_config(tmp_path)
    line = one_error_line(run_here(tmp_path, script))
    paths = data_paths(load_config(str(tmp_path / DEFAULT_CONFIG)))
    missing = os.path.join(paths["root"], paths["metadata"][split][0])
    assert line.startswith(f"error: metadata file {missing} not found: extract the DGM4 benchmark into "
                           f"{paths['root']}/"), line
    assert sorted(os.listdir(tmp_path)) == ["configs"]  # nothing written, no output folder made


def test_train_py_checks_before_it_starts(tmp_path, monkeypatch):
    """train.py's ``run`` (what its ``__main__`` hands to ``exit_on_user_error``) stops before writing anything;
    in-process, as train.py's imports are what a subprocess would spend its seconds on."""
    import train
    write_small_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingDataError, match=r"^metadata file data/DGM4/metadata/train\.json not found"):
        train.run(train.parse_args([]))
    assert sorted(os.listdir(tmp_path)) == ["configs"]


def test_missing_config_is_one_line(tmp_path):
    line = one_error_line(run_here(tmp_path, "preprocess/detect_faces.py"))
    assert line.startswith(f"error: config file {DEFAULT_CONFIG} not found"), line


def test_data_paths_of_the_paper_config():
    paths = data_paths(load_config(os.path.join(ROOT, DEFAULT_CONFIG), ["data.root=/elsewhere"]))
    assert paths["root"] == "/elsewhere" and paths["tokenizer"] == "checkpoints/roberta-base"
    assert paths["face_cache"] == "/elsewhere/DGM4/faces.json"
    assert paths["stopword_cache"] == "/elsewhere/DGM4/stopwords.json"
    assert metadata_files(paths) == [f"DGM4/metadata/{s}.json" for s in ("train", "val", "test")]
    assert metadata_files(paths, ["test"]) == ["DGM4/metadata/test.json"]


def test_check_inputs_names_the_missing_input_and_its_command(preprocessed, monkeypatch):
    monkeypatch.chdir(preprocessed["dir"])
    root = preprocessed["paths"]["root"]
    cases = [(["data.face_cache=DGM4/absent.json"], None,
              f"face cache {root}/DGM4/absent.json not found: make it with `python preprocess/detect_faces.py "
              "--opts data.face_cache=DGM4/absent.json`"),
             (["data.stopword_cache=x.json"], None,
              f"stop-word cache {root}/x.json not found: make it with `python preprocess/stopword_masks.py --opts "
              "data.stopword_cache=x.json`"),
             (["data.tokenizer=tok"], None, "tokenizer folder tok not found"),
             ([], "output/none.pth", "checkpoint output/none.pth not found: train one first with `torchrun "
              "--nproc_per_node=8 train.py --config configs/ciec.yaml`")]
    for opts, checkpoint, message in cases:
        cfg = load_config(DEFAULT_CONFIG, opts)
        with pytest.raises(MissingDataError) as err:
            check_inputs(cfg, ["test"], DEFAULT_CONFIG, opts, checkpoint=checkpoint)
        assert str(err.value).startswith(message), (str(err.value), message)
    cfg = load_config(DEFAULT_CONFIG, ["pretrained.meter=weights/m.ckpt"])
    with pytest.raises(MissingDataError, match=r"pretrained weights weights/m.ckpt not found: .*pretrained\.meter"):
        check_inputs(cfg, ["train", "val"], "other.yaml", pretrained=True)
    check_inputs(load_config(DEFAULT_CONFIG), ["train", "val", "test"])  # everything of the layout is there
    with pytest.raises(MissingDataError, match="--config other.yaml`"):
        check_inputs(load_config(DEFAULT_CONFIG, ["data.face_cache=no.json"]), ["test"], "other.yaml")


def test_exit_on_user_error_is_one_line_and_only_for_missing_data(capsys, monkeypatch):
    def missing():
        raise MissingDataError("face cache x.json not found: make it")

    def broken():
        raise ValueError("a real bug")

    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(missing)
    assert stop.value.code == 2 and capsys.readouterr().err == "error: face cache x.json not found: make it\n"
    monkeypatch.setenv("RANK", "3")  # other torchrun ranks exit quietly
    with pytest.raises(SystemExit):
        exit_on_user_error(missing)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="a real bug"):
        exit_on_user_error(broken)
    assert exit_on_user_error(lambda a, b: a + b, 2, 3) == 5


def test_explicit_flags_override_the_config(readme_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(readme_dir["dir"])
    paths, records = readme_dir["paths"], readme_dir["records"]
    summary = df.main(["--from-metadata", "--out", str(tmp_path / "f.json")])
    assert summary["images"] == len(all_records(readme_dir)) and summary["processed"] == summary["images"]
    _, entries, _ = load_cache(str(tmp_path / "f.json"), kind="faces")
    assert set(entries) == {r["image"] for r in all_records(readme_dir)}
    summary = df.main(["--from-metadata", "--metadata", metadata_files(paths, ["test"])[0],
                       "--out", str(tmp_path / "t.json")])
    assert summary["images"] == len(records["test"])
    args = df.parse_args(["--data-root", "elsewhere"])
    assert args.out == os.path.join("elsewhere", "DGM4", "faces.json") and args.config == DEFAULT_CONFIG
    with pytest.raises(MissingDataError, match="metadata file elsewhere/DGM4/metadata/train.json not found"):
        df.main(["--data-root", "elsewhere", "--from-metadata"])
    monkeypatch.chdir(tmp_path)  # no configs/ here: the three explicit flags need none
    args = df.parse_args(["--data-root", "d", "--metadata", "m.json", "--out", "o.json"])
    assert (args.config, args.data_root, args.metadata, args.out) == (None, "d", ["m.json"], "o.json")
