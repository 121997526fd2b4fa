"""2-D rotary position embeddings (RoPE): one table per grid, gathered by position.

Table layout (the original's, which the checkpoints were trained with): [cls_token_num + grid**2, n_elem // 2, 2]
holding (cos, sin). Rows 0..cls_token_num-1 are all zero, so the class token's query and key vanish after
rotation (it is attended with logit 0 but its value is used). Row cls_token_num + y * grid + x is cell (y, x):
the first n_elem // 4 pairs rotate with y, the last n_elem // 4 with x, pair k with angle pos * base**(-4k / n_elem).
"""
import torch

try:
    from torch.compiler import is_compiling
except ImportError:  # torch < 2.3
    from torch._dynamo import is_compiling


def _inverse_frequencies(n_elem: int, base: float) -> torch.Tensor:
    half = n_elem // 2
    return 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # (n_elem // 4,)


def _table_from_angles(angles: torch.Tensor, cls_token_num: int) -> torch.Tensor:
    """angles: (grid, n_elem // 4), angle of each frequency at each row/column index."""
    grid, quarter = angles.shape
    per_cell = torch.cat([angles[:, None, :].expand(-1, grid, -1),   # y varies along rows
                          angles[None, :, :].expand(grid, -1, -1)],  # x varies along columns
                         dim=-1)  # (grid, grid, n_elem // 2)
    table = torch.stack([per_cell.cos(), per_cell.sin()], dim=-1).flatten(0, 1)  # (grid**2, n_elem // 2, 2)
    return torch.cat([torch.zeros(cls_token_num, 2 * quarter, 2), table])


def precompute_freqs_cis_2d(grid_size: int, n_elem: int, base: float = 10000, cls_token_num: int = 1) -> torch.Tensor:
    """RoPE table of a grid_size x grid_size token grid (float32)."""
    inv = _inverse_frequencies(n_elem, base)
    return _table_from_angles(torch.outer(torch.arange(grid_size), inv), cls_token_num)


def precompute_freqs_cis_2d_extrapolation(grid_size: int, n_elem: int, base: float = 10000, cls_token_num: int = 1,
                                          extrapolation_factor: float = 2.0, ntk_boundary: int = 2) -> torch.Tensor:
    """RoPE table for a grid larger than the training grid (resolution extrapolation).

    The `ntk_boundary` highest frequencies of each axis keep integer positions 0..grid-1 (extrapolated: local
    detail keeps its scale); the lower ones squeeze the grid into the positions the model was trained on,
    0..grid/extrapolation_factor - 1 (interpolated: global layout stays in range).
    """
    inv = _inverse_frequencies(n_elem, base)
    extrapolated = torch.linspace(0, grid_size - 1, grid_size)
    interpolated = torch.linspace(0, int(grid_size // extrapolation_factor) - 1, grid_size)
    angles = torch.outer(extrapolated, inv)
    angles[:, ntk_boundary:] = torch.outer(interpolated, inv)[:, ntk_boundary:]
    return _table_from_angles(angles, cls_token_num)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, S, H, D) by per-sample angles freqs_cis (B, S, D // 2, 2); computed in float32.

    Each (even, odd) pair of x is a complex number multiplied by cos + i sin. Eager mode does it as one complex
    multiply, about 5x faster on CPU than the real arithmetic on strided halves (RoPE is a large part of a small
    model's training step); torch.compile gets the real form, which inductor fuses (it emits no complex code).
    """
    xs = x.float().unflatten(-1, (-1, 2))                                        # (B, S, H, D/2, 2)
    f = freqs_cis.float().unsqueeze(2)                                           # (B, S, 1, D/2, 2)
    if is_compiling():
        out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                           xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    else:
        out = torch.view_as_real(torch.view_as_complex(xs) * torch.view_as_complex(f.contiguous()))
    return out.flatten(3).type_as(x)
