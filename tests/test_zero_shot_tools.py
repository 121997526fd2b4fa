"""The zero-shot tools end to end (inpaint, outpaint, resolution extrapolation, the CFG search's extrapolation
form) with the tiny reference RandAR (4x4 tokens) and tokenizer (x2, 8 px images), and the config a training
export carries."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import load_script
from RandAR.sampling import inputs
from RandAR.utils.checkpoint import export_config, save_export
from RandAR.utils.config import load_config
from RandAR.sampling.folder import precision_name
from RandAR.utils.distributed import default_precision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
CONFIG = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")
GPT = os.path.join(FIX, "randar_tiny.safetensors")
VQ = os.path.join(FIX, "vq_tiny.safetensors")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
resolution_extrapolation = load_script("tools/resolution_extrapolation.py")


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
    # input, masked input, reconstruction, 3 samples enlarged 16x to 128 px, 4 px padding, two caption lines
    assert comparison.shape == (28 + 128 + 8, 6 * 128 + 7 * 4, 3)
    # Same flags, same images; another seed, other images.
    inpaint.main(tool_flags(images, tmp_path / "again", "--image", str(images / "in.png"), "--mask",
                            str(images / "mask.png")))
    assert all(np.array_equal(r, read(tmp_path / "again" / f"in_inpaint_{i:03d}.png")) for i, r in enumerate(results))


def test_inpaint_paste_known(images, tmp_path, capsys):
    """--paste-known 0: the completions' pixels on the regenerated cells, the input's (centre crop) elsewhere; the
    comparison shows the completions, then the pasted ones."""
    from RandAR.applications.editing import known_from_pixel_mask
    from RandAR.sampling.image_io import crop_image_and_mask, open_mask, open_rgb
    from RandAR.utils.images import cells_to_pixels
    inpaint = load_script("tools/inpaint.py")
    flags = tool_flags(images, tmp_path, "--image", str(images / "in.png"), "--mask", str(images / "mask.png"))
    inpaint.main(flags)
    raw = [read(tmp_path / f"in_inpaint_{i:03d}.png") for i in range(3)]
    inpaint.main(flags + ["--paste-known", "0"])
    pasted = [read(tmp_path / f"in_inpaint_{i:03d}.png") for i in range(3)]
    image = open_rgb(str(images / "in.png"))
    crop, pixel_mask = crop_image_and_mask(image, open_mask(str(images / "mask.png"), image.size), 8)
    grid = int(load_config(CONFIG).ar_model.params.block_size ** 0.5)
    known = known_from_pixel_mask(torch.from_numpy(pixel_mask), 8 // grid).view(grid, grid).numpy()
    generated = cells_to_pixels(~known, 8 // grid)
    assert generated.any() and (~generated).any()
    for r, p in zip(raw, pasted):
        assert np.array_equal(p[generated], r[generated]) and np.array_equal(p[~generated], crop[~generated])
    assert read(tmp_path / "in_inpaint_comparison.png").shape[1] == 9 * 128 + 10 * 4
    with pytest.raises(SystemExit) as exit_info:  # refused where the flag is parsed
        inpaint.main(flags + ["--paste-known", "-1"])
    assert exit_info.value.code == 2 and "--paste-known: -1: the feather width" in capsys.readouterr().err


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
    assert read(tmp_path / "in_outpaint_comparison.png").shape[0] == 28 + 128 + 8  # captions, canvas enlarged to 128


def test_resolution_extrapolation_tool(tmp_path):
    """Plain python, PNGs and the .npz like sample_c2i.py."""
    cmd = [sys.executable, "tools/resolution_extrapolation.py", "--config", CONFIG, "--exp-name", "tiny",
           "--gpt-ckpt", GPT, "--vq-ckpt", VQ, "--num-fid-samples", "5", "--per-proc-batch-size", "2",
           "--num-inference-steps", "8", "--sample-dir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    prec = precision_name(default_precision("cpu"))  # no --precision: the CPU's default
    run = f"tiny-randar_tiny-size-16-16-cfg-3.0-3.0-steps-8-{prec}-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0"
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
    prec = precision_name(default_precision("cpu"))
    assert grid.endswith(f"-steps-1024-{prec}-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0-debug.png")
    assert read(tmp_path / grid).shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # 2x2 images of 16 px, 2 px padding
    assert torch.is_grad_enabled()  # the tools leave the process's autograd mode alone
    with pytest.raises(SystemExit, match="extrapolation-factor"):
        resolution_extrapolation.main(["--config", CONFIG, "--exp-name", "t", "--gpt-ckpt", GPT, "--vq-ckpt", VQ,
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

    resolution_extrapolation.main(argv(GPT))
    [npz] = [f for f in os.listdir(tmp_path / "s") if f.endswith(".npz")]
    first = np.load(tmp_path / "s" / npz)["arr_0"]
    with pytest.raises(SystemExit, match=r"records another sampling run \(gpt_ckpt: .*--force"):
        resolution_extrapolation.main(argv(str(other / os.path.basename(GPT))))
    np.testing.assert_array_equal(np.load(tmp_path / "s" / npz)["arr_0"], first)
    resolution_extrapolation.main(argv(str(other / os.path.basename(GPT)), "--force"))
    assert not np.array_equal(np.load(tmp_path / "s" / npz)["arr_0"], first)
    capsys.readouterr()
    resolution_extrapolation.main(argv(str(other / os.path.basename(GPT))))  # same inputs: resumes
    assert "2 of 2 images present, sampling 0" in capsys.readouterr().out


def test_extrapolation_checks_inputs_before_building(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(inputs, "build_randar", lambda *a, **k: built.append(a))
    with pytest.raises(SystemExit) as e:
        resolution_extrapolation.main(["--config", CONFIG, "--exp-name", "t", "--gpt-ckpt", GPT, "--vq-ckpt",
                                     str(tmp_path / "vq.pt"), "--sample-dir", str(tmp_path / "s")])
    assert str(e.value) == f"error: --vq-ckpt {tmp_path / 'vq.pt'} not found"
    assert built == [] and not (tmp_path / "s").exists()


# ---- the config a training export carries ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The tiny weights exported as train_c2i.py exports them: with the resolved config in the metadata."""
    path = str(tmp_path_factory.mktemp("export") / "iters_00000010.safetensors")
    save_export(path, load_file(GPT), load_config(CONFIG), step=10)
    return path


def test_export_carries_its_config(export):
    carried = export_config(export)
    assert carried.ar_model == load_config(CONFIG).ar_model and carried.tokenizer == load_config(CONFIG).tokenizer
    assert export_config(GPT) is None  # no metadata: an official checkpoint
    with safe_open(export, framework="pt") as f:  # train_c2i.py's metadata, which test_train.py reads back
        meta = f.metadata()
    assert (meta["format"], meta["weights"], meta["step"]) == ("randar", "model", "10")
    assert json.loads(meta["ar_model"]) == OmegaConf.to_container(load_config(CONFIG).ar_model)


def test_tools_read_the_config_from_the_export(export, images, tmp_path):
    sample_c2i = load_script("sample_c2i.py")
    common = ["--exp-name", "t", "--vq-ckpt", VQ, "--per-proc-batch-size", "4", "--num-inference-steps", "4",
              "--debug"]
    sample_c2i.main(["--gpt-ckpt", export, "--sample-dir", str(tmp_path / "a"), *common])
    sample_c2i.main(["--config", CONFIG, "--gpt-ckpt", export, "--sample-dir", str(tmp_path / "b"), *common])
    [a], [b] = os.listdir(tmp_path / "a"), os.listdir(tmp_path / "b")
    assert a == b and np.array_equal(read(tmp_path / "a" / a), read(tmp_path / "b" / b))
    inpaint = load_script("tools/inpaint.py")
    flags = tool_flags(images, tmp_path / "c", "--image", str(images / "in.png"), "--mask", str(images / "mask.png"))
    flags[flags.index("--gpt-ckpt") + 1] = export
    del flags[flags.index("--config"):flags.index("--config") + 2]
    inpaint.main(flags)
    inpaint.main(tool_flags(images, tmp_path / "d", "--image", str(images / "in.png"), "--mask",
                            str(images / "mask.png")))
    assert np.array_equal(read(tmp_path / "c" / "in_inpaint_000.png"), read(tmp_path / "d" / "in_inpaint_000.png"))


def test_export_of_older_spelling_fits_the_config(export, tmp_path):
    """A checkpoint whose carried config names the tokenizer by its old module path and has the official unused
    ar_model keys (what earlier versions of this code exported) fits the shipped config: same classes, same model."""
    carried = load_config(CONFIG)
    carried.tokenizer.target = "RandAR.model.tokenizer.VQModel"
    carried.ar_model.params.zero_class_qk = True
    old = str(tmp_path / "old.safetensors")
    save_export(old, load_file(export), OmegaConf.to_container(carried), step=10)
    assert inputs.resolve_config(load_config(CONFIG), CONFIG, old) == load_config(CONFIG)
    carried.ar_model.params.num_inference_steps = 7  # a real difference still stops it
    save_export(old, load_file(export), OmegaConf.to_container(carried), step=10)
    with pytest.raises(ValueError, match=r"ar_model\.params\.num_inference_steps: 7 in the checkpoint, 6 now\)"):
        inputs.resolve_config(load_config(CONFIG), CONFIG, old)


def test_config_that_differs_from_the_export_is_an_error(export, tmp_path):
    text = open(CONFIG).read()
    assert "num_inference_steps: 6" in text
    other = tmp_path / "other.yaml"
    other.write_text(text.replace("num_inference_steps: 6", "num_inference_steps: 7"))
    sample_c2i = load_script("sample_c2i.py")
    argv = ["--exp-name", "t", "--gpt-ckpt", export, "--vq-ckpt", VQ, "--sample-dir", str(tmp_path / "s"), "--debug"]
    with pytest.raises(SystemExit, match=r"does not match the config .* \(ar_model\.params\.num_inference_steps: 6 "
                                         r"in the checkpoint, 7 now\)"):
        sample_c2i.main(["--config", str(other), *argv])
    with pytest.raises(SystemExit, match="carries no config .*pass --config"):
        resolution_extrapolation.main(["--exp-name", "t", "--gpt-ckpt", GPT, "--vq-ckpt", VQ, "--debug",
                                       "--sample-dir", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()
