"""Synthetic DGM4-format benchmark (preprocess/make_synthetic.py): format fidelity, determinism, trace locality."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from datasets.records import FAKE_CLS, load_metadata
from preprocess import make_synthetic as ms

FIELDS = {"id", "image", "text", "fake_cls", "fake_image_box", "fake_text_pos", "mtcnn_boxes"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    stats = ms.main(["--out", str(out), "--train", "320", "--val", "20", "--test", "20", "--seed", "3"])
    return out, stats


def _load(out, split):
    with open(os.path.join(out, "metadata", f"{split}.json")) as f:
        return json.load(f)


def test_fields_and_types_exactly_dgm4(generated):
    out, _ = generated
    recs = _load(out, "train")
    assert isinstance(recs, list) and len(recs) == 320
    for r in recs:
        assert set(r) == FIELDS, r
        assert type(r["id"]) is int and isinstance(r["image"], str) and isinstance(r["text"], str)
        assert r["fake_cls"] in FAKE_CLS
        assert r["image"].startswith("DGM4/manipulation/" if r["fake_cls"].startswith("face") else "DGM4/origin/")
        image_fake, text_fake = any(FAKE_CLS[r["fake_cls"]][:2]), any(FAKE_CLS[r["fake_cls"]][2:])
        assert (len(r["fake_image_box"]) == 4) == image_fake and (r["fake_image_box"] == []) != image_fake
        assert (len(r["fake_text_pos"]) > 0) == text_fake
        assert all(type(v) is int for v in r["fake_image_box"] + r["fake_text_pos"])
        assert len(r["mtcnn_boxes"]) <= 5
        assert all(len(b) == 4 and all(type(v) is int for v in b) for b in r["mtcnn_boxes"])
    ids = [r["id"] for split in ("train", "val", "test") for r in _load(out, split)]
    assert len(set(ids)) == len(ids)
    # the data engineer's loader accepts every record
    records, skipped = load_metadata(str(out), ["metadata/train.json", "metadata/val.json"], on_bad="fail")
    assert len(records) == 340 and not skipped


def test_boxes_inside_images(generated):
    out, _ = generated
    for r in _load(out, "train")[:120]:
        with Image.open(os.path.join(out, r["image"])) as im:
            w, h = im.size
            assert im.format == "JPEG" and im.mode == "RGB"
        assert 256 <= w <= 400 and 256 <= h <= 400
        for x1, y1, x2, y2 in r["mtcnn_boxes"] + ([r["fake_image_box"]] if r["fake_image_box"] else []):
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, (r["id"], w, h)


def test_fake_text_pos_words_differ_from_original():
    checked = 0
    for i in range(300):
        rec, _, extras = ms.make_sample(5, "train", i)
        words, orig = rec["text"].split(" "), extras["orig_text"].split(" ")
        if not rec["fake_text_pos"]:
            assert rec["text"] == extras["orig_text"]
            continue
        checked += 1
        assert len(words) == len(orig)
        for p in rec["fake_text_pos"]:
            assert words[p] != orig[p], (rec["id"], p)
        untouched = set(range(len(words))) - set(rec["fake_text_pos"])
        assert all(words[p] == orig[p] for p in untouched)
        if rec["fake_cls"].endswith("text_swap"):  # the new words name nobody pictured, and not the place
            swapped = {_bare(words[p]) for p in rec["fake_text_pos"]}
            pictured = {_bare(part) for name in extras["pictured"] for part in name.split(" ")}
            assert not swapped & (pictured | {extras["place"]}), (rec["id"], swapped)
            assert swapped & {_bare(n) for n in ms.FIRST}, rec["text"]  # at least one name was swapped
    assert checked > 40


def _bare(word):
    return re.sub(r"('s)?[,.()\"]*$", "", word).lstrip('("')


def test_class_mix_close_to_target(generated):
    _, stats = generated
    mix = stats["train"]["class_mix"]
    assert sum(v["count"] for v in mix.values()) == 320
    for name, pct in ms.CLASS_PROBS.items():
        assert abs(mix[name]["pct"] - pct) < 1.5, (name, mix[name]["pct"], pct)


def test_stats_file_and_weak_supervision_properties(generated):
    out, stats = generated
    with open(os.path.join(out, "synthetic_stats.json")) as f:
        on_disk = json.load(f)
    assert on_disk["all"]["samples"] == 360
    assert on_disk["generation"]["samples_per_s_wall"] > 0
    assert stats["all"]["box_area_over_image_area"]["pct_below_5"] > 30  # many small manipulated faces
    assert stats["all"]["manipulated_face_detected_pct"] >= 90
    assert set(stats["all"]["faces_per_image"]) == {"1", "2", "3", "4"}


def test_deterministic_per_seed_and_independent_of_order():
    a = [ms.make_sample(7, "val", i) for i in (4, 9)]
    b = [ms.make_sample(7, "val", i) for i in (9, 4)][::-1]
    c = ms.make_sample(8, "val", 4)
    for (ra, ia, _), (rb, ib, _) in zip(a, b):
        assert ra == rb and np.array_equal(ia, ib)
    assert c[0]["text"] != a[0][0]["text"] or not np.array_equal(c[1], a[0][1])


def test_generation_identical_across_runs_and_workers(tmp_path):
    ms.main(["--out", str(tmp_path / "a"), "--train", "12", "--val", "0", "--test", "0", "--seed", "1"])
    ms.main(["--out", str(tmp_path / "b"), "--train", "12", "--val", "0", "--test", "0", "--seed", "1",
             "--workers", "2"])
    ra, rb = _load(tmp_path / "a", "train"), _load(tmp_path / "b", "train")
    assert ra == rb
    for r in ra:
        assert (tmp_path / "a" / r["image"]).read_bytes() == (tmp_path / "b" / r["image"]).read_bytes()


def test_trace_confined_to_fake_box():
    found = 0
    for i in range(60):
        rec, img, _ = ms.make_sample(2, "test", i)
        if not rec["fake_image_box"]:
            continue
        _, clean, _ = ms.make_sample(2, "test", i, strength=0.0)  # same scene, trace of zero amplitude
        diff = np.abs(img.astype(int) - clean.astype(int)).sum(-1)
        x1, y1, x2, y2 = rec["fake_image_box"]
        inside = np.zeros(diff.shape, bool)
        inside[y1:y2, x1:x2] = True
        assert diff[~inside].max() == 0, rec["id"]
        assert diff[inside].mean() > 5, rec["id"]
        found += 1
    assert found > 15


def test_distractor_trace_knob(monkeypatch):
    """--distractor-trace sets the share of background shapes with trace-like blocky noise (0: only the forgery)."""
    calls = []
    real = ms._blocky_noise

    def counting(rng, h, w, sigma, cell):
        calls.append(sigma)
        return real(rng, h, w, sigma, cell)

    monkeypatch.setattr(ms, "_blocky_noise", counting)
    n_fake = 0
    for i in range(30):
        rec, _, _ = ms.make_sample(4, "train", i, distractor_trace=0.0)
        n_fake += bool(rec["fake_image_box"])
    assert len(calls) == n_fake > 0  # one call per forgery trace, none for distractors
    calls.clear()
    for i in range(30):
        ms.make_sample(4, "train", i, distractor_trace=1.0)
    assert len(calls) > n_fake  # every distractor shape now carries the noise
    args = ms.parse_args(["--out", "x", "--distractor-trace", "0.25"])
    assert args.distractor_trace == 0.25


def _area_fractions(face_area):
    fracs = []
    for i in range(40):
        _, _, extras = ms.make_sample(6, "train", i, face_area=face_area)
        w, h = extras["size"]
        fracs += [(x2 - x1) * (y2 - y1) / (w * h) for x1, y1, x2, y2 in extras["faces"]]
    return np.array(fracs)


def test_face_area_knob():
    """--face-area sets the range of face box area / image area (the slot layout can only shrink a face)."""
    default, large = _area_fractions(ms.FACE_AREA), _area_fractions((0.08, 0.12))
    assert (default < 0.02).any() and default.max() < 0.25
    assert large.max() < 0.12 * 1.25 and np.median(large) > 0.05 > np.median(default)
    args = ms.parse_args(["--out", "x", "--face-area", "0.04", "0.25"])
    assert args.face_area == [0.04, 0.25]
    with pytest.raises(SystemExit):
        ms.parse_args(["--out", "x", "--face-area", "0.3", "0.1"])


def test_regeneration_with_other_settings_needs_overwrite(tmp_path, capsys):
    """A second generation into the same folder: same settings pass (identical bytes, caches stay valid); other
    settings stop with the two settings named, since the caches continue by image path and would go stale;
    --overwrite removes the old generation and its caches first."""
    out = str(tmp_path / "syn")
    base = ["--out", out, "--train", "6", "--val", "2", "--test", "2", "--seed", "3"]
    ms.main(base)
    open(os.path.join(out, "faces.json"), "w").close()  # a cache derived from the first generation
    ms.main(base)
    assert os.path.exists(os.path.join(out, "faces.json"))
    with pytest.raises(SystemExit, match="other settings.*--overwrite"):
        ms.main(base + ["--trace-strength", "3"])
    assert os.path.exists(os.path.join(out, "faces.json"))
    ms.main(base + ["--trace-strength", "3", "--overwrite"])
    assert not os.path.exists(os.path.join(out, "faces.json"))
    with open(os.path.join(out, "synthetic_stats.json")) as f:
        assert json.load(f)["generation"]["settings"]["trace_strength"] == 3.0
    assert "removed the previous generation" in capsys.readouterr().out
