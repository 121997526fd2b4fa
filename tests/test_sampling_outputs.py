"""Byte-for-byte outputs of the sampling tools on the tiny fixture model with fixed seeds: sample_c2i.py (the
PNGs and the .npz array), inpaint, outpaint, resolution extrapolation (its own script and the CFG search's
documented form of it) and the CFG search's --debug grids. The hashes were recorded from the code before the
sampling side was restructured (resolution extrapolation's after its schedule became the original's); any
change of what these tools draw or write changes them.

RANDAR_PRINT_HASHES=1 prints the hashes a run makes instead of comparing them.
"""
import hashlib
import json
import os

import numpy as np
import pytest

from helpers import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
CONFIG = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")
MODEL = ["--config", CONFIG, "--gpt-ckpt", os.path.join(FIX, "randar_tiny.safetensors"),
         "--vq-ckpt", os.path.join(FIX, "vq_tiny.safetensors")]
PRINT = bool(os.environ.get("RANDAR_PRINT_HASHES"))

EXPECTED = {
    'sample_c2i': {
        'g-randar_tiny-size-8-8-cfg-1.0-3.0-steps-6-fp32-seed-3.npz':
            'b7f3c822fc8fcbb7',
        'g-randar_tiny-size-8-8-cfg-1.0-3.0-steps-6-fp32-seed-3.stamp.json':
            '1044ae05293dd920',
        'g-randar_tiny-size-8-8-cfg-1.0-3.0-steps-6-fp32-seed-3/000000.png':
            '5c28e710ac694b0b',
        'g-randar_tiny-size-8-8-cfg-1.0-3.0-steps-6-fp32-seed-3/000001.png':
            'aa8d5dd6494926cf',
        'g-randar_tiny-size-8-8-cfg-1.0-3.0-steps-6-fp32-seed-3/000002.png':
            '81f8aea2734ed2a1',
        'g-randar_tiny-size-8-8-cfg-1.0-3.0-steps-6-fp32-seed-3/000003.png':
            'bff67b0884deece6',
        'g-randar_tiny-size-8-8-cfg-1.0-3.0-steps-6-fp32-seed-3/000004.png':
            '92d81448df040851',
        'k-randar_tiny-size-8-8-cfg-2.0-2.0-steps-4-fp32-temp-0.9-topk-20-topp-0.8-balanced-seed-0.npz':
            '740f56c52a967ca0',
        'k-randar_tiny-size-8-8-cfg-2.0-2.0-steps-4-fp32-temp-0.9-topk-20-topp-0.8-balanced-seed-0.stamp.json':
            'a96a607c02086f43',
        'k-randar_tiny-size-8-8-cfg-2.0-2.0-steps-4-fp32-temp-0.9-topk-20-topp-0.8-balanced-seed-0/000000.png':
            'd8eea4f15a1c8f71',
        'k-randar_tiny-size-8-8-cfg-2.0-2.0-steps-4-fp32-temp-0.9-topk-20-topp-0.8-balanced-seed-0/000001.png':
            '899c4906414e9571',
        'k-randar_tiny-size-8-8-cfg-2.0-2.0-steps-4-fp32-temp-0.9-topk-20-topp-0.8-balanced-seed-0/000002.png':
            'e97ec0761328e9ec',
    },
    # The per-sample PNGs are the restructuring's; the comparison strips were recorded after they gained captioned
    # columns and the tokenizer's reconstruction (issue 22).
    'inpaint_outpaint': {
        'inpaint/in_inpaint_000.png':
            'bc0dcce2d32ac14c',
        'inpaint/in_inpaint_001.png':
            '4f63a30c13b813f5',
        'inpaint/in_inpaint_002.png':
            'd60fb73d12c3caaf',
        'inpaint/in_inpaint_comparison.png':
            '93f5a7c6c129fa5d',
        'outpaint/in_outpaint_000.png':
            '75198f47bb257f5f',
        'outpaint/in_outpaint_001.png':
            '8540430ce5cdab8d',
        'outpaint/in_outpaint_002.png':
            'acfbb33a3028f790',
        'outpaint/in_outpaint_comparison.png':
            'e652c2a75c8b7455',
    },
    # Recorded after the second pass took the original's parallel-decoding schedule (the fixture test in
    # test_applications.py checks that schedule against the original code), and its stamp records it.
    'resolution_extrapolation': {
        'search/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0.npz':
            '0d324f2a7e8a3c96',
        'search/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0.stamp.json':
            '702ece0612858752',
        'search/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0/000000.png':
            '7125008e40709ff4',
        'search/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0/000001.png':
            '76ae38b62903751f',
        'search/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0/000002.png':
            '838ef80c561bddc6',
        'tool/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0.npz':
            '0d324f2a7e8a3c96',
        'tool/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0.stamp.json':
            '702ece0612858752',
        'tool/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0/000000.png':
            '7125008e40709ff4',
        'tool/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0/000001.png':
            '76ae38b62903751f',
        'tool/x-randar_tiny-size-16-16-cfg-3.0-3.0-steps-5-fp32-extrap-2-ntk-2-scfg-2.5-2.5-smask-0.5-seed-0/000002.png':
            '838ef80c561bddc6',
    },
    'cfg_search_debug': {
        's-randar_tiny-size-8-8-cfg-1.0-1.0-steps-6-fp32-seed-0-debug.png':
            '46e01116bcfcd61f',
        's-randar_tiny-size-8-8-cfg-1.0-3.0-steps-6-fp32-seed-0-debug.png':
            '11d804a5f5bbffa9',
    },
}


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def hashes(folder) -> dict:
    """sha256 (first 16 hex digits) of every PNG under `folder`, of the array of every .npz (the zip
    container stores write times, its array does not) and of the sampling settings of every run stamp."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            key = os.path.relpath(path, folder)
            if name.endswith(".png"):
                out[key] = sha(path)
            elif name.endswith(".npz"):
                with np.load(path) as data:
                    arr = data["arr_0"]
                out[key] = hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()[:16]
            elif name.endswith(".stamp.json"):  # the sampling settings it records (an earlier run resumes on them)
                with open(path) as f:
                    settings = json.dumps(json.load(f)["sampling"], sort_keys=True)
                out[key] = hashlib.sha256(settings.encode()).hexdigest()[:16]
    return dict(sorted(out.items()))


def check(name, folder):
    got = hashes(folder)
    assert got, f"{name}: nothing written"
    if PRINT:
        print(f"\n    {name!r}: {got!r},")
        return
    assert got == EXPECTED[name]


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
