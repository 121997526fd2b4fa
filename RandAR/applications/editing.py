"""Inpainting and outpainting: complete a token grid of which some tokens are given.

The known tokens come first in the order and enter the KV cache in one forward pass; the unknown ones are then
decoded in random order with parallel decoding and CFG, by the one decoding loop
(`RandAR.model.generate.generate`). Known tokens come back unchanged. Outpainting onto a canvas larger than the
training grid passes the resolution-extrapolation RoPE table as `freqs_cis`.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from RandAR.model.orders import known_first_order
from RandAR.model.generate import CompiledDecoder, DecodeConfig, generate

OUTPAINT_REGIONS = ("center", "left", "right", "top", "bottom")


@torch.no_grad()
def generate_with_known(model, cond: torch.Tensor, tokens: torch.Tensor, known: torch.Tensor,
                        decode: DecodeConfig = DecodeConfig(), freqs_cis: Optional[torch.Tensor] = None,
                        seeds: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                        decoder: Optional[CompiledDecoder] = None) -> torch.Tensor:
    """Complete token grids: (B, N) ids in raster order, equal to `tokens` wherever `known` is True.

    cond (B,) class ids; tokens (B, N) raster ids (values at unknown cells are ignored); known (B, N) bool, the
    same number of known cells in every row. N is the model's block size, or the size of the grid `freqs_cis`
    was made for. decode: class CFG, steps for the unknown tokens and how they are drawn. seeds (B,): per-sample
    orders and draws, independent of the batch. decoder: generate's (None: eager).
    """
    if tokens.shape != known.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and known {tuple(known.shape)} must have one shape (B, N)")
    order, K = known_first_order(known, seeds=None if seeds is None else seeds.cpu(), generator=generator)
    order = order.to(tokens.device)
    known_ids = tokens.gather(1, order[:, :K]) if K else None
    return generate(model, cond, decode, token_order=order, known_tokens=known_ids, freqs_cis=freqs_cis,
                    seeds=seeds, generator=generator, decoder=decoder)


@torch.no_grad()
def complete_images(model, tokenizer, decode: DecodeConfig, class_id: int, seeds: Sequence[int], batch_size: int,
                    tokens: torch.Tensor, known: torch.Tensor, image_size: int,
                    freqs_cis: Optional[torch.Tensor] = None, decoder: Optional[CompiledDecoder] = None
                    ) -> np.ndarray:
    """One completion of one grid (tokens, known: (1, N)) per seed, `batch_size` at a time, decoded:
    uint8 (len(seeds), image_size, image_size, 3). A completion depends on its seed only, not on the batch."""
    device = tokens.device
    images = []
    for start in range(0, len(seeds), batch_size):
        s = torch.tensor(seeds[start:start + batch_size], dtype=torch.long, device=device)
        b = len(s)
        cond = torch.full((b,), class_id, dtype=torch.long, device=device)
        ids = generate_with_known(model, cond, tokens.expand(b, -1), known.expand(b, -1), decode,
                                  freqs_cis=freqs_cis, seeds=s, decoder=decoder)
        images.append(tokenizer.decode_codes_to_img(ids, image_size))
    return np.concatenate(images)


def known_from_pixel_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """mask (H, W) bool, True = pixel to regenerate -> (H/patch * W/patch,) bool in raster order, True = known:
    a token is known when no pixel of its patch x patch patch is masked."""
    H, W = mask.shape
    if H % patch or W % patch:
        raise ValueError(f"mask {H}x{W} is not a whole number of {patch}x{patch} token patches")
    touched = mask.reshape(H // patch, patch, W // patch, patch).any(dim=3).any(dim=1)
    return ~touched.flatten()


def region_box(region: str, grid: int, fraction: float = 0.5) -> Tuple[int, int, int, int]:
    """Token box (top, left, height, width) the input occupies on a grid x grid canvas.

    center: a centred square of side round(grid * fraction); left/right: full height, that width;
    top/bottom: full width, that height. The rest of the canvas is generated.
    """
    if region not in OUTPAINT_REGIONS:
        raise ValueError(f"region must be one of {OUTPAINT_REGIONS}, got {region!r}")
    n = round(grid * fraction)
    if not 1 <= n < grid:
        raise ValueError(f"region size {fraction} of a {grid}-token canvas is {n} tokens; it must leave at least "
                         f"one token to generate and hold at least one (0 < size < 1)")
    start = (grid - n) // 2
    return {"center": (start, start, n, n), "left": (0, 0, grid, n), "right": (0, grid - n, grid, n),
            "top": (0, 0, n, grid), "bottom": (grid - n, 0, n, grid)}[region]


def place_region(region_ids: torch.Tensor, box: Tuple[int, int, int, int], grid: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """region_ids (B, h*w) raster ids of the box's h x w tokens -> (tokens (B, grid*grid), known (B, grid*grid)):
    the canvas with the region filled in (zeros elsewhere) and True on the region's cells."""
    top, left, h, w = box
    B = region_ids.shape[0]
    if region_ids.shape[1] != h * w:
        raise ValueError(f"region holds {h}x{w} tokens, got {region_ids.shape[1]} ids")
    tokens = torch.zeros(B, grid, grid, dtype=torch.long, device=region_ids.device)
    known = torch.zeros(B, grid, grid, dtype=torch.bool, device=region_ids.device)
    tokens[:, top:top + h, left:left + w] = region_ids.view(B, h, w)
    known[:, top:top + h, left:left + w] = True
    return tokens.flatten(1), known.flatten(1)
