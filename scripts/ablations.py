"""The ablation study of CIEC's Tables 2 and 3 (and the section 3.5 baseline) on a benchmark of your choice.

    python scripts/ablations.py                                    # the recorded study: demo benchmark, 2 seeds
    python scripts/ablations.py --seeds 0 --rows full wo_v_fine    # a subset
    python scripts/ablations.py --report-only                      # rewrite the results page from finished runs

For every row (the full model, ``configs/ablations/<row>.yaml``) and seed, train.py fine-tunes the base config
(``--config``, default configs/demo_ablations.yaml: the demo's benchmark and sizes, from random weights) with
the row's overrides (its YAML minus ``_base_`` and ``train``) and
test.py evaluates ``best.pth`` on the test split (the DGM4 protocol of Table 1). Each run lives in
``<out>/<row>/seed<s>/`` and keeps its ``eval_test/metrics.json`` and ``run.json`` (wall times); a run with both is
done and skipped, a killed run continues from its ``last.pth`` (train.py's exact resume), so a killed study
continues with the runs it has not finished. Every finished run is also kept as a small record in the repository
(``--records``, default docs/results_synthetic_runs/: Table 1 metrics, options, wall times), so a study continues,
and its page is rewritten, on a machine without the run folders: a run with a record of the same config and
options (and the same resolved config: its digest is recorded, so an edited config file stops the study) is
done. After every run the results page (``--results``, default docs/results_synthetic.md) is
rewritten: Tables 2 and 3 laid out like the paper's, mean and spread over seeds, the paper's numbers beside,
and one line per row saying whether the paper's direction holds.
"""
import json
import os
import subprocess
import sys
import time

import yaml

from utils.ablation_report import ROWS, recorded, require_same_setting, setting_digest, write_record, write_results
from utils.cli import ArgumentParser, non_negative_int
from utils.config import flatten
from utils.errors import UserError, exit_on_user_error
from utils.io import atomic_write
from utils.paths import load_entry_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RunFailed(UserError):
    """train.py or test.py of one run exited with an error (which it printed itself)."""


def row_opts(row):
    """``--opts`` entries of an ablation row: its YAML's overrides (``_base_`` and ``train`` dropped)."""
    if row == "full":
        return []
    path = os.path.join(ROOT, "configs", "ablations", f"{row}.yaml")
    with open(path) as f:
        overrides = yaml.safe_load(f)
    overrides.pop("_base_", None)
    overrides.pop("train", None)
    return [f"{key}={value!r}" for key, value in flatten(overrides).items()]


def keep_record(args, row, seed, run_dir):
    """Copy a finished run folder's metrics and run.json into ``--records``."""
    with open(os.path.join(run_dir, "eval_test", "metrics.json")) as f, open(os.path.join(run_dir, "run.json")) as g:
        write_record(args.records, row, seed, json.load(f), json.load(g))


def run_one(args, row, seed):
    """Train and test one (row, seed) unless it is finished (its metrics.json and run.json exist, or its record
    in ``--records``); keeps its record; returns the run folder. A finished folder or a record of another setting
    (config, options or config digest) stops the study."""
    run_dir = os.path.join(args.out, row, f"seed{seed}")
    metrics = os.path.join(run_dir, "eval_test", "metrics.json")
    record = os.path.join(run_dir, "run.json")
    opts = row_opts(row) + [f"train.output_dir={run_dir}", f"train.seed={seed}"] + list(args.opts)
    digest = setting_digest(load_entry_config(os.path.join(ROOT, args.config), opts))
    if os.path.exists(metrics) and os.path.exists(record):
        with open(record) as f:
            run = json.load(f)
        require_same_setting(run, args.config, opts, digest, f"{run_dir} holds a finished run",  # else its record
                             "move it away or give this study its own --out")                    # is overwritten
        keep_record(args, row, seed, run_dir)
        return run_dir
    if recorded(args.records, row, seed, args.config, opts, digest):
        return run_dir
    times = {}
    for step, script, extra in (("train", "train.py", []),
                                ("test", "test.py", ["--split", "test", "--out", os.path.join(run_dir, "eval_test")])):
        print(f"[{row} seed {seed}] {script}", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, script, "--config", args.config, *extra, "--opts", *opts], cwd=ROOT)
        if proc.returncode != 0:
            raise RunFailed(f"{script} of row {row}, seed {seed} exited with status {proc.returncode} (its message "
                            f"is above); the finished runs are kept: run the same command again to continue")
        times[f"{step}_seconds"] = round(time.time() - t0, 1)
    info = {"row": row, "seed": seed, "config": args.config, "opts": opts, "config_digest": digest, **times}
    atomic_write(record, lambda f: json.dump(info, f, indent=1), binary=False)
    keep_record(args, row, seed, run_dir)
    return run_dir


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo_ablations.yaml",
                        help="base config (the benchmark and sizes); the default is the recorded study's")
    parser.add_argument("--rows", nargs="*", default=[r for r, _ in ROWS], choices=[r for r, _ in ROWS])
    parser.add_argument("--seeds", nargs="*", type=non_negative_int, default=[0, 1])
    parser.add_argument("--out", default="output/ablations", help="one folder per row and seed")
    parser.add_argument("--results", default="docs/results_synthetic.md")
    parser.add_argument("--records", default="docs/results_synthetic_runs",
                        help="one JSON record per finished run, kept in the repository")
    parser.add_argument("--report-only", action="store_true", help="only rewrite --results from finished runs")
    parser.add_argument("--opts", nargs="*", default=[], help="overrides for every run (after the row's)")
    return parser.parse_args(argv)


def check_configs(args):
    """Load the config of every row once, so that a bad --config or --opts stops the study with one line before
    any run starts (the runs read --config relative to the repository root)."""
    for row in args.rows:
        load_entry_config(os.path.join(ROOT, args.config), row_opts(row) + ["train.seed=0"] + list(args.opts))


def main(argv=None):
    args = parse_args(argv)
    if not args.report_only:
        check_configs(args)
    args.out = os.path.abspath(args.out)
    setting = {"config": args.config, "opts": list(args.opts), "seeds": args.seeds}
    if not args.report_only:
        start = time.time()
        for seed in args.seeds:      # every row once before the second seed: a short study still covers the tables
            for row in args.rows:
                run_one(args, row, seed)
                write_results(args.out, args.results, setting, args.records)
        print(f"study finished in {time.time() - start:.0f} s", flush=True)
    path = write_results(args.out, args.results, setting, args.records)
    print(f"results: {path}")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad flag, config or failed run: one `error:` line
