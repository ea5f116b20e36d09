"""Logging for train.py / test.py: console + file log, smoothed meters, JSON lines, TensorBoard.

- ``setup_logging(output_dir, is_main)``: the ``logging`` root logger prints INFO on rank 0 (console and
  ``output_dir/console.log``) and only WARNING and above on the other ranks (tagged with the rank).
- ``SmoothedValue`` / ``MetricLogger``: windowed and global averages of per-step values (the one copy in the
  codebase); ``MetricLogger.log_every`` wraps a loader and logs ETA, step time and data time.
- ``JsonlWriter(path)``: one JSON object per line (``log.jsonl``); numbers stay numbers (tensors and numpy scalars
  become Python numbers; NaN/inf become null so the file stays valid JSON).
- ``TensorBoardWriter(log_dir, enabled)``: SummaryWriter imported behind tensorboard's own "no TensorFlow"
  switch (``tensorboard.compat.notf``), so TensorFlow (installed for mtcnn) is never imported; scalars
  (``add_scalars``) and images.
"""
import collections
import datetime
import json
import logging
import math
import os
import sys
import time
import types

import numpy as np
import torch

from utils import dist


def setup_logging(output_dir=None, is_main=True):
    """Configure the root logger for this rank and return the 'ciec' logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    prefix = "" if is_main else f"[rank {dist.get_rank()}] "
    fmt = logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stdout)]
    if is_main and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "console.log")))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    return logging.getLogger("ciec")


def _to_number(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class SmoothedValue:
    """Running statistics of a scalar: median/avg over the last ``window`` values, global average, max."""

    def __init__(self, window=20, fmt="{median:.4f} ({global_avg:.4f})"):
        self.deque = collections.deque(maxlen=window)
        self.total, self.count, self.fmt = 0.0, 0, fmt

    def update(self, value, n=1):
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self):
        """Sum count and total over ranks (the window stays local)."""
        if not dist.is_dist():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64,
                         device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(t)
        self.count, self.total = int(t[0].item()), float(t[1].item())

    @property
    def median(self):
        return float(np.median(self.deque)) if self.deque else float("nan")

    @property
    def avg(self):
        return float(np.mean(self.deque)) if self.deque else float("nan")

    @property
    def global_avg(self):
        return self.total / self.count if self.count else float("nan")

    @property
    def max(self):
        return max(self.deque) if self.deque else float("nan")

    @property
    def value(self):
        return self.deque[-1] if self.deque else float("nan")

    def __str__(self):
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg,
                               max=self.max, value=self.value)


class MetricLogger:
    """A named set of ``SmoothedValue`` meters; ``update(loss=..., lr=...)`` adds one value to each."""

    def __init__(self, delimiter="  ", logger=None):
        self.meters = collections.defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.log = logger or logging.getLogger("ciec")

    def add_meter(self, name, meter):
        self.meters[name] = meter

    def update(self, n=1, **values):
        for name, value in values.items():
            value = _to_number(value)
            if value is None:
                continue
            self.meters[name].update(float(value), n=n)

    def synchronize_between_processes(self):
        for name in sorted(self.meters):
            self.meters[name].synchronize_between_processes()

    def global_averages(self):
        """{name: global average} (numbers), e.g. for the epoch's JSON line."""
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def __str__(self):
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def log_every(self, iterable, print_freq, header=""):
        """Yield from ``iterable``; every ``print_freq`` steps log progress, ETA and timings."""
        total = len(iterable) if hasattr(iterable, "__len__") else None
        step_time, data_time = SmoothedValue(fmt="{avg:.3f}"), SmoothedValue(fmt="{avg:.3f}")
        start = end = time.time()
        for i, item in enumerate(iterable):
            data_time.update(time.time() - end)
            yield item
            step_time.update(time.time() - end)
            if i % print_freq == 0 or (total is not None and i == total - 1):
                self._log_progress(header, i, total, step_time, data_time)
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        self.log.info("%s done in %s (%.3f s / it)", header, elapsed, (time.time() - start) / max(1, step_time.count))

    def _log_progress(self, header, i, total, step_time, data_time):
        eta = ""
        if total is not None:
            eta = f"eta: {datetime.timedelta(seconds=int(step_time.global_avg * (total - i - 1)))}"
        memory = ""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            memory = f"max mem: {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MB"
        parts = [f"{header} [{i}/{total if total is not None else '?'}]", eta, str(self),
                 f"time: {step_time}", f"data: {data_time}", memory]
        self.log.info(self.delimiter.join(p for p in parts if p))


class JsonlWriter:
    """Append one JSON object per call to ``path`` (numbers as numbers); a no-op when not ``enabled``."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = path, enabled
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, record):
        if not self.enabled:
            return
        clean = {str(k): _to_number(v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")


def _import_summary_writer():
    # tensorboard's own switch: with this module present it never imports tensorflow (8 s and TF log noise
    # otherwise, because TF is installed for mtcnn). dependencies.md section 3.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter


class TensorBoardWriter:
    """Thin SummaryWriter wrapper; every method is a no-op when ``enabled`` is False (non-main ranks)."""

    def __init__(self, log_dir, enabled=True):
        self.writer = _import_summary_writer()(log_dir=log_dir) if enabled else None

    def add_scalars(self, values, step, prefix=""):
        """One scalar per key of ``values`` (tag ``prefix + key``); non-finite values are skipped."""
        if self.writer is None:
            return
        for key, value in values.items():
            value = _to_number(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(prefix + key, value, step)


    def add_image(self, tag, image, step):
        """``image``: HxWx3 uint8 array, a PIL image or a path to an image file."""
        if self.writer is None:
            return
        if isinstance(image, (str, os.PathLike)):
            from PIL import Image
            image = Image.open(image).convert("RGB")
        self.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


