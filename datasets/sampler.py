"""Training sampler whose global batches do not depend on how they are split.

``BlockDistributedSampler`` is a ``DistributedSampler`` (same shuffling, same ``set_epoch``
contract) that orders the epoch's permutation in *global batches* of
``world_size * accum_steps * batch_size`` samples. Inside a global batch, micro-batch ``m`` of
rank ``r`` is the contiguous slice number ``m * world_size + r``. Hence 8 GPUs x 1 step,
1 GPU x 8 accumulation steps, or 2 GPUs x 4 steps see exactly the same micro-batches and the
same global batch, so their losses and updates agree (tests/test_train.py).

``set_start(k)`` skips the first ``k`` optimizer steps of the epoch: resuming mid-epoch
continues with the batch the killed run would have processed next.
"""

import torch
from torch.utils.data import DistributedSampler

from utils.errors import ConfigError


class BlockDistributedSampler(DistributedSampler):
    def __init__(self, dataset, num_replicas, rank, batch_size, accum_steps=1, shuffle=True, seed=0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=True)
        self.batch_size = batch_size
        self.accum_steps = accum_steps
        self.global_batch = num_replicas * accum_steps * batch_size
        self.steps_per_epoch = len(dataset) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training set has {len(dataset)} usable samples, fewer than one global batch "
                              f"({num_replicas} ranks x train.accum_steps {accum_steps} x train.batch_size "
                              f"{batch_size}): lower train.batch_size or add data")
        self.start_step = 0

    def set_start(self, step):
        """Skip the first ``step`` optimizer steps of the current epoch (mid-epoch resume)."""
        self.start_step = step

    def _permutation(self):
        if not self.shuffle:
            return list(range(len(self.dataset)))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def __iter__(self):
        perm = self._permutation()
        b, world = self.batch_size, self.num_replicas
        for step in range(self.start_step, self.steps_per_epoch):
            base = step * self.global_batch
            for m in range(self.accum_steps):
                start = base + (m * world + self.rank) * b
                yield from perm[start:start + b]

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * self.accum_steps * self.batch_size


def eval_sampler(dataset, num_replicas, rank):
    """Evaluation: every rank takes a strided share; padding repeats are removed by the evaluator."""
    if num_replicas == 1:
        return None
    return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)


def steps_per_epoch(n_samples, world_size, accum_steps, batch_size):
    return n_samples // (world_size * accum_steps * batch_size)
