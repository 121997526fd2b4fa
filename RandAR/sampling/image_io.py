"""Images in and out of the sampling and editing tools (PNG writes; inputs and masks of inpaint/outpaint).

Conventions:
- Input images: any mode PIL opens; non-RGB images are converted with PIL's `convert("RGB")` (grey and palette
  images expand to RGB, an alpha channel is dropped). They are ADM-centre-cropped (RandAR.dataset.augmentation)
  to the size the model works at.
- Masks: same width and height as the input image; white (grey level >= 128 after conversion to 'L') = the
  region to regenerate, black = keep. The mask goes through the same centre crop as the image, and a token is
  regenerated when any pixel of its patch is (even partly) white after the crop.
"""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from RandAR.dataset.augmentation import center_crop_arr, to_tokenizer_input
from RandAR.utils.atomic import atomic_path
from RandAR.utils.images import cells_to_pixels, labelled_row

MASK_THRESHOLD = 128
GREY = 128  # how regenerated cells are shown in the comparison panels


def open_rgb(path: str) -> Image.Image:
    """The image at `path` as RGB (see module docstring for the conversion)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} not found")
    image = Image.open(path)
    if image.mode != "RGB":
        print(f"note: {path} is {image.mode}, converted to RGB" + (" (alpha dropped)" if "A" in image.mode else ""))
        image = image.convert("RGB")
    return image


def open_mask(path: str, image_size: Tuple[int, int]) -> np.ndarray:
    """The mask at `path` as bool (H, W), True = regenerate; it must be `image_size` (W, H) like the image."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask {path} not found")
    mask = Image.open(path)
    if mask.size != tuple(image_size):
        raise ValueError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but the image is "
                         f"{image_size[0]}x{image_size[1]}; they must have the same size")
    mask = np.asarray(mask.convert("L")) >= MASK_THRESHOLD
    if not mask.any():
        raise ValueError(f"mask {path} has no white pixel: nothing to regenerate (white = regenerate)")
    return mask


def crop_image_and_mask(image: Image.Image, mask: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """The same ADM centre crop to size x size for both: uint8 (S, S, 3) and bool (S, S). Mask pixels touched
    by resampling (any value > 0) stay masked, so a thin mask never vanishes."""
    cropped = np.asarray(center_crop_arr(image, size))
    m = np.asarray(center_crop_arr(Image.fromarray(mask.astype(np.uint8) * 255), size)) > 0
    return cropped, m


def fit_to_box(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Cover `height` x `width` (bicubic resize keeping the aspect ratio) and cut the centre: uint8 (H, W, 3).
    A square box is the ADM centre crop."""
    if height == width:
        return np.asarray(center_crop_arr(image, height))
    scale = max(width / image.size[0], height / image.size[1])
    resized = image.resize((max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale))),
                           resample=Image.BICUBIC)
    arr = np.asarray(resized)
    top, left = (arr.shape[0] - height) // 2, (arr.shape[1] - width) // 2
    return arr[top:top + height, left:left + width]


@torch.no_grad()
def encode_image(tokenizer, image: np.ndarray, device) -> torch.Tensor:
    """uint8 (H, W, 3) -> token ids (1, H/p * W/p), raster order."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].to(device)
    return tokenizer.encode_indices(to_tokenizer_input(x, tokenizer))


def grey_out(image: np.ndarray, regenerate: torch.Tensor, patch: int) -> np.ndarray:
    """A copy of uint8 (H, W, 3) with the patches of the cells to regenerate ((h*w,) bool, raster) in grey."""
    h, w = image.shape[0] // patch, image.shape[1] // patch
    pixels = cells_to_pixels(regenerate.view(h, w).cpu().numpy(), patch)
    out = image.copy()
    out[pixels] = GREY
    return out


def save_png(image: np.ndarray, path: str) -> str:
    """uint8 (H, W, 3) -> `path`, atomically: a killed run never leaves a truncated PNG that a resume would keep."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def save_results(results: np.ndarray, panels: Dict[str, np.ndarray], out_dir: str, stem: str,
                 pasted: Optional[np.ndarray] = None) -> List[str]:
    """results uint8 (S, H, W, 3) -> <out_dir>/<stem>_{i:03d}.png each (`pasted`'s images instead when given:
    the completions with the input pasted back, RandAR.utils.images.paste_known), and <stem>_comparison.png: the
    panels under their names (input, masked input, tokenizer reconstruction), every completion, then every pasted
    one. Returns the paths written."""
    saved = results if pasted is None else pasted
    paths = [save_png(r, os.path.join(out_dir, f"{stem}_{i:03d}.png")) for i, r in enumerate(saved)]
    images = list(panels.values()) + list(results) + ([] if pasted is None else list(pasted))
    labels = (list(panels) + [f"completion {i}" for i in range(len(results))]
              + ([] if pasted is None else [f"completion {i}\ninput pasted" for i in range(len(pasted))]))
    paths.append(save_png(labelled_row(images, labels), os.path.join(out_dir, f"{stem}_comparison.png")))
    return paths
