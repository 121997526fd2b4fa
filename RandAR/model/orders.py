"""Random generation orders (raster positions, (B, n) int64): the one place they are drawn.

Without seeds a batch of orders is `torch.rand(B, n).argsort(1)` on `device` (training draws this way). With
seeds (B,), sample b draws its permutations from `torch.Generator().manual_seed(seeds[b])` in a fixed sequence,
so they do not depend on the batch: a plain order of n tokens is the first `randperm(n)` of that generator.
"""
from typing import List, Optional, Sequence

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
