"""Image pipeline and box conversion of the DGM4 protocol (docs/protocol.md 2.1-2.2), as used by CIEC (paper 3.2).

Train: horizontal flip (p=0.5) of the ORIGINAL image -> resize to S x S bicubic (no crop, aspect ratio not kept;
antialiased like PIL, computed with torchvision's uint8 kernel for speed, see ``resize_bicubic``)
-> RandomAugment subset -> tensor -> CLIP mean/std. Eval: resize -> tensor -> CLIP mean/std.
Output: float tensor (3, S, S). ``__call__(img) -> (tensor, flipped)``.

RandomAugment is ALBEF's RandAugment restricted to [Identity, AutoContrast, Equalize, Brightness, Sharpness]:
N=2 ops sampled WITH replacement, each applied with p=0.5; Brightness and Sharpness use the fixed factor
(M/10)*1.8+0.1 = 1.36 for M=7. The ops are PIL's C implementations (ImageOps.autocontrast / equalize per channel,
ImageEnhance.Brightness = multiply by the factor, ImageEnhance.Sharpness = blend with the 3x3 [1,1,1;1,5,1;1,1,1]/13
smoothed image), which compute the same functions as ALBEF's numpy versions; no per-pixel Python anywhere.
Randomness comes from torch's RNG (seeded per DataLoader worker).

Boxes: ``boxes_to_cxcywh(boxes_xyxy, (W, H), flipped)`` -> normalised (cx, cy, w, h); the flip is applied in the
original pixel frame (x1' = W - x2, x2' = W - x1) and coordinates are normalised by the original W, H, which is
the benchmark's result (flip before resize, then scale to the S grid and divide by S).
"""
import numpy as np
import torch
import torchvision.transforms.v2.functional as tvf
from PIL import Image, ImageEnhance, ImageOps

from utils.config import AUGMENT_OPS as AUG_OPS  # the config's set (data.augment_ops chooses the pool)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def enhance_factor(magnitude):
    """ALBEF's enhance level: (M / 10) * 1.8 + 0.1 (1.36 for M=7)."""
    return magnitude / 10.0 * 1.8 + 0.1


def apply_op(img, name, factor):
    """Apply one RandomAugment op to a PIL RGB image."""
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Brightness":
        return ImageEnhance.Brightness(img).enhance(factor)
    if name == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(factor)
    raise ValueError(f"unknown augmentation op {name!r} (known: {AUG_OPS})")


class RandomAugment:
    """ALBEF RandAugment subset: ``n`` ops drawn with replacement from ``ops``, each applied with prob ``p``."""

    def __init__(self, n=2, magnitude=7, p=0.5, ops=AUG_OPS):
        self.n, self.p, self.ops = n, p, tuple(ops)
        self.factor = enhance_factor(magnitude)

    def __call__(self, x):
        """uint8 tensor (3, H, W) -> uint8 tensor (3, H, W); PIL is used only when an op changes pixels."""
        picks = torch.randint(len(self.ops), (self.n,)).tolist()
        apply = (torch.rand(self.n) < self.p).tolist()
        names = [self.ops[k] for k, on in zip(picks, apply) if on and self.ops[k] != "Identity"]
        if not names:
            return x
        img = uint8_to_pil(x)
        for name in names:
            img = apply_op(img, name, self.factor)
        return pil_to_uint8(img)


def pil_to_uint8(img):
    """PIL RGB -> uint8 tensor (3, H, W) in channels-last memory (a view of one HWC copy)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def uint8_to_pil(x):
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def resize_bicubic(img, size):
    """PIL RGB -> uint8 tensor (3, size, size), antialiased bicubic.

    torchvision's uint8 kernel implements PIL's antialiased resampling (same filter support and weights):
    it differs from ``PIL.Image.resize(BICUBIC)`` by at most 1 grey level on rare pixels and is ~6x faster
    than Pillow's non-SIMD build (0.4 ms vs 2.5 ms for 600x400 -> 256x256).
    """
    return tvf.resize(pil_to_uint8(img), [size, size], interpolation=tvf.InterpolationMode.BICUBIC,
                      antialias=True)


class ToNormalizedTensor:
    """uint8 tensor (3, H, W) or PIL RGB -> contiguous float (3, H, W), (x / 255 - mean) / std fused."""

    def __init__(self, mean=CLIP_MEAN, std=CLIP_STD):
        std = torch.tensor(std).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(mean).view(3, 1, 1) / std

    def __call__(self, x):
        if isinstance(x, Image.Image):
            x = pil_to_uint8(x)
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous()


class TrainTransform:
    """flip(p) -> resize S x S bicubic -> RandomAugment over ``augment_ops`` (none when empty or ``augment`` is
    False) -> normalised tensor; returns ``(tensor, flipped)``."""

    def __init__(self, image_size, flip_p=0.5, augment=True, augment_ops=AUG_OPS):
        self.size, self.flip_p = image_size, flip_p
        self.augment = RandomAugment(ops=augment_ops) if augment and augment_ops else None
        self.to_tensor = ToNormalizedTensor()

    def __call__(self, img):
        flipped = bool(torch.rand(()) < self.flip_p)
        if flipped:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = resize_bicubic(img, self.size)
        if self.augment is not None:
            x = self.augment(x)
        return self.to_tensor(x), flipped


class EvalTransform:
    """resize S x S bicubic -> normalised tensor; returns ``(tensor, False)``."""

    def __init__(self, image_size):
        self.size = image_size
        self.to_tensor = ToNormalizedTensor()

    def __call__(self, img):
        return self.to_tensor(resize_bicubic(img, self.size)), False


def flip_boxes(boxes, width):
    """Mirror xyxy pixel boxes (n, 4) horizontally in an image of ``width``: x1' = W - x2, x2' = W - x1."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


def boxes_to_cxcywh(boxes, size, flipped=False):
    """xyxy pixel boxes (n, 4) of an image of original ``size`` = (W, H) -> float32 (n, 4) normalised cx,cy,w,h."""
    w, h = size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if flipped:
        boxes = flip_boxes(boxes, w)
    out = np.stack([(boxes[:, 0] + boxes[:, 2]) / (2 * w), (boxes[:, 1] + boxes[:, 3]) / (2 * h),
                    (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h], axis=1)
    return out.astype(np.float32)


def build_transform(image_size, train, augment_ops=AUG_OPS):
    return TrainTransform(image_size, augment_ops=augment_ops) if train else EvalTransform(image_size)
