"""The outputs of the sampling tools on the tiny fixture model with fixed seeds: sample_c2i.py (the PNGs and the
.npz array), inpaint, outpaint, resolution extrapolation (its own script and the CFG search's documented form of
it) and the CFG search's --debug grids, against tests/fixtures/sampling_outputs.npz. Any change of what these tools
draw or write changes them: a different token changes a whole patch of pixels.

The fixture holds every image's pixels and every run stamp's sampling settings, recorded from the code before the
sampling side was restructured (resolution extrapolation's after its schedule became the original's); the
restructured code gave byte-identical files on the same machine. Across CPUs, float32 kernels (AVX2, AVX512) round
differently, and the tokenizer's decoder output can then land on the neighbouring uint8 level: pixels may differ
by 1 level, in at most 1% of the values (seen: 1 value of 768); tokens and stamps must be identical.
RANDAR_RECORD_OUTPUTS=1 rewrites the fixture's entries from this run instead of comparing.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
EXPECTED = os.path.join(FIX, "sampling_outputs.npz")
CONFIG = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")
# float32 on every CPU: without --precision the tools pick bf16 where the CPU has native bfloat16.
MODEL = ["--config", CONFIG, "--gpt-ckpt", os.path.join(FIX, "randar_tiny.safetensors"),
         "--vq-ckpt", os.path.join(FIX, "vq_tiny.safetensors"), "--precision", "none"]
RECORD = bool(os.environ.get("RANDAR_RECORD_OUTPUTS"))
PIXEL_ATOL, PIXEL_FRACTION = 1, 0.01


def outputs(folder) -> dict:
    """Every PNG's pixels, every .npz's array (the zip container stores write times, its array does not) and the
    sampling settings of every run stamp (an earlier run resumes on them) under `folder`, by relative path."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            key = os.path.relpath(path, folder)
            if name.endswith(".png"):
                out[key] = np.asarray(Image.open(path))
            elif name.endswith(".npz"):
                with np.load(path) as data:
                    out[key] = data["arr_0"]
            elif name.endswith(".stamp.json"):
                with open(path) as f:
                    out[key] = np.array(json.dumps(json.load(f)["sampling"], sort_keys=True))
    return dict(sorted(out.items()))


def record(name, got):
    stored = dict(np.load(EXPECTED)) if os.path.isfile(EXPECTED) else {}
    stored = {k: v for k, v in stored.items() if not k.startswith(name + "|")}
    stored.update({f"{name}|{k}": v for k, v in got.items()})
    np.savez_compressed(EXPECTED, **stored)


def check(name, folder):
    got = outputs(folder)
    assert got, f"{name}: nothing written"
    if RECORD:
        return record(name, got)
    with np.load(EXPECTED) as f:
        want = {k.split("|", 1)[1]: f[k] for k in f.files if k.startswith(name + "|")}
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        g = got[key]
        assert g.shape == w.shape and g.dtype == w.dtype, key
        if w.dtype.kind == "U":  # a stamp's settings
            assert str(g) == str(w), key
            continue
        diff = np.abs(g.astype(np.int64) - w.astype(np.int64))
        assert diff.max() <= PIXEL_ATOL and (diff > 0).mean() <= PIXEL_FRACTION, \
            f"{key}: {(diff > 0).sum()} of {diff.size} values differ, by up to {diff.max()}"


@pytest.fixture(scope="module")
def input_image(tmp_path_factory):
    from PIL import Image
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(d / "in.png")
    mask = np.zeros((12, 10), dtype=np.uint8)
    mask[4:8, 2:6] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return d


def test_sample_c2i(tmp_path):
    main = load_script("sample_c2i.py").main
    main(["--exp-name", "g", *MODEL, "--sample-dir", str(tmp_path), "--cfg-scales", "1.0,3.0",
          "--num-fid-samples", "5", "--per-proc-batch-size", "2", "--global-seed", "3"])
    main(["--exp-name", "k", *MODEL, "--sample-dir", str(tmp_path), "--cfg-scales", "2.0,2.0",
          "--num-fid-samples", "3", "--per-proc-batch-size", "3", "--temperature", "0.9", "--top-k", "20",
          "--top-p", "0.8", "--num-inference-steps", "4", "--class-sampling", "balanced"])
    check("sample_c2i", tmp_path)


def test_inpaint_outpaint(input_image, tmp_path):
    common = [*MODEL, "--image", str(input_image / "in.png"), "--class-id", "3", "--num-samples", "3",
              "--batch-size", "2", "--cfg-scales", "1.0,3.0", "--seed", "5"]
    load_script("tools/inpaint.py").main([*common, "--mask", str(input_image / "mask.png"),
                                          "--output-dir", str(tmp_path / "inpaint")])
    load_script("tools/outpaint.py").main([*common, "--region", "left", "--extrapolation-factor", "2",
                                           "--output-dir", str(tmp_path / "outpaint")])
    check("inpaint_outpaint", tmp_path)


def test_resolution_extrapolation(tmp_path):
    flags = ["--exp-name", "x", *MODEL, "--cfg-scales", "3.0,3.0", "--spatial-cfg-scales", "2.5,2.5",
             "--num-inference-steps", "5", "--per-proc-batch-size", "2", "--num-fid-samples", "3"]
    load_script("tools/resolution_extrapolation.py").main([*flags, "--sample-dir", str(tmp_path / "tool")])
    # The documented command names the CFG search script (documentation section 6).
    load_script("tools/search_cfg_weights.py").main([*flags, "--sample-dir", str(tmp_path / "search")])
    check("resolution_extrapolation", tmp_path)


def test_cfg_search_debug_grids(tmp_path):
    load_script("tools/search_cfg_weights.py").main(
        ["--exp-name", "s", *MODEL, "--sample-dir", str(tmp_path), "--cfg-scales-search", "1.0,3.0",
         "--cfg-scales-interval", "2.0", "--per-proc-batch-size", "3", "--debug"])
    check("cfg_search_debug", tmp_path)


def test_a_sample_c2i_run_opens_few_files():
    """benchmarks/sampling_call_graph.py's figures: the project files on the call stack when the model's forward
    first runs (the script, the decoding loop, the model), the project files whose functions run at all, and
    the source files that spell out a decoding knob (top_p)."""
    figures = load_script("benchmarks/sampling_call_graph.py").measure()
    assert figures["stack_at_forward"] == ["RandAR/model/generate.py", "RandAR/model/randar_gpt.py", "sample_c2i.py"]
    assert len(figures["files_run"]) <= 20, figures["files_run"]
    assert len(figures["files_naming_top_p"]) <= 5, figures["files_naming_top_p"]
