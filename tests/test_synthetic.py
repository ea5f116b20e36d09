"""Synthetic DGM4-format benchmark (preprocess/make_synthetic.py): format fidelity, determinism, trace locality."""
import itertools
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from datasets.records import FAKE_CLS, load_metadata
from preprocess import make_synthetic as ms
from utils.errors import BadInputError

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
    with pytest.raises(BadInputError, match="--face-area"):  # one `error:` line under exit_on_user_error
        ms.parse_args(["--out", "x", "--face-area", "0.3", "0.1"])


def test_feature_scale_knob():
    """--feature-scale widens the strokes of the brows and the mouth only: the same records, and the pictures differ
    inside face boxes alone; settings record it only when set (older folders keep theirs)."""
    widened = 0
    for i in range(12):
        rec, img, extras = ms.make_sample(3, "train", i)
        rec2, img2, _ = ms.make_sample(3, "train", i, feature_scale=2.5)
        assert rec == rec2
        diff = np.abs(img.astype(int) - img2.astype(int)).sum(-1)
        inside = np.zeros(diff.shape, bool)
        for x1, y1, x2, y2 in extras["faces"]:
            inside[y1:y2, x1:x2] = True
        assert diff[~inside].max() == 0, rec["id"]
        widened += int((diff[inside] > 0).sum() > 20)
    assert widened == 12
    args = ms.parse_args(["--out", "x", "--feature-scale", "2.5"])
    assert ms.settings(args)["feature_scale"] == 2.5
    assert "feature_scale" not in ms.settings(ms.parse_args(["--out", "x"]))
    with pytest.raises(BadInputError, match="--feature-scale"):
        ms.parse_args(["--out", "x", "--feature-scale", "0"])


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
    with pytest.raises(BadInputError, match="other settings.*--overwrite"):
        ms.main(base + ["--trace-strength", "3"])
    assert os.path.exists(os.path.join(out, "faces.json"))
    ms.main(base + ["--trace-strength", "3", "--overwrite"])
    assert not os.path.exists(os.path.join(out, "faces.json"))
    with open(os.path.join(out, "synthetic_stats.json")) as f:
        assert json.load(f)["generation"]["settings"]["trace_strength"] == 3.0
    assert "removed the previous generation" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# Pre-training corpus (--pretrain N) and word_kinds.json
# ---------------------------------------------------------------------------------------------------------------
SMALL = ["--train", "8", "--val", "4", "--test", "4", "--seed", "2"]


@pytest.fixture(scope="module")
def with_pretrain(tmp_path_factory):
    """The same small benchmark generated without and with --pretrain 12."""
    base = tmp_path_factory.mktemp("nopre")
    pre = tmp_path_factory.mktemp("pre")
    ms.main(["--out", str(base)] + SMALL)
    stats = ms.main(["--out", str(pre)] + SMALL + ["--pretrain", "12"])
    return base, pre, stats


def test_pretrain_records_are_pristine_pairs(with_pretrain):
    _, pre, stats = with_pretrain
    recs = _load(pre, "pretrain")
    assert [r["id"] for r in recs] == list(range(1000000, 1000012))
    for r in recs:
        assert set(r) == FIELDS, r
        assert r["fake_cls"] == "orig" and r["fake_image_box"] == [] and r["fake_text_pos"] == []
        assert r["image"].startswith("DGM4/origin/") and r["image"].endswith(f"/{r['id']}.jpg")
        assert all(len(b) == 4 and all(type(v) is int for v in b) for b in r["mtcnn_boxes"])
        with Image.open(os.path.join(pre, r["image"])) as im:
            assert im.format == "JPEG" and 256 <= min(im.size) and max(im.size) <= 400
    # a plain orig sample of another split: only split code, id and the draws differ, not the recipe
    rec, _, extras = ms.make_sample(2, "pretrain", 3)
    assert rec == recs[3] and rec["text"] == extras["orig_text"] and extras["manip_face"] is None
    records, skipped = load_metadata(str(pre), ["metadata/pretrain.json"], on_bad="fail")
    assert len(records) == 12 and not skipped
    assert stats["pretrain"]["samples"] == 12 and stats["pretrain"]["class_mix"]["orig"]["count"] == 12
    assert stats["all"]["samples"] == 16  # "all" = the benchmark splits only
    assert stats["generation"]["samples"] == 28
    assert stats["generation"]["settings"]["splits"]["pretrain"] == 12


def test_pretrain_shares_no_image_and_keeps_benchmark_bytes(with_pretrain):
    base, pre, _ = with_pretrain
    bench = [r for split in ("train", "val", "test") for r in _load(pre, split)]
    assert {r["image"] for r in _load(pre, "pretrain")}.isdisjoint({r["image"] for r in bench})
    assert {r["id"] for r in _load(pre, "pretrain")}.isdisjoint({r["id"] for r in bench})
    for split in ("train", "val", "test"):
        assert _load(pre, split) == _load(base, split), split
        for r in _load(base, split):
            assert (pre / r["image"]).read_bytes() == (base / r["image"]).read_bytes(), r["image"]
    assert not (base / "metadata" / "pretrain.json").exists()
    # own scenes too, not copies of benchmark scenes under new paths (own split code in the per-sample RNG)
    for i in range(12):
        rec, img, _ = ms.make_sample(2, "pretrain", i)
        for split in ("train", "val", "test"):
            other, other_img, extras = ms.make_sample(2, split, i)
            assert rec["text"] != extras["orig_text"], (split, i)
            assert img.shape != other_img.shape or not np.array_equal(img, other_img), (split, i)
    with open(base / "synthetic_stats.json") as f:
        on_disk = json.load(f)
    assert "pretrain" not in on_disk and "pretrain" not in on_disk["generation"]["settings"]["splits"]


def test_pretrain_regeneration_and_count_changes(tmp_path):
    """Same --pretrain twice: folder reused byte for byte, caches kept. Another count (or none): refused with both
    settings named; --overwrite removes the old generation, including pretrain.json and word_kinds.json."""
    out = tmp_path / "syn"
    base = ["--out", str(out), "--train", "3", "--val", "1", "--test", "1", "--seed", "4"]
    ms.main(base + ["--pretrain", "5"])
    first = (out / "metadata" / "pretrain.json").read_bytes()
    images = {r["image"]: (out / r["image"]).read_bytes() for r in _load(out, "pretrain")}
    (out / "faces.json").write_text("{}")
    ms.main(base + ["--pretrain", "5"])
    assert (out / "faces.json").exists() and (out / "metadata" / "pretrain.json").read_bytes() == first
    assert all((out / p).read_bytes() == b for p, b in images.items())
    for other in (["--pretrain", "6"], []):
        with pytest.raises(BadInputError, match=r"other settings.*'pretrain': 5.*--overwrite"):
            ms.main(base + other)
    assert (out / "faces.json").exists() and (out / "metadata" / "pretrain.json").read_bytes() == first
    ms.main(base + ["--overwrite"])
    assert not (out / "faces.json").exists() and not (out / "metadata" / "pretrain.json").exists()
    assert not any(p.startswith("DGM4/origin/") and (out / p).exists() for p in images)
    # a pretrain.json that no recorded generation owns is removed, not left beside a --pretrain 0 benchmark
    (out / "metadata" / "pretrain.json").write_bytes(first)
    ms.main(base)
    assert not (out / "metadata" / "pretrain.json").exists()
    assert "word_kinds.json" in ms.OUTPUTS
    with pytest.raises(BadInputError, match="--pretrain"):
        ms.parse_args(["--out", "x", "--pretrain", "-1"])


def test_word_kinds_file(with_pretrain):
    base, _, _ = with_pretrain
    with open(base / "word_kinds.json") as f:
        kinds = json.load(f)
    assert kinds == ms.word_kinds()
    assert set(kinds) == {"names", "expressions", "colours", "places", "source"}
    for kind in ("names", "expressions", "colours", "places"):
        assert kinds[kind] == sorted(set(kinds[kind])) and all(w and " " not in w for w in kinds[kind])
    names, exprs, colours, places = (set(kinds[k]) for k in ("names", "expressions", "colours", "places"))
    assert {"lind", "varga", "kowalski", "brandt", "oneil", "anna", "berg", "bergs", "vargas", "oneils"} <= names
    assert exprs == set(ms.EXPRESSIONS)
    assert colours == set(ms.SHIRT_NAMES) | set(ms.HAIR_NAMES) and {"purple", "pink", "blond", "red"} <= colours
    assert places == {"harbour", "forest", "city", "beach", "stadium", "studio"}
    for a, b in itertools.combinations((names, exprs, colours, places), 2):
        assert not a & b
    assert "o'neil" not in names and "lind-varga" not in names and "berg's" not in names  # normalised forms only


def test_word_kinds_classify_every_caption_word():
    """Every normalised word of every template, rendered with every slot value, has the kind of its slot; filler
    and template words (roles, events, dates, 'shirt', 'its', ...) have none."""
    from datasets.text import align_words, normalize_caption

    kinds = ms.word_kinds()
    kind_of = {w: k for k in ("names", "expressions", "colours", "places") for w in kinds[k]}
    slot_kind = lambda s: next((k for k, pat in ms.SLOT_KINDS if pat.fullmatch(s)), None)  # noqa: E731
    rng = np.random.default_rng(0)
    seen = {"names": set(), "expressions": set(), "colours": set(), "places": set()}
    for _, template in ms.TEMPLATES:
        for trial in range(60):
            names = rng.choice([c["name"] for c in ms.CAST], 2, replace=False)
            slots = {"N0": names[0], "N1": names[1], "P": ms.PLACE_NAMES[trial % len(ms.PLACE_NAMES)],
                     "Y": str(1995 + trial), "EV": ms.EVENTS[trial % len(ms.EVENTS)],
                     "ROLE": ms.ROLES[trial % len(ms.ROLES)], "DATE": ms.DATES[trial % len(ms.DATES)]}
            for j in range(2):
                slots.update({f"E{j}": ms.EXPRESSIONS[rng.integers(5)], f"C{j}": ms.SHIRT_NAMES[rng.integers(8)],
                              f"H{j}": ms.HAIR_NAMES[rng.integers(6)]})
            text, owner = ms.render_caption(template, slots)
            raw_slot = {i: s for s, idx in owner.items() for i in idx}
            caption, spans, word_owner = align_words(text, None)
            assert caption == normalize_caption(text, None)
            for (a, b), o in zip(spans, word_owner):
                word, want = caption[a:b], slot_kind(raw_slot[o]) if o in raw_slot else None
                assert kind_of.get(word) == want, (template, text, word, want)
                if want:
                    seen[want].add(word)
    assert seen["places"] == set(kinds["places"]) and len(seen["names"]) > 60
    assert seen["expressions"] == set(kinds["expressions"]) and seen["colours"] == set(kinds["colours"])


def test_pretrain_pictured_names_and_place_are_classified(with_pretrain):
    _, pre, _ = with_pretrain
    from datasets.text import normalize_caption

    with open(pre / "word_kinds.json") as f:
        kinds = json.load(f)

    for i in range(12):
        rec, _, extras = ms.make_sample(2, "pretrain", i)
        words = set(normalize_caption(rec["text"], None).split(" "))
        for name in extras["pictured"]:
            parts = normalize_caption(name, None).split(" ")
            assert set(parts) <= set(kinds["names"]), name
        named = words & set(kinds["names"])
        assert named, rec["text"]  # every template names person 0
        pictured = {w for n in extras["pictured"] for w in normalize_caption(n + "'s", None).split(" ")}
        pictured |= {w for n in extras["pictured"] for w in normalize_caption(n, None).split(" ")}
        assert named <= pictured, (rec["text"], extras["pictured"])  # pristine: only pictured people are named
        assert words & set(kinds["places"]) == {extras["place"]}
        assert words & set(kinds["expressions"] + kinds["colours"]), rec["text"]  # an {E*} or {C*} slot in each
