"""Every bad-input case of the data pipeline, found by the up-front audit (datasets/audit.py) before any sample is
read: fail (one BadRecordsError line naming id, index, metadata file and reason) and skip (the summary line counts
it per reason, the record is left out); plus image formats that must be converted, not rejected
(datasets/records.py). More audit cases (duplicate ids, paths outside the root, non-UTF-8 metadata, the image
cache, train.py end to end): tests/test_audit.py."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from datasets.audit import BadRecordsError
from datasets.caches import load_cache, save_cache
from datasets.records import RecordError, read_image
from tests.test_dataset import (
    H,
    W,
    make_dataset,
    make_records,
    tok,  # noqa: F401  (module-scoped tokenizer fixture)
    write_bench,
    write_image,
)

# (record index, mutation, reason); record k has fake_cls list(FAKE_CLS)[k]: 0 orig, 1 face_swap, 3 text_swap
METADATA_CASES = {
    "missing_text": (2, lambda r: r.pop("text"), "missing_field"),
    "missing_box_field": (0, lambda r: r.pop("fake_image_box"), "missing_field"),
    "unknown_fake_cls": (4, lambda r: r.update(fake_cls="face_morph"), "unknown_fake_cls"),
    "fake_cls_not_a_string": (4, lambda r: r.update(fake_cls=["orig"]), "unknown_fake_cls"),
    "empty_caption": (3, lambda r: r.update(text="   "), "empty_caption"),
    "caption_empty_after_normalisation": (0, lambda r: r.update(text="?! ... ;"), "empty_caption"),
    "box_on_orig": (0, lambda r: r.update(fake_image_box=[8, 6, 40, 30]), "bad_box"),
    "box_on_text_swap": (3, lambda r: r.update(fake_image_box=[8, 6, 40, 30]), "bad_box"),
    "no_box_on_face_swap": (1, lambda r: r.update(fake_image_box=[]), "bad_box"),
    "box_x1_after_x2": (1, lambda r: r.update(fake_image_box=[40, 6, 8, 30]), "bad_box"),
    "box_three_numbers": (1, lambda r: r.update(fake_image_box=[1, 2, 3]), "bad_box"),
    "box_not_numbers": (1, lambda r: r.update(fake_image_box=["1", 2, 3, 4]), "bad_box"),
    "text_pos_out_of_range": (3, lambda r: r.update(fake_text_pos=[1, 99]), "bad_text_pos"),
    "text_pos_negative": (3, lambda r: r.update(fake_text_pos=[-1]), "bad_text_pos"),
    "text_pos_on_orig": (0, lambda r: r.update(fake_text_pos=[1]), "bad_text_pos"),
    "text_pos_on_face_swap": (1, lambda r: r.update(fake_text_pos=[1]), "bad_text_pos"),
    "no_text_pos_on_text_swap": (3, lambda r: r.update(fake_text_pos=[]), "bad_text_pos"),
}


def id_and_file(k):
    return rf"id={10 + k}\b \(index {k}\) in \S*meta\.json"


def check_fail_and_skip(kw, tok, capsys, k, reason):  # noqa: F811
    """fail: one BadRecordsError line naming record 10 + k (id, index, file) and ``reason``; skip: the summary line
    counts it under ``reason`` and the dataset leaves it out. Returns the failure message."""
    with pytest.raises(BadRecordsError, match=id_and_file(k)) as info:
        make_dataset(kw, tok)
    message = str(info.value)
    assert f"found 1 bad record(s) ({reason} 1): [{reason}] record id={10 + k}" in message and "\n" not in message
    capsys.readouterr()
    ds = make_dataset(kw, tok, on_bad="skip")
    out = capsys.readouterr().out
    assert f"1 left out (data.on_bad_record: skip): {reason} 1" in out and out.count("[audit]") == 1
    assert len(ds) == 8 and 10 + k not in [r["id"] for r in ds.records]
    assert all(ds[i]["image"].shape == (3, 32, 32) for i in range(len(ds)))
    return message


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_metadata_errors_fail_and_skip(tmp_path, tok, case, capsys):  # noqa: F811
    k, mutate, reason = METADATA_CASES[case]
    recs = make_records()
    mutate(recs[k])
    kw = write_bench(tmp_path, recs)
    check_fail_and_skip(kw, tok, capsys, k, reason)


def drop_face_entry(kw, recs, k):
    header, entries, _ = load_cache(kw["face_cache"])
    del entries[recs[k]["image"]]
    save_cache(kw["face_cache"], header, entries)


def drop_stopword_entry(kw, recs, k):
    header, entries, _ = load_cache(kw["stopword_cache"])
    del entries[str(recs[k]["id"])]
    save_cache(kw["stopword_cache"], header, entries)


def short_stopword_mask(kw, recs, k):
    header, entries, _ = load_cache(kw["stopword_cache"])
    entries[str(recs[k]["id"])]["mask"].pop()
    save_cache(kw["stopword_cache"], header, entries)


def stopword_entry_of_another_caption(kw, recs, k):
    """Record k's entry replaced by that of record k - 1: another caption with the same word count (7)."""
    header, entries, _ = load_cache(kw["stopword_cache"])
    other = entries[str(recs[k - 1]["id"])]
    assert other["n_words"] == entries[str(recs[k]["id"])]["n_words"] and recs[k - 1]["text"] != recs[k]["text"]
    entries[str(recs[k]["id"])] = other
    save_cache(kw["stopword_cache"], header, entries)


def malformed_face_entry(kw, recs, k):
    header, entries, _ = load_cache(kw["face_cache"])
    entries[recs[k]["image"]]["scores"] = [0.9]  # 2 boxes, 1 score
    save_cache(kw["face_cache"], header, entries)


CACHE_CASES = {"no_face_entry": (drop_face_entry, "no_cache_entry"),
               "no_stopword_entry": (drop_stopword_entry, "no_cache_entry"),
               "stopword_length_mismatch": (short_stopword_mask, "stopword_mismatch"),
               "stopword_entry_of_another_caption": (stopword_entry_of_another_caption, "stopword_mismatch"),
               "malformed_face_entry": (malformed_face_entry, "bad_cache_entry")}


@pytest.mark.parametrize("case", sorted(CACHE_CASES))
def test_cache_errors_fail_and_skip(tmp_path, tok, case, capsys):  # noqa: F811
    damage, reason = CACHE_CASES[case]
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    damage(kw, recs, 5)
    message = check_fail_and_skip(kw, tok, capsys, 5, reason)
    assert ("faces.json" if "face" in case else "stopwords.json") in message


def test_wrong_folder_layout_fails_at_load(tmp_path, tok, capsys):  # noqa: F811
    recs = make_records()
    recs[6]["image"] = "DGM4/manipulation/infoswap/6.jpg"  # folder never extracted
    kw = write_bench(tmp_path, recs, images=False)
    for rec in recs[:6] + recs[7:]:
        write_image(os.path.join(str(tmp_path), rec["image"]))
    message = check_fail_and_skip(kw, tok, capsys, 6, "missing_image")
    assert "infoswap/6.jpg does not exist" in message and "extracted" in message


def test_missing_cache_file(tmp_path, tok):  # noqa: F811
    kw = write_bench(tmp_path, make_records())
    os.remove(kw["face_cache"])
    with pytest.raises(FileNotFoundError, match="faces.json"):
        make_dataset(kw, tok, on_bad="skip")


def noisy_jpeg_bytes(size=(W, H)):
    arr = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def remove_image(path, kw):
    os.remove(path)


def write_bytes(data):
    def damage(path, kw):
        with open(path, "wb") as f:
            f.write(data)
    return damage


def stale_face_size(path, kw):
    header, entries, _ = load_cache(kw["face_cache"])
    entries["img/1.jpg"]["size"] = [W * 2, H * 2]
    save_cache(kw["face_cache"], header, entries)


def big_box(path, kw):
    import json
    meta = os.path.join(kw["root"], "meta.json")
    with open(meta) as f:
        recs = json.load(f)
    recs[1]["fake_image_box"] = [50, 40, 200, 90]  # far outside the 64x48 image
    with open(meta, "w") as f:
        json.dump(recs, f)


JPEG = noisy_jpeg_bytes()
IMAGE_CASES = {
    "missing_image": (remove_image, "missing_image"),
    "not_an_image": (write_bytes(b"this is not an image"), "bad_image"),
    "empty_file": (write_bytes(b""), "bad_image"),
    "truncated_jpeg": (write_bytes(JPEG[:len(JPEG) // 2]), "bad_image"),
    "corrupt_jpeg_header": (write_bytes(b"\xff\xd8" + bytes(range(256)) * 2), "bad_image"),
    "corrupt_jpeg_data": (write_bytes(JPEG[:400] + bytes(np.random.default_rng(1).integers(
        0, 256, len(JPEG) - 402, dtype=np.uint8)) + b"\xff\xd9"), "bad_image"),
    "box_outside_image": (big_box, "box_outside_image"),
    "stale_face_cache_size": (stale_face_size, "stale_face_cache"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_image_errors_fail_and_skip(tmp_path, tok, case, capsys):  # noqa: F811
    """Found by the audit before any sample is read (a truncated JPEG no longer waits for its batch)."""
    damage, reason = IMAGE_CASES[case]
    kw = write_bench(tmp_path, make_records())
    damage(os.path.join(str(tmp_path), "img", "1.jpg"), kw)
    message = check_fail_and_skip(kw, tok, capsys, 1, reason)
    assert "img/1.jpg" in message


def save_as(path, img, fmt):
    img.save(path, format=fmt)


CONVERTED = {
    "grayscale_jpeg": lambda img, p: save_as(p, img.convert("L"), "JPEG"),
    "cmyk_jpeg": lambda img, p: save_as(p, img.convert("CMYK"), "JPEG"),
    "png_content_in_jpg": lambda img, p: save_as(p, img, "PNG"),
    "rgba_png_in_jpg": lambda img, p: save_as(p, img.convert("RGBA"), "PNG"),
    "palette_png_in_jpg": lambda img, p: save_as(p, img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
}


@pytest.mark.parametrize("case", sorted(CONVERTED))
@pytest.mark.parametrize("on_bad", ["fail", "skip"])
def test_odd_formats_are_converted(tmp_path, tok, case, on_bad):  # noqa: F811
    kw = write_bench(tmp_path, make_records())
    path = os.path.join(str(tmp_path), "img", "1.jpg")
    original = Image.open(path).convert("RGB")
    CONVERTED[case](original, path)
    ds = make_dataset(kw, tok, on_bad=on_bad)
    assert len(ds) == 9
    img = read_image(path, ds.records[1])
    assert img.mode == "RGB" and img.size == (W, H)
    diff = np.abs(np.asarray(img, dtype=float) - np.asarray(original, dtype=float)).mean()
    assert diff < 20  # same picture (lossy/gray/CMYK round trips allowed)
    s = ds[1]
    assert s["image"].shape == (3, 32, 32) and s["orig_size"].tolist() == [W, H]


def test_read_image_errors_name_id_and_file(tmp_path):
    rec = {"id": 77, "_file": "meta/val.json"}
    with pytest.raises(RecordError, match=r"id=77.*meta/val\.json.*missing\.jpg") as info:
        read_image(str(tmp_path / "missing.jpg"), rec)
    assert info.value.reason == "missing_image"
    (tmp_path / "t.jpg").write_bytes(JPEG[:len(JPEG) // 2])
    with pytest.raises(RecordError, match=r"id=77.*meta/val\.json.*truncated") as info:
        read_image(str(tmp_path / "t.jpg"), rec)
    assert info.value.reason == "bad_image"
