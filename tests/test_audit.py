"""The up-front data audit (datasets/audit.py, datasets/image_check.py): duplicate ids within and across splits
(test.py: also against the train and val metadata), image paths outside the data root (also in
preprocess/detect_faces.py), metadata that is not UTF-8, stop-word entries of another caption, the image cache that
makes a rerun skip decoding, the one summary line, rank 0 auditing while the other ranks wait, train.py stopping on a
truncated JPEG in val before it builds a model, and test.py refusing broken inputs with one line. The per-record
cases shared with the old dataset checks are in tests/test_bad_input.py."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from datasets import audit, image_check
from datasets.audit import (
    AUDIT_CACHE,
    BadRecordsError,
    audit_records,
    audit_run,
    load_run_data,
    reference_files,
    split_files,
)
from datasets.caches import load_cache, save_cache
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


def test_stopword_entries_without_a_caption_hash_are_checked_by_count(tmp_path, tok):  # noqa: F811
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    header, entries, _ = load_cache(kw["stopword_cache"])
    entries["15"] = dict(entries["14"])  # record 15's entry is record 14's: another caption, also 7 words
    save_cache(kw["stopword_cache"], header, entries)
    with pytest.raises(BadRecordsError, match=r"\[stopword_mismatch\] record id=15 .*made from another caption"):
        make_dataset(kw, tok)
    old = {key: {k: v for k, v in entry.items() if k != "caption_hash"} for key, entry in entries.items()}
    save_cache(kw["stopword_cache"], header, old)  # a cache made before the hash: the word count still matches
    assert len(make_dataset(kw, tok)) == 9
    save_cache(kw["stopword_cache"], header, entries)
    assert build_masks([dict(r, _file="meta.json") for r in recs], kw["stopword_cache"], progress=False) == (1, 9)
    assert len(make_dataset(kw, tok)) == 9  # the stale entry was made again; the others were kept


def _reference_bench(tmp_path):
    """meta.json as the test split, train.json whose record 1 has test record 3's id (13), no val file."""
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    train = [dict(r, id=100 + k, image="img/absent.jpg", fake_image_box=[0, 0, 9999, 9999]) for k, r in
             enumerate(recs)]  # never validated, decoded or looked up in a cache: ids only
    train[1]["id"] = 13
    _write_json(tmp_path / "train.json", train + ["not a record", {"no": "id"}])
    return kw, bench_cfg(kw, train_files=["train.json"], val_files=["val.json"])


def test_test_split_ids_are_checked_against_train_and_val(tmp_path, capsys):
    kw, cfg = _reference_bench(tmp_path)
    assert reference_files(cfg, "test") == {"train": ["train.json"]}  # val.json does not exist: no error
    assert reference_files(bench_cfg(kw), "test") == {}  # every split reads meta.json: no self-comparison
    with pytest.raises(BadRecordsError, match=r"found 1 bad record\(s\) \(duplicate_id 1\): \[duplicate_id\] "
                                              r"record id=13 \(index 3\) in \S*meta\.json: duplicate id: the record "
                                              r"at index 1 of \S*train\.json has the same id"):
        audit_run(cfg, split_files(cfg, ["test"]), references=reference_files(cfg, "test"))
    skip = bench_cfg(kw, train_files=["train.json"], val_files=["val.json"], on_bad_record="skip")
    capsys.readouterr()
    audited = audit_run(skip, split_files(skip, ["test"]), references=reference_files(skip, "test"))
    out = capsys.readouterr().out
    assert "9 records (test 9)" in out and "1 left out (data.on_bad_record: skip): duplicate_id 1" in out
    assert [r["id"] for r in audited.splits["test"]] == [10, 11, 12, 14, 15, 16, 17, 18]
    assert len(audited.references["train"]) == 9  # the two entries without an id are not compared


class FakeDist:
    """Just enough of ``torch.distributed`` for ``audit_run`` as one rank of a pretend two-process run: rank 0 keeps
    what it broadcasts in ``sent``, any other rank receives ``sent``."""

    def __init__(self, rank, sent=None):
        self.rank, self.sent, self.destroyed = rank, sent, []

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def new_group(self, backend, timeout):
        assert backend == "gloo" and timeout.total_seconds() >= 3600
        return "audit-group"

    def get_rank(self):
        return self.rank

    def broadcast_object_list(self, box, src, group):
        assert src == 0 and group == "audit-group"
        if self.rank == 0:
            self.sent = box[0]
        else:
            box[0] = self.sent

    def destroy_process_group(self, group):
        self.destroyed.append(group)


def test_rank_1_waits_for_rank_0_and_decodes_nothing(tmp_path, monkeypatch, capsys):
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    os.remove(tmp_path / recs[3]["image"])
    cfg = bench_cfg(kw, on_bad_record="skip")
    rank0 = FakeDist(0)
    monkeypatch.setattr(audit, "tdist", rank0)
    ours = audit_run(cfg, {"test": kw["files"]})
    assert "1 left out (data.on_bad_record: skip): missing_image 1" in capsys.readouterr().out
    assert rank0.sent["drop"] == [("test", 3)] and rank0.destroyed == ["audit-group"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("a rank other than 0 decoded images")

    monkeypatch.setattr(audit, "check_images", no_decoding)
    rank1 = FakeDist(1, rank0.sent)
    monkeypatch.setattr(audit, "tdist", rank1)
    theirs = audit_run(cfg, {"test": kw["files"]})
    assert capsys.readouterr().out == ""  # only rank 0 prints the summary
    assert [r["id"] for r in theirs.splits["test"]] == [r["id"] for r in ours.splits["test"]]
    assert 13 not in [r["id"] for r in theirs.splits["test"]] and rank1.destroyed == ["audit-group"]
    refused = {"error": "the data audit found 1 bad record(s) (missing_image 1): ...", "type": "BadRecordsError"}
    monkeypatch.setattr(audit, "tdist", FakeDist(1, refused))
    with pytest.raises(BadRecordsError, match=r"^the data audit found 1 bad record\(s\)"):
        audit_run(cfg, {"test": kw["files"]})  # rank 0's refusal, on this rank too
    monkeypatch.setattr(audit, "tdist", FakeDist(1, {"error": "rank 0 crashed", "crash": True}))
    with pytest.raises(RuntimeError, match="rank 0 crashed"):
        audit_run(cfg, {"test": kw["files"]})


def _plain_state_dict(root, ckpt):
    return f"{ckpt} is not a checkpoint of train.py: no 'model' entry"


def _latin1_test_metadata(root, ckpt):
    path = root / "metadata" / "test.json"
    path.write_bytes(path.read_text().replace('"text": "', '"text": "Montr\u00e9al ', 1).encode("latin-1"))
    return f"metadata file {path} is not UTF-8 text: byte 0xe9 at line "


def _test_id_also_in_train(root, ckpt):
    with open(root / "metadata" / "train.json") as f:
        train_id = json.load(f)[0]["id"]
    with open(root / "metadata" / "test.json") as f:
        test = json.load(f)
    test[2]["id"] = train_id
    _write_json(root / "metadata" / "test.json", test)
    return (f"[duplicate_id] record id={train_id!r} (index 2) in {root}/metadata/test.json: duplicate id: the record "
            f"at index 0 of {root}/metadata/train.json has the same id")


@pytest.mark.parametrize("damage", [_plain_state_dict, _latin1_test_metadata, _test_id_also_in_train])
def test_test_py_refuses_broken_inputs_with_one_line(tiny_benchmark, tmp_path, damage):
    """test.py on a checkpoint that is a plain state dict, test metadata that is not UTF-8, a test id that is also a
    train id: exit status 2, one ``error:`` line naming the file or record, no metrics file."""
    root = tmp_path / "bench"
    shutil.copytree(tiny_benchmark["root"], root, ignore=shutil.ignore_patterns("tokenizer"))
    ckpt = tmp_path / "weights.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, ckpt)
    expected = damage(root, ckpt)
    bench = dict(tiny_benchmark, root=str(root))
    proc = subprocess.run([sys.executable, "test.py", "--config", "configs/debug.yaml", "--checkpoint", str(ckpt),
                           "--out", str(tmp_path / "eval"), "--opts", *tiny_opts(bench, str(tmp_path / "run"))],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert expected in lines[0], (expected, lines[0])
    assert not (tmp_path / "eval" / "metrics.json").exists() and "evaluated" not in proc.stdout
