"""Random generation orders (raster positions, (B, n) int64): the one place they are drawn.

Without seeds a batch of orders is `torch.rand(B, n).argsort(1)` on `device` (training draws this way). With
seeds (B,), sample b draws its permutations from `torch.Generator().manual_seed(seeds[b])` in a fixed sequence,
so they do not depend on the batch: a plain order of n tokens is the first `randperm(n)` of that generator.
"""
from typing import List, Optional, Sequence, Tuple

import torch


def random_orders(batch: int, n: int, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, n): one uniform random permutation per row, drawn for the batch at once."""
    return torch.rand(batch, n, device=device, generator=generator).argsort(dim=1)


def random_permutations(batch: int, sizes: Sequence[int], seeds: Optional[Sequence[int]] = None,
                        generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """For each n in `sizes`, one uniform permutation of 0..n-1 per sample: a list of (B, n) CPU tensors.

    With seeds, sample b's permutations are randperm(sizes[0]), randperm(sizes[1]), ... of one generator
    seeded with seeds[b], drawn in that sequence; else `random_orders` on the generator's device.
    """
    if seeds is None:
        device = generator.device if generator is not None else "cpu"
        return [random_orders(batch, n, device, generator).cpu() for n in sizes]
    if len(seeds) != batch:
        raise ValueError(f"need one seed per sample: {batch} samples, {len(seeds)} seeds")
    rows = []
    for s in torch.as_tensor(seeds).tolist():
        g = torch.Generator().manual_seed(int(s))
        rows.append([torch.randperm(n, generator=g) for n in sizes])
    return [torch.stack([r[k] for r in rows]) if batch else torch.zeros(0, n, dtype=torch.long)
            for k, n in enumerate(sizes)]


# ---- orders of the zero-shot applications: what is known goes first, the rest in random order --------------
# A RandAR model reads its context in any order, so every application is "choose an order whose first K
# positions hold known tokens, and let RandAR.model.generate.generate decode the rest".
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
