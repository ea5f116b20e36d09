"""Stateless per-step learning-rate schedule: linear warm-up, then cosine decay.

The CIEC paper (section 3.2) gives only AdamW with lr 1e-5; the schedule follows the benchmark's codebases
(HAMMER/CSCL: warm-up then cosine), done per optimizer step so it does not depend on the epoch length
(docs/protocol.md section 4).

``lr_at(step, base_lr, min_lr, warmup_steps, total_steps)``, ``step`` counted from 0 in optimizer steps:
- ``step < warmup_steps``: linear from ``warmup_start_lr`` (default 0; HAMMER warms up from its min_lr 1e-6,
  pass ``warmup_start_lr=min_lr`` for that) at step 0 to ``base_lr`` at ``warmup_steps``;
- then ``min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * t))`` with t = (step - warmup) / (total - warmup),
  clamped to [0, 1], so the lr is ``min_lr`` from ``total_steps`` on.
Nothing needs saving: the lr is a function of the global step, which the checkpoint stores.

``set_lr(optimizer, lr)`` writes ``lr * group.get("lr_scale", 1.0)`` into every param group (per-group lr:
e.g. heads at a higher rate than the pretrained encoders).
"""
import math


def lr_at(step, base_lr, min_lr, warmup_steps, total_steps, warmup_start_lr=0.0):
    """Learning rate at optimizer step ``step`` (int >= 0)."""
    if step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    t = min(max(t, 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer, lr):
    """Set every param group's lr to ``lr`` times its ``lr_scale`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
