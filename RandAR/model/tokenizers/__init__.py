"""What every image tokenizer offers, and how scripts build one.

RandAR ships two tokenizers with the same surface, so that scripts never test a tokenizer's name:

    pixel_range                 class attribute (lo, hi): the input range `encode_indices` expects
    codebook_size               int, number of codes
    downsample_factor           int, image side / token-grid side
    preprocess(images_01)       [B, 3, H, W] in [0, 1] -> the same images in `pixel_range`
    encode_indices(images)      [B, 3, H, W] in pixel_range -> LongTensor [B, h*w], raster order per image
    decode_codes(codes)         [B, h*w] (square grid) or [B, h, w] -> float images [B, 3, H, W]
    decode_codes_to_img(codes, image_size) -> uint8 numpy [B, size, size, 3], each with its own pixel mapping

`VQModel` (LlamaGen, tokenizers/llamagen_vq.py) and `MaskGITTokenizer` (MaskGIT's VQGAN, tokenizers/maskgit_vqgan.py)
implement it; `build_tokenizer` turns a `{target, params}` config into a loaded model.
"""
import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from RandAR.utils.checkpoint import load_model_weights
from RandAR.utils.config import instantiate_from_config
from RandAR.utils.checkpoint import resolve_checkpoint


def build_tokenizer(cfg, ckpt_path: Optional[str] = None, device="cpu") -> torch.nn.Module:
    """Build the tokenizer of `cfg` ({target, params}: a config's `tokenizer:` section or the `model:`
    section of configs/tokenization/*.yaml), load `ckpt_path` strictly if given, return it in eval mode.

    A missing file raises FileNotFoundError naming it; a checkpoint of another architecture raises
    CheckpointMismatchError listing the differing keys.
    """
    model = instantiate_from_config(cfg)
    if ckpt_path is not None:
        load_model_weights(model, resolve_checkpoint(ckpt_path, "tokenizer checkpoint"))
    return model.to(device).eval()


def code_grid(codes: torch.Tensor, codebook_size: Optional[int] = None) -> Tuple[torch.Tensor, int, int]:
    """codes [B, h*w] (square grid) or [B, h, w] -> (codes [B, h*w], h, w); ids checked against codebook_size."""
    if codebook_size is not None and codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(f"token ids must be in [0, {codebook_size - 1}] for this tokenizer, got range "
                         f"[{int(codes.min())}, {int(codes.max())}]: were these codes made with another tokenizer?")
    if codes.dim() == 3:
        return codes.flatten(1), codes.shape[1], codes.shape[2]
    if codes.dim() != 2:
        raise ValueError(f"codes must be [B, h*w] or [B, h, w], got shape {tuple(codes.shape)}")
    side = math.isqrt(codes.shape[1])
    if side * side != codes.shape[1]:
        raise ValueError(f"{codes.shape[1]} codes per image is not a square grid; pass codes as [B, h, w]")
    return codes, side, side


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of [B, C, H, W] to size x size (align_corners=False), untouched if already that size."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)


def to_uint8_hwc(pixels: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] floats already scaled to 0..255 -> uint8 numpy [B, H, W, 3].

    The cast truncates, as the original does; callers add 0.5 beforehand where they want rounding.
    """
    return pixels.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
