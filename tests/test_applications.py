"""Zero-shot applications with the tiny reference RandAR (4x4 tokens) and tokenizer (x2, 8 px images):
resolution extrapolation, inpainting, outpainting, their orders and guidance (the tools: test_zero_shot_tools.py)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from RandAR.applications.editing import generate_with_known, known_from_pixel_mask, place_region, region_box
from RandAR.model.orders import known_first_order, random_permutations, subgrid_first_order, subgrid_positions
import RandAR.applications.resolution_extrapolation as extrapolation
from RandAR.applications.resolution_extrapolation import (extrapolation_rope, generate_resolution_extrapolation,
                                                          second_pass_schedule, spatial_cfg, spatial_context_keep)
from RandAR.model.builder import build_randar
from RandAR.model.generate import DecodeConfig, _generate
from RandAR.model.rope import precompute_freqs_cis_2d, precompute_freqs_cis_2d_extrapolation
from RandAR.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
CONFIG = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")
GPT = os.path.join(FIX, "randar_tiny.safetensors")


@pytest.fixture(scope="module")
def model():
    return build_randar(load_config(CONFIG), GPT).eval()


def no_zero_model(model):
    """The same model with a bias of -1e4 on token 0: id 0 can never be drawn, so an id 0 in the output is a
    token that was never decoded (the original extrapolation loop left its last tokens at 0)."""
    m = build_randar(load_config(CONFIG), GPT).eval()
    out = torch.nn.Linear(m.dim, m.vocab_size, bias=True)
    with torch.no_grad():
        out.weight.copy_(m.output.weight)
        out.bias.zero_()
        out.bias[0] = -1e4
    m.output = out
    return m


# ---- RoPE ----------------------------------------------------------------------------------------------
def test_extrapolation_rope_matches_reference(model):
    ref = load_file(os.path.join(FIX, "freqs_extrapolation.safetensors"))
    meta = json.load(open(os.path.join(FIX, "freqs_extrapolation.json")))["tables"]
    assert set(ref) == set(meta)
    for name, table in meta.items():
        fn = precompute_freqs_cis_2d_extrapolation if name.startswith("extrapolation") else precompute_freqs_cis_2d
        got = fn(**table["args"])
        assert got.dtype == torch.float32 and list(got.shape) == table["shape"]
        torch.testing.assert_close(got, ref[name], atol=1e-5, rtol=0)
    # The model-level helper: the tiny model (head_dim 16, grid 4) doubled.
    torch.testing.assert_close(extrapolation_rope(model, 2.0, 2),
                               precompute_freqs_cis_2d_extrapolation(8, 16, 10000, 1, 2.0, 2), atol=0, rtol=0)
    with pytest.raises(ValueError, match="ntk_boundary"):
        extrapolation_rope(model, 2.0, 5)


# ---- orders --------------------------------------------------------------------------------------------
def test_known_first_order():
    torch.manual_seed(0)
    known = torch.rand(1, 64) < 0.4
    known = known.expand(5, -1).clone()
    seeds = torch.arange(5) + 100
    order, K = known_first_order(known, seeds=seeds)
    assert K == int(known[0].sum())
    for b in range(5):
        assert sorted(order[b].tolist()) == list(range(64))
        assert set(order[b, :K].tolist()) == set(torch.nonzero(known[b]).flatten().tolist())
    again, _ = known_first_order(known[2:4], seeds=seeds[2:4])  # per-sample seeds: batch-independent
    assert torch.equal(again, order[2:4]) and not torch.equal(order[0], order[1])
    with pytest.raises(ValueError, match="as many"):
        known_first_order(torch.stack([known[0], ~known[0]]))


def test_subgrid_first_order():
    low, rest = random_permutations(3, [16, 48], seeds=torch.tensor([1, 2, 3]))
    order = subgrid_first_order(low, rest, grid=4, factor=2)
    pos = subgrid_positions(4, 2)
    assert pos.tolist()[:5] == [0, 2, 4, 6, 16]  # small (y, x) -> large (2y, 2x) on the 8x8 grid
    for b in range(3):
        assert sorted(order[b].tolist()) == list(range(64))
        cells = [(p // 8, p % 8) for p in order[b, :16].tolist()]
        assert all(y % 2 == 0 and x % 2 == 0 for y, x in cells)
        assert torch.equal(order[b, :16], pos[low[b]])
    # The low-resolution order is the one an ordinary image of that seed gets (RandAR.sampling's convention).
    assert torch.equal(low, random_permutations(3, [16], [1, 2, 3])[0])


# ---- spatial CFG ---------------------------------------------------------------------------------------
def test_spatial_cfg_arithmetic():
    torch.manual_seed(0)
    c, s, u = torch.randn(3, 2, 5, 7).unbind(0)
    cond = torch.tensor([3, 7])
    keep = spatial_context_keep(torch.stack([torch.randperm(16), torch.randperm(16)]), 0.5)
    combine = spatial_cfg(cond, 10, (1.0, 3.0), (2.0, 4.0), keep).combine
    for frac in (0.0, 0.25, 1.0):
        a, b = 1.0 + 2.0 * frac, 2.0 + 2.0 * frac
        torch.testing.assert_close(combine([c, s, u], frac), u + a * (c - s) + b * (s - u))
    # Hand-computed numbers: u=1, s=2, c=5 with scales 3 and 2.5: 1 + 3*(5-2) + 2.5*(2-1) = 12.5.
    one = torch.ones(1, 1, 1)
    assert spatial_cfg(cond, 10, (3.0, 3.0), (2.5, 2.5), keep).combine([5 * one, 2 * one, one], 0.6).item() == 12.5

    assert keep.shape == (2, 16) and keep.sum(1).tolist() == [8.0, 8.0] and set(keep.unique().tolist()) == {0.0, 1.0}
    g = spatial_cfg(cond, 10, (3.0, 3.0), (2.5, 2.5), keep)
    assert [b.tolist() for b in g.branch_classes] == [[3, 7], [10, 10], [10, 10]]  # cond, spatial, uncond
    keeps = g.known_token_keep
    assert keeps[0] is None and keeps[1] is None and torch.equal(keeps[2], keep)
    g = spatial_cfg(cond, 10, (3.0, 3.0), (1.0, 1.0), keep)  # plain class CFG
    assert [b.tolist() for b in g.branch_classes] == [[3, 7], [10, 10]] and g.known_token_keep is None
    torch.testing.assert_close(g.combine([c, u], 0.5), u + 3.0 * (c - u))
    with pytest.raises(AssertionError, match="masking ratio"):  # checked at --spatial-masking-ratio
        spatial_context_keep(torch.arange(4)[None], 1.5)


def test_spatial_cfg_without_masking_is_class_cfg(model):
    """masking ratio 0: the spatial and uncond branches see the same context, so the combination reduces to
    class CFG exactly."""
    cond, seeds = torch.tensor([1, 4, 9]), torch.tensor([11, 12, 13])
    kw = dict(decode=DecodeConfig((2.0, 3.0), 8), seeds=seeds)
    spatial, _ = generate_resolution_extrapolation(model, cond, spatial_cfg_scales=(2.5, 2.5),
                                                   spatial_masking_ratio=0.0, **kw)
    plain, _ = generate_resolution_extrapolation(model, cond, **kw)
    assert torch.equal(spatial, plain)
    masked, _ = generate_resolution_extrapolation(model, cond, spatial_cfg_scales=(2.5, 2.5),
                                                  spatial_masking_ratio=0.5, **kw)
    assert not torch.equal(masked, plain)  # hiding half the context in the uncond branch does change the result


# ---- resolution extrapolation --------------------------------------------------------------------------
def test_low_res_tokens_are_the_image_generated_first(model):
    cond, seeds = torch.tensor([0, 5, 2, 9]), torch.tensor([3, 1, 4, 1])
    ids, low = generate_resolution_extrapolation(model, cond, decode=DecodeConfig((3.0, 3.0), 6),
                                                 spatial_cfg_scales=(2.5, 2.5),
                                                 seeds=seeds)
    assert ids.shape == (4, 64) and low.shape == (4, 16)
    assert torch.equal(ids.view(4, 8, 8)[:, ::2, ::2].reshape(4, 16), low)
    # ... and those are exactly the ordinary 4x4 images of these seeds (sample_c2i.py's order convention).
    ordinary = model.generate(cond, token_order=random_permutations(4, [16], seeds.tolist())[0], cfg_scales=(3.0, 3.0),
                              num_inference_steps=6, seeds=seeds)
    assert torch.equal(low, ordinary)
    # Per-sample seeds: a sample does not depend on its batch.
    ids2, _ = generate_resolution_extrapolation(model, cond[2:], decode=DecodeConfig((3.0, 3.0), 6),
                                                spatial_cfg_scales=(2.5, 2.5),
                                                seeds=seeds[2:])
    assert torch.equal(ids2, ids[2:])


def test_extrapolation_matches_the_original(model, monkeypatch):
    """The original's generate_resolution_extrapolation on the tiny model, 4x4 -> 8x8, greedy
    (tests/fixtures/randar_tiny_extrapolation.json says how it was made): same token order, same second-pass
    schedule (it counts the 16 known tokens), same tokens, except those of its last step, which it never samples."""
    ref = load_file(os.path.join(FIX, "randar_tiny_extrapolation.safetensors"))
    meta = json.load(open(os.path.join(FIX, "randar_tiny_extrapolation.json")))
    assert len(meta["cases"]) == 6 and meta["all_cases_fp32_fp64_tokens_identical"]
    order, B = ref["token_order"], ref["cond"].shape[0]
    real_generate, second_pass = extrapolation.generate, {}

    def generate_keeping_logits(*args, **kw):  # our decoding loop, also returning the large-grid pass's logits
        if kw.get("known_tokens") is None:
            return real_generate(*args, **kw)
        ids, second_pass["logits"] = _generate(*args, return_logits=True, **kw)
        return ids

    monkeypatch.setattr(extrapolation, "generate", generate_keeping_logits)
    for case in meta["cases"]:
        name, call = case["case"], dict(case["call"])
        planned = case["second_pass_tokens_per_step_planned"]
        assert second_pass_schedule(model, call["num_inference_steps"], 64, 16) == planned, name
        assert case["second_pass_tokens_per_step_executed"] == planned[:-1]
        mask = ref.get(f"{name}.spatial_mask_randperm")
        decode = DecodeConfig(tuple(call["cfg_scales"]), call["num_inference_steps"], call["temperature"],
                              call["top_k"], call["top_p"])
        call = {k: v for k, v in call.items() if k in ("spatial_cfg_scales", "spatial_masking_ratio",
                                                        "extrapolation_factor", "ntk_boundary")}
        with monkeypatch.context() as patch:
            if mask is not None:  # the original's spatial-CFG masks (drawn from torch's global RNG there)
                def permutations(b, sizes, seeds, generator, mask=mask):
                    return random_permutations(b, sizes[:2], seeds, generator) + [mask]
                patch.setattr(extrapolation, "random_permutations", permutations)
            ids, low = generate_resolution_extrapolation(model, ref["cond"], order, decode, **call)
        first, decoded = case["generation_order_rows_decoded"]
        sampled = order[:, :decoded]                                  # every position the original decided
        assert torch.equal(ids.gather(1, sampled), ref[f"{name}.result_indices"].gather(1, sampled)), name
        assert bool((ref[f"{name}.result_indices"].gather(1, order[:, decoded:]) == 0).all())  # its unsampled tail
        assert torch.equal(low, ids.view(B, 8, 8)[:, ::2, ::2].reshape(B, 16))
        torch.testing.assert_close(second_pass["logits"][:, first:decoded], ref[f"{name}.step_logits"],
                                   atol=5e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("steps", [-1, 1, 5, 20])
def test_every_token_is_decoded(model, steps):
    m = no_zero_model(model)
    ids, low = generate_resolution_extrapolation(m, torch.tensor([1, 2]), decode=DecodeConfig((3.0, 3.0), steps),
                                                 spatial_cfg_scales=(2.5, 2.5),
                                                 seeds=torch.tensor([7, 8]))
    assert bool((ids != 0).all()) and bool((low != 0).all())
    assert int(ids.min()) >= 0 and int(ids.max()) < m.vocab_size


def test_extrapolation_rejects_bad_settings(model):
    with pytest.raises(AssertionError, match="whole number"):  # checked at --extrapolation-factor
        generate_resolution_extrapolation(model, torch.tensor([1]), extrapolation_factor=1.5)
    with pytest.raises(ValueError, match="ntk_boundary"):
        generate_resolution_extrapolation(model, torch.tensor([1]), ntk_boundary=9)
    sub_first = subgrid_first_order(torch.arange(16)[None], torch.arange(48)[None], 4, 2)
    for bad in (torch.arange(64)[None], sub_first[:, :63], torch.cat([sub_first[:, :1], sub_first[:, :63]], 1)):
        with pytest.raises(ValueError, match="token_order must be"):  # not sub-grid first / too short / repeats
            generate_resolution_extrapolation(model, torch.tensor([1]), bad)
    with pytest.raises(ValueError, match="tokens_per_step"):
        extrapolation.generate(model, torch.tensor([1]), tokens_per_step=[1, 14])


# ---- inpainting / outpainting --------------------------------------------------------------------------
def test_known_from_pixel_mask():
    for patch in (2, 16):
        mask = torch.zeros(4 * patch, 4 * patch, dtype=torch.bool)
        mask[patch + patch - 1, 2 * patch] = True  # one pixel: the last row of token (1, 2)'s patch
        known = known_from_pixel_mask(mask, patch)
        assert known.shape == (16,) and (~known).nonzero().flatten().tolist() == [1 * 4 + 2]
    with pytest.raises(ValueError, match="patches"):
        known_from_pixel_mask(torch.zeros(5, 4, dtype=torch.bool), 2)


def test_inpainting_keeps_known_tokens(model):
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (1, 16)).expand(3, -1)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 3:8] = True
    known = known_from_pixel_mask(mask, 2)[None].expand(3, -1)
    for steps in (-1, 3):
        out = generate_with_known(no_zero_model(model), torch.tensor([1, 1, 1]), tokens, known,
                                  DecodeConfig((1.0, 4.0), steps), seeds=torch.tensor([1, 2, 3]))
        assert torch.equal(out[known], tokens[known])
        assert bool((out[~known] != 0).all())  # every unknown token was drawn
    assert not torch.equal(out[0], out[1])  # different seeds, different completions


def test_outpainting_regions_and_larger_canvas(model):
    assert region_box("center", 8, 0.5) == (2, 2, 4, 4)
    assert region_box("left", 8, 0.5) == (0, 0, 8, 4) and region_box("right", 8, 0.25) == (0, 6, 8, 2)
    assert region_box("top", 4, 0.5) == (0, 0, 2, 4) and region_box("bottom", 4, 0.5) == (2, 0, 2, 4)
    with pytest.raises(ValueError, match="leave at least"):
        region_box("center", 4, 1.0)
    region = torch.randint(1, 64, (2, 16))
    tokens, known = place_region(region, (2, 2, 4, 4), 8)
    assert torch.equal(tokens.view(2, 8, 8)[:, 2:6, 2:6].reshape(2, 16), region)
    assert int(known[0].sum()) == 16 and bool(known.view(2, 8, 8)[:, 2:6, 2:6].all())
    # An 8x8 canvas for the 4x4 model, with the extrapolation RoPE.
    out = generate_with_known(model, torch.tensor([2, 3]), tokens, known,
                              DecodeConfig((1.0, 3.0), 10), freqs_cis=extrapolation_rope(model, 2.0, 2),
                              seeds=torch.tensor([4, 5]))
    assert out.shape == (2, 64) and torch.equal(out[known], tokens[known])
