"""What a run records: JSON lines and TensorBoard scalars, one call per row (``RunLog``).

- ``JsonlWriter(path)``: one JSON object per line (``log.jsonl``); numbers stay numbers (tensors and numpy scalars
  become Python numbers; NaN/inf become null so the file stays valid JSON). ``drop_after(global_step)`` removes the
  rows of steps beyond ``global_step`` (a resumed run redoes them, so they would appear twice).
- ``TensorBoardWriter(log_dir, enabled, purge_step)``: SummaryWriter imported behind tensorboard's own "no TensorFlow"
  switch (``tensorboard.compat.notf``), so TensorFlow (installed for mtcnn) is never imported; scalars
  (``add_scalars``) and images. ``purge_step`` hides the events of steps a resumed run redoes.
- ``RunLog(out, enabled, resumed_step)``: both, for one run folder (``<out>/log.jsonl``, ``<out>/tb``), trimmed to the
  run's state at start; ``write(row)`` appends a row and its numeric values (except the step counters) as scalars.
"""
import errno
import json
import math
import os
import sys
import types

import numpy as np
import torch

from utils.errors import DiskFullError
from utils.io import atomic_write

STEP_KEYS = ("epoch", "global_step", "seconds")  # row keys that are not curves


def _to_number(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(clean, allow_nan=False) + "\n")
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DiskFullError(f"no space left on the device while appending to {self.path}; the saved "
                                    "checkpoints are not affected") from None
            raise

    def drop_after(self, global_step):
        """Rewrite the file without the rows whose ``global_step`` is beyond ``global_step``, and without a last line
        cut short by a kill. Other lines stay as they are."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    continue  # the row being written when the run was killed
                row = None
            if not (isinstance(row, dict) and isinstance(row.get("global_step"), int)
                    and row["global_step"] > global_step):
                kept.append(line + "\n")
        if len(kept) < len(lines):
            atomic_write(self.path, lambda f: f.writelines(kept), binary=False)


def _import_summary_writer():
    # tensorboard's own switch: with this module present it never imports tensorflow (8 s and TF log noise
    # otherwise, because TF is installed for mtcnn; tests/test_utils.py checks that tensorflow stays unimported).
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter


class TensorBoardWriter:
    """Thin SummaryWriter wrapper; every method is a no-op when ``enabled`` is False (non-main ranks)."""

    def __init__(self, log_dir, enabled=True, purge_step=None):
        self.writer = _import_summary_writer()(log_dir=log_dir, purge_step=purge_step) if enabled else None

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


class RunLog:
    """``<out>/log.jsonl`` and ``<out>/tb`` of one run (no-ops unless ``enabled``: rank 0 writes).

    ``resumed_step``: the global step the run starts from (0 for a new run); rows and events of later steps, left by
    a run that was killed after writing them, are removed, because the run does those steps again.
    """

    def __init__(self, out, enabled, resumed_step=0):
        self.jsonl = JsonlWriter(os.path.join(out, "log.jsonl"), enabled=enabled)
        self.jsonl.drop_after(resumed_step)
        self.tb = TensorBoardWriter(os.path.join(out, "tb"), enabled=enabled, purge_step=resumed_step + 1)

    def write(self, row):
        """Append ``row`` (with its ``global_step``) to log.jsonl and its curves to TensorBoard."""
        self.jsonl.write(row)
        self.tb.add_scalars({k: v for k, v in row.items() if k not in STEP_KEYS}, row["global_step"])

    def close(self):
        self.tb.close()
