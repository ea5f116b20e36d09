"""One CIEC training step at paper size on the CPU: seconds, pairs/s and the fraction of the matmul peak
(docs/implementation_notes.md "Activation checkpointing, checkpoint files, memory and speed at paper size").

For each autocast setting (fp32 = ``none``, ``bf16``) and activation-checkpointing setting (``none``, ``all``) it
times, at the config's sizes (paper size by default: ViT-B/16 at 256x256, RoBERTa-base, 6 CFA layers, 50 tokens,
n = 5 boxes; random batch of ``--batch`` pairs, half of them fake), one training step of train.py's kind: forward,
the nine losses (``build_criterion``), backward and an AdamW step. Beside every step, on the same threads and in
the same dtype, it times an n x n matmul (``--matmul``), the machine's peak for that dtype at that moment. The
settings and their matmuls alternate, repeat after repeat, so a drift in the machine's load hits all of them.

FLOPs are counted once per checkpointing setting with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls,
convolutions and attention; the CPU's fused attention kernel is added to its table). ``model FLOPs`` are those of the
step without checkpointing: the recomputation is cost, not work, so a checkpointed step reaches a lower fraction.

Times are CPU seconds of the process divided by the thread count (wall seconds are printed too): on a shared machine
the wall time measures the other jobs' load, the CPU time what the step itself costs. One thread by default, for
the same reason (``bench/heads_overhead.py``: threads that wait for a descheduled sibling measure the load).

Per setting it prints one JSON line: step and forward seconds (median over ``--repeats``), pairs per second, the
matmul's GFLOP/s, the forward's and the step's fraction of that peak, and the step time relative to the same amp
without checkpointing. With ``--eval-batch`` it also times the evaluation forward (``model.eval()``, no grad; what
test.py runs) in pairs per second. Targets: fp32 forward >= 0.80 of the fp32 matmul peak; checkpointing
costs at most 1.4x the step time of the same setting without it.

Usage::

    python bench/train_step.py [--config configs/ciec.yaml] [--batch 2] [--repeats 3] [--threads 1]
"""
import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bench.memory import bench_batch
from losses import build_criterion
from models import build_model
from utils.config import load_config
from utils.training import amp_context, build_optimizer

CPU = torch.device("cpu")
DTYPES = {"none": torch.float32, "bf16": torch.bfloat16}
PARTS = {"none": (), "all": ("vit", "text", "cfa")}


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode's table knows the GPU attention kernels; the CPU's fused kernel does the same work (shapes in)
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def clock():
    """(wall seconds, CPU seconds of this process per thread): the second is what the work itself took even when
    other jobs take the cores away for a while (on a shared machine the wall time measures their load)."""
    return time.perf_counter(), time.process_time() / torch.get_num_threads()


def since(start):
    return tuple(now - then for now, then in zip(clock(), start))


def train_step(model, criterion, optimizer, batch, amp):
    """Forward + nine losses (timed alone too), backward, AdamW step -> (forward, step) as (wall, CPU) seconds."""
    start = clock()
    with amp_context(CPU, amp):
        loss = criterion(model(batch), batch)["loss"]
    forward = since(start)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return forward, since(start)


def count_flops(model, criterion, batch):
    """(forward FLOPs, step FLOPs) of one fp32 training step at the current checkpointing setting."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        loss = criterion(model(batch), batch)["loss"]
        forward = counter.get_total_flops()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return forward, counter.get_total_flops()


def matmul_flops_per_s(n, dtype, repeats=5):
    """FLOP per CPU second of an n x n matmul in ``dtype``: median of ``repeats`` after one warm-up (a median like
    the steps', not a best: a best would pick the moment the other jobs left the core alone)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = clock()
        torch.mm(a, b)
        times.append(since(start)[1])
    return 2 * n ** 3 / statistics.median(times)


def eval_pairs_per_s(model, batch, amp, repeats):
    """Pairs per second of the evaluation forward (no grad, eval mode), median over ``repeats`` after a warm-up."""
    model.eval()
    times = []
    with torch.no_grad(), amp_context(CPU, amp):
        for _ in range(repeats + 1):
            start = clock()
            model(batch)
            times.append(since(start))
    model.train()
    return tuple(batch["image"].shape[0] / statistics.median(t[i] for t in times[1:]) for i in (0, 1))


def measure(model, criterion, optimizer, batch, args):
    """{(amp, checkpointing): {"forward": [(wall, CPU) s], "step": [...], "peak": [FLOP/s]}}, settings interleaved
    repeat after repeat."""
    settings = [(amp, ckpt) for amp in args.amp for ckpt in args.checkpointing]
    runs = {s: {"forward": [], "step": [], "peak": []} for s in settings}
    for amp, ckpt in settings:  # warm-up: AdamW state, oneDNN primitives
        model.backbone.set_grad_checkpointing(PARTS[ckpt])
        train_step(model, criterion, optimizer, batch, amp)
    for _ in range(args.repeats):
        for amp, ckpt in settings:
            model.backbone.set_grad_checkpointing(PARTS[ckpt])
            runs[amp, ckpt]["peak"].append(matmul_flops_per_s(args.matmul, DTYPES[amp]))
            forward, step = train_step(model, criterion, optimizer, batch, amp)
            runs[amp, ckpt]["forward"].append(forward)
            runs[amp, ckpt]["step"].append(step)
    model.backbone.set_grad_checkpointing(())
    return runs


def summarise(runs, flops, batch_size):
    """One row per setting: medians (wall and CPU seconds), pairs/s, fractions of the matmul peak (CPU time),
    CPU step time relative to the same amp without checkpointing."""
    def median(values, i):
        return statistics.median(v[i] for v in values)

    rows = []
    model_fwd, model_step = flops["none"]
    for (amp, ckpt), r in runs.items():
        peak = statistics.median(r["peak"])
        step, forward = median(r["step"], 1), median(r["forward"], 1)
        base = median(runs[amp, "none"]["step"], 1) if (amp, "none") in runs else float("nan")
        rows.append({"amp": amp, "checkpointing": ckpt, "batch": batch_size, "threads": torch.get_num_threads(),
                     "step_cpu_s": round(step, 3), "forward_cpu_s": round(forward, 3),
                     "step_wall_s": round(median(r["step"], 0), 3), "forward_wall_s": round(median(r["forward"], 0), 3),
                     "pairs_per_cpu_s": round(batch_size / step, 3), "matmul_gflops": round(peak / 1e9, 1),
                     "forward_fraction_of_peak": round(model_fwd / forward / peak, 3),
                     "step_fraction_of_peak": round(model_step / step / peak, 3),
                     "step_ratio_to_no_checkpointing": round(step / base, 3),
                     "step_gflop": round(flops[ckpt][1] / 1e9, 1)})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/ciec.yaml")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--checkpointing", nargs="+", default=["none", "all"], choices=sorted(PARTS))
    p.add_argument("--matmul", type=int, default=2048, help="side of the square matmul that measures the peak")
    p.add_argument("--eval-batch", type=int, default=8, help="0 skips the evaluation forward")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model, criterion = build_model(cfg).train(), build_criterion(cfg)
    optimizer = build_optimizer(model, cfg["train"]["lr"], cfg["train"]["weight_decay"])
    batch = bench_batch(cfg, args.batch)
    flops = {}
    for ckpt in dict.fromkeys(["none", *args.checkpointing]):
        model.backbone.set_grad_checkpointing(PARTS[ckpt])
        flops[ckpt] = count_flops(model, criterion, batch)
    print(json.dumps({"forward_gflop_per_pair": round(flops["none"][0] / args.batch / 1e9, 2),
                      "step_gflop_per_pair": {k: round(v[1] / args.batch / 1e9, 2) for k, v in flops.items()}}),
          flush=True)
    for row in summarise(measure(model, criterion, optimizer, batch, args), flops, args.batch):
        print(json.dumps(row), flush=True)
    if args.eval_batch:
        eval_batch = bench_batch(cfg, args.eval_batch)
        for amp in args.amp:
            peak = matmul_flops_per_s(args.matmul, DTYPES[amp])
            wall, cpu = eval_pairs_per_s(model, eval_batch, amp, args.repeats)
            print(json.dumps({"eval_forward": amp, "batch": args.eval_batch, "pairs_per_wall_s": round(wall, 3),
                              "pairs_per_cpu_s": round(cpu, 3), "matmul_gflops": round(peak / 1e9, 1),
                              "fraction_of_peak": round(cpu * flops["none"][0] / args.batch / peak, 3)}), flush=True)


if __name__ == "__main__":
    main()
