"""The quickstart's reduced run: the whole chain (data, tokenizer, classifier, extraction, training, CFG search,
sampling at three step counts, inpainting) through the real scripts. About the chain working, not quality."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_quick_run(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "tools/quickstart.py", "--quick", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "RandAR quickstart summary" in r.stdout
    assert "48 of 64 tokens known, 16 to generate" in r.stdout  # the centre 16x16 pixels = 4x4 tokens regenerated

    results = out / "results"
    metrics = json.load(open(results / "metrics.json"))
    assert set(metrics["cfg_search"]) == {"1.0", "2.0"} and set(metrics["steps"]) == {"64", "22", "8"}
    for m in list(metrics["cfg_search"].values()) + list(metrics["steps"].values()) + [metrics["final"]]:
        assert math.isfinite(m["fid"]) and m["fid"] >= 0 and 0.0 <= m["class_accuracy"] <= 1.0
    assert metrics["best_cfg_scale"] in (1.0, 2.0)
    for name in ("samples_per_class.png", "steps_comparison.png", "inpainting.png", "training_curves.png"):
        assert Image.open(results / name).size[0] > 100, name

    # The sample packs hold exactly the requested counts of 32x32 RGB images.
    search = json.load(open(out / "search.json"))
    with np.load(search["final"]["sample_npz"]) as f:
        images = f["arr_0"]
    assert images.shape == (60, 32, 32, 3) and images.dtype == np.uint8
    # The trained model's checkpoint export and the extracted codes are where the docs say.
    assert (out / "train" / "toy_bs_64_lr_0.002" / "checkpoints" / "iters_00000020.safetensors").is_file()
    codes = out / "codes" / "imagenet-toy_vq-adm-32_codes"
    first = np.load(next((codes / "0").glob("*.npy")))
    assert first.shape == (2, 64) and first.min() >= 0 and first.max() < 512

    # A re-run reuses every finished stage.
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0
    for stage in ("data:", "tokenizer:", "classifier:", "train:"):
        assert f"=== {stage} tools" not in r.stdout and f"=== {stage} train_c2i" not in r.stdout, stage


def test_quickstart_refuses_to_mix_outputs_of_other_settings(tmp_path, monkeypatch):
    """A rerun reuses finished stages only when configs, dataset code and run settings are unchanged."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import quickstart

    out = str(tmp_path / "demo")
    quickstart.check_stamp(out, {"quick": True, "seed": 0})
    quickstart.check_stamp(out, {"quick": True, "seed": 0})  # same settings: reuse
    with pytest.raises(SystemExit, match="different quick.*--force"):
        quickstart.check_stamp(out, {"quick": False, "seed": 0})
    config = tmp_path / "changed.yaml"
    config.write_text("max_iters: 1\n")
    monkeypatch.setattr(quickstart, "MODEL_CONFIG", str(config))  # an absolute path wins in os.path.join
    with pytest.raises(SystemExit, match="different .*changed.yaml"):
        quickstart.check_stamp(out, {"quick": True, "seed": 0})
    older = tmp_path / "older"
    (older / "data").mkdir(parents=True)  # outputs from before stamps existed
    with pytest.raises(SystemExit, match="older quickstart"):
        quickstart.check_stamp(str(older), {"quick": True, "seed": 0})
