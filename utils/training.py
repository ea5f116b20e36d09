"""Small pieces of the training step shared by train.py, test.py and the evaluator: seeding,
autocast selection, the AdamW optimiser of section 3.2, and moving a batch to a device.
"""
import contextlib
import random

import numpy as np
import torch


def seed_everything(seed, deterministic=False):
    """Seed Python, NumPy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def amp_context(device, amp):
    """``torch.autocast`` for ``amp`` in {bf16, fp16}; a null context for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(model, lr, weight_decay, backbone_lr_scale=1.0, vit_lr_scale=None):
    """AdamW, lr 1e-5 and weight decay 0.02 on every parameter (section 3.2; as the field's baseline).

    ``backbone_lr_scale`` != 1 puts the parameters under ``model.backbone`` (the pre-trained encoders and CFA) in a
    group of their own whose ``lr_scale`` multiplies the schedule's lr (utils/schedule.set_lr); every other parameter
    (the heads, new at fine-tuning) keeps ``lr_scale`` 1.0. ``vit_lr_scale`` (None: ``backbone_lr_scale``) gives the
    image encoder ``backbone.vit_model`` a factor of its own. With all factors 1.0 there is one group, as in the paper.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    vit_lr_scale = backbone_lr_scale if vit_lr_scale is None else vit_lr_scale

    def scale(name):
        if name.startswith("backbone.vit_model."):
            return float(vit_lr_scale)
        return float(backbone_lr_scale) if name.startswith("backbone.") else 1.0
    by_scale = {}
    for n, p in params:
        by_scale.setdefault(scale(n), []).append(p)
    groups = [{"params": ps, "lr_scale": s} for s, ps in sorted(by_scale.items())]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def to_device(batch, device):
    """Move every tensor of a batch dict to ``device`` (lists of ids and strings stay)."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
