"""infer.py (issue 10): a trained model on a user's own pair, one or a batch.

- on scikit-image's astronaut photo with a small checkpoint made here: MTCNN's face among the candidates, the JSON
  schema, the picture (candidates, chosen box, legend);
- per-word results for captions with hyphens, apostrophes and glued digits (tokens -> words by offsets);
- batch mode through the real command line, with broken lines reported on their line; its results equal the rows
  of test.py's predictions.jsonl for the same test-split records (same decisions, same numbers);
- the one-line ``error:`` and exit status 2, with nothing written, for every unusable input (the caption and the
  picture's extension before the checkpoint is loaded; a tokenizer other than the checkpoint's, also for a checkpoint
  without a tokenizer fingerprint); one pair's JSON and picture are both written or neither;
- ``--amp bf16`` on the CPU; bench/infer_speed.py's smoke run (pairs/s and the MTCNN / model shares).
"""
import json
import os
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import infer
from datasets.caches import load_cache
from datasets.dgm4 import audited_dataset, text_inputs
from datasets.text import tokenizer_for
from inference.figures import _sample_words
from inference.loading import load_checked_tokenizer, load_for_inference
from inference.pairs import prepare_pair
from inference.results import word_results
from inference.untrained import untrained_checkpoint
from preprocess import detect_faces
from preprocess.train_tokenizer import train_tokenizer
from tests.conftest import ROOT, run_script, tiny_opts
from utils.box_ops import norm_cxcywh_to_pixel_xyxy
from utils.config import load_config
from utils.errors import exit_on_user_error
from utils.visualize import GREEN, ORANGE, RED

ASTRONAUT_FACE = [180, 64, 265, 171]  # tests/test_detect_faces.py
# token decisions independent of the sentence gate, at a threshold that the random weights straddle
MODEL_OPTS = ["model.vctg.gate_tokens_by_text=False", "model.vctg.token_threshold=0.5"]


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy)


def make_checkpoint(cfg, path, patch_bias=6.0):
    """A best.pth as train.py writes it for a freshly initialised model (``inference.untrained``); the patch bias
    makes v_coarse > 0.5, so that the image is judged manipulated and a box is chosen by S^v."""
    return untrained_checkpoint(cfg, path, seed=0, patch_bias=patch_bias)


@pytest.fixture(scope="module")
def setup(tiny_benchmark, tmp_path_factory):
    """The checkpoint, its config, the astronaut photo (JPEG) and a started MTCNN (shared by the tests)."""
    folder = tmp_path_factory.mktemp("infer")
    opts = tiny_opts(tiny_benchmark, str(folder / "run")) + MODEL_OPTS
    cfg = load_config(os.path.join(ROOT, "configs/debug.yaml"), opts)
    skdata = pytest.importorskip("skimage.data")
    photo = folder / "astronaut.jpg"
    Image.fromarray(skdata.astronaut()).save(photo, quality=95)
    detect_faces.init_detector()
    return {"folder": folder, "cfg": cfg, "opts": opts, "ckpt": make_checkpoint(cfg, folder / "best.pth"),
            "photo": str(photo), "bench": tiny_benchmark}


def test_astronaut_one_pair_schema_and_picture(setup, tmp_path):
    text = "Eileen Collins-Smith's crew of 7 poses at NASA's centre in 2019"
    out, pic = tmp_path / "r.json", tmp_path / "r.png"
    infer.main(infer.parse_args(["--checkpoint", setup["ckpt"], "--image", setup["photo"], "--text", text,
                                 "--out", str(out), "--out-image", str(pic), "--device", "cpu"]))
    res = json.loads(out.read_text())
    assert res["input"] == {"image": setup["photo"], "text": text}
    assert res["candidate_source"] == "mtcnn" and res["faces_detected"] >= 1
    boxes = [c["box"] for c in res["candidates"]]
    assert max(_iou(b, ASTRONAUT_FACE) for b in boxes) > 0.7, boxes  # MTCNN's face is a candidate
    assert all(c["detector_score"] > 0.9 for c in res["candidates"][:1])
    assert res["image"]["fake"] and res["image"]["coarse_prob"] > 0.5  # the patch bias of make_checkpoint
    chosen = [c for c in res["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and res["box"] == chosen[0]["box"]
    assert chosen[0]["score"] == max(c["score"] for c in res["candidates"])  # C* = argmax S^v
    for group in ("pair", "image", "text"):
        assert 0.0 <= res[group]["fake_prob"] <= 1.0
    assert res["pair"]["fake"] == (res["pair"]["fake_prob"] > 0.5)
    assert " ".join(w["word"] for w in res["words"]) == res["caption"]
    assert res["caption"] == "eileen collins smiths crew of 7 poses at nasas centre in 2019"
    assert [w["raw"] for w in res["words"][1:3]] == ["Collins-Smith's"] * 2
    why = {w["word"]: w.get("why") for w in res["words"]}
    assert why["of"] == "stop word" and why["7"] == "no letter" and why["2019"] == "no letter" and why["crew"] is None
    assert set(res["timings_ms"]) == {"read_ms", "detect_ms", "text_ms", "model_ms", "total_ms"}
    img = np.asarray(Image.open(pic).convert("RGB"))
    assert img.shape[1] == 512 and img.shape[0] > 512
    photo_part = img[:512].reshape(-1, 3)
    assert np.all(photo_part == RED, axis=1).sum() > 100  # the chosen box
    assert np.all(img[512:].reshape(-1, 3) == ORANGE, axis=1).sum() > 50  # the legend's candidate swatch


def test_words_of_hyphens_apostrophes_and_glued_digits(setup):
    """Tokens -> normalised words by character offsets: a word is fake when any of its tokens is; its probability
    is the largest of its tokens'; stop words are not scored."""
    cfg = setup["cfg"]
    predictor = load_for_inference(setup["ckpt"], "cpu")
    text = "Bulmer-Rizzi's covid19 jab in Paris"
    prep = prepare_pair(predictor, setup["photo"], text, boxes=[])
    assert prep.caption == "bulmer rizzis covid19 jab in paris"
    enc = text_inputs(predictor.tokenizer, text, prep.word_mask, cfg["data"]["max_len"], 50)["enc"]
    start = prep.caption.index("covid19")
    covid = [i for i, (s, e) in enumerate(enc["offsets"]) if e > s and start <= s < start + len("covid19")]
    assert len(covid) >= 2  # the pre-tokenizer splits letters from digits: the benchmark's misalignment
    prob = torch.linspace(0.01, 0.4, len(enc["offsets"]))
    pred = torch.zeros(len(enc["offsets"]), dtype=torch.long)
    pred[covid[-1]] = 1  # only the digits' token
    prob[covid[0]] = 0.93
    words = word_results(prep, prob, pred, prep.sample["word_index"], predictor.stopwords)
    assert [w["word"] for w in words] == ["bulmer", "rizzis", "covid19", "jab", "in", "paris"]
    assert [w["raw_index"] for w in words] == [0, 0, 1, 2, 3, 4]
    assert [w["fake"] for w in words] == [False, False, True, False, False, False]
    assert words[2]["fake_prob"] == pytest.approx(0.93)
    assert words[4]["scored"] is False and words[4]["fake_prob"] is None and words[4]["why"] == "stop word"
    assert prep.sample["cand_mask"].sum() == 0 and prep.source == "user"


def test_image_judged_real_gives_no_box(setup, tmp_path, capsys):
    """v_coarse <= 0.5 (negative patch bias): no box, as the evaluator's zero box, though candidates are scored.
    The forward pass runs under bf16 autocast on the CPU (``--amp bf16``)."""
    ckpt = make_checkpoint(setup["cfg"], tmp_path / "real.pth", patch_bias=-6.0)
    rows = infer.main(infer.parse_args(["--checkpoint", ckpt, "--image", setup["photo"], "--text", "A man.",
                                        "--boxes", "180,64,265,171;300,300,400,420", "--out", str(tmp_path / "o"),
                                        "--device", "cpu", "--amp", "bf16"]))
    assert "on cpu, amp bf16" in capsys.readouterr().err
    assert json.loads((tmp_path / "o").read_text()) == rows[0]
    res = rows[0]
    assert not res["image"]["fake"] and res["image"]["coarse_prob"] < 0.5 and res["box"] is None
    assert [c["box"] for c in res["candidates"]] == [ASTRONAUT_FACE, [300, 300, 400, 420]]
    assert res["candidate_source"] == "user" and not any(c["chosen"] for c in res["candidates"])
    assert all(0.0 <= c["score"] <= 1.0 and c["detector_score"] is None for c in res["candidates"])


def test_one_pair_writes_json_and_picture_or_neither(setup, tmp_path, monkeypatch):
    """A failure while drawing the picture or while writing the JSON leaves neither file (nor a temporary one)."""
    argv = ["--checkpoint", setup["ckpt"], "--image", setup["photo"], "--text", "A man.", "--boxes",
            "180,64,265,171", "--device", "cpu", "--out", str(tmp_path / "o.json"), "--out-image",
            str(tmp_path / "o.png")]

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    for name in ("render_prediction", "write_text"):
        with monkeypatch.context() as patch:
            patch.setattr(infer, name, broken)
            with pytest.raises(OSError, match="No space left"):
                infer.main(infer.parse_args(argv))
        assert os.listdir(tmp_path) == [], name
    infer.main(infer.parse_args(argv))
    assert sorted(os.listdir(tmp_path)) == ["o.json", "o.png"]


def test_bench_infer_smoke(setup, capsys):
    """bench/infer_speed.py on 2 pairs of the tiny test split with the test's checkpoint: its summary line (pairs/s, the
    shares of MTCNN and of the model) and its JSON line."""
    from bench import infer_speed as bench_infer
    bench_infer.main(["--checkpoint", setup["ckpt"], "--n", "2", "--batch-size", "2",
                      "--threads", str(torch.get_num_threads())])  # same threads: the test process keeps its own
    summary, line = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "pairs/s with MTCNN (time: MTCNN " in summary and "pairs/s with the boxes given" in summary
    assert "2 records of" in summary and f"checkpoint {setup['ckpt']}" in summary
    result = json.loads(line)
    assert result["pairs"] == 2 and result["errors"] == 0 and result["batch_size"] == 2
    assert result["pairs_per_s"] > 0 and result["pairs_per_s_boxes_given"] > 0
    assert 0 < result["share_mtcnn"] < 1 and 0 < result["share_model"] < 1
    assert result["share_mtcnn"] + result["share_model"] + result["share_read"] <= 1.01


def _pairs_file(setup, path):
    """Every test-split record with its face-cache boxes, the astronaut (MTCNN), and three broken lines."""
    bench = setup["bench"]
    _, faces, _ = load_cache(os.path.join(bench["root"], bench["faces"]), "faces")
    records = json.load(open(os.path.join(bench["root"], "metadata", "test.json")))
    lines = [json.dumps({"image": os.path.join(bench["root"], r["image"]), "text": r["text"],
                         "boxes": faces[r["image"]]["boxes"]}) for r in records]
    relative = os.path.relpath(setup["photo"], str(path.parent))  # relative to the pairs file, not the cwd
    lines[3:3] = [json.dumps({"image": relative, "text": "An astronaut poses for a portrait."}),
                  json.dumps({"image": "missing.jpg", "text": "A man."}), "{not json",
                  json.dumps({"image": relative, "text": " "})]
    path.write_text("\n".join(lines) + "\n")
    return records


def test_batch_mode_matches_test_py_and_reports_broken_lines(setup, tmp_path):
    records = _pairs_file(setup, tmp_path / "pairs.jsonl")
    out = tmp_path / "results.jsonl"
    proc = run_script("infer.py", "--checkpoint", setup["ckpt"], "--pairs", str(tmp_path / "pairs.jsonl"),
                      "--out", str(out), "--batch-size", "8", "--device", "cpu", "--out-image", str(tmp_path / "vis"))
    assert "pairs" in proc.stderr and "3 could not be read" in proc.stderr
    assert sorted(os.listdir(tmp_path / "vis")) == sorted(f"{n}.png" for n in [*range(1, 5), *range(8, 21)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"]["line"] for r in rows] == list(range(1, len(records) + 5))
    assert not os.path.isabs(rows[3]["input"]["image"]) and not os.path.exists(os.path.join(ROOT, rows[3]["input"]
                                                                                           ["image"]))
    assert "error" not in rows[3] and rows[3]["candidate_source"] == "mtcnn"
    missing = rows[4]["error"]
    assert f"image {tmp_path / 'missing.jpg'} does not exist" in missing and "relative to that file" in missing
    assert "data.root" not in missing and "not JSON" in rows[5]["error"] and "empty" in rows[6]["error"]
    entry = runpy.run_path(os.path.join(ROOT, "test.py"), run_name="test_entry")  # test.py, in this process
    entry["main"](entry["parse_args"](["--config", os.path.join(ROOT, "configs/debug.yaml"), "--checkpoint",
                                       setup["ckpt"], "--out", str(tmp_path / "eval"), "--visualize", "1",
                                       "--opts", *setup["opts"]]))
    preds = [json.loads(line) for line in open(tmp_path / "eval" / "predictions.jsonl")]
    vis = np.asarray(Image.open(next((tmp_path / "eval" / "vis").iterdir())).convert("RGB"))
    assert np.all(vis == ORANGE, axis=2).sum() > 50  # test.py's pictures: candidates and legend
    assert _legend_green(vis) > 20  # and the legend's ground-truth entries (true face, true fake word)
    dataset = audited_dataset(setup["cfg"], "test", tokenizer_for(setup["cfg"]))
    ours = [r for r in rows if "error" not in r and r["candidate_source"] == "user"]
    flags = {"word": 0, "box": 0}
    for pred, row in zip(preds, ours):
        assert row["input"]["text"] == dataset.records[pred["index"]]["text"]
        _compare(pred, row, dataset, flags)
    assert len(ours) == len(preds) == 16
    assert 0 < flags["word"] and 0 < flags["box"]  # decisions that are not all alike were compared


def _legend_green(img):
    """GREEN pixels of the legend: from the line of its candidate swatch (the lowest ORANGE of the picture; the
    caption, with its GREEN underlines of true words, lies above the legend) to the bottom."""
    rows = np.nonzero(np.all(img == ORANGE, axis=2).any(axis=1))[0]
    return int(np.all(img[rows.max() - 15:] == GREEN, axis=2).sum())


def _compare(pred, row, dataset, flags):
    """One infer.py result against test.py's predictions.jsonl row of the same record."""
    assert row["pair"]["fake_prob"] == pytest.approx(pred["score"], abs=1e-5)
    for group, key in (("image", "v_fine"), ("text", "t_fine")):
        assert row[group]["fake_prob"] == pytest.approx(pred[key], abs=1e-5)
    assert row["image"]["coarse_prob"] == pytest.approx(pred["v_coarse"], abs=1e-5)
    assert [c["score"] for c in row["candidates"]] == pytest.approx(pred["box_scores"], abs=1e-5)
    w, h = Image.open(os.path.join(dataset.root, dataset.records[pred["index"]]["image"])).size
    if any(pred["pred_box"]):
        flags["box"] += 1
        assert row["box"] == pytest.approx(norm_cxcywh_to_pixel_xyxy(np.array(pred["pred_box"]), w, h).tolist(),
                                           abs=0.01)
    else:
        assert row["box"] is None
    _, words, pred_words, _ = _sample_words(dataset, pred)
    assert [x["word"] for x in row["words"]] == words
    assert [int(x["fake"]) for x in row["words"]] == pred_words
    flags["word"] += sum(pred_words) > 0


def _fails(setup, capsys, *argv, alone=False):
    """Run infer in-process (flags parsed as the command does); assert the ``error:`` line and exit status 2 (and,
    with ``alone``, that it is all of stderr: refused before anything was loaded); return the message."""
    with pytest.raises(SystemExit) as exc:
        exit_on_user_error(lambda: infer.main(infer.parse_args(["--checkpoint", setup["ckpt"], *argv])))
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and (len(lines) == 1 or not alone), lines
    return lines[-1]


def test_unusable_inputs_exit_2_and_write_nothing(setup, tmp_path, capsys):
    out, pic = tmp_path / "o.json", tmp_path / "o.png"
    files = ["--out", str(out), "--out-image", str(pic)]
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not an image")
    assert "cannot read image" in _fails(setup, capsys, "--image", str(text_file), "--text", "A man.", *files)
    assert f"image {tmp_path / 'none.jpg'} does not exist" in _fails(
        setup, capsys, "--image", str(tmp_path / "none.jpg"), "--text", "A man.", *files)
    unloaded = ["--checkpoint", str(tmp_path / "none.pth"), "--image", setup["photo"]]  # checked before loading it
    assert "--text: the caption is empty" in _fails(setup, capsys, *unloaded, "--text", "  ", *files, alone=True)
    assert "empty once normalised" in _fails(setup, capsys, *unloaded, "--text", "?!", *files, alone=True)
    for name, why in (("o.xyz", "PIL cannot write a '.xyz' picture"), ("o.psd", "PIL cannot write"),
                      ("o", "has no file extension")):
        assert why in _fails(setup, capsys, *unloaded, "--text", "A man.", "--out", str(out), "--out-image",
                             str(tmp_path / name), alone=True)
        assert not (tmp_path / name).exists()
    assert f"tokenizer folder {tmp_path / 'no_tok'} not found" in _fails(
        setup, capsys, "--image", setup["photo"], "--text", "A man.", "--tokenizer", str(tmp_path / "no_tok"),
        *files, alone=True)
    assert "x1 < x2" in _fails(setup, capsys, "--image", setup["photo"], "--text", "A man.", "--boxes",
                               "10,10,5,20", *files)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    assert "not a CIEC checkpoint" in _fails(setup, capsys, "--checkpoint", str(tmp_path / "other.pth"),
                                             "--image", setup["photo"], "--text", "A man.", *files)
    assert "is not a torch checkpoint: it is a text file" in _fails(
        setup, capsys, "--checkpoint", str(text_file), "--image", setup["photo"], "--text", "A man.", *files)
    small = _edited_checkpoint(setup, tmp_path / "small.pth", lambda s: s["config"]["model"]["text"].update(
        vocab_size=100))  # the tokenizer has 600 tokens
    assert "another tokenizer size" in _fails(setup, capsys, "--checkpoint", small, "--image", setup["photo"],
                                              "--text", "A man.", *files)
    other = _edited_checkpoint(setup, tmp_path / "other_tok.pth", lambda s: s["identity"].update(
        tokenizer_sha256="0" * 64))
    assert "not the one the checkpoint was trained with" in _fails(
        setup, capsys, "--checkpoint", other, "--image", setup["photo"], "--text", "A man.", *files)
    _refuses_other_tokenizer_without_fingerprint(setup, capsys, tmp_path, files)
    if not torch.cuda.is_available():
        assert "no CUDA device" in _fails(setup, capsys, "--image", setup["photo"], "--text", "A man.",
                                          "--device", "cuda", *files)
    assert not out.exists() and not pic.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def _refuses_other_tokenizer_without_fingerprint(setup, capsys, tmp_path, files):
    """A checkpoint without ``identity.tokenizer_sha256`` (train.py's last.pth): a ``--tokenizer`` that is not its
    data.tokenizer folder is refused, and so is any when data.tokenizer is not there to compare with; a copy of the
    folder is taken."""
    last = _edited_checkpoint(setup, tmp_path / "last.pth", lambda s: s["identity"].pop("tokenizer_sha256"))
    other = train_tokenizer(["a man speaks at a rally in paris", "the minister met people"] * 20,
                            str(tmp_path / "other_tok"), vocab_size=300)  # fits the model's table: only the check
    assert len(other) <= setup["cfg"]["model"]["text"]["vocab_size"]
    msg = _fails(setup, capsys, "--checkpoint", last, "--tokenizer", str(tmp_path / "other_tok"), "--image",
                 setup["photo"], "--text", "A man.", *files, alone=True)
    assert f"{tmp_path / 'other_tok'} is not the checkpoint's data.tokenizer {setup['bench']['tokenizer']}" in msg
    moved = _edited_checkpoint(setup, tmp_path / "moved.pth", lambda s: (
        s["identity"].pop("tokenizer_sha256"), s["config"]["data"].update(tokenizer=str(tmp_path / "gone"))))
    msg = _fails(setup, capsys, "--checkpoint", moved, "--tokenizer", setup["bench"]["tokenizer"], "--image",
                 setup["photo"], "--text", "A man.", *files, alone=True)
    assert "cannot be checked" in msg and str(tmp_path / "gone") in msg
    copy = shutil.copytree(setup["bench"]["tokenizer"], tmp_path / "tok_copy")
    state = torch.load(last, map_location="cpu", weights_only=True)
    for folder in (str(copy), os.path.relpath(setup["bench"]["tokenizer"]), None):
        assert len(load_checked_tokenizer(setup["cfg"], state, folder)) == len(tokenizer_for(setup["cfg"]))


def _edited_checkpoint(setup, path, edit):
    """The test checkpoint with ``edit(state)`` applied, saved at ``path``."""
    state = torch.load(setup["ckpt"], map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, path)
    return str(path)


def test_command_line_error_is_one_line(setup, tmp_path):
    """The real command: a missing checkpoint is one ``error:`` line (no traceback) and exit status 2."""
    proc = subprocess.run([sys.executable, "infer.py", "--checkpoint", str(tmp_path / "none.pth"), "--image",
                           setup["photo"], "--text", "A man."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
