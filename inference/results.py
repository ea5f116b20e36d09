"""Model outputs of one prepared pair -> the JSON result of infer.py, with the evaluator's decision rules.

``run_model(predictor, prepared, amp)`` stacks the samples (``datasets.dgm4.collate``), runs ``CIEC.forward`` under
``torch.inference_mode`` (and autocast for ``amp`` in bf16/fp16) and returns the outputs as float32 CPU tensors
(B, ...) with the forward time. ``pair_result(prepared, outputs, i, cfg)`` reads row ``i``:

    pair        {"fake_prob": p_bin, "fake": p_bin > 0.5}                            (eq. 1; utils/metrics' rule)
    image       {"fake_prob": v_fine (eq. 5), "coarse_prob": v_coarse (Top-K mean of P_p),
                 "fake": I_valid = v_coarse > 0.5, the rule that gives a box}
    text        {"fake_prob": t_fine (2.4.2), "coarse_prob": t_coarse (eq. 12),
                 "fake": model.vctg.text_decision's score > 0.5, the rule that gates the token predictions}
    box         [x1, y1, x2, y2] in the image's pixels: the candidate C* = best_idx when ``pred_box`` is not
                zero (TRPS gives zero when the image is judged real or has no candidate), else null
    candidates  [{"box": [x1, y1, x2, y2], "score": S^v (eq. 4), "detector_score": MTCNN confidence or null,
                  "chosen": bool}], in the order given to the model; ``candidate_source`` "mtcnn" | "user"
    caption     the normalised caption (``normalize_caption``)
    words       one entry per normalised word: {"word", "raw": the caption word it comes from (split on ' '),
                "raw_index", "fake_prob": max token_prob of its tokens, "fake": any of its tokens has
                token_pred 1 (the evaluator's token decisions), "scored": content word with at least one token}
                and for a word that is not scored, "fake_prob": null and "why": "stop word" | "no letter" (number
                or punctuation only) | "truncated" (beyond data.max_len tokens); words past data.max_words are
                not listed (the benchmark's caption cap)
Tokens map to words by character offsets (``token_words``), as the dataset's ``word_index``.
"""
import time

import torch

from datasets.dgm4 import collate
from utils.training import amp_context, to_device
from utils.visualize import word_flags_from_tokens

OUTPUT_KEYS = ("p_bin", "v_fine", "v_coarse", "img_valid", "t_fine", "t_coarse", "pred_box", "best_idx", "box_scores",
               "token_prob", "token_pred")


def run_model(predictor, prepared, amp="none"):
    """Forward pass on the stacked samples of ``prepared``; returns ({key: CPU tensor}, seconds)."""
    batch = to_device(collate([p.sample for p in prepared]), predictor.device)
    start = time.perf_counter()
    with torch.inference_mode(), amp_context(predictor.device, amp):
        out = predictor.model(batch)
    out = {k: out[k].detach().cpu() for k in OUTPUT_KEYS}
    seconds = time.perf_counter() - start
    return {k: v if k in ("best_idx", "token_pred") else v.float() for k, v in out.items()}, seconds


def _p(value):
    return round(float(value), 6)


def _box(values):
    """Pixel coordinates: ints where they are whole (MTCNN's), else 2 decimals."""
    return [int(v) if float(v).is_integer() else round(float(v), 2) for v in values]


def word_results(prep, token_prob, token_pred, word_index, stopwords):
    """Per normalised word: probability, decision and whether it was scored (see the module docstring)."""
    n = len(prep.spans)
    flags = word_flags_from_tokens(token_pred.tolist(), word_index.tolist(), n)
    raw = prep.text.split(" ")
    words = []
    for j, (s, e) in enumerate(prep.spans):
        word = prep.caption[s:e]
        tokens = (word_index == j).nonzero().flatten()
        entry = {"word": word, "raw": raw[prep.owner[j]] if prep.owner[j] >= 0 else None,
                 "raw_index": prep.owner[j], "fake": bool(flags[j])}
        if not prep.word_mask[j] or len(tokens) == 0:
            why = "truncated" if len(tokens) == 0 else "stop word" if word in stopwords else "no letter"
            words.append({**entry, "fake_prob": None, "scored": False, "why": why})
        else:
            words.append({**entry, "fake_prob": _p(token_prob[tokens].max()), "scored": True})
    return words


def _candidates(prep, out, i):
    chosen = int(out["best_idx"][i]) if out["pred_box"][i].abs().max() > 0 else None
    scores = prep.detector_scores
    return [{"box": _box(box), "score": _p(out["box_scores"][i, k]),
             "detector_score": None if scores is None else _p(scores[k]), "chosen": k == chosen}
            for k, box in enumerate(prep.boxes)], chosen


def pair_result(prep, out, i, cfg, stopwords):
    """The JSON-ready result of row ``i`` of ``out`` for the prepared pair ``prep``."""
    text_score = out["t_fine" if cfg["model"]["vctg"]["text_decision"] == "fine" else "t_coarse"][i]
    candidates, chosen = _candidates(prep, out, i)
    sample = prep.sample
    return {
        "pair": {"fake_prob": _p(out["p_bin"][i]), "fake": bool(out["p_bin"][i] > 0.5)},
        "image": {"fake_prob": _p(out["v_fine"][i]), "coarse_prob": _p(out["v_coarse"][i]),
                  "fake": bool(out["img_valid"][i] > 0.5)},
        "text": {"fake_prob": _p(out["t_fine"][i]), "coarse_prob": _p(out["t_coarse"][i]),
                 "fake": bool(text_score > 0.5)},
        "box": None if chosen is None else _box(prep.boxes[chosen]),
        "candidate_source": prep.source, "candidates": candidates,
        "faces_detected": prep.detected if prep.source == "mtcnn" else None,
        "caption": prep.caption,
        "words": word_results(prep, out["token_prob"][i], out["token_pred"][i], sample["word_index"], stopwords),
    }
