"""Train the toy dataset's CNN classifier (RandAR/toy/classifier.py), the "toy" evaluator's network.

    python tools/train_classifier.py --data-path data/toy --out data/toy/classifier.safetensors

Reads train.tar (and val.tar, for the reported accuracy) into memory: meant for small datasets like the toy one.
Augmentations: horizontal flip, shifts of up to --max-shift pixels, and on a --degrade-prob fraction of images
low-quality JPEG artifacts or blur/resampling plus noise, because the images it will judge are decoded by a
small VQ tokenizer and come out softer and blotchier than the originals.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.dataset.imagenet import decode_rgb  # noqa: E402
from RandAR.toy.classifier import ToyClassifier, ToyClassifierArgs, ToyExtractor, save_classifier  # noqa: E402
from RandAR.toy.data import encode_jpeg, load_tar_arrays  # noqa: E402
from RandAR.training.lr_schedule import get_scheduler  # noqa: E402
from RandAR.utils.progress import progress  # noqa: E402
from RandAR.utils.seeding import Stream, seed_for  # noqa: E402
from RandAR.utils.versions import require_versions  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402

JPEG_QUALITY_RANGE = (10, 40)  # of the degraded training copies


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train the toy dataset's classifier (the `toy` evaluator).")
    p.add_argument("--data-path", required=True, help="folder with train.tar (and val.tar)")
    p.add_argument("--out", default=None, help="checkpoint path (default: <data-path>/classifier.safetensors)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--widths", default="16,32,64", help="channels of each stage")
    p.add_argument("--iterations", type=int, default=300,
                   help="300 reach 100%% held-out accuracy on the toy dataset in ~25 s on 2 CPU cores")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--max-shift", type=int, default=3, help="random translation range in pixels (0: none)")
    p.add_argument("--degrade-prob", type=float, default=0.5,
                   help="fraction of training images degraded: half JPEG q10-40, half blur/resample+noise")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def augment(x: torch.Tensor, max_shift: int, degrade_prob: float, g: torch.Generator) -> torch.Tensor:
    """x float (B, 3, S, S) in [-1, 1] -> flipped, shifted (edge pixels repeated) copies, a `degrade_prob`
    fraction of them degraded like a small tokenizer's reconstructions: blurred or down-and-up sampled, plus
    noise. Without this the classifier keys on crisp edges and misreads slightly blurry shapes."""
    b, _, s, _ = x.shape
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if max_shift > 0:
        padded = F.pad(x, (max_shift,) * 4, mode="replicate")
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=g).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(b)])
    if degrade_prob > 0:
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        resampled = F.interpolate(F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True),
                                  size=(s, s), mode="bilinear")
        which = torch.rand(b, generator=g)[:, None, None, None]
        noisy = torch.where(which < 0.5, blurred, resampled)
        noisy = noisy + torch.randn(x.shape, generator=g) * torch.rand(b, 1, 1, 1, generator=g) * 0.1
        pick = torch.rand(b, generator=g) < degrade_prob
        x = torch.where(pick[:, None, None, None], noisy, x)
    return x


def jpeg_copies(images: np.ndarray, quality_range, rng: np.random.Generator) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> the same images re-encoded as JPEG at random low qualities, uint8 (N, 3, S, S).
    Their blocky artifacts resemble a VQ tokenizer's more than blur alone does."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = np.asarray(decode_rgb(encode_jpeg(image, int(rng.integers(*quality_range)))))
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def class_names(data_path: str, num_classes: int):
    path = os.path.join(data_path, "classes.json")
    if not os.path.isfile(path):
        return [str(i) for i in range(num_classes)]
    with open(path) as f:
        names = json.load(f)
    return [names[str(i)] for i in range(num_classes)]


def main(argv=None) -> dict:
    line_buffered_output()
    args = parse_args(argv)
    out = args.out or os.path.join(args.data_path, "classifier.safetensors")
    torch.manual_seed(args.seed)  # the initial weights
    g = torch.Generator().manual_seed(seed_for(args.seed, Stream.CLASSIFIER, 0))  # batches and augmentations
    t0 = time.time()
    images, labels = load_tar_arrays(os.path.join(args.data_path, "train.tar"), args.image_size)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 (N, 3, S, S)
    jpeg_rng = np.random.default_rng(seed_for(args.seed, Stream.CLASSIFIER, 1))
    x_jpeg = jpeg_copies(images, JPEG_QUALITY_RANGE, jpeg_rng) if args.degrade_prob > 0 else x_all
    y_all = torch.from_numpy(labels)
    num_classes = int(labels.max()) + 1
    print(f"{len(images)} training images of {num_classes} classes loaded in {time.time() - t0:.1f}s", flush=True)

    widths = tuple(int(w) for w in args.widths.split(","))
    model = ToyClassifier(ToyClassifierArgs(num_classes=num_classes, image_size=args.image_size, widths=widths))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # a short warm-up, then a half-cosine to zero
    scheduler = get_scheduler("cosine", optimizer, max(1, args.iterations // 20), args.iterations, num_cycles=0.5,
                              min_lr_ratio=0.0)
    model.train()
    t0 = time.time()
    pbar = progress(range(args.iterations), dynamic_ncols=True)
    for step in pbar:
        idx = torch.randint(len(x_all), (args.batch_size,), generator=g)
        use_jpeg = (torch.rand(args.batch_size, generator=g) < args.degrade_prob / 2)[:, None, None, None]
        x = torch.where(use_jpeg, x_jpeg[idx], x_all[idx])
        x = augment(ToyClassifier.normalize(x), args.max_shift, args.degrade_prob / 2, g)
        loss = F.cross_entropy(model(x), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 10 == 0:
            pbar.set_postfix(loss=f"{loss.item():.3f}")
    train_time = time.time() - t0

    result = {"train_seconds": round(train_time, 1), "iterations": args.iterations}
    val_tar = os.path.join(args.data_path, "val.tar")
    if os.path.isfile(val_tar):
        val_images, val_labels = load_tar_arrays(val_tar, args.image_size)
        extractor = ToyExtractor(model.eval())
        result["val_accuracy"] = extractor.class_accuracy(val_images, val_labels)
        result["val_per_class_accuracy"] = extractor.per_class_accuracy(val_images, val_labels)
    save_classifier(model.eval(), out, {"classes": class_names(args.data_path, num_classes), **result})
    print(f"trained in {train_time:.0f}s; val accuracy {result.get('val_accuracy', float('nan')):.4f}; wrote {out}",
          flush=True)
    return result


if __name__ == "__main__":
    require_versions(accelerate=False)
    main()
