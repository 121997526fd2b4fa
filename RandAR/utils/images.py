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


def cells_to_pixels(cells: np.ndarray, patch: int) -> np.ndarray:
    """bool (h, w) per token cell -> bool (h*patch, w*patch) per pixel."""
    return np.repeat(np.repeat(cells, patch, axis=0), patch, axis=1)


def feather_weights(mask: np.ndarray, width: int) -> np.ndarray:
    """How much of the input to keep at each pixel when pasting it back over a completion: float (H, W) in [0, 1],
    0 on the mask (bool (H, W), True = generated), rising by 1/width per pixel of chessboard distance from it
    (1 at `width` pixels and beyond); width 0: 1 everywhere off the mask (a hard edge)."""
    if width < 0:
        raise ValueError(f"feather width must be >= 0, got {width}")
    distance = np.where(mask, 0, width).astype(np.int64)  # chessboard distance to the mask, capped at width
    reached = mask.copy()
    for d in range(1, width):  # grow the mask one pixel (3x3) at a time
        grown = np.pad(reached, 1)
        reached = np.zeros_like(reached)
        for dy in range(3):
            for dx in range(3):
                reached |= grown[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
        distance[reached & (distance == width)] = d
    return distance / width if width else (~mask).astype(np.float64)


def paste_known(results: np.ndarray, original: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    """The original's pixels pasted over each completion off the mask, blended over `width` pixels (feather_weights):
    results uint8 (S, H, W, 3), original uint8 (H, W, 3), mask bool (H, W) True = generated -> uint8 (S, H, W, 3)."""
    w = feather_weights(mask, width)[None, :, :, None]
    return np.rint(w * original[None].astype(np.float64) + (1 - w) * results).astype(np.uint8)


def labelled_row(panels: Sequence[np.ndarray], labels: Sequence[str], min_side: int = 128, pad: int = 4,
                 background: int = 255) -> np.ndarray:
    """image_row with a caption above each panel (lines split at '\\n'); panels smaller than `min_side` are
    enlarged by a whole factor (nearest neighbour, each pixel stays visible) so that captions fit."""
    from PIL import Image, ImageDraw  # only the captioned pictures need PIL
    scale = max(1, -(-min_side // max(max(p.shape[:2]) for p in panels)))
    panels = [np.kron(p, np.ones((scale, scale, 1), np.uint8)) for p in panels]
    lines = max(label.count("\n") + 1 for label in labels)
    head = 12 * lines + 4
    row = image_row(panels, pad, background)
    out = Image.new("RGB", (row.shape[1], row.shape[0] + head), (background,) * 3)
    out.paste(Image.fromarray(row), (0, head))
    draw, x = ImageDraw.Draw(out), pad
    for p, label in zip(panels, labels):
        draw.multiline_text((x, 2), label, fill=(0, 0, 0), spacing=2)
        x += p.shape[1] + pad
    return np.asarray(out)
