"""Printing and writing evaluation results: the Table 1 row beside the paper's, the subset tables,
and ``predictions.jsonl``.
"""
import json
import math

TABLE1_KEYS = ["AUC", "EER", "ACC", "IoU_mean", "IoU50", "IoU75", "Precision", "Recall", "F1"]
HEADERS = ["AUC", "EER", "ACC", "IoU_m", "IoU50", "IoU75", "Prec.", "Recall", "F1"]
# CIEC paper, Table 1, "CIEC (Ours)" on the entire DGM4 test split.
PAPER_CIEC = {"AUC": 95.67, "EER": 10.76, "ACC": 89.40, "IoU_mean": 83.49, "IoU50": 88.94, "IoU75": 87.12,
              "Precision": 53.24, "Recall": 60.85, "F1": 56.80}


def _row(name, values, keys):
    cells = "".join(f"{values[k]:>8.2f}" if isinstance(values.get(k), (int, float)) else f"{'-':>8}"
                    for k in keys)
    return f"{name:<22}{cells}"


def format_report(metrics, split):
    """Table 1 (ours vs the paper), then the image/text subset tables and the diagnostic views."""
    head = f"{'':<22}" + "".join(f"{h:>8}" for h in HEADERS)
    lines = [f"DGM4 protocol on split '{split}' (percent; EER lower is better)", head,
             _row("this run", metrics, TABLE1_KEYS), _row("CIEC paper (Table 1)", PAPER_CIEC, TABLE1_KEYS)]
    for name, key in (("image subset", "image_subset"), ("text subset", "text_subset")):
        if isinstance(metrics.get(key), dict):
            lines.append(_row(name, metrics[key], TABLE1_KEYS))
    diag = metrics.get("diagnostics", {})
    if diag:
        lines.append("diagnostics: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                 for k, v in diag.items()))
    return "\n".join(lines)


def write_predictions(predictions, path):
    """One JSON object per line, numbers as numbers."""
    with open(path, "w") as f:
        for record in predictions:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")


def json_safe(value):
    """NaN/inf (e.g. AUC of a one-class subset) become None, so the file stays valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
