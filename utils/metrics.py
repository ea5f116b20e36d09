"""DGM4 evaluation metrics, exactly as the benchmark code computes them (docs/protocol.md section 3).

Pure functions over numpy arrays; every rate is returned as a FRACTION in [0, 1] (callers multiply by 100).
N = number of samples, T = token positions per sample (after the start token).

- Binary detection (3.1), ``labels`` (N,) in {0,1} with 1 = fake, ``scores`` (N,) = p(fake):
  - AUC: ``sklearn.metrics.roc_auc_score``;
  - EER: ROC from ``roc_curve``, then the FPR x at which the LINEARLY INTERPOLATED TPR satisfies
    1 - x - TPR(x) = 0 (root found with scipy's ``brentq``, as the benchmark does);
  - ACC: predicted fake iff p > 0.5 (a tie at exactly 0.5 is "real", like an argmax over two equal logits).
  AUC and EER are NaN when only one class is present (undefined), ACC never is.
- Image grounding (3.3), ``pred_box`` and ``gt_box`` (N,4) normalised cxcywh, compared element-wise in xyxy
  with nothing clipped. Zero-box rule: where the ground-truth xyxy x1 == 0 and all 4 predicted xyxy values are
  < 1e-4, IoU = 1. IoU_mean = mean IoU over ALL samples; IoU50/75/95 = fraction with IoU STRICTLY greater than
  the threshold. One deliberate difference: a 0/0 IoU (both boxes of zero area, rule not applying) is 0 here,
  where the reference would produce NaN and poison the mean.
- Text grounding (3.4), ``token_pred`` and ``token_label`` (N,T) or flat: micro counts over every token of
  every sample, positions with label -100 ignored; P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R),
  ACC_tok = (TP+TN)/counted. An empty denominator gives 0 (no NaN).
"""
import numpy as np
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve

from utils.box_ops import cxcywh_to_xyxy

IGNORE_INDEX = -100


def _binary_inputs(labels, scores):
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    return labels, scores


def _both_classes(labels):
    return labels.size > 0 and 0 < labels.sum() < labels.size


def binary_auc(labels, scores):
    """ROC AUC of p(fake); NaN if only one class is present."""
    labels, scores = _binary_inputs(labels, scores)
    if not _both_classes(labels):
        return float("nan")
    return float(roc_auc_score(labels, scores))


def binary_eer(labels, scores):
    """Equal error rate on the linearly interpolated ROC (FPR where TPR = 1 - FPR); NaN if one class."""
    labels, scores = _binary_inputs(labels, scores)
    if not _both_classes(labels):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores, pos_label=1)
    # np.interp is the same piecewise-linear curve as scipy's interp1d(fpr, tpr); the root of the
    # decreasing function 1 - x - TPR(x) on [0, 1] is the EER.
    return float(brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0))


def binary_acc(labels, scores, threshold=0.5):
    """Accuracy of ``scores > threshold`` (strict: a tie goes to real)."""
    labels, scores = _binary_inputs(labels, scores)
    if labels.size == 0:
        return float("nan")
    return float(np.mean((scores > threshold).astype(np.int64) == labels))


def box_iou(pred_box, gt_box):
    """Element-wise IoU of normalised cxcywh boxes (N,4) x (N,4) -> (N,), with the zero-box rule."""
    pred = cxcywh_to_xyxy(np.asarray(pred_box, dtype=np.float64).reshape(-1, 4))
    gt = cxcywh_to_xyxy(np.asarray(gt_box, dtype=np.float64).reshape(-1, 4))
    if pred.shape != gt.shape:
        raise ValueError(f"pred_box {pred.shape} and gt_box {gt.shape} differ in length")
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])  # not clamped, as in the reference
    area_g = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    wh = np.clip(np.minimum(pred[:, 2:], gt[:, 2:]) - np.maximum(pred[:, :2], gt[:, :2]), 0.0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = area_p + area_g - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)
    zero_rule = (gt[:, 0] == 0) & np.all(pred < 1e-4, axis=1)
    iou[zero_rule] = 1.0
    return iou


def iou_metrics(pred_box, gt_box, thresholds=(0.5, 0.75, 0.95)):
    """{"IoU_mean", "IoU50", "IoU75", "IoU95"} over all samples (strict '>' thresholds); NaN if empty."""
    iou = box_iou(pred_box, gt_box)
    out = {"IoU_mean": float(iou.mean()) if iou.size else float("nan")}
    for t in thresholds:
        out[f"IoU{int(round(t * 100))}"] = float(np.mean(iou > t)) if iou.size else float("nan")
    return out


def token_counts(token_pred, token_label):
    """Micro confusion counts (tp, fp, fn, tn) over all positions whose label is not -100."""
    pred = np.asarray(token_pred).reshape(-1).astype(np.int64)
    label = np.asarray(token_label).reshape(-1).astype(np.int64)
    if pred.shape != label.shape:
        raise ValueError(f"token_pred {pred.shape} and token_label {label.shape} differ in size")
    keep = label != IGNORE_INDEX
    pred, label = pred[keep] == 1, label[keep] == 1
    return (int(np.sum(pred & label)), int(np.sum(pred & ~label)),
            int(np.sum(~pred & label)), int(np.sum(~pred & ~label)))


def token_metrics(token_pred, token_label):
    """{"Precision", "Recall", "F1", "ACC_tok"} micro-averaged over all tokens, -100 ignored."""
    tp, fp, fn, tn = token_counts(token_pred, token_label)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = tp + fp + fn + tn
    return {"Precision": precision, "Recall": recall, "F1": f1,
            "ACC_tok": (tp + tn) / total if total else 0.0}


def binary_metrics(labels, scores):
    """{"AUC", "EER", "ACC"} of p(fake) ``scores`` against 0/1 ``labels``."""
    return {"AUC": binary_auc(labels, scores), "EER": binary_eer(labels, scores),
            "ACC": binary_acc(labels, scores)}


def candidate_hits(scores, cand_boxes, cand_mask, gt_box, is_fake, min_iou=0.5):
    """How often a per-candidate score's argmax is the manipulated face (a diagnostic, not a DGM4 metric).

    Counted pairs: image fakes (``is_fake``) with two or more valid candidates, one of which overlaps the true box
    with IoU >= ``min_iou``; the true candidate is the best-overlapping one. Shapes: scores (B,n), cand_boxes
    (B,n,4) and gt_box (B,4) normalised cxcywh, cand_mask (B,n) bool, is_fake (B,) bool.
    Returns (hits, counted pairs, expected hits of a uniform choice)."""
    scores, boxes = np.asarray(scores, dtype=np.float64), np.asarray(cand_boxes, dtype=np.float64)
    valid, fake = np.asarray(cand_mask, dtype=bool), np.asarray(is_fake, dtype=bool)
    b, n = valid.shape
    ious = box_iou(boxes.reshape(-1, 4), np.repeat(np.asarray(gt_box, dtype=np.float64), n, axis=0)).reshape(b, n)
    ious = np.where(valid, ious, -1.0)
    keep = fake & (valid.sum(1) > 1) & (ious.max(1) >= min_iou)
    chosen = np.where(valid, scores, -np.inf).argmax(1)
    hits = int((chosen[keep] == ious.argmax(1)[keep]).sum())
    return hits, int(keep.sum()), float((1.0 / valid.sum(1)[keep]).sum())
