"""utils/evaluator.py: hand-computed full/subset/diagnostic tables, de-duplication, a real 2-process gloo run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from utils import dist
from utils import evaluator as ev_mod
from utils.evaluator import DGM4Evaluator, flatten_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOX_A = [0.5, 0.5, 0.2, 0.2]
BOX_B = [0.6, 0.5, 0.2, 0.2]  # IoU(BOX_A, BOX_B) = 1/3
ZERO = [0.0, 0.0, 0.0, 0.0]
X = -100
# index, fake_cls, y_m, p_bin, pred_box, gt_box, token_pred, token_label, token_label_clean, v_coarse
# Token rows are AFTER the start token; make_batch prepends a start column (label 1, pred 1) that the evaluator
# must slice away, otherwise it would add a true positive per sample.
SAMPLES = [
    (0, "orig", 0, 0.2, ZERO, ZERO, [0, 0, 0], [0, 0, 0], [0, 0, 0], 0.1),
    (1, "face_swap", 1, 0.7, BOX_A, BOX_A, [0, 1, 0], [0, 0, 0], [0, 0, 0], 0.8),
    (2, "text_swap", 1, 0.4, ZERO, ZERO, [1, 0, 0], [1, 1, 0], [1, 0, 0], 0.3),
    (3, "face_attribute&text_attribute", 1, 0.9, BOX_A, BOX_B, [0, 1, 1], [0, 1, X], [0, 1, X], 0.6),
    (4, "orig", 0, 0.6, BOX_A, ZERO, [0, 1, 0], [0, 0, X], [0, 0, X], 0.7),
    (5, "text_attribute", 1, 0.8, ZERO, ZERO, [0, 0, 1], [0, 0, 1], [0, 0, 1], 0.2),
]


def make_batch(rows, width=None):
    """(outputs, batch) dicts in the model/collate formats for the given SAMPLES rows."""
    width = width or max(len(r[6]) for r in rows)

    def tokens(values, fill):
        return torch.tensor([[1] + list(v) + [fill] * (width - len(v)) for v in values], dtype=torch.long)

    batch = {"index": torch.tensor([r[0] for r in rows]), "id": [f"id{r[0]}" for r in rows],
             "fake_cls": [r[1] for r in rows], "caption": [f"caption {r[0]}" for r in rows],
             "y_m": torch.tensor([float(r[2]) for r in rows]), "gt_box": torch.tensor([r[5] for r in rows]),
             "token_label": tokens([r[7] for r in rows], X), "token_label_clean": tokens([r[8] for r in rows], X)}
    outputs = {"p_bin": torch.tensor([r[3] for r in rows]), "pred_box": torch.tensor([r[4] for r in rows]),
               "token_pred": tokens([r[6] for r in rows], 1), "v_coarse": torch.tensor([r[9] for r in rows])}
    return outputs, batch


def evaluator_for(*chunks, width=None):
    ev = DGM4Evaluator()
    for rows in chunks:
        ev.update(*make_batch(rows, width))
    return ev


def test_full_table_hand_computed():
    out = evaluator_for(SAMPLES[:3], SAMPLES[3:]).summarize()
    # positives .7 .4 .9 .8 vs negatives .2 .6: 7 of 8 pairs ordered
    assert out["AUC"] == pytest.approx(100 * 7 / 8)
    # ROC (0,0) (0,.75) (.5,.75) (.5,1) (1,1) -> 1 - x = .75
    assert out["EER"] == pytest.approx(25.0, abs=1e-6)
    assert out["ACC"] == pytest.approx(100 * 4 / 6)  # predicted [0 1 0 1 1 1]
    # IoU [1, 1, 1, 1/3, 0, 1]
    assert out["IoU_mean"] == pytest.approx(100 * (4 + 1 / 3) / 6)
    assert out["IoU50"] == pytest.approx(100 * 4 / 6)
    assert out["IoU75"] == pytest.approx(100 * 4 / 6)
    # tokens: TP 3 (s2, s3, s5), FP 2 (s1, s4), FN 1 (s2); the start column and -100 positions ignored
    assert out["Precision"] == pytest.approx(100 * 3 / 5)
    assert out["Recall"] == pytest.approx(100 * 3 / 4)
    assert out["F1"] == pytest.approx(100 * 2 / 3)


def test_subset_and_diagnostic_tables_hand_computed():
    out = evaluator_for(SAMPLES).summarize()
    img, txt, diag = out["image_subset"], out["text_subset"], out["diagnostics"]
    assert set(img) == {"AUC", "EER", "ACC", "IoU_mean", "IoU50", "IoU75"}
    assert set(txt) == {"AUC", "EER", "ACC", "Precision", "Recall", "F1"}
    # image subset drops s2 (text_swap), s5 (text_attribute): labels [0 1 1 0], scores [.2 .7 .9 .6]
    assert img["AUC"] == pytest.approx(100.0)
    assert img["EER"] == pytest.approx(0.0, abs=1e-6)
    assert img["ACC"] == pytest.approx(75.0)
    assert img["IoU_mean"] == pytest.approx(100 * 7 / 12)  # [1, 1, 1/3, 0]
    assert img["IoU50"] == pytest.approx(50.0) and img["IoU75"] == pytest.approx(50.0)
    # text subset drops s1 (face_swap) only; the mixed s3 stays: labels [0 1 1 0 1], scores [.2 .4 .9 .6 .8]
    assert txt["AUC"] == pytest.approx(100 * 5 / 6)
    assert txt["EER"] == pytest.approx(100 / 3, abs=1e-6)  # ROC (0,0) (0,2/3) (.5,2/3) (.5,1) (1,1)
    assert txt["ACC"] == pytest.approx(60.0)
    assert txt["Precision"] == pytest.approx(75.0)  # TP 3, FP 1 (s4)
    assert txt["Recall"] == pytest.approx(75.0)
    assert txt["F1"] == pytest.approx(75.0)
    # diagnostics: image-manipulated s1, s3 -> IoU [1, 1/3]; text-manipulated s2, s3, s5 -> TP 3, FP 0, FN 1
    assert diag["img_fake/IoU_mean"] == pytest.approx(100 * 2 / 3)
    assert diag["img_fake/IoU50"] == pytest.approx(50.0)
    assert diag["txt_fake/Precision"] == pytest.approx(100.0)
    assert diag["txt_fake/Recall"] == pytest.approx(75.0)
    assert diag["txt_fake/F1"] == pytest.approx(100 * 6 / 7)
    # clean labels: s2's second word is not fake there -> TP 3, FP 2, FN 0
    assert diag["clean/Precision"] == pytest.approx(60.0)
    assert diag["clean/Recall"] == pytest.approx(100.0)
    assert diag["clean/F1"] == pytest.approx(75.0)
    # v_coarse against y_v = [0 1 0 1 0 0]
    assert diag["aux/v_coarse_AUC"] == pytest.approx(100 * 7 / 8)
    assert diag["aux/v_coarse_ACC"] == pytest.approx(100 * 5 / 6)
    # within clean captions (s0 .1, s1 .8, s4 .7) and edited ones (s2 .3, s3 .6, s5 .2) every pair is ordered:
    # the one disordered pair overall (s3 .6 < s4 .7) crosses the two subsets
    assert diag["aux/v_coarse_AUC/pristine_text"] == pytest.approx(100.0)
    assert diag["aux/v_coarse_AUC/edited_text"] == pytest.approx(100.0)
    # one manipulation against the orig pairs: face_swap s1 .8 above s0 .1 and s4 .7; no pure face_attribute row
    assert diag["aux/v_coarse_AUC/face_swap"] == pytest.approx(100.0)
    assert np.isnan(diag["aux/v_coarse_AUC/face_attribute"])
    assert "aux/t_coarse_AUC/pristine_image" not in diag and "aux/v_coarse_AUC/text_swap" not in diag
    # pair score of each fake_cls present against the orig pairs (.2, .6): text_swap .4 sits between them
    assert {k: v for k, v in diag.items() if k.startswith("pair_AUC/")} == pytest.approx({
        "pair_AUC/face_swap": 100.0, "pair_AUC/text_swap": 50.0, "pair_AUC/text_attribute": 100.0,
        "pair_AUC/face_attribute&text_attribute": 100.0})
    assert {k: diag[k] for k in diag if k.startswith("count/")} == {
        "count/samples": 6, "count/fake": 4, "count/img_subset": 4, "count/txt_subset": 5,
        "count/img_fake": 2, "count/txt_fake": 3, "count/tokens": 16, "count/duplicates": 0}


def test_gather_with_duplicates_equals_deduplicated_single_set(monkeypatch):
    single = flatten_metrics(evaluator_for(SAMPLES).summarize())
    # two "ranks": a DistributedSampler-style shard with index 0 repeated as padding, and a wider token axis
    rank0 = evaluator_for([SAMPLES[0], SAMPLES[2], SAMPLES[4]], [SAMPLES[1]])
    rank1 = evaluator_for([SAMPLES[3], SAMPLES[5]], [SAMPLES[0], SAMPLES[1]], width=5)
    payloads = [rank0._local_payload(), rank1._local_payload()]
    monkeypatch.setattr(dist, "all_gather_object", lambda obj: payloads)
    gathered = flatten_metrics(rank0.synchronize().summarize())
    assert gathered.pop("diagnostics/count/duplicates") == 2 and single.pop("diagnostics/count/duplicates") == 0
    assert gathered == pytest.approx(single, nan_ok=True)
    assert [r["index"] for r in rank0.predictions()] == [0, 1, 2, 3, 4, 5]


def test_flatten_metrics():
    assert flatten_metrics({"AUC": 1.0, "image_subset": {"AUC": 2.0}, "diagnostics": {"count/samples": 3}}) == {
        "AUC": 1.0, "image_subset/AUC": 2.0, "diagnostics/count/samples": 3}


def test_predictions_records():
    ev = evaluator_for([SAMPLES[4], SAMPLES[3]], [SAMPLES[0]], width=6)
    recs = ev.predictions()
    assert [r["index"] for r in recs] == [0, 3, 4]  # sorted by index
    r3 = recs[1]
    assert r3["id"] == "id3" and r3["fake_cls"] == "face_attribute&text_attribute"
    assert r3["token_label"] == [0, 1] and r3["token_pred"] == [0, 1]  # cut after the last labelled token
    assert r3["pred_box"] == pytest.approx(BOX_A) and r3["gt_box"] == pytest.approx(BOX_B)
    assert r3["score"] == pytest.approx(0.9) and r3["label"] == 1 and r3["v_coarse"] == pytest.approx(0.6)
    assert recs[0]["token_label"] == [0, 0, 0]
    json.dumps(recs)  # plain types only


class _ReplayModel(torch.nn.Module):
    """Returns the predictions stored in the batch (keys prefixed 'out_'), like a trained model would."""

    def forward(self, batch):
        assert not self.training and torch.is_inference_mode_enabled()
        return {k[4:]: v for k, v in batch.items() if k.startswith("out_")}


def replay_loader(rows_per_batch):
    loader = []
    for rows in rows_per_batch:
        outputs, batch = make_batch(rows)
        batch.update({"out_" + k: v for k, v in outputs.items()})
        loader.append(batch)
    return loader


def test_evaluate_runs_model_and_restores_mode():
    model = _ReplayModel().train()
    metrics, preds = ev_mod.evaluate(model, replay_loader([SAMPLES[:4], SAMPLES[4:]]), torch.device("cpu"))
    assert model.training
    assert flatten_metrics(metrics) == pytest.approx(flatten_metrics(evaluator_for(SAMPLES).summarize()), nan_ok=True)
    assert len(preds) == 6


DDP_SCRIPT = r'''
import json, sys, torch
from torch.utils.data import DistributedSampler
from utils import dist, evaluator
from tests.test_evaluator import SAMPLES, replay_loader, _ReplayModel

rank, world, local_rank, device = dist.init_distributed("cpu")
assert world == 2 and dist.is_dist()
order = list(DistributedSampler(range(5), num_replicas=world, rank=rank, shuffle=False))  # pads with index 0
rows = [SAMPLES[i] for i in order]
metrics, preds = evaluator.evaluate(_ReplayModel(), replay_loader([rows[:2], rows[2:]]), device)
reduced = dist.reduce_dict({"b": torch.tensor(float(rank)), "a": torch.tensor(2.0 * rank)})
out = {"metrics": metrics, "n_preds": len(preds), "order": order,
       "reduced": {k: v.item() for k, v in reduced.items()}}
with open(sys.argv[1] + f".{rank}", "w") as f:
    json.dump(out, f)
dist.cleanup()
'''


def test_two_process_gloo_synchronize(tmp_path):
    script = tmp_path / "ddp_eval.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")  # the script imports the tests package
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2)]
    expected = flatten_metrics(evaluator_for(SAMPLES[:5]).summarize())
    assert sorted(results[0]["order"] + results[1]["order"]) == [0, 0, 1, 2, 3, 4]  # the sampler padded
    for res in results:
        got = flatten_metrics(res["metrics"])
        assert got.pop("diagnostics/count/duplicates") == 1
        want = {k: v for k, v in expected.items() if k != "diagnostics/count/duplicates"}
        assert got == pytest.approx(want, nan_ok=True)
        assert res["n_preds"] == 5
        assert res["reduced"] == pytest.approx({"a": 1.0, "b": 0.5})
    assert not np.isnan(results[0]["metrics"]["AUC"])


def test_predictions_keep_real_candidates_and_their_scores():
    """cand_boxes / box_scores of a record: the real candidates only (cand_mask), in the batch's order."""
    outputs, batch = make_batch(SAMPLES[:2])
    batch["cand_boxes"] = torch.tensor([[BOX_A, BOX_B, ZERO], [BOX_B, ZERO, ZERO]])
    batch["cand_mask"] = torch.tensor([[True, True, False], [True, False, False]])
    outputs["box_scores"] = torch.tensor([[0.25, 0.75, -1.0e4], [0.5, -1.0e4, -1.0e4]])
    ev = DGM4Evaluator()
    ev.update(outputs, batch)
    recs = ev.predictions()
    np.testing.assert_allclose(recs[0]["cand_boxes"], [BOX_A, BOX_B], rtol=1e-6)
    np.testing.assert_allclose(recs[1]["cand_boxes"], [BOX_B], rtol=1e-6)
    assert recs[0]["box_scores"] == [0.25, 0.75] and recs[1]["box_scores"] == [0.5]
    json.dumps(recs, allow_nan=False)
