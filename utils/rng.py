"""Random-number-generator states for an exact resume: capture, restore, and one entry per rank.

- ``capture_rng_state()``: this process's python / numpy / torch / cuda states, in types ``torch.load(weights_only=
  True)`` reads back (tensors, lists, numbers, strings);
- ``restore_rng_state(state)``: the inverse;
- ``gather_rng_states()``: every rank's state in rank order (collective; ``[own state]`` in one process);
- ``rng_for_this_rank(rng, path)``: this rank's entry of a saved per-rank list (entry 0 when the checkpoint holds
  fewer ranks, with a warning), or the single state of an old checkpoint.
"""
import logging
import random

import numpy as np
import torch

from utils import dist

log = logging.getLogger(__name__)


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


def rng_for_this_rank(rng, path):
    """``rng`` is one state (dict) or a per-rank list; pick this rank's entry (entry 0 if there is none)."""
    if isinstance(rng, dict):
        return rng
    rank = dist.get_rank()
    if rank >= len(rng):
        log.warning("%s holds RNG states for %d rank(s); rank %d restores entry 0", path, len(rng), rank)
        return rng[0]
    return rng[rank]
