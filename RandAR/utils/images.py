"""Image grids and strips on uint8 numpy arrays (H, W, 3): no torchvision needed."""
import math
from typing import Optional, Sequence

import numpy as np


def image_grid(images: np.ndarray, cols: Optional[int] = None, pad: int = 2, background: int = 255) -> np.ndarray:
    """(B, H, W, C) -> one (rows*(H+pad)-pad, cols*(W+pad)-pad, C) image, row by row; as square as possible
    unless `cols` is given."""
    b, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), background, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = img
    return grid


def image_row(panels: Sequence[np.ndarray], pad: int = 4, background: int = 255) -> np.ndarray:
    """(H_i, W_i, 3) images left to right, top-aligned, with `pad` pixels around and between them."""
    h = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + pad * (len(panels) + 1)
    strip = np.full((h + 2 * pad, width, 3), background, dtype=np.uint8)
    x = pad
    for p in panels:
        strip[pad:pad + p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + pad
    return strip
