"""The ADM (guided-diffusion) ImageNet evaluator: FID, sFID, Inception Score, precision and recall of a sample
batch against a reference batch, both .npz files holding uint8 images [N, H, W, 3] under `arr_0`.

    python -m RandAR.eval.fid VIRTUAL_imagenet256_labeled.npz samples.npz [--inception-path P] [--batch-size N]
        [--backend tf|torch]

Two layers, so other networks can plug in:
  - `evaluate_with(extractor, ref, sample)` streams both files through any `FeatureExtractor` and scores the
    features with RandAR.eval.metrics;
  - `InceptionV3TF` is ADM's extractor: the frozen TF Inception-v3 graph `classify_image_graph_def.pb`, from
    --inception-path / $RANDAR_INCEPTION_PATH, else from ~/.cache/randar/, downloaded there on first use
    (RandAR.eval.inception_graph).
    It also computes precision/recall's distance blocks with ADM's own TensorFlow ops, so with it all five
    numbers are ADM's. `evaluate(ref, sample)` uses it; `backend="torch"` runs the same graph with PyTorch instead
    (RandAR.eval.inception_torch, no TensorFlow; distances from metrics.pairwise_sq_distances).
"""
import argparse
import os
import zipfile
from contextlib import contextmanager
from typing import Iterator, Optional, Protocol, Tuple

import numpy as np

from RandAR.eval import metrics
from RandAR.eval.inception_graph import (DEFAULT_INCEPTION_PATH, INCEPTION_ENV, INCEPTION_URL, INPUT_TENSOR,
                                         LOGITS_MATMUL_OP, POOL_TENSOR, SPATIAL_CHANNELS, SPATIAL_TENSOR,
                                         InceptionGraphMissing, resolve_inception_path)
from RandAR.utils.atomic import write_json
from RandAR.utils.progress import progress

METRIC_NAMES = ("fid", "sfid", "inception_score", "precision", "recall")


class FeatureExtractor(Protocol):
    """What `evaluate_with` needs from a network."""

    def pool_features(self, images: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
        """uint8 images (N, H, W, 3) -> (pool (N, D) for FID/precision/recall,
        spatial (N, D2) for sFID or None to skip sFID, class probabilities (N, C) for IS)."""
        ...

    # Optional: `pairwise_distances(u, v)` -> squared distances (float32) for precision/recall; without it they
    # come from metrics.pairwise_sq_distances.


# ---------------------------------------------------------------- ADM's Inception-v3 extractor (TensorFlow)

class InceptionV3TF:
    """ADM's features from the frozen TF Inception-v3 graph: pool_3 (2048), mixed_6/conv first 7 channels
    flattened (17*17*7), and softmax(pool_3 @ W) with the graph's classifier weight W and no bias, as ADM."""

    def __init__(self, inception_path: Optional[str] = None):
        path = resolve_inception_path(inception_path)
        # Imported here so the metrics and other extractors do not pay for (or need) TensorFlow.
        import tensorflow.compat.v1 as tf

        graph_def = tf.GraphDef()
        with open(path, "rb") as f:
            graph_def.ParseFromString(f.read())
        graph = tf.Graph()
        with graph.as_default():
            self._images = tf.placeholder(tf.float32, shape=[None, None, None, 3])
            # ADM also patches static batch sizes of 1 to None (a TF1-era TTUR fix); TF2 infers shapes in C++
            # from the mapped input, and the patch does not change what is computed, so it is left out.
            pool, spatial, matmul = tf.import_graph_def(
                graph_def,
                input_map={INPUT_TENSOR: self._images},
                return_elements=[POOL_TENSOR, SPATIAL_TENSOR, LOGITS_MATMUL_OP],
                name="inception",
            )
            self._pool = pool  # (N, 1, 1, D)
            self._spatial = spatial[..., :SPATIAL_CHANNELS]  # (N, h, w, 7)
            self._pool_in = tf.placeholder(tf.float32, shape=[None, None])
            self._probs = tf.nn.softmax(tf.matmul(self._pool_in, matmul.inputs[1]))  # (N, C)
            # ADM's DistanceBlock for precision/recall: its ops in float16, and in float32 for a block whose
            # float16 result is not finite.
            self._u = tf.placeholder(tf.float32, shape=[None, None])
            self._v = tf.placeholder(tf.float32, shape=[None, None])
            d16 = _adm_sq_distances(tf, tf.cast(self._u, tf.float16), tf.cast(self._v, tf.float16))
            self._distances = tf.cond(tf.reduce_all(tf.math.is_finite(d16)), lambda: tf.cast(d16, tf.float32),
                                      lambda: _adm_sq_distances(tf, self._u, self._v))
        config = tf.ConfigProto(allow_soft_placement=True)  # the graph's DecodeJpeg op has no GPU kernel
        config.gpu_options.allow_growth = True
        self.session = tf.Session(graph=graph, config=config)

    def pool_features(self, images: np.ndarray):
        pool, spatial = self.session.run([self._pool, self._spatial], {self._images: images.astype(np.float32)})
        pool = pool.reshape(len(pool), -1)  # (N, D)
        # ADM runs the softmax on the stored pool features; feeding them back keeps the same float32 input.
        probs = self.session.run(self._probs, {self._pool_in: pool})
        return pool, spatial.reshape(len(spatial), -1), probs

    def pairwise_distances(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Squared distances [len(u), len(v)] float32 computed by TensorFlow as ADM's evaluator computes them
        (metrics.precision_recall's `distances`)."""
        return self.session.run(self._distances, {self._u: u, self._v: v})

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _adm_sq_distances(tf, u, v):
    """ADM's _batch_pairwise_distances: max(|u|^2 - 2 u v^T + |v|^2, 0) in the dtype of u and v."""
    norm_u = tf.reshape(tf.reduce_sum(tf.square(u), 1), [-1, 1])  # (Nu, 1)
    norm_v = tf.reshape(tf.reduce_sum(tf.square(v), 1), [1, -1])  # (1, Nv)
    return tf.maximum(norm_u - 2 * tf.matmul(u, v, False, True) + norm_v, 0.0)


# ---------------------------------------------------------------- streaming .npz reading

@contextmanager
def _open_npy(npz_path: str, key: str):
    """Open member `key`.npy of an .npz (stored or deflated) -> (file positioned at the data, shape, dtype)."""
    with zipfile.ZipFile(npz_path) as zf:
        name = f"{key}.npy"
        if name not in zf.namelist():
            raise KeyError(f"{npz_path} has no array '{key}' (has {sorted(zf.namelist())})")
        with zf.open(name) as f:
            version = np.lib.format.read_magic(f)
            assert version in ((1, 0), (2, 0)), f"{npz_path}:{name}: unsupported .npy version {version}"
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
            assert not fortran_order and not dtype.hasobject, f"{npz_path}:{name}: need a C-ordered plain array"
            yield f, shape, dtype


def npz_shape(npz_path: str, key: str = "arr_0") -> tuple:
    """Shape of one array in an .npz, from its header only."""
    with _open_npy(npz_path, key) as (_, shape, _dtype):
        return shape


def iter_npz_batches(npz_path: str, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
    """Yield consecutive [<=batch_size, ...] slices of one .npz array, reading only one batch at a time."""
    with _open_npy(npz_path, key) as (f, shape, dtype):
        row_bytes = dtype.itemsize * int(np.prod(shape[1:]))
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            data = f.read(n * row_bytes)
            if len(data) != n * row_bytes:
                raise ValueError(f"{npz_path}:{key}: truncated, rows {start}..{start + n} are missing")
            yield np.frombuffer(data, dtype=dtype).reshape(n, *shape[1:])


# ---------------------------------------------------------------- evaluation

def read_precomputed_statistics(npz_path: str):
    """((mu, sigma), (mu_s, sigma_s)) stored in an .npz (ADM's reference batches have them), else None."""
    with np.load(npz_path) as data:
        if "mu" not in data.files:
            return None
        return (data["mu"], data["sigma"]), (data["mu_s"], data["sigma_s"])


def extract_features(extractor: FeatureExtractor, npz_path: str, batch_size: int = 64, keep_spatial: bool = True):
    """Stream `arr_0` of an .npz through the extractor -> (pool (N, D), spatial (N, D2) or None, probs (N, C))."""
    shape = npz_shape(npz_path)
    assert len(shape) == 4 and shape[-1] == 3, f"{npz_path}: arr_0 must be images (N, H, W, 3), got {shape}"
    n = shape[0]
    pool = spatial = probs = None
    start = 0
    batches = progress(iter_npz_batches(npz_path, batch_size), total=-(-n // batch_size),
                   desc=f"features {os.path.basename(npz_path)}")
    for images in batches:
        assert images.dtype == np.uint8, f"{npz_path}: images must be uint8 in [0, 255], got {images.dtype}"
        p, s, q = extractor.pool_features(images)
        if pool is None:  # widths are known after the first batch; fill preallocated arrays, no concatenation
            pool = np.empty((n, p.shape[1]), p.dtype)
            probs = np.empty((n, q.shape[1]), q.dtype)
            if keep_spatial and s is not None:
                spatial = np.empty((n, s.shape[1]), s.dtype)
        end = start + len(images)
        pool[start:end], probs[start:end] = p, q
        if spatial is not None:
            spatial[start:end] = s
        start = end
    return pool, spatial, probs


def _computed_statistics(pool, spatial):
    """((mu, sigma), (mu_s, sigma_s) or None) from features."""
    return metrics.compute_statistics(pool), (None if spatial is None else metrics.compute_statistics(spatial))


def evaluate_with(extractor: FeatureExtractor, ref_npz: str, sample_npz: str, batch_size: int = 64,
                  with_precision_recall: bool = True) -> dict:
    """All five metrics of `sample_npz` against `ref_npz` with any feature extractor.

    Statistics stored in a file (mu, sigma, mu_s, sigma_s) are used instead of its features, for both files as
    in ADM. The reference images are read only when needed: for precision/recall, or when the reference file
    has no stored statistics. sfid is None when the extractor gives no spatial features; precision and recall
    are None when `with_precision_recall` is False.
    """
    sample_stored = read_precomputed_statistics(sample_npz)
    pool, spatial, probs = extract_features(extractor, sample_npz, batch_size, keep_spatial=sample_stored is None)
    sample_stats, sample_stats_s = sample_stored or _computed_statistics(pool, spatial)

    ref_stored = read_precomputed_statistics(ref_npz)
    ref_pool = None
    if with_precision_recall or ref_stored is None:
        ref_pool, ref_spatial, _ = extract_features(extractor, ref_npz, batch_size, keep_spatial=ref_stored is None)
        ref_stats, ref_stats_s = ref_stored or _computed_statistics(ref_pool, ref_spatial)
    else:
        ref_stats, ref_stats_s = ref_stored

    result = {
        "fid": metrics.frechet_distance(*sample_stats, *ref_stats),
        "sfid": None,
        "inception_score": metrics.inception_score(probs),
        "precision": None,
        "recall": None,
    }
    if sample_stats_s is not None and ref_stats_s is not None:
        result["sfid"] = metrics.frechet_distance(*sample_stats_s, *ref_stats_s)
    if with_precision_recall:
        distances = getattr(extractor, "pairwise_distances", metrics.pairwise_sq_distances)
        result["precision"], result["recall"] = metrics.precision_recall(ref_pool, pool, distances=distances)
    return result


BACKENDS = ("tf", "torch")


def build_inception(backend: str = "tf", inception_path: Optional[str] = None):
    """ADM's Inception-v3 graph run by TensorFlow ("tf", InceptionV3TF) or by PyTorch without TensorFlow
    ("torch", RandAR.eval.inception_torch: same graph, same features; CUDA when available)."""
    if backend == "tf":
        return InceptionV3TF(inception_path)
    if backend == "torch":
        from RandAR.eval.inception_torch import InceptionV3Torch
        return InceptionV3Torch(inception_path)
    raise ValueError(f"Inception backend {backend!r}: expected one of {BACKENDS}")


def evaluate(ref_npz: str, sample_npz: str, batch_size: Optional[int] = None, inception_path: Optional[str] = None,
             with_precision_recall: bool = True, backend: str = "tf") -> dict:
    """ADM's numbers: `evaluate_with` on the Inception-v3 graph -> dict(fid, sfid, inception_score, precision,
    recall). Raises InceptionGraphMissing before reading any data when the graph is absent and cannot be
    downloaded. batch_size None: 64, or the torch backend's choice for its device."""
    with build_inception(backend, inception_path) as extractor:
        batch_size = batch_size or getattr(extractor, "batch_size", 64)
        return evaluate_with(extractor, ref_npz, sample_npz, batch_size, with_precision_recall)


def metrics_json_path(sample_npz: str) -> str:
    """samples.npz -> samples.metrics.json, next to it."""
    return os.path.splitext(sample_npz)[0] + ".metrics.json"


def report(result: dict, sample_npz: str) -> str:
    """Print the metrics and write them to samples.metrics.json (what the evaluation CLIs leave behind)."""
    for name in METRIC_NAMES:
        print(f"{name}: {result[name]}")
    out = metrics_json_path(sample_npz)
    write_json(result, out)
    print(f"wrote {out}")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="ADM evaluator: FID, sFID, IS, precision, recall of a sample .npz")
    parser.add_argument("ref_batch", help="reference .npz, e.g. VIRTUAL_imagenet256_labeled.npz")
    parser.add_argument("sample_batch", help="sample .npz with uint8 images (N, H, W, 3) in arr_0")
    parser.add_argument("--inception-path", default=None,
                        help=f"classify_image_graph_def.pb (default: ${INCEPTION_ENV} or {DEFAULT_INCEPTION_PATH}, "
                             f"downloaded from {INCEPTION_URL} on first use)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per Inception forward pass (default: 64; torch on CUDA: from free memory)")
    parser.add_argument("--backend", choices=BACKENDS, default="tf",
                        help="run the graph with TensorFlow (ADM's evaluator) or with PyTorch (no TensorFlow, CUDA "
                             "when available; see GETTING_STARTED.md)")
    args = parser.parse_args(argv)

    try:
        result = evaluate(args.ref_batch, args.sample_batch, args.batch_size, args.inception_path,
                          backend=args.backend)
    except InceptionGraphMissing as e:
        raise SystemExit(f"error: {e}")  # one message, no traceback
    report(result, args.sample_batch)
    return result


if __name__ == "__main__":
    main()
