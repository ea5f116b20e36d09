"""Face-box cache (preprocess/detect_faces.py): from-metadata cache, resume, kill, bad images (some: recorded; all:
one error line), real MTCNN."""
import json
import os

import pytest
from PIL import Image

from datasets.caches import load_cache, make_header, save_cache
from preprocess import detect_faces as df
from preprocess import make_synthetic as ms
from utils.errors import BadInputError, exit_on_user_error


@pytest.fixture()
def data(tmp_path):
    """Eight synthetic records (exact DGM4 format) under tmp_path."""
    ms.main(["--out", str(tmp_path), "--train", "8", "--val", "0", "--test", "0", "--seed", "11"])
    with open(tmp_path / "metadata" / "train.json") as f:
        return tmp_path, json.load(f)


def _run(root, out, *extra):
    return df.main(["--data-root", str(root), "--metadata", "metadata/train.json", "--out", str(out), *extra])


def test_from_metadata_cache(data):
    root, recs = data
    out = root / "faces.json"
    summary = _run(root, out, "--from-metadata")
    header, entries, errors = load_cache(str(out), kind="faces")
    assert header["detector"] == "metadata" and header["kind"] == "faces" and not errors
    assert summary["processed"] == 8 and set(entries) == {r["image"] for r in recs}
    for r in recs:
        entry = entries[r["image"]]
        assert entry["boxes"] == r["mtcnn_boxes"]
        assert len(entry["scores"]) == len(entry["boxes"])
        assert entry["scores"] == sorted(entry["scores"], reverse=True) and entry["scores"][:1] in ([], [1.0])
        with Image.open(root / r["image"]) as im:
            assert entry["size"] == list(im.size)


def test_resume_skips_finished_and_picks_up_partial_cache(data):
    root, recs = data
    out = root / "faces.json"
    header = make_header("faces", detector="metadata", thresholds=None, min_face_size=None, metadata=[])
    sentinel = {"boxes": [[1, 2, 3, 4]], "scores": [0.5], "size": [9, 9]}
    save_cache(str(out), header, {recs[0]["image"]: sentinel, recs[3]["image"]: sentinel})  # a partial cache
    summary = _run(root, out, "--from-metadata")
    assert summary["processed"] == 6 and summary["skipped"] == 2
    _, entries, _ = load_cache(str(out))
    assert entries[recs[0]["image"]] == sentinel and entries[recs[3]["image"]] == sentinel
    assert len(entries) == 8 and entries[recs[1]["image"]]["boxes"] == recs[1]["mtcnn_boxes"]
    assert _run(root, out, "--from-metadata")["processed"] == 0


def test_kill_loses_at_most_the_chunk_in_flight(data, monkeypatch):
    root, _ = data
    out = root / "faces.json"
    real, calls = df.process_item, []

    def dying(item):
        calls.append(item[0])
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(item)

    monkeypatch.setattr(df, "process_item", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(root, out, "--from-metadata", "--chunk", "2")
    _, entries, _ = load_cache(str(out))
    assert set(entries) == set(calls[:4])  # two finished chunks were saved
    monkeypatch.setattr(df, "process_item", real)
    assert _run(root, out, "--from-metadata")["processed"] == 4


def test_unreadable_images_are_recorded_not_fatal(data):
    root, recs = data
    (root / recs[2]["image"]).write_bytes(b"not a jpeg at all")
    os.remove(root / recs[5]["image"])
    out = root / "faces.json"
    summary = _run(root, out, "--from-metadata")
    _, entries, errors = load_cache(str(out))
    assert summary["errors"] == 2 and set(errors) == {recs[2]["image"], recs[5]["image"]}
    assert f"id={recs[2]['id']}" in errors[recs[2]["image"]] and "train.json" in errors[recs[2]["image"]]
    assert len(entries) == 6
    Image.new("RGB", (300, 280)).save(root / recs[5]["image"])  # fixed: a rerun retries only the failures
    summary = _run(root, out, "--from-metadata")
    _, entries, errors = load_cache(str(out))
    assert summary["processed"] == 2 and set(errors) == {recs[2]["image"]}
    assert entries[recs[5]["image"]]["size"] == [300, 280]


def test_no_readable_image_at_all_is_one_error_line(data, capsys):
    """Every image missing (a wrong --data-root, archives not extracted): exit status 2 and one line naming the count
    and the first missing path, not exit status 0 with an empty cache."""
    root, recs = data
    for rec in recs:
        os.remove(root / rec["image"])
    out = root / "faces.json"
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(_run, root, out, "--from-metadata")
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: none of the 8 image(s) of the metadata could be read; the "
                                                     f"first: record id={recs[0]['id']!r} (index 0) in "), errors
    assert f"image {root / recs[0]['image']} does not exist" in errors[0] and f"'errors' in {out}" in errors[0]
    _, entries, cached_errors = load_cache(str(out))
    assert entries == {} and len(cached_errors) == 8  # the failures are kept for the rerun
    Image.new("RGB", (30, 20)).save(root / recs[4]["image"])  # one readable image: partial failure, not fatal
    assert _run(root, out, "--from-metadata")["errors"] == 7
    (root / "metadata" / "one.json").write_text(json.dumps([recs[0]]))  # metadata of one missing image
    with pytest.raises(BadInputError, match=r"none of the 1 image\(s\)"):
        df.main(["--data-root", str(root), "--metadata", "metadata/one.json", "--out", str(root / "one.json"),
                 "--from-metadata"])


def test_settings_mismatch_refuses_to_mix_caches(data):
    root, _ = data
    out = root / "faces.json"
    save_cache(str(out), make_header("faces", detector="mtcnn", thresholds=[0.6, 0.7, 0.8], min_face_size=20), {})
    with pytest.raises(ValueError, match="detector"):
        _run(root, out, "--from-metadata")


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_real_mtcnn_finds_the_astronaut(tmp_path):
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("mtcnn")
    path = tmp_path / "DGM4" / "origin" / "bbc" / "0000" / "1.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(skdata.astronaut()).save(path, quality=95)
    (tmp_path / "metadata").mkdir()
    rec = {"id": 1, "image": "DGM4/origin/bbc/0000/1.jpg", "text": "An astronaut poses for a portrait.",
           "fake_cls": "orig", "fake_image_box": [], "fake_text_pos": [], "mtcnn_boxes": []}
    (tmp_path / "metadata" / "train.json").write_text(json.dumps([rec]))
    out = tmp_path / "faces.json"
    summary = _run(tmp_path, out)
    header, entries, errors = load_cache(str(out), kind="faces")
    assert not errors and header["detector"] == "mtcnn" and header["package"].startswith("mtcnn ")
    assert header["thresholds"] == list(df.DEFAULT_THRESHOLDS) and header["min_face_size"] == 20
    entry = entries[rec["image"]]
    assert entry["size"] == [512, 512] and entry["scores"][0] > 0.9
    assert entry["scores"] == sorted(entry["scores"], reverse=True)
    best = entry["boxes"][0]
    assert _iou(best, [180, 64, 265, 171]) > 0.7, best  # the face
    print(f"MTCNN on astronaut: best box {best} score {entry['scores'][0]:.4f}, "
          f"{summary['seconds_per_image']:.3f} s/image after start-up")
