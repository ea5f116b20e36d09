"""Per-sample random state for data augmentation.

``SeededDataset`` seeds Python's ``random``, NumPy and torch from (seed, epoch, index) before
each ``__getitem__``, so the augmentation of a sample depends only on those three numbers:
not on the worker that loads it, the number of workers or ranks, or whether the run was
resumed. This is what makes a resumed run reproduce an uninterrupted one.
"""
import random

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info


def _seed_all(s):
    random.seed(s)
    np.random.seed(s)
    torch.default_generator.manual_seed(s)  # CPU generator only: CUDA dropout RNG untouched


class SeededDataset(Dataset):
    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        s = (self.seed * 1_000_003 + self.epoch * 100_003 + index) % (2 ** 31)
        if get_worker_info() is not None:  # a worker process owns its global RNGs
            _seed_all(s)
            return self.dataset[index]
        # In the main process (num_workers=0) the global RNGs also drive dropout: restore them.
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            _seed_all(s)
            return self.dataset[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])

    def __getattr__(self, name):  # expose the wrapped dataset's attributes (records, ...)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
