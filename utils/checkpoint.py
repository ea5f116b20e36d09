"""Checkpoints: one atomic save, one strict load, plain contents (loadable with ``weights_only=True``).

Two kinds. A resume checkpoint (``last.pth``, ``save_checkpoint``) is a dict with the same keys whatever options were
used::

    model          unwrapped model state_dict (DDP's .module)
    optimizer      optimizer.state_dict()
    scaler         GradScaler.state_dict() ({} when AMP scaling is off)
    global_step    optimizer steps done so far              epoch / step_in_epoch: position to resume from
    best_metric    best validation value so far (float)     config: the resolved config (plain dict)
    rng            {"python", "numpy", "torch", "cuda"} states as tensors/lists (``capture_rng_state``), or a
                   list with one such entry per rank (``gather_rng_states``), for exact per-rank resume
    git            code revision (preprocess.cache_io.git_revision)

Usage in train.py (save on rank 0 only; gather the RNG states on every rank first)::

    rng = gather_rng_states()                       # collective: every rank calls it
    if is_main():
        save_checkpoint(os.path.join(out, "last.pth"), model=model, optimizer=opt, scaler=scaler,
                        global_step=step, epoch=epoch, step_in_epoch=0, best_metric=best, config=cfg, rng=rng)
    path = find_resume(out)
    if path: state = load_checkpoint(path, model=model, optimizer=opt, scaler=scaler)   # restores RNG too

``save_checkpoint`` takes ``nn.Module``/optimizer/scaler objects or their state dicts, checks that every value is
weights_only-safe (tensors, numbers, strings, bools, None, lists, tuples, dicts) BEFORE writing, writes a temporary
file in the same folder and renames it, so a crash never leaves a partial checkpoint.

A weights checkpoint (``best.pth``: ``atomic_torch_save(weights_payload(model, **meta), path)``) holds only what
evaluation and inference read: ``model``, ``git`` and the metadata given (train.py: config, identity with the
tokenizer fingerprint, epoch, global_step, best_metric). No optimizer, scaler or RNG state: at paper size that is
1.30 GB instead of 3.91 GB (AdamW keeps two fp32 moments per parameter; bench/memory.py). ``load_checkpoint(path,
model=...)`` reads both kinds.
``serialized_nbytes(state)`` is the exact size ``torch.save`` would write, counted without writing a file.
"""
import logging
import os
import random
import tempfile

import numpy as np
import torch

from preprocess.cache_io import git_revision
from utils import dist

log = logging.getLogger(__name__)
_PLAIN = (torch.Tensor, int, float, str, bool, type(None))


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def capture_rng_state():
    """This process's python/numpy/torch/cuda RNG states, in weights_only-safe types."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": [version, list(mt), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state(), "cuda": []}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Inverse of ``capture_rng_state``."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def gather_rng_states():
    """Every rank's RNG state, in rank order (collective; ``[own state]`` in a single process)."""
    return dist.all_gather_object(capture_rng_state())


def _check_plain(value, where):
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint entry {where}: key {k!r} is not a str/int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"checkpoint entry {where} has type {type(value).__name__}, which "
                        "torch.load(weights_only=True) cannot read; convert it to plain types")


def _to_state(value):
    if isinstance(value, torch.nn.Module):
        return _unwrap(value).state_dict()
    if hasattr(value, "state_dict") and callable(value.state_dict):  # optimizer, GradScaler
        return value.state_dict()
    return value


def checkpoint_payload(**state):
    """The dict ``save_checkpoint`` writes: ``state`` as plain values, plus ``rng`` and ``git`` unless given."""
    state = {k: _to_state(v) for k, v in state.items()}
    state.setdefault("rng", capture_rng_state())
    state.setdefault("git", git_revision())
    return state


def save_checkpoint(path, **state):
    """Atomically write ``state`` to ``path``; adds ``rng`` and ``git`` unless given. Call on rank 0 only."""
    return atomic_torch_save(checkpoint_payload(**state), path)


def weights_payload(model, **meta):
    """A weights checkpoint: the model's state dict, ``meta`` and ``git``; no optimizer, scaler or RNG state."""
    return {"model": _to_state(model), **meta, "git": git_revision()}


class _ByteCounter:
    """A write-only file that keeps no data, only the number of bytes written."""

    def __init__(self):
        self.nbytes = 0

    def write(self, data):
        self.nbytes += len(data)
        return len(data)

    def flush(self):
        pass


def serialized_nbytes(state):
    """Exact size in bytes of the file ``torch.save(state)`` writes, counted without writing it."""
    _check_plain(state, "state")
    sink = _ByteCounter()
    torch.save(state, sink)
    return sink.nbytes


def atomic_torch_save(state, path):
    """``torch.save(state)`` to a temporary file beside ``path``, then rename: a crash never leaves a partial file.
    ``state`` must hold only weights_only-safe values (checked before anything is written)."""
    _check_plain(state, "state")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_checkpoint(path, model=None, optimizer=None, scaler=None, strict=True, restore_rng=True, check=None):
    """Load ``path`` (weights_only=True, on the CPU) into the given objects; return the state dict.

    ``check(state)``, if given, runs on the loaded dict before anything is applied (it raises to refuse).
    The model is loaded into its unwrapped module with ``strict``. With ``restore_rng``, the RNG state is
    restored (for a per-rank list: this rank's entry, entry 0 if the checkpoint holds fewer ranks).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, obj in (("model", model), ("optimizer", optimizer), ("scaler", scaler)):
        if obj is not None and name not in state:
            raise KeyError(f"{path}: checkpoint has no '{name}' entry (keys: {sorted(state)})")
    if check is not None:
        check(state)
    if model is not None:
        result = _unwrap(model).load_state_dict(state["model"], strict=strict)
        if result.missing_keys or result.unexpected_keys:
            log.warning("%s: missing keys %s, unexpected keys %s", path, result.missing_keys, result.unexpected_keys)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng and state.get("rng"):
        restore_rng_state(_rng_for_this_rank(state["rng"], path))
    return state


def saved_world_size(state):
    """Number of processes that wrote ``state``: its per-rank RNG list has one entry per rank (1 otherwise)."""
    rng = state.get("rng")
    return len(rng) if isinstance(rng, list) else 1


def _rng_for_this_rank(rng, path):
    """``rng`` is one state (dict) or a per-rank list; pick this rank's entry (entry 0 if there is none)."""
    if isinstance(rng, dict):
        return rng
    rank = dist.get_rank()
    if rank >= len(rng):
        log.warning("%s holds RNG states for %d rank(s); rank %d restores entry 0", path, len(rng), rank)
        return rng[0]
    return rng[rank]


def find_resume(output_dir):
    """``output_dir/last.pth`` if it exists, else None (auto-resume)."""
    path = os.path.join(output_dir, "last.pth")
    return path if os.path.isfile(path) else None
