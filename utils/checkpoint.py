"""Checkpoints: the loop state, one atomic save, one strict load, and the one resume.

Two kinds. A resume checkpoint (``last.pth``, written by ``utils.loop.save_state``) is a dict with the same keys
whatever options were used::

    model          unwrapped model state_dict (DDP's .module)
    optimizer      optimizer.state_dict()
    scaler         GradScaler.state_dict() ({} when AMP scaling is off)
    epoch, step_in_epoch, global_step, best_metric      the ``TrainState`` fields, exactly
    config         the resolved config (plain dict)      identity: fingerprints of the inputs (data, weights)
    rng            one {"python", "numpy", "torch", "cuda"} state per rank (``utils.rng``), for exact per-rank resume
    world_size     number of processes that wrote it (checkpoints from before this key: the length of ``rng``)
    git            code revision (``utils.io.git_revision``)

A weights checkpoint (``best.pth``: ``atomic_torch_save(weights_payload(model, **meta), path)``) holds only what
evaluation and inference read: ``model``, ``git`` and the metadata given (train.py: config, identity with the
tokenizer fingerprint, epoch, global_step, best_metric). No optimizer, scaler or RNG state: at paper size that is
1.30 GB instead of 3.91 GB (AdamW keeps two fp32 moments per parameter; bench/memory.py). ``load_checkpoint(path,
model=...)`` reads both kinds; a readable file without the entries asked for (a plain state dict, a bare tensor) is
a ``NotACheckpointError`` ("not a checkpoint of train.py: no 'model' entry"), and a model state that does not fit
the model a ``ShapeMismatchError`` ("trained with another config", naming the first parameters and their count),
both ``CheckpointError``s that are also the ``KeyError`` / ``RuntimeError`` raised before.

``resume(out, model, optimizer, scaler, cfg, identity)`` is the one place a run continues: it reads
``<out>/last.pth``, decides whether the saved run may continue under the current config (``RESUMABLE_CHANGES``, the
list of keys that may change, is beside it) and identity, restores model, optimizer, scaler and this rank's RNG, and
returns the ``TrainState``; the sampler's position is a function of that state (``datasets/sampler.py``). A refusal
is a ``CheckpointError`` naming the differing keys; with ``restart_if_stale`` the stale files are deleted instead.

Every save checks that each value is weights_only-safe (tensors, numbers, strings, bools, None, lists, tuples,
dicts) BEFORE writing, and goes through ``utils.io.atomic_write`` (temporary file, fsync, rename; file mode 0644
under umask 022): a crash never leaves a partial checkpoint, and a full disk raises ``DiskFullError`` saying the
previous checkpoint is intact. ``serialized_nbytes(state)`` is the exact size ``torch.save`` would write, counted
without writing a file.
"""
import dataclasses
import logging
import os

import torch

from utils import dist
from utils.config import DEFAULTS, flatten
from utils.errors import CheckpointError, DiskFullError
from utils.io import atomic_write, git_revision
from utils.rng import capture_rng_state, restore_rng_state, rng_for_this_rank
from utils.safe_load import load_weights_only

log = logging.getLogger(__name__)
_PLAIN = (torch.Tensor, int, float, str, bool, type(None))
SHOWN_KEYS = 5  # mismatching parameters named in a refusal


class NotACheckpointError(CheckpointError, KeyError):
    """A readable torch file that lacks an entry a load needs (a plain state dict, a bare tensor); also the
    ``KeyError`` the loader raised before."""

    __str__ = Exception.__str__  # the message as given, not KeyError's quoted repr


class ShapeMismatchError(CheckpointError, RuntimeError):
    """A checkpoint whose parameters do not fit the model built from the current config; also the
    ``RuntimeError`` of ``load_state_dict`` it replaces."""


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@dataclasses.dataclass
class TrainState:
    """Where a run stands; its fields are exactly the loop-state keys a checkpoint stores.

    ``epoch``: epochs finished; ``step_in_epoch``: optimizer steps done in the current epoch (the sampler resumes
    after them); ``global_step``: optimizer steps done in the run (the lr schedule's clock); ``best_metric``: best
    validation value so far (-1 before the first validation).
    """
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = -1.0

    def end_epoch(self):
        self.epoch += 1
        self.step_in_epoch = 0

    def as_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, saved, path):
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in saved]
        if missing:
            raise CheckpointError(f"{path} is not a resume checkpoint: it has no {', '.join(missing)} entry")
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls)})


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
    """A resume-style checkpoint dict: ``state`` as plain values, plus ``rng`` and ``git`` unless given."""
    state = {k: _to_state(v) for k, v in state.items()}
    state.setdefault("rng", capture_rng_state())
    state.setdefault("git", git_revision())
    return state


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


class _KeepWriteError:
    """A file wrapper that remembers the OSError of a failed write: torch.save's C++ writer turns it into a
    RuntimeError without the errno (a full disk would read "unexpected pos ...")."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        self.f.flush()


def _torch_save(state, f):
    sink = _KeepWriteError(f)
    try:
        torch.save(state, sink)
    except RuntimeError:
        if sink.error is not None:
            raise sink.error from None
        raise


def atomic_torch_save(state, path):
    """``torch.save(state)`` through ``utils.io.atomic_write``: a crash never leaves a partial file, the file gets the
    ordinary mode, a full disk is a ``DiskFullError`` naming ``path`` and saying the previous checkpoint is intact.
    ``state`` must hold only weights_only-safe values (checked before anything is written)."""
    _check_plain(state, "state")
    try:
        atomic_write(str(path), lambda f: _torch_save(state, f))
    except DiskFullError:
        kept = "the previous checkpoint is intact" if os.path.exists(path) else "no checkpoint was written"
        raise DiskFullError(f"no space left on the device while writing checkpoint {path}; {kept} (free some "
                            "space and run the same command again)") from None
    return path


def load_checkpoint(path, model=None, optimizer=None, scaler=None, strict=True, restore_rng=True, check=None):
    """Load ``path`` (weights_only=True, on the CPU) into the given objects; return the state dict.

    ``check(state)``, if given, runs on the loaded dict before anything is applied (it raises to refuse).
    The model is loaded into its unwrapped module with ``strict``. With ``restore_rng``, the RNG state is
    restored (for a per-rank list: this rank's entry, entry 0 if the checkpoint holds fewer ranks).
    """
    state = load_weights_only(path)   # a missing file, a folder or a bad file: a one-line user error
    _require(state, path, model=model, optimizer=optimizer, scaler=scaler)
    if check is not None:
        check(state)
    apply_checkpoint(state, path, model, optimizer, scaler, strict, restore_rng)
    return state


def _require(state, path, **objects):
    """``state`` must be a dict with an entry for every object given (``model``: a state dict); else
    ``NotACheckpointError`` naming ``path`` and what it holds instead."""
    if not isinstance(state, dict):
        raise NotACheckpointError(f"{path} is not a checkpoint of train.py: it holds a {type(state).__name__}, not "
                                  "a dict with a 'model' entry")
    keys = sorted(map(str, state))
    held = f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"
    for name, obj in objects.items():
        if obj is not None and name not in state:
            kind = "checkpoint" if name == "model" else "resume checkpoint"
            raise NotACheckpointError(f"{path} is not a {kind} of train.py: no '{name}' entry (its keys: {held})")
    if objects.get("model") is not None and not isinstance(state["model"], dict):
        raise NotACheckpointError(f"{path} is not a checkpoint of train.py: its 'model' entry is a "
                                  f"{type(state['model']).__name__}, not a state dict")


def state_mismatches(model, saved, strict=True):
    """What keeps ``saved`` (a state dict) from loading into ``model``: one line per parameter whose shape differs
    and, with ``strict``, per key missing on either side."""
    own = _unwrap(model).state_dict()
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in saved.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    if not strict:
        return shapes
    return (shapes + [f"{k}: not in the checkpoint" for k in own if k not in saved]
            + [f"{k}: not in the model" for k in saved if k not in own])


def load_model_state(model, saved, path, strict=True):
    """``load_state_dict`` into the unwrapped ``model``; a state dict that does not fit it is a
    ``ShapeMismatchError`` saying "trained with another config" and naming the first parameters and their count,
    not torch's size-mismatch dump."""
    try:
        result = _unwrap(model).load_state_dict(saved, strict=strict)
    except RuntimeError:
        bad = state_mismatches(model, saved, strict)
        if not bad:
            raise
        more = f"; ... and {len(bad) - SHOWN_KEYS} more" if len(bad) > SHOWN_KEYS else ""
        raise ShapeMismatchError(f"{path} was trained with another config: {len(bad)} parameter(s) do not fit the "
                                 f"model built from this config ({'; '.join(bad[:SHOWN_KEYS])}{more}); use the "
                                 "config it was trained with (train.output_dir/config.yaml)") from None
    if result.missing_keys or result.unexpected_keys:
        log.warning("%s: missing keys %s, unexpected keys %s", path, result.missing_keys, result.unexpected_keys)


def apply_checkpoint(state, path, model=None, optimizer=None, scaler=None, strict=True, restore_rng=True):
    """Load a checkpoint dict read from ``path`` into the given objects (and this rank's RNG with ``restore_rng``).
    A file that is not such a dict is a ``NotACheckpointError``; a model state that does not fit ``model`` a
    ``ShapeMismatchError`` naming the parameters (both ``CheckpointError``s: one ``error:`` line)."""
    _require(state, path, model=model, optimizer=optimizer, scaler=scaler)
    if model is not None:
        load_model_state(model, state["model"], path, strict)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng and state.get("rng"):
        restore_rng_state(rng_for_this_rank(state["rng"], path))
    return state


def saved_world_size(state):
    """Number of processes that wrote ``state``: its ``world_size`` entry; for a checkpoint written before that key
    existed, the length of its per-rank RNG list (1 for a single state)."""
    if "world_size" in state:
        return state["world_size"]
    rng = state.get("rng")
    return len(rng) if isinstance(rng, list) else 1


def find_resume(output_dir):
    """``output_dir/last.pth`` if it exists, else None (auto-resume)."""
    path = os.path.join(output_dir, "last.pth")
    return path if os.path.isfile(path) else None


# Keys a resumed run may change: where and how often things are written, loader workers, the device and the
# evaluation settings. Everything else defines the run (data, model, losses, optimisation, schedule), and so do the
# global batch (world size x train.accum_steps x train.batch_size; a new split of it may resume, see
# resume_conflicts) and the run's identity (fingerprints of the data and of the starting weights).
# train.grad_checkpointing only trades compute for memory: the recomputation replays the same operations with the
# same RNG state (torch.utils.checkpoint's preserve_rng_state), so the losses, gradients and RNG stream are those of
# the run without it (tests/test_grad_checkpointing.py).
RESUMABLE_CHANGES = ("data.num_workers", "train.output_dir", "train.log_every", "train.save_every_steps",
                     "train.device", "train.grad_checkpointing", "eval.batch_size", "eval.split")


def resume_conflicts(saved, current, saved_world=None, world=None):
    """Dotted keys (outside RESUMABLE_CHANGES) whose values differ between a checkpoint's config and the current
    one, as ``{key: (saved, current)}``; empty when the run may continue. Given both world sizes, a new split of
    the same global batch (world x train.accum_steps x train.batch_size, e.g. 8 GPUs -> 1 GPU with accum_steps=8)
    is allowed: the sampler draws identical global batches for every factorisation. A key the checkpoint's config
    does not have (an option added to the code later) is no conflict while it keeps its default, since a new option's
    default reproduces the behaviour from before it existed."""
    old, new, defaults = flatten(saved), flatten(current), flatten(DEFAULTS)
    conflicts = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
                 if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)
                 and not (k not in old and k in defaults and new.get(k) == defaults[k])}
    split = ("train.accum_steps", "train.batch_size")
    if saved_world and world and all(k in old and k in new for k in split):
        if saved_world * old[split[0]] * old[split[1]] == world * new[split[0]] * new[split[1]]:
            for key in split:
                conflicts.pop(key, None)
    return conflicts


def stale_reasons(saved, cfg, identity=None):
    """{key: (checkpoint value, current value)} that forbid continuing ``saved`` under ``cfg`` / ``identity``."""
    reasons = resume_conflicts(saved.get("config", {}), cfg, saved_world_size(saved), dist.get_world_size())
    old = saved.get("identity", {})
    for key, value in (identity or {}).items():
        if old.get(key) != value:
            reasons[key] = (old.get(key), value)
    return reasons


def _start_over(path, reasons, extra_files):
    """Rank 0 deletes the stale run's checkpoints (and ``extra_files`` beside them); collective."""
    if dist.is_main():
        print(f"{path} was trained under other settings ({', '.join(sorted(reasons))}); starting over", flush=True)
        folder = os.path.dirname(path)
        for name in ("last.pth", "best.pth", *extra_files):
            if os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
    dist.barrier()


def resume(out, model, optimizer, scaler, cfg, identity=None, restart_if_stale=False, extra_files=()):
    """Continue the run saved in ``<out>/last.pth``, or start one; return its ``TrainState``. Every rank calls it.

    Refuses (``CheckpointError`` naming the keys) a checkpoint saved under another config (outside
    ``RESUMABLE_CHANGES``) or another ``identity``; with ``restart_if_stale`` deletes it (with best.pth and
    ``extra_files``) and starts over instead. Otherwise restores model, optimizer, scaler and this rank's RNG.
    """
    path = find_resume(str(out))
    saved = None if path is None else load_checkpoint(path, restore_rng=False)  # read only
    reasons = {} if saved is None else stale_reasons(saved, cfg, identity)
    dist.barrier()  # every rank has read last.pth before rank 0 may delete it
    if reasons and restart_if_stale:
        _start_over(path, reasons, extra_files)
        return TrainState()
    if reasons:
        listed = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in reasons.items())
        raise CheckpointError(f"{path} was trained with another config ({listed}): choose another "
                              f"train.output_dir, delete {path} to start over, or pass --restart-if-stale")
    if saved is None:
        return TrainState()
    state = TrainState.from_checkpoint(saved, path)
    apply_checkpoint(saved, path, model, optimizer, scaler, strict=True, restore_rng=True)
    if dist.is_main():
        print(f"resumed from {path}: epoch {state.epoch}, step {state.step_in_epoch} of the epoch, "
              f"global step {state.global_step}", flush=True)
    return state
