"""The quickstart's reduced run: the whole chain (data, tokenizer, classifier, extraction, training, CFG search,
sampling at three step counts, inpainting) through the real scripts. About the chain working, not quality."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from RandAR.toy.classifier import load_classifier
from RandAR.utils.config import load_config
from RandAR.sampling.folder import class_labels, precision_name
from RandAR.utils.distributed import default_precision, describe_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_input(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _toy_pool(classifier, images):
    with torch.no_grad():
        return classifier.features(_model_input(images))[0].double().numpy()


def _closed_form_fid(x, y):
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    d = x.mean(0) - y.mean(0)
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(min=0)).sum()


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
    # The precision follows the CPU's capabilities (this machine's, as RandAR.utils.distributed reads them).
    assert metrics["cpu"] == describe_cpu() and metrics["cpu"] in r.stdout
    assert metrics["precision"] == precision_name(default_precision("cpu"))
    search = json.load(open(out / "search.json"))
    assert metrics["best_cfg_scale"] == min((1.0, 2.0), key=lambda s: search["search"][str(s)]["fid"])
    # Class accuracy and FID recomputed from the packed samples with the bare classifier: argmax of its logits
    # against the requested classes; FID of its features against the reference batch without sqrtm.
    classifier = load_classifier(str(out / "classifier.safetensors"))
    ref_pool = _toy_pool(classifier, np.load(out / "val_reference.npz")["arr_0"])
    for m, packed in [(metrics["cfg_search"][k], search["search"][k]) for k in ("1.0", "2.0")] + \
            [(metrics["final"], search["final"])]:
        with np.load(packed["sample_npz"]) as f:
            images = f["arr_0"]
        labels = np.array(class_labels(range(len(images)), 10, 0))
        with torch.no_grad():
            predicted = classifier(_model_input(images)).argmax(1).numpy()
        assert m["class_accuracy"] == pytest.approx(np.mean(predicted == labels))
        assert m["fid"] == pytest.approx(_closed_form_fid(_toy_pool(classifier, images), ref_pool), rel=1e-3)
    for name in ("samples_per_class.png", "steps_comparison.png", "inpainting.png", "outpainting.png",
                 "generation_strip.png", "generation.gif", "training_curves.png"):
        assert Image.open(results / name).size[0] > 100, name

    # The sample packs hold exactly the requested counts of 32x32 RGB images.
    with np.load(search["final"]["sample_npz"]) as f:
        images = f["arr_0"]
    assert images.shape == (60, 32, 32, 3) and images.dtype == np.uint8
    # The trained model's checkpoint export and the extracted codes are where the docs say.
    assert (out / "train" / "toy_bs_64_lr_0.002" / "checkpoints" / "iters_00000020.safetensors").is_file()
    codes = out / "codes" / "imagenet-toy_vq-adm-32_codes"
    first = np.load(next((codes / "0").glob("*.npy")))
    tokenizer_config = load_config(os.path.join(ROOT, "configs", "tokenization", "toy_vq.yaml"))
    assert first.shape == (2, 64) and first.min() >= 0 and first.max() < tokenizer_config.model.params.codebook_size

    # A re-run reuses every finished stage.
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0
    for stage in ("data:", "tokenizer:", "classifier:", "train:"):
        assert f"=== {stage} tools" not in r.stdout and f"=== {stage} train_c2i" not in r.stdout, stage

    # benchmarks/quickstart_precision.py on this quickstart: the same samples in bf16 and in float32, each scored
    # (FID recomputed here in closed form, class accuracy from the bare classifier).
    from helpers import load_script
    bench = load_script("benchmarks/quickstart_precision.py")
    scored = bench.main(["--out", str(out), "--num-samples", "20", "--batch-size", "20", "--num-inference-steps", "8"])
    assert set(scored) == {"bf16", "fp32"}
    for name, m in scored.items():
        (npz,) = (out / "precision_samples").glob(f"*-steps-8-{name}*.npz")
        with np.load(npz) as f:
            images = f["arr_0"]
        assert images.shape == (20, 32, 32, 3)
        with torch.no_grad():
            predicted = classifier(_model_input(images)).argmax(1).numpy()
        assert m["class_accuracy"] == pytest.approx(np.mean(predicted == np.array(class_labels(range(20), 10, 0))))
        assert m["fid"] == pytest.approx(_closed_form_fid(_toy_pool(classifier, images), ref_pool), rel=1e-3)
    with pytest.raises(SystemExit, match="no finished quickstart.*tools/quickstart.py"):
        bench.main(["--out", str(tmp_path / "nothing")])


def test_quickstart_refuses_to_mix_outputs_of_other_settings(tmp_path, monkeypatch):
    """A rerun reuses finished stages only when configs, dataset code and run settings are unchanged."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import quickstart

    out = str(tmp_path / "demo")
    quickstart.check_stamp(out, {"quick": True, "seed": 0})
    quickstart.check_stamp(out, {"quick": True, "seed": 0})  # same settings: reuse
    with pytest.raises(SystemExit, match="records another.*quick: True there, False now.*--force"):
        quickstart.check_stamp(out, {"quick": False, "seed": 0})
    config = tmp_path / "changed.yaml"
    config.write_text("max_iters: 1\n")
    monkeypatch.setattr(quickstart, "MODEL_CONFIG", str(config))  # an absolute path wins in os.path.join
    with pytest.raises(SystemExit, match="records another.*changed.yaml"):
        quickstart.check_stamp(out, {"quick": True, "seed": 0})
    older = tmp_path / "older"
    (older / "data").mkdir(parents=True)  # outputs from before stamps existed
    with pytest.raises(SystemExit, match="data exist without a record of what made them"):
        quickstart.check_stamp(str(older), {"quick": True, "seed": 0})


def _fake_metrics(seed):
    """metrics.json's shape with numbers that follow from the seed."""
    return {"best_cfg_scale": 2.0 + seed, "quick": False, "precision": "bf16", "cpu": "test CPU",
            "final": {"fid": 4.0 + seed, "class_accuracy": 0.9 + 0.01 * seed},
            "cfg_search": {"1.0": {"class_accuracy": 0.8}, "2.0": {"class_accuracy": 0.85}},
            "steps": {"64": {"fid": 5.0, "class_accuracy": 0.9}, "22": {"fid": 5.0 + seed, "class_accuracy": 0.91}},
            "parallel_decoding_fid_change": seed / 5.0, "training_loss": {"first": 4.6, "last": 1.4 + seed},
            "wall_time_s": 60.0 * (10 + seed)}


def test_quickstart_seeds_run_the_chain_per_seed_and_report_mean_and_range(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import quickstart

    calls = []

    def chain(out, seed, quick, force):
        calls.append((out, seed, quick, force))
        return _fake_metrics(seed)
    monkeypatch.setattr(quickstart, "quickstart", chain)
    spread = quickstart.main(["--seeds", "0,1,5", "--out", str(tmp_path / "runs")])
    assert calls == [(str(tmp_path / "runs" / f"seed_{s}"), s, False, False) for s in (0, 1, 5)]
    with open(tmp_path / "runs" / "spread.json") as f:
        assert json.load(f) == spread
    fig = spread["figures"]
    assert fig["final_fid"] == {"mean": 6.0, "min": 4.0, "max": 9.0}  # 4, 5, 9
    assert fig["final_class_accuracy"]["mean"] == pytest.approx((0.9 + 0.91 + 0.95) / 3)
    assert fig["steps_22_fid"]["max"] == 10.0 and fig["no_cfg_class_accuracy"]["min"] == 0.8
    assert fig["wall_time_min"] == {"mean": 12.0, "min": 10.0, "max": 15.0}
    assert spread["seeds"] == [0, 1, 5] and spread["precision"] == "bf16"
    assert spread["per_seed"]["5"]["parallel_decoding_fid_change"] == 1.0


@pytest.mark.parametrize("text", ["0,1,x", "1,1", ""])
def test_quickstart_seeds_refuses_a_bad_list(text, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import quickstart

    with pytest.raises(SystemExit) as e:
        quickstart.main(["--seeds", text])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err


def test_bench_precision_times_both_precisions_on_the_toy_model(capsys):
    """benchmarks/bench_precision.py on the quickstart's model, tiny: one ratio per batch size, printed with the
    CPU's capability and the precision the sampling tools would default to here."""
    from helpers import load_script
    bench = load_script("benchmarks/bench_precision.py")
    ratios = bench.main(["--batch-sizes", "1", "2", "--repeats", "1", "--num-inference-steps", "4"])
    assert sorted(ratios) == [1, 2] and all(0 < r < float("inf") for r in ratios.values())
    out = capsys.readouterr().out
    assert describe_cpu() in out and f"default here: {default_precision('cpu')}" in out
    assert out.count("bf16 speed / fp32 speed") == 2
