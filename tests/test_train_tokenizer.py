"""tools/train_tokenizer.py: the LR schedule it runs, its checkpoints (training/checkpoint_folders.py's layout) and a resume
that ends with the weights of an uninterrupted run."""
import json
import math
import os
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import train_tokenizer  # noqa: E402

TOY_VQ = os.path.join(REPO, "configs", "tokenization", "toy_vq.yaml")
# A tiny VQModel (8x8 codes from 32x32 images) with every random part of training switched on: flips, restarts.
TINY = ["model.params.base_channels=8", "model.params.z_channels=16", "model.params.codebook_size=64",
        "train.batch_size=4", "train.num_eval_images=8", "train.log_every=1", "train.sample_every=100",
        "train.ckpt_every=2", "train.restart_dead_codes_every=2", "train.usage_window=2", "train.warmup_iters=2",
        "train.restart_until=1.0", "train.keep_checkpoints=2", "train.lr=0.004", "train.min_lr_ratio=0.1"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """<root>/{train,val}/<class>/<i>.png: 2 classes of noisy colour squares (--dataset folder)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 4)):
        for c in range(2):
            os.makedirs(root / split / f"class{c}")
            for i in range(n):
                pixels = rng.integers(0, 60, (40, 40, 3)) + np.array([180 * c, 90, 180 * (1 - c)])
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / split / f"class{c}" / f"{i}.png")
    return str(root)


def train(images, results, iterations):
    return train_tokenizer.main(["--config", TOY_VQ, "--data-path", images, "--dataset", "folder",
                                 "--results-dir", str(results), "--image-size", "32", *TINY,
                                 f"train.iterations={iterations}"])


class Killed(Exception):
    pass


def test_resumed_run_ends_with_the_uninterrupted_weights(images, tmp_path, monkeypatch):
    train(images, tmp_path / "straight", 6)
    save_state = train_tokenizer.tt.save_state

    def save_then_die(ckpt_dir, step, *args):
        save_state(ckpt_dir, step, *args)
        if step == 4:
            raise Killed
    with monkeypatch.context() as m:
        m.setattr(train_tokenizer.tt, "save_state", save_then_die)
        with pytest.raises(Killed):
            train(images, tmp_path / "resumed", 6)
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == [
        "iters_00000002", "iters_00000002.safetensors", "iters_00000004", "iters_00000004.safetensors"]
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints" / "iters_00000004")) == ["checksums.json", "train.pt"]
    train(images, tmp_path / "resumed", 6)
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints"))[0] == "iters_00000004"  # keep_checkpoints=2
    want = load_file(str(tmp_path / "straight" / "vq.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "vq.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        assert (want[key] == got[key]).all(), key


def test_learning_rate_is_warm_up_then_half_cosine(images, tmp_path):
    """The lr of step s (0-based): lr * s / W during the warm-up, then min + (1 - min) (1 + cos(pi t)) / 2 with
    t = (s - W) / (N - W): train_c2i's cosine schedule with num_cycles 0.5."""
    train(images, tmp_path, 6)
    with open(tmp_path / "log.jsonl") as f:
        logged = [json.loads(line)["lr"] for line in f]
    lr, low, warm, n = 0.004, 0.1, 2, 6
    want = [lr * s / warm if s < warm else
            lr * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (n - warm)))) for s in range(n)]
    assert logged == pytest.approx(want, rel=1e-12, abs=1e-15)
