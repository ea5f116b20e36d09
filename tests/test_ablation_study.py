"""scripts/ablations.py and its results page (utils/ablation_report.py): rows, seeds, resume, directions."""
import json
import os

from tests.conftest import run_script, tiny_opts
from utils.ablation_report import PAPER, ROWS, direction, load_runs, render


def fake_run(out, row, seed, **metrics):
    """A finished run folder as scripts/ablations.py leaves it (metrics.json + run.json)."""
    folder = os.path.join(out, row, f"seed{seed}")
    os.makedirs(os.path.join(folder, "eval_test"))
    values = {k: 50.0 for k in ("AUC", "EER", "ACC", "IoU_mean", "IoU50", "IoU75", "Precision", "Recall", "F1")}
    values.update(metrics)
    with open(os.path.join(folder, "eval_test", "metrics.json"), "w") as f:
        json.dump(values, f)
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump({"train_seconds": 10.0, "test_seconds": 2.0}, f)


def test_paper_tables_read_with_acc_and_eer_in_their_true_columns():
    assert PAPER["full"] == {"AUC": 95.67, "ACC": 89.40, "EER": 10.76, "IoU_mean": 83.49, "IoU50": 88.94,
                             "IoU75": 87.12, "Precision": 53.24, "Recall": 60.85, "F1": 56.80}
    assert PAPER["wo_asc"]["F1"] == 30.89 and PAPER["wo_v_fine"]["IoU_mean"] == 47.22
    assert {r for r, _ in ROWS} - set(PAPER) == {"baseline"}


def test_directions_and_cells(tmp_path):
    out = str(tmp_path)
    fake_run(out, "full", 0, IoU_mean=80.0, F1=40.0)
    fake_run(out, "full", 1, IoU_mean=82.0, F1=42.0)
    fake_run(out, "wo_v_fine", 0, IoU_mean=40.0)       # paper: 83.49 -> 47.22, ours down too
    fake_run(out, "wo_v_fine", 1, IoU_mean=44.0)
    fake_run(out, "wo_asc", 0, F1=45.0)                # paper: F1 down, ours up, one seed
    fake_run(out, "wo_scc", 0, F1=40.5)
    fake_run(out, "wo_scc", 1, F1=41.0)                # down by 0.25, inside the seeds' spread
    fake_run(out, "baseline", 0, F1=41.0)
    fake_run(out, "baseline", 1, F1=41.0)              # paper: below the full model; ours equal
    runs = load_runs(out)
    assert direction(runs, "wo_v_fine", "IoU_mean") == \
        "IoU_mean 81.00 -> 42.00 (-39.00; paper 83.49 -> 47.22): holds"
    assert direction(runs, "wo_asc", "F1").endswith("does NOT hold (one seed: spread unknown)")
    assert direction(runs, "wo_scc", "F1").endswith("holds (within seed spread)")
    assert direction(runs, "wo_bsc", "IoU75") == "IoU75: not run yet"
    assert "does NOT hold (no change)" in direction(runs, "baseline", "F1")
    page = render(runs, {"config": "c.yaml", "opts": [], "seeds": [0, 1]})
    assert "| w/o L^v_Fine | " in page and "42.00 ± 2.83 (47.22)" in page
    assert "9 of 24 runs (every row x seed) finished" in page


def test_study_runs_resumes_and_writes_the_page(tiny_benchmark, tmp_path):
    out, results = tmp_path / "study", tmp_path / "results.md"
    args = ["scripts/ablations.py", "--config", "configs/debug.yaml", "--rows", "full", "wo_image_aid",
            "--seeds", "0", "--out", str(out), "--results", str(results),
            "--opts", *tiny_opts(tiny_benchmark, "ignored")[:2]]
    first = run_script(*args, timeout=900)
    assert "[wo_image_aid seed 0] train.py" in first.stdout
    for row in ("full", "wo_image_aid"):
        with open(out / row / "seed0" / "run.json") as f:
            run = json.load(f)
        assert run["train_seconds"] > 0 and run["test_seconds"] > 0
        assert ("model.vctg.image_aid=False" in run["opts"]) == (row == "wo_image_aid")
        assert (out / row / "seed0" / "eval_test" / "metrics.json").exists()
    cfg = (out / "wo_image_aid" / "seed0" / "config.yaml").read_text()
    assert "image_aid: false" in cfg and "scc: 0.0" in cfg
    page = results.read_text()
    assert "2 of 12 runs (every row x seed) finished" in page and "| w/o Image-aid | " in page
    # a killed study: the second run's record is gone -> only that run is redone (train.py resumes from last.pth)
    os.remove(out / "wo_image_aid" / "seed0" / "run.json")
    second = run_script(*args, timeout=900)
    assert "[full seed 0]" not in second.stdout and "[wo_image_aid seed 0] train.py" in second.stdout
