"""The one DGM4 evaluator, shared by train.py (validation) and test.py (docs/protocol.md section 3).

``evaluate(model, loader, device, amp_dtype=None)`` -> ``(metrics, predictions)`` runs the model in eval mode
under ``torch.inference_mode`` (and autocast if ``amp_dtype``), feeds a ``DGM4Evaluator``, gathers the
predictions of every rank, drops the duplicates that ``DistributedSampler`` pads in (by sample index), and
computes every metric ONCE on the full set, on every rank (so all ranks return the same numbers).

Per sample the evaluator keeps (on the CPU): ``index``, ``id``, ``fake_cls``, ``caption``, ``score`` =
``outputs["p_bin"]``, ``label`` = ``batch["y_m"]``, ``pred_box``/``gt_box`` (normalised cxcywh), and, per
token position AFTER the start token (the benchmark's ``[:, 1:]`` slice), ``token_pred``, ``token_label``
(benchmark rule, -100 where ignored) and ``token_label_clean``; plus ``v_coarse``, ``v_fine``, ``t_coarse``,
``t_fine`` when the model outputs them, and ``cand_boxes`` / ``box_scores`` (the real candidates, normalised
cxcywh, and their S^v, in the batch's order; NaN marks padding) when the model outputs ``box_scores`` and the batch
has ``cand_boxes`` and ``cand_mask`` (test.py --visualize draws them).

``summarize()`` returns (rates in PERCENT, counts as ints)::

    AUC, EER, ACC, IoU_mean, IoU50, IoU75, Precision, Recall, F1   Table 1, all samples (+ IoU95, ACC_tok)
    image_subset: {AUC, EER, ACC, IoU_mean, IoU50, IoU75}   HAMMER Table 3: samples whose fake_cls is exactly
                                                           text_swap or text_attribute are dropped
    text_subset:  {AUC, EER, ACC, Precision, Recall, F1}    Table 4: exactly face_swap / face_attribute dropped
    diagnostics:  {img_fake/IoU_mean, img_fake/IoU50, img_fake/IoU75      image-manipulated samples only
                   txt_fake/Precision, txt_fake/Recall, txt_fake/F1        text-manipulated samples only
                   clean/Precision, clean/Recall, clean/F1                 all samples, token_label_clean
                   aux/{v_coarse,v_fine}_{AUC,ACC} (vs y_v), aux/{t_coarse,t_fine}_{AUC,ACC} (vs y_t), if present,
                   and each AUC within the pairs whose OTHER modality is pristine / edited:
                   aux/v_*_AUC/{pristine,edited}_text, aux/t_*_AUC/{pristine,edited}_image (the cross-modal
                   confusion: a face swap leaves a caption that names someone no longer pictured), and
                   within the pairs that are orig or exactly one manipulation of that modality:
                   aux/v_*_AUC/{face_swap,face_attribute}, aux/t_*_AUC/{text_swap,text_attribute}
                   pair_AUC/<fake_cls>: AUC of the pair score within the orig pairs and those of one fake_cls,
                   for each fake_cls present (which manipulations hold the Table 1 AUC down)
                   count/{samples,fake,img_subset,txt_subset,img_fake,txt_fake,tokens,duplicates}}

y_v / y_t (image / text manipulated) are read from ``fake_cls`` ("face_" / "text_" in it). ``flatten_metrics``
turns the nested dict into ``{"image_subset/AUC": ..., "diagnostics/clean/F1": ...}`` for JSON lines and
TensorBoard.
"""
import collections

import numpy as np
import torch

from utils import dist, metrics
from utils.config import flatten
from utils.training import to_device

IGNORE = metrics.IGNORE_INDEX
TEXT_ONLY = ("text_swap", "text_attribute")
IMAGE_ONLY = ("face_swap", "face_attribute")
AUX_SCORES = ("v_coarse", "v_fine", "t_coarse", "t_fine")
TOKEN_KEYS = ("token_pred", "token_label", "token_label_clean")


def _np(x, dtype):
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu() if dtype is np.float64 else x.detach().cpu()
        x = x.numpy()
    return np.asarray(x).astype(dtype)


def _auc_against_orig(fake_cls, kind, target, scores):
    """AUC (percent) of ``scores`` against ``target`` within the orig pairs and the pairs of one ``kind``."""
    rows = (fake_cls == "orig") | (fake_cls == kind)
    return 100.0 * metrics.binary_auc(target[rows], scores[rows])


def _pad_cat(arrays, fill):
    """Concatenate (n_i, T_i) arrays along dim 0, right-padding the token axis with ``fill``."""
    width = max(a.shape[1] for a in arrays)
    return np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill) for a in arrays])


def _merge(parts):
    """Merge a list of {field: array or list} payloads into one."""
    parts = [p for p in parts if p and len(p["index"])]
    if not parts:
        raise RuntimeError("DGM4Evaluator: no predictions on any rank (was update() called?)")
    merged = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if isinstance(values[0], list):
            merged[key] = [v for vs in values for v in vs]
        elif key in TOKEN_KEYS:
            merged[key] = _pad_cat(values, 0 if key == "token_pred" else IGNORE)
        else:
            merged[key] = np.concatenate(values)
    return merged


def _select(data, keep):
    """Rows ``keep`` (index array or bool mask) of every field."""
    keep = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
    return {k: ([v[i] for i in keep] if isinstance(v, list) else v[keep]) for k, v in data.items()}


def _pct(values, prefix=""):
    return {prefix + k: 100.0 * v for k, v in values.items()}


class DGM4Evaluator:
    """Accumulate per-sample predictions, gather over ranks, de-duplicate, compute the DGM4 metrics."""

    def __init__(self):
        self._local = collections.defaultdict(list)
        self._aux = None
        self._data = None
        self.num_duplicates = 0

    def update(self, outputs, batch):
        """Add one batch (``outputs`` of ``CIEC.forward``, ``batch`` of ``collate``)."""
        aux = tuple(k for k in AUX_SCORES if k in outputs)
        if self._aux is None:
            self._aux = aux
        elif aux != self._aux:
            raise KeyError(f"DGM4Evaluator.update: outputs hold {aux}, earlier batches held {self._aux}")
        loc = self._local
        loc["index"].append(_np(batch["index"], np.int64))
        loc["score"].append(_np(outputs["p_bin"], np.float64))
        loc["label"].append(_np(batch["y_m"], np.int64))
        loc["pred_box"].append(_np(outputs["pred_box"], np.float64).reshape(-1, 4))
        loc["gt_box"].append(_np(batch["gt_box"], np.float64).reshape(-1, 4))
        # int16 keeps the gathered payload small (values are 0, 1 and -100)
        loc["token_pred"].append(_np(outputs["token_pred"][:, 1:], np.int16))
        loc["token_label"].append(_np(batch["token_label"][:, 1:], np.int16))
        loc["token_label_clean"].append(_np(batch["token_label_clean"][:, 1:], np.int16))
        for key in self._aux:
            loc[key].append(_np(outputs[key], np.float64))
        if "box_scores" in outputs and "cand_mask" in batch and "cand_boxes" in batch:  # NaN: padding
            valid = _np(batch["cand_mask"], bool)
            loc["box_scores"].append(np.where(valid, _np(outputs["box_scores"], np.float64), np.nan))
            loc["cand_boxes"].append(np.where(valid[..., None], _np(batch["cand_boxes"], np.float64), np.nan))
        loc["id"].append(list(batch["id"]))
        loc["fake_cls"].append(list(batch["fake_cls"]))
        loc["caption"].append(list(batch.get("caption", [""] * len(batch["id"]))))
        self._data = None

    def _local_payload(self):
        if not self._local:
            return {}
        return _merge([{k: v[i] for k, v in self._local.items()} for i in range(len(self._local["index"]))])

    def synchronize(self):
        """Gather every rank's predictions (collective: all ranks call it), keep one row per sample index."""
        merged = _merge(dist.all_gather_object(self._local_payload()))
        _, first = np.unique(merged["index"], return_index=True)  # sorted by index, first occurrence kept
        self.num_duplicates = len(merged["index"]) - len(first)
        self._data = _select(merged, first)
        return self

    @property
    def data(self):
        """The gathered, de-duplicated per-sample fields (synchronizes on first use)."""
        if self._data is None:
            self.synchronize()
        return self._data

    def summarize(self):
        """All metrics on the gathered set (see the module docstring for the keys)."""
        d = self.data
        fake_cls = np.asarray(d["fake_cls"], dtype=object)
        y_v = np.array(["face_" in c for c in fake_cls], dtype=bool)
        y_t = np.array(["text_" in c for c in fake_cls], dtype=bool)
        img = ~np.isin(fake_cls, TEXT_ONLY)
        txt = ~np.isin(fake_cls, IMAGE_ONLY)
        out = self._table(d, binary=True, boxes=True, tokens=True)
        out["image_subset"] = self._table(_select(d, img), binary=True, boxes=True, short=True)
        out["text_subset"] = self._table(_select(d, txt), binary=True, tokens=True, short=True)
        diag = self._table(_select(d, y_v), boxes=True, short=True, prefix="img_fake/")
        diag.update(self._table(_select(d, y_t), tokens=True, short=True, prefix="txt_fake/"))
        clean = metrics.token_metrics(d["token_pred"], d["token_label_clean"])
        diag.update(_pct({k: clean[k] for k in ("Precision", "Recall", "F1")}, "clean/"))
        for key in self._aux or ():
            target, other, name = (y_v, y_t, "text") if key.startswith("v_") else (y_t, y_v, "image")
            diag[f"aux/{key}_AUC"] = 100.0 * metrics.binary_auc(target, d[key])
            diag[f"aux/{key}_ACC"] = 100.0 * metrics.binary_acc(target, d[key])
            for state, rows in (("pristine", ~other), ("edited", other)):
                diag[f"aux/{key}_AUC/{state}_{name}"] = 100.0 * metrics.binary_auc(target[rows], d[key][rows])
            for kind in IMAGE_ONLY if key.startswith("v_") else TEXT_ONLY:  # one manipulation against the real pairs
                diag[f"aux/{key}_AUC/{kind}"] = _auc_against_orig(fake_cls, kind, target, d[key])
        for kind in sorted(set(fake_cls) - {"orig"}):
            diag[f"pair_AUC/{kind}"] = _auc_against_orig(fake_cls, kind, d["label"], d["score"])
        diag.update(self._counts(d, img, txt, y_v, y_t))
        out["diagnostics"] = diag
        return out

    @staticmethod
    def _table(d, binary=False, boxes=False, tokens=False, short=False, prefix=""):
        """Percent metrics of one (sub)set; ``short`` leaves out IoU95 and ACC_tok; empty set -> NaN rates."""
        out = {}
        if binary:
            out.update(_pct(metrics.binary_metrics(d["label"], d["score"]), prefix))
        if boxes:
            iou = metrics.iou_metrics(d["pred_box"], d["gt_box"])
            keys = ("IoU_mean", "IoU50", "IoU75") + (() if short else ("IoU95",))
            out.update(_pct({k: iou[k] for k in keys}, prefix))
        if tokens:
            tok = metrics.token_metrics(d["token_pred"], d["token_label"])
            keys = ("Precision", "Recall", "F1") + (() if short else ("ACC_tok",))
            out.update(_pct({k: tok[k] for k in keys}, prefix))
        return out

    def _counts(self, d, img, txt, y_v, y_t):
        return {"count/samples": int(len(d["index"])), "count/fake": int(np.sum(d["label"] == 1)),
                "count/img_subset": int(img.sum()), "count/txt_subset": int(txt.sum()),
                "count/img_fake": int(y_v.sum()), "count/txt_fake": int(y_t.sum()),
                "count/tokens": int(np.sum(d["token_label"] != IGNORE)),
                "count/duplicates": int(self.num_duplicates)}

    def predictions(self):
        """Per-sample records (sorted by index) for predictions.jsonl; token lists cut after the last labelled one."""
        d = self.data
        valid = (d["token_label"] != IGNORE) | (d["token_label_clean"] != IGNORE)
        lengths = np.where(valid.any(1), valid.shape[1] - np.argmax(valid[:, ::-1], axis=1), 0)
        records = []
        for i, n in enumerate(lengths):
            rec = {"index": int(d["index"][i]), "id": _plain(d["id"][i]), "fake_cls": d["fake_cls"][i],
                   "caption": d["caption"][i], "score": float(d["score"][i]), "label": int(d["label"][i]),
                   "pred_box": d["pred_box"][i].tolist(), "gt_box": d["gt_box"][i].tolist()}
            rec.update({k: d[k][i, :n].tolist() for k in TOKEN_KEYS})
            rec.update({k: float(d[k][i]) for k in self._aux or ()})
            if "box_scores" in d:
                real = np.isfinite(d["box_scores"][i])
                rec["cand_boxes"] = d["cand_boxes"][i][real].tolist()
                rec["box_scores"] = d["box_scores"][i][real].tolist()
            records.append(rec)
        return records


def flatten_metrics(values, prefix=""):
    """``{"a": 1, "b": {"c": 2}}`` -> ``{"a": 1, "b/c": 2}`` (for JSON lines and TensorBoard)."""
    return flatten(values, prefix, sep="/")


def _plain(value):
    return value.item() if isinstance(value, (np.generic, torch.Tensor)) else value


def evaluate(model, loader, device, amp_dtype=None, max_batches=None):
    """Run ``model`` over ``loader`` and return ``(metrics, predictions)`` on the full, de-duplicated set.

    Collective under DDP: every rank must call it (with its DistributedSampler shard). ``max_batches`` limits
    the batches per rank (smoke runs). The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    evaluator = DGM4Evaluator()
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = to_device(batch, device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(batch)
            evaluator.update(outputs, batch)
    model.train(was_training)
    evaluator.synchronize()
    return evaluator.summarize(), evaluator.predictions()
