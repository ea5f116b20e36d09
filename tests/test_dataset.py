"""DGM4Dataset samples, flips of boxes and images, candidates, text fields, collate, build_dataset, transforms,
and the preprocess CLIs (datasets/dgm4.py, datasets/transforms.py, preprocess/stopword_masks.py,
preprocess/train_tokenizer.py). The helpers here also build the fixtures of tests/test_bad_input.py and
tests/test_audit.py (``write_bench`` writes a benchmark, ``make_dataset`` audits it and builds the dataset)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.audit import BadRecordsError, audit_run, split_files
from datasets.caches import load_cache, make_header, save_cache
from datasets.dgm4 import DGM4Dataset, build_dataset, collate
from datasets.records import FAKE_CLS
from datasets.text import caption_digest, word_token_mask
from datasets.transforms import (
    AUG_OPS,
    CLIP_MEAN,
    CLIP_STD,
    EvalTransform,
    RandomAugment,
    ToNormalizedTensor,
    TrainTransform,
    boxes_to_cxcywh,
    flip_boxes,
    resize_bicubic,
)
from preprocess.stopword_masks import build_masks
from preprocess.train_tokenizer import main as train_tokenizer_main
from preprocess.train_tokenizer import train_tokenizer
from utils.config import DEFAULTS, merge

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H = 64, 48
BOX = [8, 6, 40, 30]
TEXTS = ["The Bulmer-Rizzi family won the award", "Covid19 cases rose sharply in the city",
         "A man is holding a red umbrella", "The president met leaders in Paris/London"]
ARCH_KEYS = {"index", "id", "fake_cls", "caption", "image", "y_m", "y_v", "y_t", "multi_label", "gt_box",
             "cand_boxes", "cand_mask", "input_ids", "attention_mask", "token_label", "token_label_clean",
             "word_tokens", "content_mask", "word_index", "orig_size"}


def make_records():
    """One record per fake_cls (ids 10..18), images img/<k>.jpg."""
    recs = []
    for k, cls in enumerate(FAKE_CLS):
        recs.append({"id": 10 + k, "image": f"img/{k}.jpg", "text": TEXTS[k % len(TEXTS)], "fake_cls": cls,
                     "fake_image_box": list(BOX) if any(FAKE_CLS[cls][:2]) else [],
                     "fake_text_pos": [2] if any(FAKE_CLS[cls][2:]) else [], "mtcnn_boxes": []})
    return recs


def write_image(path, size=(W, H), box=BOX):
    """Dark image with a bright rectangle at ``box`` and a bright left stripe (to see flips)."""
    arr = np.full((size[1], size[0], 3), 30, np.uint8)
    arr[box[1]:box[3], box[0]:box[2]] = 220
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=95)


def write_bench(root, records, faces=None, images=True):
    """Write meta.json, images (if missing), faces.json and stopwords.json; return their paths (``bench_cfg``)."""
    root = str(root)
    with open(os.path.join(root, "meta.json"), "w") as f:
        json.dump(records, f)
    default = {}
    for rec in records:
        path = os.path.join(root, rec["image"])
        if images and not os.path.exists(path):
            write_image(path)
        default[rec["image"]] = {"boxes": [list(BOX), [44, 4, 60, 20]], "scores": [0.95, 0.6], "size": [W, H]}
    save_cache(os.path.join(root, "faces.json"), make_header("faces"), faces if faces is not None else default)
    stop = os.path.join(root, "stopwords.json")
    valid = [r for r in records if isinstance(r.get("text"), str) and "id" in r]
    build_masks([dict(r, _file="meta.json") for r in valid], stop, progress=False)
    return {"root": root, "files": ["meta.json"], "face_cache": os.path.join(root, "faces.json"),
            "stopword_cache": stop}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer([t.lower() for t in TEXTS] * 5, str(tmp_path_factory.mktemp("tok")), vocab_size=300)


def bench_cfg(kw, **data):
    """Config over a ``write_bench`` benchmark: every split reads meta.json, small sizes, ``data`` overrides;
    train.output_dir (where the audit keeps its image cache) is <root>/out."""
    caches = {"face_cache": os.path.relpath(kw["face_cache"], kw["root"]),
              "stopword_cache": os.path.relpath(kw["stopword_cache"], kw["root"])}
    sizes = {"image_size": 32, "max_len": 24, "max_words": 50, "num_boxes": 3}
    files = {f"{split}_files": list(kw["files"]) for split in ("train", "val", "test")}
    return merge(DEFAULTS, {"data": {"root": kw["root"], **files, **caches, **sizes, **data},
                            "train": {"output_dir": os.path.join(kw["root"], "out")}})


def make_dataset(kw, tok, on_bad="fail", train=False, **data):
    """Audit meta.json (``datasets.audit.audit_run``, as the "test" split) and build its dataset."""
    cfg = bench_cfg(kw, on_bad_record=on_bad, **data)
    return build_dataset(cfg, audit_run(cfg, {"test": kw["files"]}), "test", tok, train=train)


def test_sample_keys_shapes_and_labels(tmp_path, tok):
    ds = make_dataset(write_bench(tmp_path, make_records()), tok)
    assert len(ds) == 9
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == ARCH_KEYS
        assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
        target = FAKE_CLS[s["fake_cls"]]
        assert s["multi_label"].tolist() == list(target)
        assert (s["y_m"].item(), s["y_v"].item(), s["y_t"].item()) == (
            float(any(target)), float(any(target[:2])), float(any(target[2:])))
        assert s["index"].item() == i and s["id"] == 10 + i
        assert s["orig_size"].tolist() == [W, H]
        for key in ("input_ids", "attention_mask", "token_label", "token_label_clean"):
            assert s[key].shape == (24,) and s[key].dtype == torch.long
        assert s["content_mask"].shape == (24,) and s["content_mask"].dtype == torch.float32
        assert s["word_tokens"].dtype == torch.bool and torch.equal(s["word_tokens"],
                                                                   word_token_mask(s["attention_mask"]))
        assert int(s["word_tokens"].sum()) == int(s["attention_mask"].sum()) - 2  # no <s>, </s>, padding
        assert s["cand_boxes"].shape == (3, 4) and s["cand_mask"].dtype == torch.bool
        if not any(target[2:]):
            assert (s["token_label"] == 1).sum() == 0 and (s["token_label_clean"] == 1).sum() == 0
        if not any(target[:2]):
            assert s["gt_box"].abs().sum() == 0


def test_dataset_is_a_thin_map_that_prints_nothing(tmp_path, tok, capsys):
    kw = write_bench(tmp_path, make_records())
    audited = make_dataset(kw, tok)
    capsys.readouterr()
    thin = DGM4Dataset(audited.records, kw["root"], audited.faces, audited.stopwords, tok, image_size=32, max_len=24,
                       num_boxes=3)
    os.remove(kw["face_cache"])
    os.remove(kw["stopword_cache"])  # the dataset reads no cache file: it was given the entries
    assert len(thin) == 9
    for i in (1, 5):
        sample, ref = thin[i], audited[i]
        assert set(sample) == ARCH_KEYS
        for key in ("image", "input_ids", "content_mask", "cand_boxes", "gt_box", "token_label"):
            assert torch.equal(sample[key], ref[key]), key
    assert capsys.readouterr().out == ""


def test_gt_box_and_image_flip_together(tmp_path, tok):
    ds = make_dataset(write_bench(tmp_path, make_records()), tok, train=True, image_size=64)
    ds.transform.augment = None
    i = 1  # face_swap
    expect = [(BOX[0] + BOX[2]) / 2 / W, (BOX[1] + BOX[3]) / 2 / H, (BOX[2] - BOX[0]) / W, (BOX[3] - BOX[1]) / H]
    for flip_p, cx in ((0.0, expect[0]), (1.0, 1 - expect[0])):
        ds.transform.flip_p = flip_p
        s = ds[i]
        assert torch.allclose(s["gt_box"], torch.tensor([cx] + expect[1:]), atol=1e-6)
        assert torch.allclose(s["cand_boxes"][0], s["gt_box"], atol=1e-6)  # best candidate = the fake face
        bright = s["image"].mean(0) > 0  # the rectangle, in the resized image
        cols = torch.nonzero(bright.any(0)).flatten().float()
        assert abs((cols.min() + cols.max() + 1) / 2 / 64 - cx) < 0.03


def test_train_transform_without_aug_equals_eval():
    img = Image.fromarray((np.random.default_rng(1).random((40, 60, 3)) * 255).astype(np.uint8))
    train = TrainTransform(32, flip_p=0.0, augment=False)
    x, flipped = train(img)
    y, _ = EvalTransform(32)(img)
    assert not flipped and torch.equal(x, y)
    train.flip_p = 1.0
    xf, flipped = train(img)
    yf, _ = EvalTransform(32)(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert flipped and torch.equal(xf, yf)


def test_resize_matches_pil_bicubic_and_normalisation():
    img = Image.fromarray((np.random.default_rng(2).random((400, 600, 3)) * 255).astype(np.uint8))
    ours = resize_bicubic(img, 256).permute(1, 2, 0).numpy().astype(int)
    pil = np.asarray(img.resize((256, 256), Image.Resampling.BICUBIC)).astype(int)
    assert np.abs(ours - pil).max() <= 1 and np.abs(ours - pil).mean() < 0.05
    small = Image.fromarray(np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    expect = (torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1).float() / 255
              - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.allclose(ToNormalizedTensor()(small), expect, atol=1e-5)


def test_random_augment_ops():
    x = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    # PIL blend with black truncates like ALBEF's LUT (np.arange(256) * 1.36).astype(uint8): 100 -> 136 -> 184
    assert RandomAugment(n=2, p=1.0, ops=("Brightness",))(x).unique().tolist() == [int(int(100 * 1.36) * 1.36)]
    assert torch.equal(RandomAugment(n=2, p=0.0)(x), x)
    assert torch.equal(RandomAugment(n=2, p=1.0, ops=("Identity",))(x), x)
    ramp = torch.arange(51, 103, dtype=torch.uint8).view(1, 4, 13).repeat(3, 1, 1)
    out = RandomAugment(n=1, p=1.0, ops=("AutoContrast",))(ramp)
    assert torch.equal(out, (ramp.int() - 51) * 5)  # per-channel stretch of [51, 102] to [0, 255]
    torch.manual_seed(0)
    changed = sum(not torch.equal(RandomAugment(ops=("Brightness",))(x), x) for _ in range(400))
    assert 260 < changed < 340  # 1 - 0.5^2 = 75% of calls apply at least one op


def test_augment_ops_choose_the_random_augment_pool():
    """data.augment_ops: the default is the field's five ops; a pool without AutoContrast / Equalize keeps every
    pixel's hue (Brightness scales the three channels alike); [] leaves flip only."""
    img = Image.fromarray(np.concatenate([np.full((64, 64, 3), (120, 72, 24), np.uint8),   # x 1.36^2 stays < 256
                                          np.full((64, 64, 3), (30, 60, 90), np.uint8)], axis=1))
    std, mean = torch.tensor(CLIP_STD).view(3, 1, 1), torch.tensor(CLIP_MEAN).view(3, 1, 1)

    def chroma(x):   # the colour of one pixel of the first block, up to a common factor
        rgb = (x * std + mean)[:, 32, 16]
        return rgb / rgb[0]

    assert TrainTransform(64).augment.ops == AUG_OPS == tuple(DEFAULTS["data"]["augment_ops"])
    assert TrainTransform(64, augment_ops=[]).augment is None
    base = EvalTransform(64)(img)[0]
    torch.manual_seed(0)
    kept = [TrainTransform(64, flip_p=0.0, augment_ops=["Identity", "Brightness"])(img)[0] for _ in range(20)]
    assert any(not torch.equal(x, base) for x in kept)
    assert all(torch.allclose(chroma(x), chroma(base), atol=0.02) for x in kept)
    torch.manual_seed(0)
    equalized = [TrainTransform(64, flip_p=0.0, augment_ops=["Equalize"])(img)[0] for _ in range(8)]
    assert any(not torch.allclose(chroma(x), chroma(base), atol=0.02) for x in equalized)


def test_box_helpers():
    boxes = [[10, 20, 30, 60], [0, 0, 100, 50]]
    assert flip_boxes(boxes, 100).tolist() == [[70, 20, 90, 60], [0, 0, 100, 50]]
    out = boxes_to_cxcywh(boxes, (100, 50), flipped=False)
    assert np.allclose(out, [[0.2, 0.8, 0.2, 0.8], [0.5, 0.5, 1.0, 1.0]])
    outf = boxes_to_cxcywh(boxes, (100, 50), flipped=True)
    assert np.allclose(outf[:, 0], 1 - out[:, 0]) and np.allclose(outf[:, 1:], out[:, 1:])


def test_candidates_sorted_clipped_padded(tmp_path, tok):
    recs = make_records()[:2]
    faces = {"img/0.jpg": {"boxes": [[0, 0, 10, 10], [5, 5, 30, 30], [50, 40, 80, 60], [1, 1, 1, 9]],
                           "scores": [0.5, 0.9, 0.7, 0.99], "size": [W, H]},
             "img/1.jpg": {"boxes": [], "scores": [], "size": [W, H]}}
    ds = make_dataset(write_bench(tmp_path, recs, faces=faces), tok)
    s = ds[0]
    assert s["cand_mask"].tolist() == [True, True, True]  # degenerate 0.99 box dropped
    expect = boxes_to_cxcywh([[5, 5, 30, 30], [50, 40, 64, 48], [0, 0, 10, 10]], (W, H))  # 3rd clipped
    assert torch.allclose(s["cand_boxes"], torch.from_numpy(expect))
    s1 = ds[1]
    assert s1["cand_mask"].tolist() == [False] * 3 and s1["cand_boxes"].abs().sum() == 0


def test_text_fields(tmp_path, tok):
    ds = make_dataset(write_bench(tmp_path, make_records()), tok)
    s = ds[5]  # face_swap&text_swap on "Covid19 cases rose sharply in the city", raw word 2 = "rose"
    n = int(s["attention_mask"].sum())
    assert s["caption"] == "covid19 cases rose sharply in the city"
    assert s["input_ids"][0] == tok.bos_token_id and s["input_ids"][n - 1] == tok.eos_token_id
    assert (s["input_ids"][n:] == tok.pad_token_id).all() and (s["attention_mask"][n:] == 0).all()
    for key in ("token_label", "token_label_clean"):
        assert s[key][0] == -100 and (s[key][n - 1:] == -100).all() and (s[key][1:n - 1] >= 0).all()
    ids = s["input_ids"]
    clean = tok.decode(ids[s["token_label_clean"] == 1]).strip()
    bench = tok.decode(ids[s["token_label"] == 1]).strip()
    assert clean == "rose" and bench == "cases"  # covid19 is 2 pre-tokenizer words
    assert s["content_mask"][0] == 0 and (s["content_mask"][n - 1:] == 0).all()
    content = tok.decode(ids[s["content_mask"] == 1]).split()
    assert content == ["covid19", "cases", "rose", "sharply", "city"]


def test_collate_and_dataloader(tmp_path, tok):
    ds = make_dataset(write_bench(tmp_path, make_records()), tok)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert set(batch) == ARCH_KEYS
    assert batch["image"].shape == (4, 3, 32, 32) and batch["cand_boxes"].shape == (4, 3, 4)
    assert batch["input_ids"].shape == (4, 24) and batch["multi_label"].shape == (4, 4)
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["orig_size"].shape == (4, 2)
    assert batch["id"] == [10, 11, 12, 13] and batch["fake_cls"] == list(FAKE_CLS)[:4]
    assert isinstance(batch["caption"], list) and batch["caption"][0] == ds[0]["caption"]
    assert torch.equal(batch["token_label"][2], ds[2]["token_label"])


def test_build_dataset_splits(tmp_path, tok):
    recs = make_records()
    kw = write_bench(tmp_path, recs)
    with open(tmp_path / "val.json", "w") as f:  # train and val must not share ids: val gets ids 100+
        json.dump([dict(r, id=100 + k) for k, r in enumerate(recs)], f)
    build_masks([dict(r, _file="val.json", id=100 + k) for k, r in enumerate(recs)], kw["stopword_cache"],
                progress=False)
    cfg = bench_cfg(kw, val_files=["val.json"], max_len=20, num_boxes=2)
    audited = audit_run(cfg, split_files(cfg, ["train", "val"]))
    train, val = build_dataset(cfg, audited, "train", tok), build_dataset(cfg, audited, "val", tok)
    assert isinstance(train.transform, TrainTransform) and isinstance(val.transform, EvalTransform)
    assert len(train) == len(val) == 9 and val[0]["input_ids"].shape == (20,)
    assert val[0]["cand_boxes"].shape == (2, 4) and val[0]["id"] == 100 and train[0]["id"] == 10
    assert isinstance(build_dataset(cfg, audited, "val", tok, train=True).transform, TrainTransform)
    with pytest.raises(ValueError, match="split 'test' was not audited"):
        build_dataset(cfg, audited, "test", tok)
    same = bench_cfg(kw)  # train and val both read meta.json: every id appears twice
    with pytest.raises(BadRecordsError, match=r"9 bad record.*duplicate_id 9"):
        audit_run(same, split_files(same, ["train", "val"]))


def test_stopword_cli_script_and_resume(tmp_path):
    recs = make_records()
    write_bench(tmp_path, recs[:3])
    out = tmp_path / "sw.json"
    cmd = [sys.executable, "preprocess/stopword_masks.py", "--data-root", str(tmp_path), "--metadata", "meta.json",
           "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    header, entries, _ = load_cache(str(out), "stopwords")
    assert header["stopword_source"] == "sklearn ENGLISH_STOP_WORDS" and "rules" in header
    assert set(entries) == {"10", "11", "12"}
    assert entries["10"] == {"mask": [0, 1, 1, 1, 1, 0, 1], "n_words": 7,  # the bulmer rizzi family won the award
                             "caption_hash": caption_digest(recs[0]["text"])}
    entries["10"]["mask"] = [9] * 7  # a finished entry must not be recomputed
    save_cache(str(out), header, entries)
    with open(tmp_path / "meta.json", "w") as f:
        json.dump(recs[:4], f)
    res = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    assert "1 new entries, 4 in" in res.stdout
    _, entries, _ = load_cache(str(out), "stopwords")
    assert entries["10"]["mask"] == [9] * 7 and set(entries) == {"10", "11", "12", "13"}


def test_stopword_list_is_a_choice_recorded_in_the_cache(tmp_path, tok):
    """data.stopwords: a word-list file changes M_c; a cache made with another list is refused by the dataset and
    by a resumed preprocess run, naming both lists."""
    recs = make_records()
    write_bench(tmp_path, recs)      # cache made with sklearn's list
    words = tmp_path / "stop.txt"
    words.write_text("# keep negations and numerals as content words\nthe\nwon\n")
    kw = {"root": str(tmp_path), "files": ["meta.json"], "face_cache": str(tmp_path / "faces.json"),
          "stopword_cache": str(tmp_path / "stopwords.json")}
    with pytest.raises(ValueError, match=r"made with the list 'sklearn ENGLISH_STOP_WORDS'.*word list stop.txt"):
        make_dataset(kw, tok, stopwords=str(words))
    with pytest.raises(ValueError, match="delete it"):
        build_masks([dict(r, _file="meta.json") for r in recs], str(tmp_path / "stopwords.json"), progress=False,
                    stopwords=str(words))
    os.remove(tmp_path / "stopwords.json")
    build_masks([dict(r, _file="meta.json") for r in recs], str(tmp_path / "stopwords.json"), progress=False,
                stopwords=str(words))
    header, entries, _ = load_cache(str(tmp_path / "stopwords.json"), "stopwords")
    assert header["stopword_source"].startswith("word list stop.txt (2 words, sha256 ")
    assert entries["10"]["mask"] == [0, 1, 1, 1, 0, 0, 1]  # the bulmer rizzi family won the award: stop = the, won
    assert len(make_dataset(kw, tok, stopwords=str(words))) == len(recs)


def test_train_tokenizer_cli(tmp_path, capsys):
    write_bench(tmp_path, make_records())
    train_tokenizer_main(["--data-root", str(tmp_path), "--metadata", "meta.json", "--out", str(tmp_path / "t"),
                          "--vocab-size", "280"])
    assert "vocab 280" in capsys.readouterr().out
    assert (tmp_path / "t" / "vocab.json").exists() and (tmp_path / "t" / "merges.txt").exists()
