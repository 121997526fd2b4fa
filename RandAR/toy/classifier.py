"""A small CNN classifier of the toy dataset (RandAR/toy/data.py), and a feature extractor built on it.

`ToyExtractor` implements RandAR.eval.fid.FeatureExtractor, so FID, sFID, IS, precision and recall of toy samples
come from the same `evaluate_with` and metric functions as ADM's Inception-v3 numbers:
    pool features    the penultimate layer (width widths[-1])
    spatial features the first SPATIAL_CHANNELS channels of the second stage's map (like ADM's mixed_6/conv[:7])
    probabilities    softmax of the logits
It also answers `class_accuracy(images, labels)`: how often the classifier agrees with the requested class.

    python -m RandAR.toy.classifier --ckpt toy_classifier.safetensors ref.npz samples.npz

Train one with tools/train_classifier.py. The checkpoint is a safetensors file whose metadata `config` holds the
architecture (ToyClassifierArgs), so only the path is needed: `build_toy_extractor(path)`;
`RandAR.eval.extractors.build_extractor("toy", path)` is the name-based entry for tools.
"""
import argparse
import dataclasses
import json
import math
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from RandAR.utils.checkpoint import atomic_save_safetensors, load_model_weights

SPATIAL_CHANNELS = 8


@dataclasses.dataclass
class ToyClassifierArgs:
    num_classes: int = 10
    image_size: int = 32
    widths: Tuple[int, ...] = (16, 32, 64)  # one stage each: conv-conv-maxpool, halving the resolution

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        assert len(self.widths) >= 2, "the classifier needs at least 2 stages (sFID reads the second)"
        assert self.image_size % 2 ** len(self.widths) == 0, \
            f"image_size {self.image_size} must be divisible by 2**{len(self.widths)}"


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ToyClassifier(nn.Module):
    """Stages of two 3x3 conv-BN-ReLU and a 2x2 max-pool, global average pool, a hidden layer, logits."""

    def __init__(self, args: ToyClassifierArgs):
        super().__init__()
        self.args = args
        widths = (3,) + args.widths
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn_relu(widths[i], widths[i + 1]), conv_bn_relu(widths[i + 1], widths[i + 1]),
                          nn.MaxPool2d(2))
            for i in range(len(args.widths)))
        self.hidden = nn.Linear(args.widths[-1], args.widths[-1])
        self.head = nn.Linear(args.widths[-1], args.num_classes)

    @staticmethod
    def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float in [-1, 1]."""
        return images_uint8.float() / 127.5 - 1.0

    def features(self, x: torch.Tensor):
        """x (B, 3, S, S) in [-1, 1] -> (penultimate (B, D), second-stage map (B, widths[1], S/4, S/4))."""
        spatial = None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 1:
                spatial = x
        pooled = x.mean(dim=(2, 3))  # (B, widths[-1])
        return F.relu(self.hidden(pooled)), spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) in [-1, 1] -> logits (B, num_classes)."""
        return self.head(self.features(x)[0])


# ---------------------------------------------------------------- checkpoints

def save_classifier(model: ToyClassifier, path: str, extra: Optional[dict] = None):
    """One safetensors file (the project's checkpoint I/O): the weights, with the architecture under the
    metadata key `config` and each item of `extra` (e.g. class names, accuracy) as JSON under its own key."""
    meta = {k: json.dumps(v) for k, v in (extra or {}).items()}
    meta["config"] = json.dumps(dataclasses.asdict(model.args))
    atomic_save_safetensors(model.state_dict(), path, meta)


def load_classifier(path: str, device="cpu") -> ToyClassifier:
    """Rebuild from the checkpoint's own `config` and load strictly; eval mode."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier checkpoint not found: {path} (train one with tools/train_classifier.py)")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} has no `config` metadata: not a classifier written by tools/train_classifier.py "
                         f"(train one with it)")
    model = ToyClassifier(ToyClassifierArgs(**json.loads(meta["config"])))
    load_model_weights(model, path)
    return model.to(device).eval()


# ---------------------------------------------------------------- feature extractor

class ToyExtractor:
    """RandAR.eval.fid.FeatureExtractor on a trained ToyClassifier."""

    def __init__(self, model: ToyClassifier, batch_size: int = 500):
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    def _inputs(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> model input (N, 3, S, S); other sizes are resized (bilinear, antialiased),
        as ADM's Inception resizes everything to 299."""
        assert images.ndim == 4 and images.shape[-1] == 3, f"expected uint8 images (N, H, W, 3), got {images.shape}"
        assert images.dtype == np.uint8, f"expected uint8 images, got {images.dtype}"
        # A copy: batches streamed from an .npz are read-only views.
        x = ToyClassifier.normalize(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).to(self.device))
        size = self.model.args.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def pool_features(self, images: np.ndarray):
        """uint8 (N, H, W, 3) -> (pool (N, D), spatial (N, SPATIAL_CHANNELS * (S/4)**2), probs (N, C)), float32."""
        pools, spatials, probs = [], [], []
        for start in range(0, len(images), self.batch_size):
            pool, spatial = self.model.features(self._inputs(images[start:start + self.batch_size]))
            pools.append(pool)
            spatials.append(spatial[:, :SPATIAL_CHANNELS].flatten(1))
            probs.append(self.model.head(pool).softmax(-1))
        return tuple(torch.cat(t).float().cpu().numpy() for t in (pools, spatials, probs))

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> predicted labels int64 (N,)."""
        return np.concatenate([self.model(self._inputs(images[s:s + self.batch_size])).argmax(-1).cpu().numpy()
                               for s in range(0, len(images), self.batch_size)])

    def class_accuracy(self, images: np.ndarray, labels: Sequence[int]) -> float:
        """Fraction of images whose predicted class is the given (requested) one."""
        labels = np.asarray(labels)
        assert len(labels) == len(images), f"{len(images)} images but {len(labels)} labels"
        return float((self.predict(images) == labels).mean())

    def per_class_accuracy(self, images: np.ndarray, labels: Sequence[int]) -> List[float]:
        labels = np.asarray(labels)
        hits = self.predict(images) == labels
        return [float(hits[labels == c].mean()) if (labels == c).any() else math.nan
                for c in range(self.model.args.num_classes)]


def build_toy_extractor(ckpt_path: str, device="cpu") -> ToyExtractor:
    """The evaluator named "toy": a classifier checkpoint from tools/train_classifier.py -> ToyExtractor."""
    return ToyExtractor(load_classifier(ckpt_path, device))


def main(argv=None) -> dict:
    from RandAR.eval.fid import evaluate_with, report

    p = argparse.ArgumentParser(description="FID, sFID, IS, precision, recall with the toy classifier's features")
    p.add_argument("ref_batch", help="reference .npz with uint8 images (N, H, W, 3) in arr_0")
    p.add_argument("sample_batch", help="sample .npz with uint8 images (N, H, W, 3) in arr_0")
    p.add_argument("--ckpt", required=True, help="classifier checkpoint from tools/train_classifier.py")
    p.add_argument("--batch-size", type=int, default=500)
    args = p.parse_args(argv)
    result = evaluate_with(build_toy_extractor(args.ckpt), args.ref_batch, args.sample_batch, args.batch_size)
    report(result, args.sample_batch)
    return result


if __name__ == "__main__":
    main()
