"""The training sequence's layout, shared by the model's forward and the decoding loop."""
import torch


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, n, ...) and (B, n, ...) -> (B, 2n, ...) as a_1, b_1, a_2, b_2, ..."""
    return torch.stack([a, b], dim=2).flatten(1, 2)
