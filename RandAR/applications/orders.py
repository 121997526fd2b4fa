"""Generation orders for the zero-shot applications: what is known goes first, the rest in random order.

A RandAR model reads its context in any order, so every application is "choose an order whose first K
positions hold known tokens, and let `RandAR.model.generate.generate` decode the rest". These helpers only
build such orders (raster positions, (B, N) int64).

Randomness: `RandAR.model.orders.random_permutations` (per-sample seeds, or `generator` / torch's global RNG).
"""
from typing import Optional, Tuple

import torch

from RandAR.model.orders import random_permutations


def known_first_order(known: torch.Tensor, seeds: Optional[torch.Tensor] = None,
                      generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, int]:
    """known (B, N) bool, True where the token is given -> (order (B, N), K).

    order[:, :K] are the known positions (shuffled), order[:, K:] the unknown ones (shuffled). Every sample
    must know the same number K of tokens (the known tokens enter the cache in one batched pass).
    """
    if known.ndim != 2 or known.dtype != torch.bool:
        raise ValueError(f"known must be a (B, N) bool mask, got {tuple(known.shape)} {known.dtype}")
    B, N = known.shape
    counts = known.sum(dim=1)
    K = int(counts[0]) if B else 0
    if B and not bool((counts == K).all()):
        raise ValueError(f"every sample must know as many tokens; got counts {counts.tolist()}")
    by_known = torch.argsort((~known).long().cpu(), dim=1, stable=True)      # known positions first, raster
    perm_known, perm_unknown = random_permutations(B, [K, N - K], seeds, generator)
    order = torch.cat([by_known[:, :K].gather(1, perm_known), by_known[:, K:].gather(1, perm_unknown)], dim=1)
    return order.to(known.device), K


def subgrid_positions(grid: int, factor: int) -> torch.Tensor:
    """Raster positions in the (grid*factor)^2 grid of the sub-grid cells: small cell (y, x) -> (f*y, f*x).
    Returns (grid*grid,) indexed by the small grid's raster position."""
    big = grid * factor
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return ((factor * y) * big + factor * x).flatten()


def subgrid_first_order(low_order: torch.Tensor, rest_perm: torch.Tensor, grid: int, factor: int) -> torch.Tensor:
    """Order for resolution extrapolation on the (grid*factor)^2 grid: the low-resolution sub-grid (every
    factor-th row and column) first, in the order `low_order` (B, grid^2) of the small grid's raster positions
    (the order the low-resolution image is generated in), then the other cells permuted by `rest_perm`
    (B, (grid*factor)^2 - grid^2). Both permutations come from `random_permutations`.
    """
    big_n = (grid * factor) ** 2
    low_pos = subgrid_positions(grid, factor)
    in_low = torch.zeros(big_n, dtype=torch.bool)
    in_low[low_pos] = True
    rest_pos = torch.nonzero(~in_low).flatten()
    if low_order.shape[1] != grid * grid or rest_perm.shape[1] != big_n - grid * grid:
        raise ValueError(f"need permutations of {grid * grid} and {big_n - grid * grid} cells, got "
                         f"{tuple(low_order.shape)} and {tuple(rest_perm.shape)}")
    return torch.cat([low_pos[low_order.cpu()], rest_pos[rest_perm.cpu()]], dim=1).to(low_order.device)
