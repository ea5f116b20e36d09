"""The results page of the ablation study (scripts/ablations.py): CIEC's Tables 2 and 3 and the section 3.5
baseline, from the runs' ``eval_test/metrics.json`` (test.py's Table 1 keys, percent), beside the paper's numbers.

Cells are "mean ± sample sd over seeds (paper)". The paper prints the middle columns of Tables 2-3 as "EER, ACC"
but the numbers are ACC, EER (docs/implementation_notes.md, Part 1): ``PAPER`` stores them under their true keys.
A row's direction holds when its change against the full model (same seeds' mean) has the sign of the paper's
change on the metric the paper's text discusses (``CHECKS``; no change at all does not hold); it is "within seed
spread" when the change is not larger than the combined sample sd of the two rows. A comparison is "not measurable"
when the full model and the variant both stay below ``FLOOR`` on a metric where the paper's full model is far above
it (token F1 near 0 while the paper has 56.80): a drop from 0.9 to 0.0 is not the paper's direction, it is noise at
the floor, and the page says so instead of "holds".

Every finished run is also kept as one small JSON record in the repository (``write_record``: its Table 1 metrics
and wall times, ``<records>/<row>_seed<s>.json``), so that the page can be rewritten, and a study continued, on a
machine that no longer has the run folders; a run folder, when present, wins over its record. A record also holds
the digest of the run's resolved config (``setting_digest``), so that a base config edited between two sessions
(same path, other content) stops the study instead of mixing two settings on one page.
"""
import hashlib
import json
import math
import os

from utils.config import DEFAULTS, flatten
from utils.errors import UserError
from utils.io import atomic_write

# (row, table): the order of the study and of the page
ROWS = [("full", "2+3"), ("wo_v_coarse", "2"), ("wo_v_fine", "2"), ("wo_bsc", "2"), ("wo_sce", "2"),
        ("wo_text_aid", "2"), ("wo_t_coarse", "3"), ("wo_t_fine", "3"), ("wo_asc", "3"), ("wo_scc", "3"),
        ("wo_image_aid", "3"), ("baseline", "3.5")]
LABELS = {"full": "Full", "wo_v_coarse": "w/o L^v_Coarse", "wo_v_fine": "w/o L^v_Fine", "wo_bsc": "w/o L_Bsc",
          "wo_sce": "w/o L_Sce", "wo_text_aid": "w/o Text-aid", "wo_t_coarse": "w/o L^t_Coarse",
          "wo_t_fine": "w/o L^t_Fine", "wo_asc": "w/o L_Asc", "wo_scc": "w/o L_Scc", "wo_image_aid": "w/o Image-aid",
          "baseline": "Baseline (3.5)"}
TABLE2_KEYS = ["AUC", "EER", "ACC", "IoU_mean", "IoU50", "IoU75"]
TABLE3_KEYS = ["AUC", "EER", "ACC", "Precision", "Recall", "F1"]
ALL_KEYS = ["AUC", "EER", "ACC", "IoU_mean", "IoU50", "IoU75", "Precision", "Recall", "F1"]
_T2 = {"full": (95.67, 89.40, 10.76, 83.49, 88.94, 87.12), "wo_v_coarse": (95.17, 89.07, 11.15, 82.49, 87.90, 86.09),
       "wo_v_fine": (94.98, 88.09, 12.24, 47.22, 47.22, 47.22), "wo_bsc": (94.54, 87.36, 13.24, 76.14, 80.53, 79.04),
       "wo_sce": (95.15, 89.02, 11.18, 82.76, 88.21, 86.38), "wo_text_aid": (95.48, 89.40, 10.79, 82.84, 88.38, 86.51)}
_T3 = {"full": (95.67, 89.40, 10.76, 53.24, 60.85, 56.80), "wo_t_coarse": (95.47, 89.29, 11.13, 53.59, 56.44, 54.98),
       "wo_t_fine": (95.61, 89.24, 10.98, 55.63, 51.48, 53.47), "wo_asc": (95.61, 89.52, 10.77, 43.41, 23.97, 30.89),
       "wo_scc": (95.31, 89.43, 10.79, 53.41, 59.67, 56.37), "wo_image_aid": (95.67, 89.30, 10.91, 59.17, 36.91, 45.46)}
PAPER = {row: dict(zip(["AUC", "ACC", "EER", *TABLE2_KEYS[3:]], v)) for row, v in _T2.items()}
for _row, _v in _T3.items():
    PAPER.setdefault(_row, {}).update(zip(["AUC", "ACC", "EER", *TABLE3_KEYS[3:]], _v))
FLOOR = 5.0   # percent: below it on both rows (and the paper's full model above 4x it) a direction is not measurable
# row -> the metrics the paper's text (section 3.4) or the row itself singles out; the baseline "below everywhere"
CHECKS = {"wo_v_coarse": ["IoU_mean"], "wo_v_fine": ["IoU_mean"], "wo_bsc": ["IoU75"], "wo_sce": ["IoU_mean"],
          "wo_text_aid": ["IoU_mean"], "wo_t_coarse": ["F1"], "wo_t_fine": ["F1"], "wo_asc": ["F1"], "wo_scc": ["F1"],
          "wo_image_aid": ["F1"], "baseline": ["AUC", "IoU_mean", "F1"]}


def record_path(records, row, seed):
    return os.path.join(records, f"{row}_seed{seed}.json")


def write_record(records, row, seed, metrics, run):
    """Keep a finished run as ``<records>/<row>_seed<seed>.json``: its Table 1 metrics (``ALL_KEYS``) and
    ``run`` (run.json: options and wall times); returns the path."""
    record = {"row": row, "seed": seed, "metrics": {k: metrics[k] for k in ALL_KEYS if k in metrics}, "run": run}
    path = record_path(records, row, seed)
    return atomic_write(path, lambda f: f.write(json.dumps(record, indent=1) + "\n"), binary=False)


def load_records(records):
    """{row: {seed: {"metrics", "run"}}} of the records in the folder ``records`` (none when it does not exist)."""
    runs = {}
    names = sorted(os.listdir(records)) if records and os.path.isdir(records) else []
    for name in (n for n in names if n.endswith(".json")):
        with open(os.path.join(records, name), encoding="utf-8") as f:
            rec = json.load(f)
        if record_path(records, rec["row"], rec["seed"]) != os.path.join(records, name):
            raise ValueError(f"{os.path.join(records, name)} holds row {rec['row']!r} seed {rec['seed']}: "
                             f"its name should be {rec['row']}_seed{rec['seed']}.json")
        runs.setdefault(rec["row"], {})[int(rec["seed"])] = {"metrics": rec["metrics"], "run": rec["run"]}
    return runs


def setting_digest(cfg):
    """16 hex digits of sha256 over the resolved config's values that differ from ``DEFAULTS`` (the output folder
    aside): the same for the same setting whatever the path of its file, and unchanged when the code adds a key
    with a default."""
    defaults = flatten(DEFAULTS)
    own = {k: v for k, v in flatten(cfg).items() if k != "train.output_dir" and (k not in defaults or defaults[k] != v)}
    return hashlib.sha256(json.dumps(own, sort_keys=True, default=str).encode()).hexdigest()[:16]


def require_same_setting(run, config, opts, digest, holder, advice):
    """Raise a ``UserError`` unless a finished run (its run.json) was made with ``config`` and ``opts`` (the output
    folder aside) and, where both are known, with the same resolved config (``setting_digest``). ``holder`` names
    where the run was found, ``advice`` what to do."""
    def keep(o):
        return [x for x in o if not x.startswith("train.output_dir=")]
    same_content = digest is None or run.get("config_digest") in (None, digest)
    if run.get("config") == config and keep(run.get("opts", [])) == keep(opts) and same_content:
        return
    raise UserError(f"{holder} of another setting (config {run.get('config')}, opts {run.get('opts')}, config "
                    f"digest {run.get('config_digest')} against {digest} now: was the config file edited?); {advice}")


def recorded(records, row, seed, config, opts, digest=None):
    """True when ``records`` holds this run made with the same config, options and config digest; a record of
    another setting is a ``UserError`` (the page would mix two settings)."""
    run = load_records(records).get(row, {}).get(seed, {}).get("run")
    if run is None:
        return False
    require_same_setting(run, config, opts, digest, f"{records} holds row {row} seed {seed}",
                         "give this study its own --records and --results")
    return True


def load_runs(out, records=None):
    """{row: {seed: {"metrics": Table 1 keys, "run": run.json}}} of the finished runs under ``out``, completed by
    the records in ``records`` (``write_record``) of runs whose folder is not there."""
    runs = load_records(records)
    for row, _ in ROWS:
        folder = os.path.join(out, row)
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            metrics, record = (os.path.join(folder, name, *p) for p in (("eval_test", "metrics.json"), ("run.json",)))
            if name.startswith("seed") and os.path.exists(metrics) and os.path.exists(record):
                with open(metrics) as f, open(record) as g:
                    runs.setdefault(row, {})[int(name[4:])] = {"metrics": json.load(f), "run": json.load(g)}
    return runs


def mean_sd(values):
    """(mean, sample sd or None for one value) of a non-empty list."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summary(runs, row, key):
    """(mean, sd, n) of ``key`` over the row's seeds; None when the row has no finished run."""
    values = [r["metrics"][key] for r in runs.get(row, {}).values() if isinstance(r["metrics"].get(key), (int, float))]
    return (*mean_sd(values), len(values)) if values else None


def cell(runs, row, key):
    s = summary(runs, row, key)
    ours = "–" if s is None else f"{s[0]:.2f}" + ("" if s[1] is None else f" ± {s[1]:.2f}")
    paper = PAPER.get(row, {}).get(key)
    return ours + ("" if paper is None else f" ({paper:.2f})")


def direction(runs, row, key):
    """One sentence: our change against the full model on ``key`` beside the paper's, and whether it holds."""
    ours, full = summary(runs, row, key), summary(runs, "full", key)
    if ours is None or full is None:
        return f"{key}: not run yet"
    delta = ours[0] - full[0]
    paper = PAPER.get(row, {}).get(key)
    paper_txt = f"paper {PAPER['full'][key]:.2f} -> {paper:.2f}" if paper is not None else "paper: below the full model"
    head = f"{key} {full[0]:.2f} -> {ours[0]:.2f} ({delta:+.2f}; {paper_txt})"
    if max(full[0], ours[0]) < FLOOR < PAPER["full"][key] / 4:
        return f"{head}: not measurable (both below {FLOOR:.0f}, the paper's full model {PAPER['full'][key]:.2f})"
    paper_delta = paper - PAPER["full"][key] if paper is not None else -1.0  # baseline: "below the full model"
    better_is_lower = key == "EER"
    holds = (delta > 0) == (paper_delta > 0) if not better_is_lower else (delta < 0) == (paper_delta < 0)
    spread = math.hypot(ours[1], full[1]) if ours[1] is not None and full[1] is not None else None
    verdict = "holds" if holds and delta != 0 else "does NOT hold" + (" (no change)" if delta == 0 else "")
    if spread is not None and abs(delta) <= spread:
        verdict += " (within seed spread)"
    elif spread is None:
        verdict += " (one seed: spread unknown)"
    return f"{head}: {verdict}"


def table(runs, rows, keys, title):
    lines = [f"## {title}", "", "| Variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {LABELS[r]} | " + " | ".join(cell(runs, r, k) for k in keys) + " |" for r in rows]
    lines += ["", "Directions against the full model (the metric the paper's section 3.4 discusses):", ""]
    lines += [f"- {LABELS[r]}: " + "; ".join(direction(runs, r, k) for k in CHECKS[r]) for r in rows if r in CHECKS]
    return lines + [""]


def run_lines(runs):
    lines = ["## Runs", "", "| Variant | seed | train s | test s | AUC | IoU_mean | F1 |",
             "|---|---|---|---|---|---|---|"]
    total = 0.0
    for row, _ in ROWS:
        for seed, r in sorted(runs.get(row, {}).items()):
            t, m = r["run"], r["metrics"]
            total += t.get("train_seconds", 0) + t.get("test_seconds", 0)
            lines.append(f"| {LABELS[row]} | {seed} | {t.get('train_seconds')} | {t.get('test_seconds')} | "
                         f"{m['AUC']:.2f} | {m['IoU_mean']:.2f} | {m['F1']:.2f} |")
    return lines + ["", f"Total wall time of the finished runs: {total:.0f} s.", ""]


def render(runs, setting):
    done = sum(len(v) for v in runs.values())
    planned = len(ROWS) * len(setting["seeds"])   # the page covers every row, whatever this invocation runs
    head = ["# Ablations on the synthetic benchmark (CIEC Tables 2 and 3, section 3.5 baseline)", "",
            "Written by `python scripts/ablations.py` (docs/implementation_notes.md \"Ablation study\"). Base config "
            f"`{setting['config']}`, extra overrides `{' '.join(setting['opts']) or 'none'}`, seeds "
            f"{setting['seeds']}: {done} of {planned} runs (every row x seed) finished. "
            "Test split, DGM4 protocol (test.py), percent; "
            "each cell is mean ± sample sd over seeds, the paper's number (DGM4 test split) in parentheses; "
            "EER: lower is better.", ""]
    t2 = [r for r, t in ROWS if "2" in t.split("+")]
    t3 = [r for r, t in ROWS if "3" in t.split("+")]
    body = table(runs, t2, TABLE2_KEYS, "Table 2: TRPS")
    body += table(runs, t3, TABLE3_KEYS, "Table 3: VCTG")
    body += table(runs, ["full", "baseline"], ALL_KEYS, "Section 3.5 baseline against the full model")
    return "\n".join(head + body + run_lines(runs))


def write_results(out, path, setting, records=None):
    """Render the page from the finished runs under ``out`` (and the ``records``) and write it to ``path``
    atomically; returns path."""
    text = render(load_runs(out, records), setting)
    return atomic_write(path, lambda f: f.write(text), binary=False)
