"""torch.distributed helpers for torchrun (env://) only.

Launch:  ``torchrun --nproc_per_node=8 train.py ...`` (multi-node: torchrun's own --nnodes/--node_rank/
--rdzv-* flags, nothing else needed). ``python train.py ...`` (no RANK in the environment) runs one
process without a process group. No mp.spawn, no tcp:// URLs, no --local_rank flag.

``init_distributed(device_pref)`` -> (rank, world_size, local_rank, device): NCCL on GPU (after
``torch.cuda.set_device(local_rank)``), gloo on CPU. Every helper below also works without a process group
(world of one): gathers return ``[x]``, reductions return their input, barriers do nothing.
"""
import os

import torch
import torch.distributed as dist


def _pick_device(device_pref, local_rank):
    if device_pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto | cpu | cuda, got {device_pref!r}")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch.cuda.is_available() is False")
    if device_pref != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_pref="auto"):
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK and join the process group; single process without RANK."""
    if "RANK" not in os.environ:
        device = _pick_device(device_pref, 0)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return 0, 1, 0, device
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before init_process_group, so NCCL binds the right GPU
        dist.init_process_group(backend="nccl", init_method="env://", device_id=device)
    else:
        dist.init_process_group(backend="gloo", init_method="env://")
    return rank, world_size, local_rank, device


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main():
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def cleanup():
    """Destroy the process group (call once at the end of train.py / test.py)."""
    if is_dist():
        dist.destroy_process_group()


def all_gather_object(obj):
    """List of every rank's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_dict(values, average=True):
    """All-reduce a dict of scalar tensors (same keys on every rank); keys sorted so ranks agree on order."""
    if not is_dist() or not values:
        return dict(values)
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce(stacked)
    if average:
        stacked = stacked / get_world_size()
    return dict(zip(keys, stacked))
