"""Guidance for the decoding loop: which class ids each branch sees, and how the branches' logits combine.

Every branch runs in the same batch (branches stacked along the batch axis). Class CFG has two branches
[cond, null]; spatial CFG (resolution extrapolation) three. `generate` takes one `Guidance`; no guidance is one
branch whose logits pass through.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch


@dataclass(frozen=True)
class Guidance:
    """branch_classes: per branch, (B,) class ids. combine(logits per branch (B, n, V), fraction of all tokens
    known before this step) -> (B, n, V). known_token_keep: per branch, None or a (B, K) 0/1 weight on the known
    tokens' embeddings (spatial CFG hides part of the context in one branch)."""
    branch_classes: List[torch.Tensor]
    combine: Callable[[List[torch.Tensor], float], torch.Tensor]
    known_token_keep: Optional[List[Optional[torch.Tensor]]] = None

    @property
    def uses_null_class(self) -> bool:
        return len(self.branch_classes) > 1


def linear_scale(scales: Sequence[float], fraction: float) -> float:
    """Scale that goes linearly from scales[0] (nothing decoded) to scales[-1] (everything decoded)."""
    return scales[0] + (scales[-1] - scales[0]) * fraction


def no_guidance(cond: torch.Tensor) -> Guidance:
    return Guidance([cond], lambda logits, fraction: logits[0])


def class_cfg(cond: torch.Tensor, cfg_scales: Sequence[float], null_class: int) -> Guidance:
    """Plain class CFG: [cond, null] combined as u + s * (c - u), s linear in the fraction decoded; as in the
    original, guidance is on when the *last* scale is > 1 (else no guidance)."""
    if cfg_scales[-1] <= 1.0:
        return no_guidance(cond)

    def combine(logits, fraction):
        c, u = logits
        return u + linear_scale(cfg_scales, fraction) * (c - u)
    return Guidance([cond, torch.full_like(cond, null_class)], combine)


def require_null_class(model, guided: bool, fix: str = "use cfg scales 1.0,1.0"):
    """The one check that guidance has the null-class embedding row it needs."""
    if guided and not model.cls_embedding.has_null_class:
        raise ValueError(f"classifier-free guidance needs the null class, but this model was built with "
                         f"class_dropout_prob=0 (no null-class embedding row): {fix}")
