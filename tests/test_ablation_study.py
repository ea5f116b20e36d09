"""scripts/ablations.py and its results page (utils/ablation_report.py): rows, seeds, resume, directions."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_script, tiny_opts
from utils.ablation_report import (
    PAPER,
    ROWS,
    direction,
    load_records,
    load_runs,
    recorded,
    render,
    setting_digest,
    write_record,
)
from utils.config import load_config
from utils.errors import UserError


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


def test_a_direction_at_the_floor_is_not_measurable(tmp_path):
    out = str(tmp_path)
    fake_run(out, "full", 0, F1=1.8, IoU_mean=3.0)
    fake_run(out, "full", 1, F1=0.0, IoU_mean=3.0)
    fake_run(out, "wo_asc", 0, F1=0.0, IoU_mean=2.0)   # "down" from 0.9 to 0: noise at the floor
    fake_run(out, "wo_scc", 0, F1=6.0)                 # above the floor: judged as usual
    runs = load_runs(out)
    assert direction(runs, "wo_asc", "F1") == \
        "F1 0.90 -> 0.00 (-0.90; paper 56.80 -> 30.89): not measurable (both below 5, the paper's full model 56.80)"
    assert direction(runs, "wo_scc", "F1").endswith("does NOT hold (one seed: spread unknown)")
    assert direction(runs, "baseline", "IoU_mean") == "IoU_mean: not run yet"


def test_study_runs_resumes_and_writes_the_page(tiny_benchmark, tmp_path):
    out, results = tmp_path / "study", tmp_path / "results.md"
    records = tmp_path / "records"
    args = ["scripts/ablations.py", "--config", "configs/debug.yaml", "--rows", "full", "wo_image_aid",
            "--seeds", "0", "--out", str(out), "--results", str(results), "--records", str(records),
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
    with open(out / "full" / "seed0" / "eval_test" / "metrics.json") as f:
        full_metrics = json.load(f)
    table1 = ("AUC", "EER", "ACC", "IoU_mean", "IoU50", "IoU75", "Precision", "Recall", "F1")
    assert load_records(str(records))["full"][0]["metrics"] == {k: full_metrics[k] for k in table1}
    # a killed study: the second run's record is gone -> only that run is redone (train.py resumes from last.pth);
    # a machine without the first run's folder: its record in --records says it is done
    os.remove(out / "wo_image_aid" / "seed0" / "run.json")
    os.remove(records / "wo_image_aid_seed0.json")   # written after run.json: a killed run has neither
    shutil.rmtree(out / "full")
    second = run_script(*args, timeout=900)
    assert "[full seed 0]" not in second.stdout and "[wo_image_aid seed 0] train.py" in second.stdout
    assert "2 of 12 runs (every row x seed) finished" in results.read_text()


def test_records_complete_the_run_folders(tmp_path):
    out, records = str(tmp_path / "out"), str(tmp_path / "records")
    fake_run(out, "full", 0, AUC=80.0)
    write_record(records, "full", 0, {"AUC": 70.0, "F1": 1.0, "extra": 5}, {"train_seconds": 1.0})
    write_record(records, "full", 1, {"AUC": 90.0, "F1": 3.0}, {"train_seconds": 2.0})
    runs = load_runs(out, records)
    assert runs["full"][0]["metrics"]["AUC"] == 80.0          # the run folder wins over its record
    assert runs["full"][1] == {"metrics": {"AUC": 90.0, "F1": 3.0}, "run": {"train_seconds": 2.0}}
    assert load_records(records)["full"][0]["metrics"] == {"AUC": 70.0, "F1": 1.0}   # Table 1 keys only
    os.rename(os.path.join(records, "full_seed1.json"), os.path.join(records, "wo_asc_seed1.json"))
    with pytest.raises(ValueError, match="its name should be full_seed1.json"):
        load_records(records)


def test_a_record_of_another_setting_stops_the_study(tmp_path):
    records = str(tmp_path / "records")
    opts = ["train.output_dir=/elsewhere/full/seed0", "train.seed=0", "pretrained.meter=None"]
    write_record(records, "full", 0, {"AUC": 70.0}, {"config": "configs/demo.yaml", "opts": opts})
    here = ["train.output_dir=/here/full/seed0", "train.seed=0", "pretrained.meter=None"]
    assert recorded(records, "full", 0, "configs/demo.yaml", here)
    assert not recorded(records, "full", 1, "configs/demo.yaml", here)
    with pytest.raises(UserError, match="of another setting"):
        recorded(records, "full", 0, "configs/demo.yaml", here[:2])
    with pytest.raises(UserError, match="of another setting"):
        recorded(records, "full", 0, "configs/debug.yaml", here)


def test_an_edited_config_file_stops_the_study(tmp_path):
    """Same path and options, other content: the recorded digest of the resolved config tells them apart."""
    base = os.path.join(ROOT, "configs", "debug.yaml")
    edited = tmp_path / "debug.yaml"
    edited.write_text(open(base).read() + "\nloss:\n  asc_lambda: 0.3\n")
    here = ["train.output_dir=/here/full/seed0", "train.seed=0"]
    digest = setting_digest(load_config(base, here))
    assert digest == setting_digest(load_config(base, ["train.output_dir=/elsewhere", "train.seed=0"]))
    assert digest != setting_digest(load_config(str(edited), here))
    assert digest != setting_digest(load_config(base, ["train.output_dir=/here", "train.seed=1"]))
    records = str(tmp_path / "records")
    write_record(records, "full", 0, {"AUC": 70.0}, {"config": "c.yaml", "opts": here, "config_digest": digest})
    write_record(records, "full", 1, {"AUC": 70.0}, {"config": "c.yaml", "opts": here})   # before digests
    assert recorded(records, "full", 0, "c.yaml", here, digest)
    assert recorded(records, "full", 1, "c.yaml", here, digest)
    with pytest.raises(UserError, match="was the config file edited"):
        recorded(records, "full", 0, "c.yaml", here, setting_digest(load_config(str(edited), here)))


def test_a_run_folder_of_another_setting_stops_the_study(tmp_path):
    """A finished local run folder is taken as done only if its run.json is of this setting: otherwise its
    metrics would be copied over the study's record."""
    out, records = tmp_path / "study", tmp_path / "records"
    fake_run(str(out), "full", 0)
    with open(out / "full" / "seed0" / "run.json", "w") as f:
        json.dump({"config": "configs/demo.yaml", "opts": ["train.seed=0"], "train_seconds": 1.0}, f)
    args = ["scripts/ablations.py", "--config", "configs/debug.yaml", "--rows", "full", "--seeds", "0",
            "--out", str(out), "--results", str(tmp_path / "results.md"), "--records", str(records)]
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "holds a finished run of another setting" in proc.stderr
    assert "[full seed 0]" not in proc.stdout and not records.exists()
    here = [f"train.output_dir={out / 'full' / 'seed0'}", "train.seed=0"]
    with open(out / "full" / "seed0" / "run.json", "w") as f:
        json.dump({"config": "configs/debug.yaml", "opts": here, "train_seconds": 1.0}, f)
    again = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert load_records(str(records))["full"][0]["run"]["config"] == "configs/debug.yaml"
