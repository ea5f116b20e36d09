"""Box format conversions of the metrics and the visualiser (the dataset's pixel -> normalised conversion, with the
flip, is ``datasets.transforms.boxes_to_cxcywh``).

Formats (DGM4 protocol, docs/protocol.md 2.2):
- ``cxcywh``: centre x, centre y, width, height; "normalised" means divided by the image W and H (in [0, 1]).
  This is the format of ``batch["gt_box"]``, ``batch["cand_boxes"]`` and ``outputs["pred_box"]``; the no-box
  target is ``[0, 0, 0, 0]``.
- ``xyxy``: x1, y1, x2, y2 (left, top, right, bottom), normalised or in pixels.

Every function takes a torch tensor or a numpy array of shape (..., 4) and returns the same kind, shape (..., 4).
Nothing is clipped: the metric code (eq. of HAMMER's ``box_iou``) works on the raw values.
"""
import numpy as np
import torch


def _stack(parts, like):
    """Stack four (...,) pieces along a new last axis, as a tensor or an array like ``like``."""
    if isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def _unbind(box):
    if box.shape[-1] != 4:
        raise ValueError(f"boxes must have a last dimension of 4, got shape {tuple(box.shape)}")
    return box[..., 0], box[..., 1], box[..., 2], box[..., 3]


def cxcywh_to_xyxy(box):
    """(cx, cy, w, h) -> (x1, y1, x2, y2); shape (..., 4) -> (..., 4)."""
    cx, cy, w, h = _unbind(box)
    return _stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], box)


def _scale(box, sx, sy):
    x1, y1, x2, y2 = _unbind(box)
    return _stack([x1 * sx, y1 * sy, x2 * sx, y2 * sy], box)


def denormalize_xyxy(box, width, height):
    """Normalised xyxy -> pixel xyxy."""
    return _scale(box * 1.0, float(width), float(height))


def norm_cxcywh_to_pixel_xyxy(box, width, height):
    """Normalised cxcywh (a prediction) -> pixel xyxy in an image of ``width`` x ``height``."""
    return denormalize_xyxy(cxcywh_to_xyxy(box), width, height)
