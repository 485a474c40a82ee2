"""Every resize an extractor does happens here, under a named mode (clean-fid's ``resize.py`` idea).

FID moves by whole points with the resize filter alone, so the mode is part of an extractor's id
and of every cache key and results row.

Modes (input: a PIL RGB image; output: float32 ``3×H×W`` in [0, 255], never quantized):

- ``clean``: PIL bicubic with antialiasing, each channel resized as a float image (mode ``F``) and
  clipped to [0, 255], as clean-fid's default ``clean`` mode.
- ``legacy``: ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``,
  clean-fid's ``legacy_pytorch`` (aliases when downsampling).
- ``tf1``: TensorFlow 1.x bilinear as reimplemented by torch-fidelity; what torch-fidelity and
  torchmetrics (``antialias=False``) do inside their Inception, so FID matches theirs and the
  original TF code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_MODES: tuple[str, ...] = ("clean", "legacy", "tf1")


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def center_crop_square(image: Image.Image) -> Image.Image:
    """The largest centered square, as CLIP's shortest-side resize plus center crop keeps."""
    w, h = image.size
    if w == h:
        return image
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.crop((left, top, left + s, top + s))


def _to_chw_float(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)


def resize_clean(image: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """PIL bicubic per channel in float mode ``F``, then clip (clean-fid ``make_resizer('PIL', False, 'bicubic')``)."""
    h, w = _size_hw(size)
    if image.size == (w, h):  # PIL returns a copy for a same-size resize: skip the per-channel round trip
        return _to_chw_float(image)
    arr = np.asarray(image, dtype=np.float32)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(arr[:, :, c])).resize((w, h), Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    return torch.from_numpy(np.stack(channels, axis=0).clip(0, 255).astype(np.float32))


def resize_legacy(image: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear without antialiasing, as ``F.interpolate`` does by default."""
    x = _to_chw_float(image)[None]
    return F.interpolate(x, size=_size_hw(size), mode="bilinear", align_corners=False, antialias=False)[0]


def resize_tf1(image: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x bilinear (torch-fidelity's epsilon-exact reimplementation)."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = _to_chw_float(image)[None]
    return interpolate_bilinear_2d_like_tensorflow1x(x, size=_size_hw(size), align_corners=False)[0]


_RESIZERS = {"clean": resize_clean, "legacy": resize_legacy, "tf1": resize_tf1}


def check_resize_mode(mode: str) -> str:
    if mode not in _RESIZERS:
        from ..errors import UserError

        raise UserError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    return mode


def resize(image: Image.Image, size: int | tuple[int, int], mode: str = "clean") -> torch.Tensor:
    """Resize a PIL RGB image to ``size`` (int: square; tuple: (height, width)) → float32 ``3×H×W`` in [0, 255]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return _RESIZERS[check_resize_mode(mode)](image, size)
