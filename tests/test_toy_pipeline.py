"""The quickstart's own pieces: the procedural toy dataset, the tokenizer trainer and the toy classifier evaluator.

Everything runs on a few images with tiny networks, so the file takes seconds; the real sizes are exercised by
the quickstart itself.
"""
import json
import os
import sys

import numpy as np
import pytest
import torch

from RandAR.toy import data as toy
from RandAR.dataset.imagenet import ImageTarDataset
from RandAR.eval import fid
from RandAR.eval.extractors import build_extractor
from RandAR.toy.classifier import SPATIAL_CHANNELS, build_toy_extractor, load_classifier
from RandAR.model.tokenizers import build_tokenizer
from RandAR.utils.config import instantiate_from_config, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import train_classifier  # noqa: E402
import train_tokenizer  # noqa: E402

TOY_VQ = os.path.join(REPO, "configs", "tokenization", "toy_vq.yaml")
# A much smaller VQModel than toy_vq.yaml's, same layout (8x8 codes from 32x32 images).
TINY_VQ = ["model.params.base_channels=8", "model.params.z_channels=16", "model.params.codebook_size=64",
           "train.batch_size=8", "train.num_eval_images=20", "train.log_every=1", "train.sample_every=2",
           "train.ckpt_every=2", "train.restart_dead_codes_every=2", "train.usage_window=2", "train.warmup_iters=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy"))
    toy.make_toy_dataset(out, num_train_per_class=3, num_val_per_class=2, seed=0)
    return out


# ---------------------------------------------------------------- dataset

def test_dataset_is_deterministic(data_dir, tmp_path):
    toy.make_toy_dataset(str(tmp_path / "again"), 3, 2, seed=0)
    toy.make_toy_dataset(str(tmp_path / "other"), 3, 2, seed=1)
    for split in ("train.tar", "val.tar"):
        with open(os.path.join(data_dir, split), "rb") as a, open(tmp_path / "again" / split, "rb") as b:
            assert a.read() == b.read(), f"{split}: same seed gave different bytes"
    with open(os.path.join(data_dir, "train.tar"), "rb") as a, open(tmp_path / "other" / "train.tar", "rb") as b:
        assert a.read() != b.read(), "a different seed gave the same images"


def test_more_images_keep_the_first_ones(data_dir, tmp_path):
    toy.make_toy_dataset(str(tmp_path), 5, 0, seed=0)
    small, _ = toy.load_tar_arrays(os.path.join(data_dir, "train.tar"), 32)
    large, labels = toy.load_tar_arrays(str(tmp_path / "train.tar"), 32)
    assert not os.path.exists(tmp_path / "val.tar")
    for c in range(10):
        np.testing.assert_array_equal(large[labels == c][:3], small[c * 3:(c + 1) * 3])


def test_dataset_layout_and_classes(data_dir):
    ds = ImageTarDataset(os.path.join(data_dir, "train.tar"), verbose=False)
    assert len(ds) == 30 and ds.num_classes == 10
    assert ds.classes == [toy.wnid(c) for c in range(10)] == sorted(ds.classes)
    assert ds.names[0].decode() == "train/n00000000/n00000000_000000.JPEG"
    assert list(np.bincount(ds.labels)) == [3] * 10
    image, label, index = ds[29]
    assert image.size == (32, 32) and image.mode == "RGB" and label == 9 and index == 29
    val = ImageTarDataset(os.path.join(data_dir, "val.tar"), verbose=False)
    assert len(val) == 20 and val.names[0].decode().startswith("val/n00000000/")
    with open(os.path.join(data_dir, "classes.json")) as f:
        assert json.load(f) == {str(i): name for i, name in enumerate(toy.CLASS_NAMES)}


def test_every_class_draws_a_visible_shape():
    for label in range(len(toy.CLASS_NAMES)):
        image = toy.render_image(label, toy.image_rng(0, "train", label, 0), 32)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert image.astype(float).std(axis=(0, 1)).max() > 20, f"class {label} looks blank"
    with pytest.raises(ValueError):
        toy.render_image(10, np.random.default_rng(0))


# ---------------------------------------------------------------- tokenizer trainer

def _train_tokenizer(data_dir, results, iterations):
    argv = ["--config", TOY_VQ, "--data-path", data_dir, "--results-dir", results, "--image-size", "32",
            *TINY_VQ, f"train.iterations={iterations}"]
    return train_tokenizer.main(argv)


def test_tokenizer_trainer_writes_checkpoints_and_resumes(data_dir, tmp_path, capsys):
    results = str(tmp_path / "vq")
    metrics = _train_tokenizer(data_dir, results, 4)
    assert sorted(os.listdir(os.path.join(results, "checkpoints"))) == [
        "iters_00000002", "iters_00000002.safetensors", "iters_00000004", "iters_00000004.safetensors"]
    assert {"0000002.png", "0000004.png", "final.png"} <= set(os.listdir(os.path.join(results, "recon")))
    assert metrics["num_images"] == 20

    # The exported weights load strictly into the tokenizer the saved config describes.
    cfg = load_config(os.path.join(results, "config.yaml"))
    tokenizer = build_tokenizer(cfg.model, os.path.join(results, "vq.safetensors"))
    codes = tokenizer.encode_indices(torch.zeros(2, 3, 32, 32))
    assert codes.shape == (2, 64)
    assert tokenizer.decode_codes_to_img(codes, 32).shape == (2, 32, 32, 3)
    # The report is about the 20 held-out images (the whole val split): recompute it with the exported tokenizer.
    images, _ = toy.load_tar_arrays(os.path.join(data_dir, "val.tar"), 32)
    with torch.no_grad():
        codes = tokenizer.encode_indices(tokenizer.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2) / 255))
        recs = tokenizer.decode_codes_to_img(codes, 32)
    assert metrics["codes_used"] == len(torch.unique(codes))
    mse = np.mean(((images.astype(np.float64) - recs) / 255) ** 2)  # recs rounded half up, the report's half even
    assert metrics["mse"] == pytest.approx(mse, rel=1e-2)

    # A rerun with more iterations continues from step 4, keeps the two newest checkpoints.
    capsys.readouterr()
    _train_tokenizer(data_dir, results, 6)
    assert "resumed from" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(results, "checkpoints")))[0] == "iters_00000004"
    with open(os.path.join(results, "log.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_tokenizer_bf16_training_step_agrees_with_float32():
    """train.bf16=true: the same step from the same weights gives nearly the same losses and codes as
    float32, the weights stay float32, and the encoder outputs handed to code restarts are float32."""
    from RandAR.training import vq as tt

    x = torch.rand(8, 3, 32, 32) * 2 - 1
    results = {}
    for precision in ("no", "bf16"):
        cfg, targs = tt.load_train_config(TOY_VQ, [f"train.bf16={precision == 'bf16'}"])
        torch.manual_seed(0)
        model = build_tokenizer(cfg.model).train()
        tt.init_for_training(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=targs.lr)
        loss, parts, idx, z = tt.optimize_step(model, optimizer, x, targs)
        assert z.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())
        results[precision] = (loss.item(), parts["rec"], idx)
    (loss32, rec32, idx32), (loss16, rec16, idx16) = results["no"], results["bf16"]
    assert loss16 != loss32  # bfloat16 did run
    assert abs(loss16 - loss32) < 0.02 * loss32 and abs(rec16 - rec32) < 0.02 * rec32
    assert (idx16 == idx32).float().mean() > 0.9


def test_tokenizer_config_rejects_unknown_keys(data_dir, tmp_path):
    with pytest.raises(ValueError, match="bad override"):
        train_tokenizer.main(["--config", TOY_VQ, "--data-path", data_dir, "--results-dir", str(tmp_path),
                              "--image-size", "32", "train.learning_rate=1"])


def test_toy_vq_config_makes_8x8_codes():
    cfg = load_config(TOY_VQ)
    with torch.device("meta"):
        model = instantiate_from_config(cfg.model)
    assert 32 // model.downsample_factor == 8


# ---------------------------------------------------------------- classifier and evaluator

@pytest.fixture(scope="module")
def classifier_ckpt(data_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cls") / "classifier.safetensors")
    result = train_classifier.main(["--data-path", data_dir, "--out", path, "--iterations", "3",
                                    "--batch-size", "16", "--widths", "8,16,32"])
    # The reported accuracy is the exported classifier's on the val split, recomputed here with the bare model.
    model = load_classifier(path)
    images, labels = toy.load_tar_arrays(os.path.join(data_dir, "val.tar"), 32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    hits = (logits.argmax(1).numpy() == labels)
    assert result["val_accuracy"] == pytest.approx(hits.mean())
    assert result["val_per_class_accuracy"] == pytest.approx([hits[labels == c].mean() for c in range(10)])
    return path


def test_classifier_checkpoint_carries_its_config(classifier_ckpt, tmp_path):
    """One safetensors file: the weights, the architecture under `config`, the training report beside it; a file
    without `config` is refused by name, before any weights are read."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(classifier_ckpt, framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert json.loads(meta["config"]) == {"num_classes": 10, "image_size": 32, "widths": [8, 16, 32]}
    assert json.loads(meta["iterations"]) == 3 and len(json.loads(meta["classes"])) == 10
    assert keys == set(load_classifier(classifier_ckpt).state_dict())
    bare = str(tmp_path / "bare.safetensors")
    save_file({"head.weight": torch.zeros(10, 32)}, bare, metadata={"arch": meta["config"]})
    with pytest.raises(ValueError, match="bare.safetensors has no `config` metadata"):
        load_classifier(bare)
    with pytest.raises(FileNotFoundError, match="train one with tools/train_classifier.py"):
        load_classifier(str(tmp_path / "absent.safetensors"))


def test_extractor_shapes_and_probabilities(data_dir, classifier_ckpt):
    extractor = build_toy_extractor(classifier_ckpt)
    images, labels = toy.load_tar_arrays(os.path.join(data_dir, "val.tar"), 32)
    pool, spatial, probs = extractor.pool_features(images)
    assert pool.shape == (20, 32) and spatial.shape == (20, SPATIAL_CHANNELS * 8 * 8) and probs.shape == (20, 10)
    assert pool.dtype == spatial.dtype == probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    predicted = probs.argmax(1)
    assert extractor.class_accuracy(images, predicted) == 1.0
    assert extractor.class_accuracy(images, (predicted + 1) % 10) == 0.0
    half = np.where(np.arange(20) % 2 == 0, predicted, (predicted + 3) % 10)
    assert extractor.class_accuracy(images, half) == 0.5
    # Larger images are resized to the classifier's size.
    big = np.repeat(np.repeat(images[:2], 2, axis=1), 2, axis=2)
    assert extractor.pool_features(big)[0].shape == (2, 32)
    with pytest.raises(ValueError):
        build_extractor("toy", None)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 20 samples of 32-d features
def test_toy_evaluator_runs_the_adm_metrics(data_dir, classifier_ckpt, tmp_path):
    ref, _ = toy.load_tar_arrays(os.path.join(data_dir, "train.tar"), 32)
    sample, _ = toy.load_tar_arrays(os.path.join(data_dir, "val.tar"), 32)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    np.savez(tmp_path / "sample.npz", arr_0=sample)
    extractor = build_extractor("toy", classifier_ckpt)
    result = fid.evaluate_with(extractor, str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"))
    assert set(result) == set(fid.METRIC_NAMES)
    assert all(np.isfinite(result[k]) for k in fid.METRIC_NAMES)
    # IS and FID from the extractor's outputs, computed here: IS by its definition, FID without sqrtm.
    pool, _, probs = extractor.pool_features(sample)
    ref_pool = extractor.pool_features(ref)[0].astype(np.float64)
    marginal = probs.mean(0)
    assert result["inception_score"] == pytest.approx(
        np.exp(np.mean(np.sum(probs * (np.log(probs) - np.log(marginal)), axis=1))), rel=1e-5)
    s1, s2 = np.cov(pool.astype(np.float64), rowvar=False), np.cov(ref_pool, rowvar=False)
    diff = pool.mean(0) - ref_pool.mean(0)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(min=0)).sum()
    assert result["fid"] == pytest.approx(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt, rel=1e-3)
