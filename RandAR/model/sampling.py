"""Stateless sampling helpers: logits -> probabilities -> token ids, with no host synchronisation.

Randomness enters as uniform numbers (one per token to draw), so the caller decides where they come from:
torch's RNG, or `counter_uniform`, a hash of (per-image seed, counter) that makes every image's draws
independent of the batch it is generated in.
"""
import torch

from RandAR.utils.seeding import splitmix64


def counter_uniform(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Deterministic uniforms in [0, 1): seeds (B,) int64, counters (n,) int64 -> (B, n) float32.

    The value for (seed, counter) never depends on which other rows or counters are in the call.
    """
    x = splitmix64(splitmix64(seeds.long()[:, None]) ^ counters.long()[None, :])
    return ((x >> 40) & ((1 << 24) - 1)).float() / float(1 << 24)  # top 24 bits (logical shift)


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the nucleus of mass top_p to -inf (last dim).

    top_k <= 0 and top_p >= 1 disable each filter. The nucleus keeps the smallest prefix of the sorted
    tokens whose probability reaches top_p (so the most likely token always stays).
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = (cum - sorted_logits.softmax(-1)) > top_p  # mass before this token already exceeds top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    logits = logits.float() / max(temperature, 1e-5)
    return top_k_top_p_filter(logits, top_k, top_p).softmax(dim=-1)


def sample_from_probs(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: probs (..., V), uniform (...) in [0, 1) -> ids (...) long."""
    cdf = probs.cumsum(-1)
    u = uniform.unsqueeze(-1) * cdf[..., -1:]  # scale by the total so round-off never runs past the end
    idx = (cdf <= u).sum(-1)
    return idx.clamp_max(probs.shape[-1] - 1)
