"""Image preprocessing for latent-code extraction and tokenizer training, in PIL/numpy (no torchvision).

The extractor turns one image into a stack of views `[A, 3, S, S]` uint8 and stores one code row per view:
    adm       A=2:  ADM centre crop, then its horizontal flip (ADM, MAR and the released RandAR archives)
    ten-crop  A=10: ADM centre crop to S*crop_range, then torchvision-style TenCrop(S) (LlamaGen)
    none      A=1:  ADM centre crop only
Pixels stay uint8 until the tokenizer's own `preprocess` maps [0, 1] to the range it declares.
"""
from typing import Callable, List

import numpy as np
import torch
from PIL import Image

AUG_MODES = ("adm", "ten-crop", "none")
DEFAULT_CROP_RANGE = 1.1  # LlamaGen's enlargement of the centre crop before the ten crops


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop: halve with a box filter while the short side is >= 2x the target, bicubic-resize the
    short side to `image_size`, then cut the central square. (Box halving first keeps downsampling alias-free.)"""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top: top + image_size, left: left + image_size])


def hflip(arr: np.ndarray) -> np.ndarray:
    """Mirror an HWC array left-right."""
    return np.ascontiguousarray(arr[:, ::-1])


def five_crop(arr: np.ndarray, size: int) -> List[np.ndarray]:
    """Top-left, top-right, bottom-left, bottom-right, centre: torchvision's FiveCrop order and offsets."""
    h, w = arr.shape[:2]
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the image {h}x{w}")
    # torchvision centres with round(), i.e. Python's round-half-to-even.
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
    return [arr[y: y + size, x: x + size] for y, x in corners]


def ten_crop(arr: np.ndarray, size: int) -> List[np.ndarray]:
    """FiveCrop of the image, then FiveCrop of its horizontal flip (torchvision TenCrop, vertical_flip=False)."""
    return five_crop(arr, size) + five_crop(hflip(arr), size)


def make_views(pil_image: Image.Image, aug_mode: str, image_size: int,
               crop_range: float = DEFAULT_CROP_RANGE) -> np.ndarray:
    """One RGB PIL image -> uint8 array [A, S, S, 3] of the views `aug_mode` stores, in file-row order."""
    if aug_mode == "ten-crop":
        base = np.asarray(center_crop_arr(pil_image, int(image_size * crop_range)))
        views = ten_crop(base, image_size)
    elif aug_mode == "adm":
        base = np.asarray(center_crop_arr(pil_image, image_size))
        views = [base, hflip(base)]
    elif aug_mode == "none":
        views = [np.asarray(center_crop_arr(pil_image, image_size))]
    else:
        raise ValueError(f"unknown aug_mode {aug_mode!r}; expected one of {AUG_MODES}")
    return np.stack(views)


class CenterCrop:
    """Dataset transform: RGB PIL image -> ADM centre crop as a uint8 tensor [3, S, S] (the tokenizer trainer's
    images). A class, so that DataLoader workers can pickle it."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, pil_image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(make_views(pil_image, "none", self.image_size)[0]).permute(2, 0, 1).contiguous()


def views_transform(aug_mode: str, image_size: int, crop_range: float = DEFAULT_CROP_RANGE) -> Callable:
    """Dataset transform: RGB PIL image -> uint8 tensor [A, 3, S, S] (uint8 keeps worker->GPU copies 4x smaller)."""
    def transform(pil_image: Image.Image) -> torch.Tensor:
        views = make_views(pil_image, aug_mode, image_size, crop_range)
        return torch.from_numpy(views).permute(0, 3, 1, 2).contiguous()
    return transform


def to_tokenizer_input(images_uint8: torch.Tensor, tokenizer) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 in the tokenizer's declared `pixel_range` (via its own `preprocess`)."""
    return tokenizer.preprocess(images_uint8.float().div(255.0))
