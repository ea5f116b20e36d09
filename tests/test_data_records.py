"""Metadata loading and validation, the fake_cls table, image reading (datasets/records.py)."""
import json

import numpy as np
import pytest
from PIL import Image

from datasets.records import (
    FAKE_CLS,
    RecordError,
    check_box_in_image,
    check_record,
    has_image_fake,
    has_text_fake,
    load_metadata,
    outside_root,
    read_image,
    read_image_sized,
    read_metadata,
)
from utils.errors import BadInputError, MissingDataError, UserError


def good_record(i, cls="orig"):
    rec = {"id": i, "image": f"img/{i}.jpg", "text": "A man holds a red umbrella in Paris.", "fake_cls": cls,
           "fake_image_box": [], "fake_text_pos": []}
    if has_image_fake(cls):
        rec["fake_image_box"] = [2, 3, 20, 30]
    if has_text_fake(cls):
        rec["fake_text_pos"] = [1, 5]
    return rec


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_fake_cls_table():
    assert len(FAKE_CLS) == 9
    assert FAKE_CLS["orig"] == (0, 0, 0, 0)
    for name, target in FAKE_CLS.items():
        parts = set(name.split("&")) - {"orig"}
        expect = tuple(int(p in parts) for p in ("face_swap", "face_attribute", "text_swap", "text_attribute"))
        assert target == expect, name


def test_load_metadata_multiple_files(tmp_path, capsys):
    write_json(tmp_path / "meta" / "a.json", [good_record(i, c) for i, c in enumerate(FAKE_CLS)])
    write_json(tmp_path / "meta" / "b.json", [good_record(100, "face_swap"), good_record(101)])
    records, skipped = load_metadata(str(tmp_path), ["meta/a.json", "meta/b.json"])
    assert [r["id"] for r in records] == list(range(9)) + [100, 101]
    assert records[0]["_file"].endswith("meta/a.json") and records[-1]["_file"].endswith("meta/b.json")
    assert not skipped
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "a.json: 9 records" in lines[0] and "b.json: 2 records" in lines[1]
    assert "11 total" in lines[2] and "face_swap 2 (18.2%)" in lines[2] and "orig 2 (18.2%)" in lines[2]


def test_load_metadata_file_errors(tmp_path):
    with pytest.raises(MissingDataError, match="nope.json"):
        load_metadata(str(tmp_path), ["nope.json"])
    write_json(tmp_path / "obj.json", {"id": 1})
    with pytest.raises(ValueError, match="JSON array"):
        load_metadata(str(tmp_path), ["obj.json"])
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(BadInputError, match=r"broken\.json is not valid JSON \(line 1, column 3"):
        load_metadata(str(tmp_path), ["broken.json"])
    (tmp_path / "latin.json").write_bytes('[\n{"text": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(BadInputError, match=r"latin\.json is not UTF-8 text: byte 0xe9 at line 2 \(byte offset 15"):
        load_metadata(str(tmp_path), ["latin.json"])
    with pytest.raises(ValueError, match="on_bad"):
        load_metadata(str(tmp_path), ["obj.json"], on_bad="ignore")


def test_record_error_names_id_and_file():
    err = RecordError(42, "meta/train.json", "something broke", "bad_box")
    assert isinstance(err, ValueError) and isinstance(err, UserError)  # an entry point prints it as one line
    assert "42" in str(err) and "meta/train.json" in str(err) and "something broke" in str(err)
    assert err.reason == "bad_box" and err.record_id == 42
    assert str(RecordError(7, "v.json", "bad", position=3)) == "record id=7 (index 3) in v.json: bad"


def test_read_metadata_keeps_file_and_index_and_wraps_non_objects(tmp_path):
    write_json(tmp_path / "m.json", [good_record(5), 17, good_record(6)])
    recs = read_metadata(str(tmp_path), "m.json")
    assert [(r.get("id"), r["_pos"]) for r in recs] == [(5, 0), (None, 1), (6, 2)]
    assert all(r["_file"].endswith("m.json") for r in recs)
    check_record(recs[0])
    with pytest.raises(RecordError, match=r"id=None \(index 1\) in \S*m\.json: record must be a JSON object"):
        check_record(recs[1])


@pytest.mark.parametrize("path, outside", [("img/a.jpg", False), ("a/../b.jpg", False), ("./x/y.jpg", False),
                                           ("../a.jpg", True), ("img/../../a.jpg", True), ("/abs/a.jpg", True),
                                           ("..", True), ("..a/b.jpg", False)])
def test_outside_root(path, outside):
    assert outside_root(path) is outside


def save(img, path, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return str(path)


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"),
                                      ("RGB", "PNG"), ("I;16", "PNG"), ("LA", "PNG")])
def test_read_image_converts_to_rgb(tmp_path, mode, fmt):
    rgb = Image.fromarray((np.arange(40 * 30 * 3) % 251).astype(np.uint8).reshape(30, 40, 3))
    src = rgb.convert(mode) if mode not in ("I;16",) else Image.fromarray(
        (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16))
    path = save(src, tmp_path / "x.jpg", fmt)  # PNG content behind a .jpg name on purpose
    img = read_image(path, {"id": 7, "_file": "m.json"})
    assert img.mode == "RGB" and img.size == (40, 30)
    arr = np.asarray(img)
    assert arr.shape == (30, 40, 3) and arr.std() > 0


def test_read_image_draft_keeps_original_size(tmp_path):
    arr = (np.random.default_rng(0).random((800, 1200, 3)) * 255).astype(np.uint8)
    path = save(Image.fromarray(arr), tmp_path / "big.jpg", "JPEG")
    img, size = read_image_sized(path, None, draft_size=(256, 256))
    assert size == (1200, 800)
    assert img.size == (600, 400)  # DCT-scaled by 1/2: 1/4 would make the height 200 < 256
    full, size2 = read_image_sized(path, None)
    assert size2 == full.size == (1200, 800)


def test_check_box_in_image_tolerance():
    rec = {"id": 3, "_file": "m.json", "fake_image_box": [-2, 0, 50, 40]}
    check_box_in_image(rec, (100, 80), tolerance=0.05)  # 2 px out: within 5 px
    with pytest.raises(RecordError, match=r"id=3.*m\.json.*outside"):
        check_box_in_image(rec, (100, 80), tolerance=0.0)
    check_box_in_image({"id": 4, "fake_image_box": []}, (10, 10))
