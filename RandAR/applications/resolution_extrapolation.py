"""Zero-shot resolution extrapolation: a model trained on a g x g token grid generates an (f*g) x (f*g) one.

1. The low-resolution image: the sub-grid of every f-th row and column, generated first as an ordinary g x g
   image (the model's own grid and RoPE), in the order of the sub-grid cells in `token_order` (random if none).
2. Its tokens go to cells (f*y, f*x) of the large grid and enter the cache as known context, in that same
   order; the other cells follow in `token_order`'s order with parallel decoding, whose cosine schedule counts
   the known tokens as decoded (`second_pass_schedule`, the original's). The large grid's RoPE table mixes
   extrapolated high frequencies (integer positions 0..f*g-1: local detail keeps its scale) with interpolated
   low ones (positions squeezed into 0..g-1: the layout stays in the trained range), split at `ntk_boundary`.
3. Guidance: class CFG, and optionally spatial CFG, a third branch whose low-resolution context is partly
   hidden (`spatial_cfg`).

Both passes are calls of the one decoding loop, `RandAR.model.generate.generate`. Where this departs from the
original release, GETTING_STARTED.md's "Differences from the original release" says so.
"""
from typing import List, Optional, Sequence, Tuple

import torch

from RandAR.model.orders import random_permutations, subgrid_first_order, subgrid_positions
from RandAR.model.generate import (CompiledDecoder, DecodeConfig, Guidance, class_cfg, default_steps, generate,
                                   linear_scale, parallel_decoding_schedule)
from RandAR.model.rope import precompute_freqs_cis_2d_extrapolation


def extrapolation_grid(model, extrapolation_factor: float) -> int:
    """Side of the large token grid: the model's grid times the factor (which must give a whole number)."""
    side = model.grid_size * extrapolation_factor
    if extrapolation_factor < 1 or abs(side - round(side)) > 1e-6:
        raise ValueError(f"extrapolation factor {extrapolation_factor} x the {model.grid_size}x{model.grid_size} "
                         f"token grid must be a whole number of tokens >= {model.grid_size}")
    return int(round(side))


def extrapolation_rope(model, extrapolation_factor: float = 2.0, ntk_boundary: int = 2) -> torch.Tensor:
    """RoPE table of the model's grid scaled by `extrapolation_factor` (see module docstring, step 2)."""
    quarter = model.head_dim // 4
    if not 0 <= ntk_boundary <= quarter:
        raise ValueError(f"ntk_boundary must be in [0, {quarter}] (head_dim {model.head_dim} has {quarter} "
                         f"frequencies per axis), got {ntk_boundary}")
    return precompute_freqs_cis_2d_extrapolation(extrapolation_grid(model, extrapolation_factor), model.head_dim,
                                                 model.rope_base, model.cls_token_num, extrapolation_factor,
                                                 ntk_boundary)


def spatial_context_keep(mask_perm: torch.Tensor, masking_ratio: float) -> torch.Tensor:
    """(B, K) 0/1 weights on the K known tokens: 0 on the int(K * masking_ratio) entries named first by each
    row of the permutation `mask_perm` (B, K) (their embeddings are zeroed in the spatial-CFG branch)."""
    assert 0.0 <= masking_ratio <= 1.0, f"spatial masking ratio {masking_ratio} (checked at --spatial-masking-ratio)"
    B, K = mask_perm.shape
    keep = torch.ones(B, K)
    return keep.scatter_(1, mask_perm[:, :int(K * masking_ratio)], 0.0)


def spatial_cfg(cond: torch.Tensor, null_class: int, cfg_scales: Sequence[float],
                spatial_cfg_scales: Sequence[float], context_keep: torch.Tensor) -> Guidance:
    """Guidance for the large grid. Spatial CFG, on when spatial_cfg_scales[-1] > 1, has three branches
    [cond, spatial, uncond]:

        uncond + s_cls * (cond - spatial) + s_sp * (spatial - uncond)

    cond: the class and the full context; spatial: the null class and the full context; uncond: the null class
    and the context weighted by `context_keep` (B, K). Each scale goes linearly from its first value (nothing
    decoded) to its last (everything decoded); s_cls may be 1 (pure spatial guidance). Otherwise plain class
    CFG from cfg_scales (on when cfg_scales[-1] > 1), or no guidance.
    """
    if spatial_cfg_scales[-1] <= 1.0:
        return class_cfg(cond, cfg_scales, null_class)

    def combine(logits: List[torch.Tensor], fraction: float) -> torch.Tensor:
        cond_l, spatial, uncond = logits
        return (uncond + linear_scale(cfg_scales, fraction) * (cond_l - spatial)
                + linear_scale(spatial_cfg_scales, fraction) * (spatial - uncond))
    null = torch.full_like(cond, null_class)
    return Guidance([cond, null, null], combine, [None, None, context_keep.to(cond.device)])


def low_res_order(token_order: torch.Tensor, grid: int, factor: int) -> torch.Tensor:
    """The small grid's generation order (B, g^2) from a large-grid order (B, (f*g)^2), a permutation whose
    first g^2 positions are the sub-grid cells (f*y, f*x): cell (f*y, f*x) -> small raster position y*g + x."""
    big, K = grid * factor, grid * grid
    ok = token_order.ndim == 2 and token_order.shape[1] == big * big
    if ok:
        head = token_order[:, :K]
        y, x = head // big, head % big
        ok = (torch.equal(token_order.sort(dim=1).values, torch.arange(big * big).expand_as(token_order))
              and bool(((y % factor == 0) & (x % factor == 0)).all()))
    if not ok:
        raise ValueError(f"token_order must be (B, {big * big}): per sample a permutation of the {big}x{big} grid's "
                         f"positions whose first {K} are the cells of every {factor}-th row and column (the "
                         f"low-resolution image); got shape {tuple(token_order.shape)}")
    return (y // factor) * grid + x // factor


def second_pass_schedule(model, num_inference_steps: Optional[int], num_tokens: int, num_known: int) -> List[int]:
    """Tokens per step of the large-grid pass: the original's cosine schedule over all num_tokens tokens with
    the num_known low-resolution ones counted as decoded (-1: one token per step)."""
    return parallel_decoding_schedule(num_tokens - num_known, default_steps(model, num_inference_steps), num_known)


@torch.no_grad()
def generate_resolution_extrapolation(model, cond: torch.Tensor, token_order: Optional[torch.Tensor] = None,
                                      decode: DecodeConfig = DecodeConfig(num_inference_steps=-1),
                                      spatial_cfg_scales: Sequence[float] = (1.0, 1.0),
                                      spatial_masking_ratio: float = 0.5,
                                      extrapolation_factor: int = 2, ntk_boundary: int = 2,
                                      seeds: Optional[torch.Tensor] = None,
                                      generator: Optional[torch.Generator] = None,
                                      decoder: Optional[CompiledDecoder] = None
                                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample (B, (f*g)^2) token ids of the large grid in raster order, and the (B, g^2) ids of the
    low-resolution image generated first (which sit at cells (f*y, f*x) of the large grid).

    cond (B,) class ids. token_order (B, (f*g)^2): the large grid's generation order (raster positions), the
    g^2 sub-grid cells first (the low-resolution image is generated in that order), then the others; drawn at
    random when None. decode: class CFG, and the parallel-decoding steps of each pass (the low-resolution image,
    then the large grid, whose schedule counts the known tokens: second_pass_schedule); -1, or at least the
    token count, decodes one token per step. seeds (B,): per-sample orders, spatial masks and token draws,
    independent of the batch (the two passes use disjoint counters of the same seed); else `generator` / torch's
    RNG. decoder: generate's, for both passes (None: eager).
    """
    # The low-resolution image sits on every f-th row and column (checked at --extrapolation-factor).
    factor = int(extrapolation_factor)
    assert factor == extrapolation_factor >= 2, f"extrapolation factor {extrapolation_factor}: not a whole number >= 2"
    rope = extrapolation_rope(model, factor, ntk_boundary)
    g = model.grid_size
    B, device = cond.shape[0], cond.device
    if seeds is not None:
        seeds = torch.as_tensor(seeds, dtype=torch.long)
    low_order, rest_perm, mask_perm = random_permutations(B, [g * g, (factor * g) ** 2 - g * g, g * g],
                                                          seeds, generator)
    if token_order is None:
        order = subgrid_first_order(low_order, rest_perm, g, factor).to(device)
    else:
        order = token_order.to(device)
        low_order = low_res_order(token_order.cpu(), g, factor)
    low_order = low_order.to(device)
    seeds_dev = None if seeds is None else seeds.to(device)
    cfg_scales = decode.cfg_scales

    # 1. the low-resolution image, on the model's own grid, with class CFG.
    low_ids = generate(model, cond, decode, token_order=low_order, seeds=seeds_dev, generator=generator,
                       decoder=decoder)                                                        # (B, g*g) raster

    # 2. the large grid: the low-resolution tokens (in their generation order) as known context.
    known = low_ids.gather(1, low_order)                                                       # (B, g*g)
    guidance = spatial_cfg(cond, model.num_classes, cfg_scales, spatial_cfg_scales,
                           spatial_context_keep(mask_perm, spatial_masking_ratio))
    schedule = second_pass_schedule(model, decode.num_inference_steps, order.shape[1], g * g)
    ids = generate(model, cond, decode, token_order=order, known_tokens=known, freqs_cis=rope, guidance=guidance,
                   seeds=seeds_dev, generator=generator, tokens_per_step=schedule,
                   decoder=decoder)                                                            # (B, (f*g)^2)
    assert torch.equal(ids[:, subgrid_positions(g, factor).to(device)], low_ids)
    return ids, low_ids
