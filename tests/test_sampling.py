"""Sampling helpers checked against direct, loop-based computations."""
import numpy as np
import torch

from RandAR.model.generate import (class_cfg, counter_uniform, linear_scale, logits_to_probs, sample_from_probs,
                                   top_k_top_p_filter)


def _reference_filter(row, top_k, top_p):
    """Plain-python top-k then nucleus filtering of one logit row."""
    row = list(map(float, row))
    keep = set(range(len(row)))
    if top_k > 0:
        kth = sorted(row, reverse=True)[top_k - 1]
        keep = {i for i in keep if row[i] >= kth}
    if top_p < 1.0:
        ids = sorted(keep, key=lambda i: -row[i])
        z = np.exp(np.array([row[i] for i in ids]) - max(row[i] for i in ids))
        p = z / z.sum()
        mass, kept = 0.0, set()
        for i, pi in zip(ids, p):
            kept.add(i)
            mass += pi
            if mass > top_p:
                break
        keep = kept
    return keep


def test_top_k_top_p_match_reference():
    torch.manual_seed(0)
    logits = torch.randn(50, 40) * 2
    for top_k, top_p in [(0, 1.0), (1, 1.0), (5, 1.0), (0, 0.5), (0, 0.9), (8, 0.7), (40, 0.99)]:
        out = top_k_top_p_filter(logits, top_k, top_p)
        for r in range(logits.shape[0]):
            kept = set(torch.nonzero(torch.isfinite(out[r])).flatten().tolist())
            assert kept == _reference_filter(logits[r], top_k, top_p), (top_k, top_p, r)
        probs = logits_to_probs(logits, 1.0, top_k, top_p)
        torch.testing.assert_close(probs.sum(-1), torch.ones(50))


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(logits_to_probs(logits, temperature=0.5), torch.softmax(logits / 0.5, -1))


def test_inverse_cdf_sampling_frequencies():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    u = (torch.arange(100000, dtype=torch.float32) + 0.5) / 100000  # evenly spread uniforms
    ids = sample_from_probs(probs.expand(len(u), 4), u)
    freq = torch.bincount(ids, minlength=4).float() / len(u)
    torch.testing.assert_close(freq, probs, atol=1e-3, rtol=0)
    assert sample_from_probs(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([0.9999999])).item() == 2


def test_counter_uniform_is_batch_independent_and_uniform():
    seeds = torch.tensor([5, 6, 7, 8])
    counters = torch.arange(20)
    full = counter_uniform(seeds, counters)
    torch.testing.assert_close(counter_uniform(seeds[2:3], counters[5:9]), full[2:3, 5:9], atol=0, rtol=0)
    many = counter_uniform(torch.arange(1000), torch.arange(1000)).flatten()
    assert 0.0 <= many.min() and many.max() < 1.0
    assert abs(many.mean().item() - 0.5) < 0.005
    hist = torch.histc(many, bins=10, min=0, max=1) / many.numel()
    assert (hist - 0.1).abs().max() < 0.005


def test_class_cfg_arithmetic():
    cond = torch.tensor([3, 4])
    guidance = class_cfg(cond, (1.0, 5.0), null_class=10)
    assert torch.equal(guidance.branch_classes[1], torch.tensor([10, 10])) and guidance.uses_null_class
    c, u = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    torch.testing.assert_close(guidance.combine([c, u], 0.25), u + 2.0 * (c - u))
    assert linear_scale((2.0, 2.0), 0.7) == 2.0
    # Guidance is decided by the last scale, as in the original: (3, 1) means no guidance at all.
    guidance = class_cfg(cond, (3.0, 1.0), null_class=10)
    assert len(guidance.branch_classes) == 1 and torch.equal(guidance.combine([c], 0.5), c)
    assert not guidance.uses_null_class and guidance.known_token_keep is None
