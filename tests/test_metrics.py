"""utils/metrics.py against hand-computed cases (docs/protocol.md section 3)."""
import math

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from utils import metrics


# ---------------------------------------------------------------- binary: AUC, EER, ACC
def test_auc_hand_cases():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered correctly
    assert metrics.binary_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tied (pos, neg) pair counts one half: (1 + 0.5 + 2) / 4
    assert metrics.binary_auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)


def test_auc_eer_nan_with_one_class():
    assert math.isnan(metrics.binary_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(metrics.binary_eer([0, 0], [0.2, 0.5]))
    assert metrics.binary_acc([1, 1, 1], [0.2, 0.6, 0.9]) == pytest.approx(2 / 3)


def test_eer_interpolates_between_roc_points():
    # pos 0.9 | tie {pos 0.5, neg 0.5} | neg 0.1 -> ROC (0,0) (0,.5) (.5,1) (1,1).
    # On the sloped segment TPR = 0.5 + x, and 1 - x = 0.5 + x gives EER = 0.25 (no ROC point has FPR 0.25).
    assert metrics.binary_eer([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.25, abs=1e-9)
    # pos 0.9 | tie {pos, pos, neg at 0.5} | neg 0.2 -> ROC (0,0) (0,1/3) (1/2,1) (1,1):
    # TPR = 1/3 + 4x/3 on the slope, 1 - x = 1/3 + 4x/3 -> x = 2/7.
    assert metrics.binary_eer([1, 1, 1, 0, 0], [0.9, 0.5, 0.5, 0.5, 0.2]) == pytest.approx(2 / 7, abs=1e-9)


def test_eer_horizontal_segment_and_extremes():
    # ROC (0,0) (0,.75) (.5,.75) (.5,1) (1,1): crossing on the flat part TPR = .75 -> EER = .25
    labels, scores = [0, 1, 1, 1, 0, 1], [0.2, 0.7, 0.4, 0.9, 0.6, 0.8]
    assert metrics.binary_eer(labels, scores) == pytest.approx(0.25, abs=1e-9)
    assert metrics.binary_eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx(0.0, abs=1e-9)
    assert metrics.binary_eer([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5, abs=1e-9)


def test_eer_matches_the_benchmark_formula_on_random_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(np.clip(0.3 * labels + rng.normal(0.35, 0.2, 300), 0, 1), 2)  # many ties
    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    reference = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert metrics.binary_eer(labels, scores) == pytest.approx(reference, abs=1e-9)


def test_acc_threshold_is_strict():
    # 0.5 is "real" (tie -> class 0), 0.5000001 is "fake"
    assert metrics.binary_acc([0, 1, 0, 0], [0.5, 0.5000001, 0.2, 0.9]) == pytest.approx(0.75)
    assert metrics.binary_acc([1], [0.5]) == 0.0
    assert metrics.binary_acc([0], [0.5]) == 1.0


# ---------------------------------------------------------------- boxes
def test_box_iou_hand_cases():
    pred = [[0.5, 0.5, 0.2, 0.2],  # xyxy .4 .4 .6 .6
            [0.0, 0.0, 0.0, 0.0],
            [5e-5, 5e-5, 1e-5, 1e-5],  # every xyxy value < 1e-4
            [0.5, 0.5, 0.2, 0.2],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.2, 0.2]]
    gt = [[0.6, 0.5, 0.2, 0.2],  # xyxy .5 .4 .7 .6: inter .02, union .06
          [0.0, 0.0, 0.0, 0.0],  # zero-box rule
          [0.0, 0.0, 0.0, 0.0],  # zero-box rule with a tiny, non-zero prediction
          [0.0, 0.0, 0.0, 0.0],  # real prediction on a no-box sample: 0 / area = 0
          [0.5, 0.5, 0.2, 0.2],  # missed box
          [0.1, 0.5, 0.2, 0.2],  # box touching the left border: x1 == 0 -> the rule fires (benchmark quirk)
          [0.5, 0.5, 0.2, 0.2]]
    iou = metrics.box_iou(pred, gt)
    np.testing.assert_allclose(iou, [1 / 3, 1, 1, 0, 0, 1, 1], atol=1e-12)


def test_box_iou_near_zero_prediction_needs_all_coordinates_small():
    # xyxy of this prediction: (-5e-5, -5e-5, 1.5e-4, 5e-5): x2 >= 1e-4, so the rule does not apply
    iou = metrics.box_iou([[5e-5, 0.0, 2e-4, 1e-4]], [[0, 0, 0, 0]])
    assert iou[0] == 0.0


def test_iou_thresholds_are_strict():
    gt = [0.5, 0.5, 0.5, 0.5]  # xyxy .25 .25 .75 .75, area .25
    pred = [[0.5, 0.5, 0.5, 0.25],    # inside the gt, area .125 -> IoU exactly 0.5
            [0.5, 0.5, 0.5, 0.375],   # area .1875 -> IoU exactly 0.75
            [0.5, 0.5, 0.5, 0.5],     # 1
            [0.5, 0.5, 0.1, 0.1]]     # area .01 -> .04
    iou = metrics.box_iou(pred, [gt] * 4)
    assert iou[0] == 0.5 and iou[1] == 0.75
    out = metrics.iou_metrics(pred, [gt] * 4)
    assert out["IoU_mean"] == pytest.approx((0.5 + 0.75 + 1 + 0.04) / 4)
    assert out["IoU50"] == pytest.approx(2 / 4)  # 0.75 and 1; exactly 0.5 does not count
    assert out["IoU75"] == pytest.approx(1 / 4)  # only 1; exactly 0.75 does not count
    assert out["IoU95"] == pytest.approx(1 / 4)


def test_degenerate_union_is_zero_not_nan():
    iou = metrics.box_iou([[0.5, 0.5, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]])
    assert iou[0] == 0.0


# ---------------------------------------------------------------- tokens
def test_token_micro_prf_ignores_minus_100():
    pred = [[1, 1, 1, 0, 1],
            [0, 1, 1, 0, 0]]
    label = [[1, 0, 0, -100, -100],   # TP, FP, FP, ignored, ignored (a predicted 1 there must not count)
             [1, 1, -100, 0, -100]]   # FN, TP, ignored, TN, ignored
    assert metrics.token_counts(pred, label) == (2, 2, 1, 1)
    out = metrics.token_metrics(pred, label)
    assert out["Precision"] == pytest.approx(2 / 4)
    assert out["Recall"] == pytest.approx(2 / 3)
    assert out["F1"] == pytest.approx(4 / 7)
    assert out["ACC_tok"] == pytest.approx(3 / 6)


def test_token_metrics_are_micro_not_macro():
    # sample A: 1 TP of 1; sample B: 0 TP, 3 FP. Macro precision would be (1 + 0) / 2; micro is 1 / 4.
    out = metrics.token_metrics([[1, 0, 0, 0], [1, 1, 1, 0]], [[1, 0, 0, 0], [0, 0, 0, 0]])
    assert out["Precision"] == pytest.approx(1 / 4)
    assert out["Recall"] == pytest.approx(1.0)


def test_token_metrics_empty_denominators_give_zero():
    out = metrics.token_metrics([[0, 0]], [[1, 0]])
    assert out["Precision"] == 0.0 and out["Recall"] == 0.0 and out["F1"] == 0.0
    assert out["ACC_tok"] == pytest.approx(0.5)


def test_candidate_hits_counts_fakes_with_several_candidates():
    boxes = np.array([[[0.2, 0.5, 0.2, 0.2], [0.7, 0.5, 0.2, 0.2], [0, 0, 0, 0]]] * 4)
    mask = np.array([[True, True, False]] * 3 + [[True, False, False]])
    gt = np.array([[0.7, 0.5, 0.2, 0.2], [0.2, 0.5, 0.2, 0.2], [0.7, 0.5, 0.2, 0.2], [0.2, 0.5, 0.2, 0.2]])
    scores = np.array([[0.1, 0.9, 5.0], [0.1, 0.9, 5.0], [0.9, 0.1, 5.0], [0.9, 0.1, 0.0]])  # padded never chosen
    fake = np.array([True, True, True, True])
    assert metrics.candidate_hits(scores, boxes, mask, gt, fake) == (1, 3, 1.5)   # the 4th has one candidate
    assert metrics.candidate_hits(scores, boxes, mask, gt, [True, False, False, True]) == (1, 1, 0.5)
    far = gt + np.array([0.0, 0.3, 0.0, 0.0])                                       # IoU < 0.5 everywhere
    assert metrics.candidate_hits(scores, boxes, mask, far, fake) == (0, 0, 0.0)
