"""The up-front data audit (datasets/audit.py, datasets/image_check.py): duplicate ids within and across splits,
image paths outside the data root (also in preprocess/detect_faces.py), metadata that is not UTF-8, the image cache
that makes a rerun skip decoding, the one summary line, and train.py stopping on a truncated JPEG in val before it
builds a model. The per-record cases shared with the old dataset checks are in tests/test_bad_input.py."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from datasets import image_check
from datasets.audit import AUDIT_CACHE, BadRecordsError, audit_records, audit_run, load_run_data, split_files
from datasets.records import load_metadata
from preprocess import detect_faces
from preprocess.stopword_masks import build_masks
from tests.conftest import ROOT, tiny_opts
from tests.test_dataset import (
    bench_cfg,
    make_dataset,
    make_records,
    tok,  # noqa: F401  (module-scoped tokenizer fixture)
    write_bench,
)
from utils.errors import BadInputError, UserError


def _write_json(path, records):
    with open(path, "w") as f:
        json.dump(records, f)


def test_duplicate_id_within_a_split_names_both_records(tmp_path, tok, capsys):  # noqa: F811
    recs = make_records()
    recs[7]["id"] = recs[2]["id"]  # ids 12 (index 2) and 12 (index 7), same caption
    recs[7]["text"] = recs[2]["text"]
    kw = write_bench(tmp_path, recs)
    with pytest.raises(BadRecordsError) as info:
        make_dataset(kw, tok)
    message = str(info.value)
    assert "found 1 bad record(s) (duplicate_id 1)" in message
    assert "record id=12 (index 7) in " in message and "meta.json" in message
    assert "the record at index 2 of " in message  # the other record, with its file
    capsys.readouterr()
    ds = make_dataset(kw, tok, on_bad="skip")
    assert "1 left out (data.on_bad_record: skip): duplicate_id 1" in capsys.readouterr().out
    assert [r["_pos"] for r in ds.records] == [0, 1, 2, 3, 4, 5, 6, 8]  # the first of the two is kept


def test_duplicate_id_across_splits_names_both_files(tmp_path, tok, capsys):  # noqa: F811
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    val = [dict(r, id=100 + k) for k, r in enumerate(recs)]
    val[4]["id"] = 13  # also the id of train's record at index 3 (same caption, so the stop-word cache agrees)
    val[4]["text"] = recs[3]["text"]
    _write_json(tmp_path / "val.json", val)
    build_masks([dict(r, _file="val.json") for r in val], kw["stopword_cache"], progress=False)
    cfg = bench_cfg(kw, val_files=["val.json"])
    with pytest.raises(BadRecordsError, match=r"record id=13 \(index 4\) in \S*val\.json: duplicate id: the record "
                                              r"at index 3 of \S*meta\.json has the same id"):
        audit_run(cfg, split_files(cfg, ["train", "val"]))
    skip = bench_cfg(kw, val_files=["val.json"], on_bad_record="skip")
    capsys.readouterr()
    audited = audit_run(skip, split_files(skip, ["train", "val"]))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "18 records (train 9, val 9)" in out and "duplicate_id 1" in out
    assert len(audited.splits["train"]) == 9 and 13 not in [r["id"] for r in audited.splits["val"]]


def test_stopword_masks_duplicate_id_names_both_records(tmp_path):
    recs = [dict(r, _file="a.json", _pos=k) for k, r in enumerate(make_records())]
    clash = dict(recs[1], text="Another caption entirely", _file="b.json", _pos=4)
    with pytest.raises(BadInputError, match=r"record id=11 \(index 4\) in b\.json: duplicate id: the record at "
                                            r"index 1 of a\.json has the same id and another caption"):
        build_masks(recs + [clash], str(tmp_path / "sw.json"), progress=False)


@pytest.mark.parametrize("path", ["../outside.jpg", "img/../../outside.jpg", "/etc/outside.jpg"])
def test_image_path_outside_the_data_root_is_a_bad_record(tmp_path, tok, capsys, path):  # noqa: F811
    root = tmp_path / "root"
    root.mkdir()
    recs = make_records()
    kw = write_bench(root, recs)
    (tmp_path / "outside.jpg").write_bytes((root / "img" / "0.jpg").read_bytes())  # it exists, but is not ours
    recs[4]["image"] = path
    _write_json(root / "meta.json", recs)
    with pytest.raises(BadRecordsError, match=r"\[outside_data_root\] record id=14 \(index 4\) in \S*meta\.json: "
                                              r"image path .* is outside the data root"):
        make_dataset(kw, tok)
    capsys.readouterr()
    ds = make_dataset(kw, tok, on_bad="skip")
    assert "1 left out (data.on_bad_record: skip): outside_data_root 1" in capsys.readouterr().out
    assert 14 not in [r["id"] for r in ds.records]
    with pytest.raises(BadInputError, match="outside the data root"):
        load_metadata(str(root), ["meta.json"], on_bad="fail")  # the preprocess scripts' reader refuses it too


def test_detect_faces_never_reads_an_image_outside_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    recs = make_records()
    write_bench(root, recs)
    (tmp_path / "outside.jpg").write_bytes((root / "img" / "0.jpg").read_bytes())
    recs[2]["image"] = "../outside.jpg"
    _write_json(root / "meta.json", recs)
    args = ["--data-root", str(root), "--metadata", "meta.json", "--out", str(tmp_path / "f.json"), "--from-metadata"]
    summary = detect_faces.main(args)  # default --on-bad-record skip: counted, never read
    assert summary["skipped_records"] == {"outside_data_root": 1} and summary["images"] == 8
    with open(tmp_path / "f.json") as f:
        assert "../outside.jpg" not in json.load(f)["entries"]
    with pytest.raises(BadInputError, match=r"id=12 \(index 2\).*outside the data root"):
        detect_faces.main(args + ["--on-bad-record", "fail"])


def test_metadata_that_is_not_utf8_names_the_file_and_line(tmp_path, tok):  # noqa: F811
    kw = write_bench(tmp_path, make_records())
    text = json.dumps(make_records(), indent=1, ensure_ascii=False).replace("Paris/London", "Paris/Montr\u00e9al")
    lines = text.split("\n")
    bad_line = next(i for i, line in enumerate(lines, 1) if "Montr" in line)
    (tmp_path / "meta.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError, match=rf"metadata file \S*meta\.json is not UTF-8 text: byte 0xe9 at line "
                                        rf"{bad_line} "):
        make_dataset(kw, tok)
    with pytest.raises(BadInputError, match=rf"line {bad_line}"):
        load_metadata(str(tmp_path), ["meta.json"])


def test_metadata_that_is_not_json_names_the_file_and_line(tmp_path, tok):  # noqa: F811
    kw = write_bench(tmp_path, make_records())
    (tmp_path / "meta.json").write_text('[\n{"id": 1,\n "image": }\n]')
    with pytest.raises(UserError, match=r"metadata file \S*meta\.json is not valid JSON \(line 3, column"):
        make_dataset(kw, tok)


def test_image_cache_makes_the_second_audit_skip_decoding(tmp_path, monkeypatch):
    kw = write_bench(tmp_path, make_records())
    cfg = bench_cfg(kw)
    data = load_run_data(cfg, {"test": kw["files"]})
    cache = str(tmp_path / "out" / AUDIT_CACHE)
    decoded = []
    real = image_check.decode_size
    monkeypatch.setattr(image_check, "decode_size", lambda path, full=True: decoded.append(path) or real(path, full))
    errors, stats = audit_records(data, cache_path=cache)
    assert not errors and (stats["decoded"], stats["cached"]) == (9, 0) and len(decoded) == 9
    assert oct(os.stat(cache).st_mode & 0o777) != oct(0o600)  # the ordinary file mode, like every output
    decoded.clear()
    errors, stats = audit_records(data, cache_path=cache)
    assert not errors and (stats["decoded"], stats["cached"]) == (0, 9) and decoded == []
    path = tmp_path / "img" / "3.jpg"
    path.write_bytes(path.read_bytes()[:200])  # a changed file (size and mtime) is decoded again
    errors, stats = audit_records(data, cache_path=cache)
    assert decoded == [str(path)] and (stats["decoded"], stats["cached"]) == (1, 8)
    assert [e.reason for e in errors.values()] == ["bad_image"]
    decoded.clear()
    errors, _ = audit_records(data, cache_path=cache)  # a bad file stays bad without being decoded again
    assert decoded == [] and [e.record_id for e in errors.values()] == [13]
    _, stats = audit_records(data, cache_path=None)  # no cache: everything decoded
    assert stats["decoded"] == 9


def test_check_images_false_reads_headers_only(tmp_path, tok, capsys):  # noqa: F811
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    path = tmp_path / "img" / "2.jpg"
    path.write_bytes(path.read_bytes()[:-200])  # truncated: the header is intact
    capsys.readouterr()
    ds = make_dataset(kw, tok, check_images=False)
    out = capsys.readouterr().out
    assert len(ds) == 9 and "9 headers read (data.check_images: false)" in out and "all usable" in out
    assert not (tmp_path / "out" / AUDIT_CACHE).exists()  # header reads are not cached
    with pytest.raises(BadRecordsError, match=r"\[bad_image\] record id=12 \(index 2\).*truncated"):
        make_dataset(kw, tok)  # the default decodes every pixel


def test_unreadable_image_cache_is_rebuilt(tmp_path, capsys):
    kw = write_bench(tmp_path, make_records())
    cache = tmp_path / "out" / AUDIT_CACHE
    cache.parent.mkdir()
    cache.write_text("{not json")
    errors, stats = audit_records(load_run_data(bench_cfg(kw), {"test": kw["files"]}), cache_path=str(cache))
    assert not errors and stats["decoded"] == 9 and "ignoring the unreadable image cache" in capsys.readouterr().out
    assert json.loads(cache.read_text())["kind"] == "image_audit"


def test_summary_is_one_line_with_the_counts(tmp_path, tok, capsys):  # noqa: F811
    kw = write_bench(tmp_path, make_records())
    make_dataset(kw, tok)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("[audit] 9 records (test 9), 9 images (9 decoded, 0 unchanged")
    assert out.rstrip().endswith("all usable")
    make_dataset(kw, tok)
    assert "(0 decoded, 9 unchanged since the last audit)" in capsys.readouterr().out


def test_every_bad_record_of_a_split_is_refused_even_with_skip(tmp_path, tok):  # noqa: F811
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    for rec in recs:
        os.remove(tmp_path / rec["image"])
    with pytest.raises(BadRecordsError, match=r"no usable record left in split 'test' \(9 bad: missing_image 9\)"):
        make_dataset(kw, tok, on_bad="skip")


def test_fail_lists_the_first_records_and_the_total(tmp_path, tok):  # noqa: F811
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    for rec in recs[1:8]:
        os.remove(tmp_path / rec["image"])
    with pytest.raises(BadRecordsError) as info:
        make_dataset(kw, tok)
    message = str(info.value)
    assert "found 7 bad record(s) (missing_image 7)" in message and "; ... and 2 more." in message
    assert [f"id={i} " in message for i in range(10, 19)] == [False] + [True] * 5 + [False] * 3


def test_train_stops_before_training_on_a_truncated_val_jpeg(tiny_benchmark, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(tiny_benchmark["root"], root)
    with open(root / "metadata" / "val.json") as f:
        victim = json.load(f)[5]
    image = root / victim["image"]
    image.write_bytes(image.read_bytes()[:len(image.read_bytes()) // 2])
    out = tmp_path / "run"
    bench = dict(tiny_benchmark, root=str(root), tokenizer=str(root / "tokenizer"))
    proc = subprocess.run([sys.executable, "train.py", "--config", "configs/debug.yaml", "--opts",
                           *tiny_opts(bench, str(out))], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"record id={victim['id']!r} (index 5) in {root}/metadata/val.json" in errors[0]
    assert "[bad_image]" in errors[0] and "truncated" in errors[0]
    assert "epoch" not in proc.stdout and sorted(os.listdir(out)) == [AUDIT_CACHE]  # no model, no checkpoint
