"""Zero-shot applications with the tiny reference RandAR (4x4 tokens) and tokenizer (x2, 8 px images):
resolution extrapolation, inpainting, outpainting, their orders and guidance, and the tools end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from RandAR.applications import extrapolation_sampling
from RandAR.applications.editing import generate_with_known, known_from_pixel_mask, place_region, region_box
from RandAR.applications.orders import known_first_order, subgrid_first_order, subgrid_positions
from RandAR.applications.resolution_extrapolation import (extrapolation_rope, generate_resolution_extrapolation,
                                                          spatial_cfg, spatial_context_keep)
from RandAR.model.builder import build_randar
from RandAR.model.guidance import class_cfg
from RandAR.model.orders import random_permutations
from helpers import load_script
from RandAR.model.rope import precompute_freqs_cis_2d, precompute_freqs_cis_2d_extrapolation
from RandAR.utils.config import load_config
from RandAR.utils.sample_io import token_orders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
CONFIG = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")
GPT = os.path.join(FIX, "randar_tiny.safetensors")
VQ = os.path.join(FIX, "vq_tiny.safetensors")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


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
    # The low-resolution order is the one an ordinary image of that seed gets (sample_io's convention).
    assert torch.equal(low, token_orders([1, 2, 3], 16))


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
    with pytest.raises(ValueError, match="masking ratio"):
        spatial_context_keep(torch.arange(4)[None], 1.5)


def test_spatial_cfg_without_masking_is_class_cfg(model):
    """masking ratio 0: the spatial and uncond branches see the same context, so the combination reduces to
    class CFG exactly."""
    cond, seeds = torch.tensor([1, 4, 9]), torch.tensor([11, 12, 13])
    kw = dict(cfg_scales=(2.0, 3.0), num_inference_steps=8, seeds=seeds)
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
    ids, low = generate_resolution_extrapolation(model, cond, cfg_scales=(3.0, 3.0), spatial_cfg_scales=(2.5, 2.5),
                                                 num_inference_steps=6, seeds=seeds)
    assert ids.shape == (4, 64) and low.shape == (4, 16)
    assert torch.equal(ids.view(4, 8, 8)[:, ::2, ::2].reshape(4, 16), low)
    # ... and those are exactly the ordinary 4x4 images of these seeds (sample_c2i.py's order convention).
    ordinary = model.generate(cond, token_order=token_orders(seeds.tolist(), 16), cfg_scales=(3.0, 3.0),
                              num_inference_steps=6, seeds=seeds)
    assert torch.equal(low, ordinary)
    # Per-sample seeds: a sample does not depend on its batch.
    ids2, _ = generate_resolution_extrapolation(model, cond[2:], cfg_scales=(3.0, 3.0), spatial_cfg_scales=(2.5, 2.5),
                                                num_inference_steps=6, seeds=seeds[2:])
    assert torch.equal(ids2, ids[2:])


@pytest.mark.parametrize("steps", [-1, 1, 5, 20])
def test_every_token_is_decoded(model, steps):
    m = no_zero_model(model)
    ids, low = generate_resolution_extrapolation(m, torch.tensor([1, 2]), cfg_scales=(3.0, 3.0),
                                                 spatial_cfg_scales=(2.5, 2.5), num_inference_steps=steps,
                                                 seeds=torch.tensor([7, 8]))
    assert bool((ids != 0).all()) and bool((low != 0).all())
    assert int(ids.min()) >= 0 and int(ids.max()) < m.vocab_size


def test_extrapolation_rejects_bad_settings(model):
    with pytest.raises(ValueError, match="whole number"):
        generate_resolution_extrapolation(model, torch.tensor([1]), extrapolation_factor=1.5)
    with pytest.raises(ValueError, match="ntk_boundary"):
        generate_resolution_extrapolation(model, torch.tensor([1]), ntk_boundary=9)


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
                                  guidance=class_cfg(torch.tensor([1, 1, 1]), (1.0, 4.0), 10),
                                  num_inference_steps=steps, seeds=torch.tensor([1, 2, 3]))
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
                              guidance=class_cfg(torch.tensor([2, 3]), (1.0, 3.0), model.num_classes),
                              num_inference_steps=10, freqs_cis=extrapolation_rope(model, 2.0, 2),
                              seeds=torch.tensor([4, 5]))
    assert out.shape == (2, 64) and torch.equal(out[known], tokens[known])


# ---- tools end to end ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(d / "in.png")
    Image.fromarray(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    mask = np.zeros((12, 10), dtype=np.uint8)
    mask[4:8, 2:6] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.zeros((12, 10), dtype=np.uint8)).save(d / "empty.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8) + 255).save(d / "small.png")
    return d


def tool_flags(images, out, *extra):
    return ["--config", CONFIG, "--gpt-ckpt", GPT, "--vq-ckpt", VQ, "--class-id", "3", "--num-samples", "3",
            "--batch-size", "2", "--cfg-scales", "1.0,3.0", "--output-dir", str(out), *extra]


def read(path):
    return np.asarray(Image.open(path))


def test_inpaint_tool(images, tmp_path):
    inpaint = load_script("tools/inpaint.py")
    inpaint.main(tool_flags(images, tmp_path, "--image", str(images / "in.png"), "--mask", str(images / "mask.png")))
    results = [read(tmp_path / f"in_inpaint_{i:03d}.png") for i in range(3)]
    assert all(r.shape == (8, 8, 3) for r in results)
    comparison = read(tmp_path / "in_inpaint_comparison.png")
    assert comparison.shape == (8 + 8, 5 * 8 + 6 * 4, 3)  # input, mask, 3 samples, 4 px padding
    # Same flags, same images; another seed, other images.
    inpaint.main(tool_flags(images, tmp_path / "again", "--image", str(images / "in.png"), "--mask",
                            str(images / "mask.png")))
    assert all(np.array_equal(r, read(tmp_path / "again" / f"in_inpaint_{i:03d}.png")) for i, r in enumerate(results))


def test_inpaint_bad_inputs(images, tmp_path, capsys):
    inpaint = load_script("tools/inpaint.py")
    img, mask = str(images / "in.png"), str(images / "mask.png")
    cases = [(["--image", img, "--mask", str(images / "small.png")], "same size"),
             (["--image", img, "--mask", str(images / "empty.png")], "no white pixel"),
             (["--image", img, "--mask", mask, "--class-id", "10"], "out of range"),
             (["--image", str(images / "nowhere.png"), "--mask", mask], "not found")]
    for extra, message in cases:
        with pytest.raises(SystemExit, match=message):
            inpaint.main(tool_flags(images, tmp_path, *extra))
    # A non-RGB image is converted (documented), not rejected.
    inpaint.main(tool_flags(images, tmp_path, "--image", str(images / "rgba.png"), "--mask", mask,
                            "--num-samples", "1"))
    assert "converted to RGB" in capsys.readouterr().out
    assert read(tmp_path / "rgba_inpaint_000.png").shape == (8, 8, 3)


@pytest.mark.parametrize("factor,region", [("1", "left"), ("2", "center")])
def test_outpaint_tool(images, tmp_path, factor, region):
    outpaint = load_script("tools/outpaint.py")
    outpaint.main(tool_flags(images, tmp_path, "--image", str(images / "in.png"), "--region", region,
                             "--extrapolation-factor", factor, "--num-inference-steps", "-1"))
    side = 8 * int(factor)
    assert all(read(tmp_path / f"in_outpaint_{i:03d}.png").shape == (side, side, 3) for i in range(3))
    assert read(tmp_path / "in_outpaint_comparison.png").shape[0] == side + 8


def test_resolution_extrapolation_tool(tmp_path):
    """Plain python, PNGs and the .npz like sample_c2i.py."""
    cmd = [sys.executable, "tools/resolution_extrapolation.py", "--config", CONFIG, "--exp-name", "tiny",
           "--gpt-ckpt", GPT, "--vq-ckpt", VQ, "--num-fid-samples", "5", "--per-proc-batch-size", "2",
           "--num-inference-steps", "8", "--sample-dir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    run = "tiny-randar_tiny-size-16-16-cfg-3.0-3.0-steps-8-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0"
    assert sorted(os.listdir(tmp_path / run)) == [f"{i:06d}.png" for i in range(5)]
    with np.load(tmp_path / f"{run}.npz") as data:
        assert data["arr_0"].shape == (5, 16, 16, 3)
        np.testing.assert_array_equal(data["arr_0"][3], read(tmp_path / run / "000003.png"))


def test_search_cfg_weights_documented_command(tmp_path):
    """The documentation's command (section 6) writes a grid of extrapolated samples and stops."""
    search = load_script("tools/search_cfg_weights.py")
    search.main(["--config", CONFIG, "--exp-name", "tiny", "--gpt-ckpt", GPT, "--vq-ckpt", VQ,
                 "--per-proc-batch-size", "4", "--cfg-scales", "3.0,3.0", "--spatial-cfg-scales", "2.5,2.5",
                 "--num-inference-steps", "1024", "--sample-dir", str(tmp_path), "--debug"])
    [grid] = os.listdir(tmp_path)
    assert grid.endswith("-steps-1024-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0-debug.png")
    assert read(tmp_path / grid).shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # 2x2 images of 16 px, 2 px padding
    assert torch.is_grad_enabled()  # the tools leave the process's autograd mode alone
    with pytest.raises(SystemExit, match="extrapolation-factor"):
        extrapolation_sampling.main(["--config", CONFIG, "--exp-name", "t", "--gpt-ckpt", GPT, "--vq-ckpt", VQ,
                                     "--extrapolation-factor", "1", "--sample-dir", str(tmp_path), "--debug"])


def test_extrapolation_resumes_only_the_same_run(tmp_path, capsys):
    """Like sample_c2i.py: a run stamp beside the outputs; another checkpoint of the same file name stops the run
    before any work (today it would find the images present and pack the first model's), --force redoes it."""
    other = tmp_path / "other"
    other.mkdir()
    state = load_file(GPT)
    state["output.weight"] = state["output.weight"].flip(0).contiguous()
    save_file(state, str(other / os.path.basename(GPT)))

    def argv(gpt, *extra):
        return ["--config", CONFIG, "--exp-name", "tiny", "--gpt-ckpt", gpt, "--vq-ckpt", VQ, "--num-fid-samples",
                "2", "--per-proc-batch-size", "2", "--num-inference-steps", "8", "--sample-dir",
                str(tmp_path / "s"), *extra]

    extrapolation_sampling.main(argv(GPT))
    [npz] = [f for f in os.listdir(tmp_path / "s") if f.endswith(".npz")]
    first = np.load(tmp_path / "s" / npz)["arr_0"]
    with pytest.raises(SystemExit, match=r"records another sampling run \(gpt_ckpt: .*--force"):
        extrapolation_sampling.main(argv(str(other / os.path.basename(GPT))))
    np.testing.assert_array_equal(np.load(tmp_path / "s" / npz)["arr_0"], first)
    extrapolation_sampling.main(argv(str(other / os.path.basename(GPT)), "--force"))
    assert not np.array_equal(np.load(tmp_path / "s" / npz)["arr_0"], first)
    capsys.readouterr()
    extrapolation_sampling.main(argv(str(other / os.path.basename(GPT))))  # same inputs: resumes
    assert "2 of 2 images present, sampling 0" in capsys.readouterr().out


def test_extrapolation_checks_inputs_before_building(tmp_path, monkeypatch):
    from RandAR.utils import sample_io
    built = []
    monkeypatch.setattr(sample_io, "build_randar", lambda *a, **k: built.append(a))
    with pytest.raises(SystemExit) as e:
        extrapolation_sampling.main(["--config", CONFIG, "--exp-name", "t", "--gpt-ckpt", GPT, "--vq-ckpt",
                                     str(tmp_path / "vq.pt"), "--sample-dir", str(tmp_path / "s")])
    assert str(e.value) == f"error: --vq-ckpt {tmp_path / 'vq.pt'} not found"
    assert built == [] and not (tmp_path / "s").exists()
