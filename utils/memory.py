"""Activation memory of a training step, measured without a GPU: the bytes the autograd graph saves for backward.

``SavedTensorMeter`` wraps ``torch.autograd.graph.saved_tensors_hooks``. Every tensor an operation saves for backward
passes through its pack hook, which wraps it in a small holder and keeps a weak reference to that holder. The holder
lives as long as the graph node that owns it, so once the forward and the losses have run, ``live_bytes()`` sums the
storages of the saved tensors still reachable from the graph (a branch whose output was dropped no longer counts).
Each storage is counted once (views, and tensors saved by several operations, share a storage), and the storages of
``exclude`` (the parameters, counted as weights) are left out. Inside a ``torch.utils.checkpoint`` region the
checkpoint's own hooks take over, so only the region's inputs reach this meter: what checkpointing keeps.

``meter.track([(label, module), ...])`` attributes the bytes to the module that was running when they were saved
(forward hooks; the innermost tracked module wins; several modules may share a label); ``live_bytes(by_label=True)``
returns ``{label: bytes}`` with "" for the rest. bench/memory.py turns these into the per-sample activation memory
of each ``train.grad_checkpointing`` setting.
"""
import weakref

import torch


class _Saved:
    """What the graph holds instead of a saved tensor (weak-referenceable), with the label it was saved under."""
    __slots__ = ("tensor", "label", "__weakref__")

    def __init__(self, tensor, label):
        self.tensor, self.label = tensor, label


def storage_key(tensor):
    """Identity of a tensor's storage: (device, data pointer)."""
    return tensor.device, tensor.untyped_storage().data_ptr()


class SavedTensorMeter:
    """``with SavedTensorMeter(exclude=model.parameters()) as meter: loss = step(); nbytes = meter.live_bytes()``."""

    def __init__(self, exclude=()):
        self.exclude = {storage_key(t) for t in exclude}
        self.saved = []
        self.labels = []
        self.handles = []
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor):
        holder = _Saved(tensor, self.labels[-1] if self.labels else "")
        self.saved.append(weakref.ref(holder))
        return holder

    @staticmethod
    def _unpack(holder):
        return holder.tensor

    def track(self, modules):
        """Attribute what each module of ``[(label, module), ...]`` saves to its label (until the meter is closed)."""
        def enter(label):
            return lambda module, args: self.labels.append(label)  # returns None: the input stays as it is

        def leave(module, args, output):
            self.labels.pop()  # returns None: the output stays as it is

        for label, module in modules:
            self.handles.append(module.register_forward_pre_hook(enter(label)))
            self.handles.append(module.register_forward_hook(leave))
        return self

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        return False

    def live_bytes(self, by_label=False):
        """Bytes of the distinct storages the graph still holds (total, or ``{label: bytes}``)."""
        seen, totals = set(), {}
        for ref in self.saved:
            holder = ref()
            if holder is None or holder.tensor is None:
                continue
            key = storage_key(holder.tensor)
            if key in seen or key in self.exclude:
                continue
            seen.add(key)
            totals[holder.label] = totals.get(holder.label, 0) + holder.tensor.untyped_storage().nbytes()
        return totals if by_label else sum(totals.values())
