"""Small pieces of the training step shared by train.py and the tests: seeding, RNG capture for
exact resume, autocast selection, the AdamW optimiser of section 3.2, and moving a batch to a device.
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


def capture_rng():
    """RNG states as weights_only-safe values (tensors, lists, ints)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state):
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def amp_context(device, amp):
    """``torch.autocast`` for ``amp`` in {bf16, fp16}; a null context for ``none``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_optimizer(model, lr, weight_decay):
    """AdamW, lr 1e-5 and weight decay 0.02 on every parameter (section 3.2; as the field's baseline).

    Parameters carry ``initial_lr`` via the group, and ``lr_scale`` 1.0 for utils/schedule.set_lr.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": params, "lr_scale": 1.0}], lr=lr, weight_decay=weight_decay)


def to_device(batch, device):
    """Move every tensor of a batch dict to ``device`` (lists of ids and strings stay)."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}
