"""ADM's evaluator with the Inception graph run by TensorFlow (--backend tf) and by PyTorch (--backend torch), in
one process on the same images: the five metrics side by side, the time each backend spent on features and in
total, and the speed ratio torch/TF from alternating rounds on one batch.

    python benchmarks/bench_fid_backends.py                      # Inception-like test graph (299x299, 32 wide)
    python benchmarks/bench_fid_backends.py --inception-path classify_image_graph_def.pb --num-images 2000 \\
        --device cuda                                            # the real graph; torch on the GPU, TF on CPU

It also compares precision/recall's distances: metrics.pairwise_sq_distances (ADM's float16 formula in numpy,
what --backend torch uses) against ADM's TF ops (what --backend tf uses, on the device TF runs on), on the pool
features of the sample and reference images; RandAR.eval.tolerances states what was measured on CPU.

Images: random 4x4-cell colour images with noise (reference and a brighter sample set, --num-images each), so the
numbers mean nothing about image quality; they are only compared between the backends. Without
--inception-path, the graph is tests/tf_graphs.InceptionLike (the real graph's op types and names, random
weights), written to a temporary directory; that needs TensorFlow to have been installed, as the tf backend does.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from RandAR.eval import fid, metrics  # noqa: E402


class TimedExtractor:
    """Wraps an extractor; adds up the seconds spent in pool_features (device work finished, arrays on host)."""

    def __init__(self, extractor):
        self.extractor, self.seconds, self.images = extractor, 0.0, 0
        if hasattr(extractor, "pairwise_distances"):  # --backend tf: precision/recall with ADM's TF distances
            self.pairwise_distances = extractor.pairwise_distances

    def pool_features(self, images):
        start = time.perf_counter()
        out = self.extractor.pool_features(images)
        self.seconds += time.perf_counter() - start
        self.images += len(images)
        return out


def make_images(rng, n, size, low=0):
    cells = rng.integers(low, 256, size=(n, 4, 4, 3))
    images = np.repeat(np.repeat(cells, -(-size // 4), 1), -(-size // 4), 2)[:, :size, :size]
    return np.clip(images + rng.integers(-8, 9, size=images.shape), 0, 255).astype(np.uint8)


def build(backend, path, device):
    if backend == "tf":
        return fid.InceptionV3TF(path)
    from RandAR.eval.inception_torch import InceptionV3Torch
    return InceptionV3Torch(path, device=device)


def evaluate(backend, extractor, ref, sample, batch):
    timed = TimedExtractor(extractor)
    start = time.perf_counter()
    result = fid.evaluate_with(timed, ref, sample, batch_size=batch)
    return dict(result, features_s=timed.seconds, total_s=time.perf_counter() - start, images=timed.images)


def interleaved_speed(extractors, images, batches, rounds):
    """Images/s of each extractor (at its batch size) on the same images, in alternating rounds, so that the
    drifting load of a shared machine hits all alike."""
    times = {name: [] for name in extractors}
    for _ in range(rounds):
        for name, ex in extractors.items():
            start = time.perf_counter()
            ex.pool_features(images[:batches[name]])
            times[name].append(time.perf_counter() - start)
    return {name: batches[name] / statistics.median(t) for name, t in times.items()}


def compare_distances(tf_extractor, ref, sample, n=500):
    """numpy float16 distances (metrics.pairwise_sq_distances) vs ADM's TF ops on the first n images' features."""
    a = tf_extractor.pool_features(next(fid.iter_npz_batches(ref, n)))[0]
    b = tf_extractor.pool_features(next(fid.iter_npz_batches(sample, n)))[0]
    want, got = tf_extractor.pairwise_distances(a, b), metrics.pairwise_sq_distances(a, b)
    norms = np.sum(a.astype(np.float64) ** 2, 1)[:, None] + np.sum(b.astype(np.float64) ** 2, 1)[None]
    rel = np.abs(got - want) / norms  # as tolerances.FLOAT16_DISTANCE_RTOL
    pr_tf = metrics.precision_recall(a, b, distances=tf_extractor.pairwise_distances)
    pr_np = metrics.precision_recall(a, b)
    print(f"distances of {len(a)} x {len(b)} pool features: {int(np.sum(got != want))} of {want.size} differ, "
          f"max difference / (|u|^2 + |v|^2) {rel.max():.2e}; precision, recall: TF {pr_tf} numpy {pr_np}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inception-path", default=None, help="the real classify_image_graph_def.pb (default: the "
                                                           "Inception-like test graph)")
    p.add_argument("--num-images", type=int, default=256, help="images in each of the reference and sample sets")
    p.add_argument("--image-size", type=int, default=256, help="square image side (ADM ImageNet 256: 256)")
    p.add_argument("--device", default="cpu", help="device of the torch backend (TF runs where its build runs)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 64 for tf, the torch backend's choice")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds for the speed ratio")
    p.add_argument("--backends", nargs="+", default=list(fid.BACKENDS), choices=fid.BACKENDS)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.inception_path
        if path is None:
            from tf_graphs import write_inception_like
            path = os.path.join(tmp, "inception_like.pb")
            write_inception_like(path, seed=0, size=299, width=32, num_classes=1008)
        rng = np.random.default_rng(0)
        ref, sample = os.path.join(tmp, "ref.npz"), os.path.join(tmp, "sample.npz")
        np.savez(ref, arr_0=make_images(rng, args.num_images, args.image_size))
        np.savez(sample, arr_0=make_images(rng, args.num_images, args.image_size, low=60))
        speed_images = make_images(rng, max(args.batch_size or 0, 500), args.image_size)
        graph = "real graph" if args.inception_path else "Inception-like test graph"
        print(f"{graph}, {args.num_images} + {args.num_images} images of {args.image_size}px, torch on {args.device}")
        extractors, results = {}, {}
        for backend in args.backends:
            start = time.perf_counter()
            extractors[backend] = build(backend, path, args.device)
            load = time.perf_counter() - start
            batch = args.batch_size or getattr(extractors[backend], "batch_size", 64)
            extractors[backend].pool_features(speed_images[:batch])  # first-call set-up is not timed
            results[backend] = dict(evaluate(backend, extractors[backend], ref, sample, batch), load_s=load,
                                    batch=batch)
        batches = {b: r["batch"] for b, r in results.items()}
        speed = interleaved_speed(extractors, speed_images, batches, args.rounds)
        if "tf" in extractors:
            compare_distances(extractors["tf"], ref, sample)

    columns = [*fid.METRIC_NAMES, "batch", "load_s", "features_s", "total_s", "img/s"]
    print(f"{'backend':8s}" + "".join(f"{c:>18s}" for c in columns))
    for backend, r in results.items():
        r["img/s"] = speed[backend]
        print(f"{backend:8s}" + "".join(f"{r[c]:>18.6g}" if isinstance(r[c], float) else f"{r[c]:>18}"
                                        for c in columns))
    if len(results) == 2:
        tf_r, torch_r = results["tf"], results["torch"]
        for name in fid.METRIC_NAMES:
            rel = abs(torch_r[name] - tf_r[name]) / max(abs(tf_r[name]), 1e-12)
            print(f"{name}: torch {torch_r[name]!r} tf {tf_r[name]!r} relative difference {rel:.2e}")
        print(f"speed ratio torch/tf: {speed['torch'] / speed['tf']:.2f}x ({speed['torch']:.1f} vs "
              f"{speed['tf']:.1f} images/s, median of {args.rounds} alternating rounds, "
              f"batches {batches})")


if __name__ == "__main__":
    main()
