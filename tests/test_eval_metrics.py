"""Evaluation metrics against closed forms, and the ADM evaluator end to end on a tiny synthetic Inception graph.

The synthetic graph carries the tensor names the evaluator reads from the real classify_image_graph_def.pb
(ExpandDims:0, mixed_6/conv:0, pool_3:0, softmax/logits/MatMul) with small widths, so its features can be
recomputed here in numpy and the metrics checked against an independent computation. Precision/recall's
distances are checked against ADM's DistanceBlock written with its TensorFlow ops and run by TensorFlow here.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from RandAR.eval import fid, inception_graph, metrics, tolerances

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- Frechet distance

def _closed_form_fid(mu1, s1, mu2, s2):
    """Independent of sqrtm: tr sqrt(s1 s2) = sum of sqrt of the (real, >= 0) eigenvalues of s1 s2."""
    eig = np.linalg.eigvals(np.asarray(s1, np.float64) @ np.asarray(s2, np.float64)).real.clip(min=0)
    d = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum())


def test_frechet_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_covariances_and_identity():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # shared eigenvectors -> s1, s2 commute
    a, b = rng.uniform(0.1, 2, size=5), rng.uniform(0.1, 2, size=5)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_compute_statistics_matches_numpy():
    x = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = metrics.compute_statistics(x)
    assert mu.dtype == np.float32 and sigma.dtype == np.float64  # ADM's dtypes
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64).T), rtol=1e-6)


# ---------------------------------------------------------------- Inception Score

def test_inception_score_closed_forms():
    c = 7
    one_hot = np.tile(np.eye(c, dtype=np.float32), (3, 1))  # every class equally often: IS = C
    assert metrics.inception_score(one_hot) == pytest.approx(c, rel=1e-6)
    same = np.tile(np.random.default_rng(3).dirichlet(np.ones(c)), (10, 1))  # p(y|x) = p(y): IS = 1
    assert metrics.inception_score(same) == pytest.approx(1.0, rel=1e-6)
    # Splits are consecutive blocks; the score is the mean of the per-split scores.
    assert metrics.inception_score(np.concatenate([one_hot[:c], same[:c]]), split_size=c) == pytest.approx(
        (c + 1) / 2, rel=1e-6)


def test_inception_score_general_probabilities():
    p = np.random.default_rng(4).dirichlet(np.ones(5) * 0.5, size=40)
    py = p.mean(0)
    expected = np.exp(np.mean(np.sum(p * np.log(p / py), axis=1)))
    assert metrics.inception_score(p) == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- precision / recall

def test_precision_recall_on_a_line():
    # Reference points 0..9 on the x axis; k = 3: radius^2 of point 0 is 9 (its 3rd neighbour is 3).
    ref = np.stack([np.arange(10.0), np.zeros(10)], 1).astype(np.float32)
    radii = metrics.manifold_radii(ref, k=3)
    np.testing.assert_array_equal(radii, [9, 4, 4, 4, 4, 4, 4, 4, 4, 9])
    # -3 is on the boundary of point 0's ball (inside, <=); -3.5 and 20 are outside every ball; the other three
    # lie within distance 1 of a reference point (radius^2 >= 4).
    sample = np.array([[-3, 0], [-3.5, 0], [20, 0], [4.5, 0], [5, 1], [6, 0]], np.float32)
    # Sample radii^2: 3rd neighbour of each sample among the samples.
    s_radii = np.sort(cdist(sample, sample, "sqeuclidean"), axis=1)[:, 3]
    covered = (cdist(ref, sample, "sqeuclidean") <= s_radii[None]).any(1).mean()
    precision, recall = metrics.precision_recall(ref, sample)
    assert precision == pytest.approx(4 / 6)
    assert recall == pytest.approx(covered)


def test_precision_recall_far_clusters():
    rng = np.random.default_rng(5)
    cluster_a = rng.normal(size=(12, 8)).astype(np.float32)
    cluster_b = (rng.normal(size=(12, 8)) + 100).astype(np.float32)
    ref = np.concatenate([cluster_a, cluster_b])
    # Samples: copies of cluster A (inside its balls and covering it) plus points far from everything.
    sample = np.concatenate([cluster_a, rng.normal(size=(4, 8)).astype(np.float32) - 100])
    precision, recall = metrics.precision_recall(ref, sample)
    assert precision == pytest.approx(12 / 16)
    assert recall == pytest.approx(0.5)


def test_precision_recall_batched_equals_brute_force():
    rng = np.random.default_rng(6)
    ref, sample = rng.normal(size=(90, 6)).astype(np.float32), (rng.normal(size=(70, 6)) + 0.5).astype(np.float32)
    # float16 distances: radii within float16 rounding of the exact ones.
    np.testing.assert_allclose(metrics.manifold_radii(ref, row_batch=7, col_batch=11),
                               np.sort(cdist(ref, ref, "sqeuclidean"), axis=1)[:, 3], rtol=2e-3, atol=2e-3)
    assert metrics.precision_recall(ref, sample, row_batch=13, col_batch=17) == metrics.precision_recall(ref, sample)


def _brute_force_pr(ref, sample, k=3):
    """Exact (float64) precision and recall."""
    r_ref = np.sort(cdist(ref, ref, "sqeuclidean"), axis=1)[:, k]
    r_sample = np.sort(cdist(sample, sample, "sqeuclidean"), axis=1)[:, k]
    d = cdist(ref, sample, "sqeuclidean")
    return float((d <= r_ref[:, None]).any(0).mean()), float((d <= r_sample[None]).any(1).mean())


@pytest.fixture(scope="module")
def adm_distances():
    """ADM's DistanceBlock as guided-diffusion's evaluations/evaluator.py builds it (its TF ops, float16 with the
    float32 graph when the float16 block is not finite), run by TensorFlow on CPU: (u, v) -> float32 block."""
    tf = pytest.importorskip("tensorflow.compat.v1")

    def batch_pairwise_distances(u, v):
        norm_u = tf.reshape(tf.reduce_sum(tf.square(u), 1), [-1, 1])
        norm_v = tf.reshape(tf.reduce_sum(tf.square(v), 1), [1, -1])
        return tf.maximum(norm_u - 2 * tf.matmul(u, v, False, True) + norm_v, 0.0)

    graph = tf.Graph()
    with graph.as_default():
        u, v = tf.placeholder(tf.float32, [None, None]), tf.placeholder(tf.float32, [None, None])
        d16 = batch_pairwise_distances(tf.cast(u, tf.float16), tf.cast(v, tf.float16))
        block = tf.cond(tf.reduce_all(tf.math.is_finite(d16)), lambda: tf.cast(d16, tf.float32),
                        lambda: batch_pairwise_distances(u, v))
    with tf.Session(graph=graph) as session:
        yield lambda a, b: session.run(block, {u: a, v: b})


@pytest.fixture(scope="module")
def tf_extractor(graph):
    """`--backend tf`'s extractor (on the synthetic graph): precision/recall take its pairwise_distances."""
    with fid.InceptionV3TF(graph[0]) as extractor:
        yield extractor


def _features(seed, n_ref=40, n_sample=30, dim=16):
    """Non-negative, Inception-like features: references and samples shifted apart."""
    rng = np.random.default_rng(seed)
    ref = np.abs(rng.normal(size=(n_ref, dim)) * 4).astype(np.float32)
    sample = (np.abs(rng.normal(size=(n_sample, dim)) * 4) + 0.5).astype(np.float32)
    return ref, sample


@pytest.mark.parametrize("seed, differs", [(11, "recall"), (34, "precision")])
def test_tf_backend_precision_recall_are_adms(seed, differs, adm_distances, tf_extractor):
    # For these seeds ADM's float16 distances move a point across a ball's edge (float64 decides otherwise).
    ref, sample = _features(seed)
    adm = metrics.precision_recall(ref, sample, distances=adm_distances)
    i = ("precision", "recall").index(differs)
    assert adm[i] != _brute_force_pr(ref, sample)[i]  # the case separates float16 from exact arithmetic
    for u, v in [(ref, sample), (ref, ref), (sample, sample)]:
        np.testing.assert_array_equal(tf_extractor.pairwise_distances(u, v), adm_distances(u, v))
    assert metrics.precision_recall(ref, sample, distances=tf_extractor.pairwise_distances) == adm


def test_numpy_distances_agree_with_adms_tensorflow_within_tolerance(adm_distances):
    # metrics.pairwise_sq_distances (the torch backend's and other extractors' distances) is ADM's formula in
    # float16 but not TF's summation order: about a float16 ulp of the norms apart, so precision/recall may
    # differ by the few points that close to a ball's edge.
    differ = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        ref = np.abs(rng.normal(size=(160, 256)) * 0.5).astype(np.float32)
        sample = (np.abs(rng.normal(size=(140, 256)) * 0.5) + 0.05).astype(np.float32)
        sample[:10] = ref[:10] + rng.normal(size=(10, 256)).astype(np.float32) * 0.005  # near duplicates
        want, got = adm_distances(ref, sample), metrics.pairwise_sq_distances(ref, sample)
        norms = np.sum(ref.astype(np.float64) ** 2, 1)[:, None] + np.sum(sample.astype(np.float64) ** 2, 1)[None]
        assert np.all(np.abs(got - want) <= tolerances.FLOAT16_DISTANCE_RTOL * norms)
        differ += int(np.any(got != want))
        adm = metrics.precision_recall(ref, sample, distances=adm_distances)
        np.testing.assert_allclose(metrics.precision_recall(ref, sample), adm,
                                   rtol=0, atol=tolerances.PRECISION_RECALL_ATOL)
    assert differ == 6  # not bit for bit: the tolerance is needed


def test_distance_block_falls_back_to_float32_per_block(adm_distances, tf_extractor):
    ref, sample = _features(12, 30, 24)
    ref[3] *= 40  # |x|^2 > 65504: float16 overflows in every block that holds this row
    sample[20] *= 40
    assert np.sum(ref[3].astype(np.float64) ** 2) > np.finfo(np.float16).max
    exact = cdist(ref.astype(np.float64), sample.astype(np.float64), "sqeuclidean")
    for distances in (metrics.pairwise_sq_distances, tf_extractor.pairwise_distances):
        np.testing.assert_allclose(distances(ref, sample), exact, rtol=1e-5)  # a finite float32 block
    np.testing.assert_array_equal(tf_extractor.pairwise_distances(ref, sample), adm_distances(ref, sample))
    # Blocks of 10: only those with sample 20 use float32, the others stay float16 as in ADM.
    blocks = [[adm_distances(sample[i:i + 10], sample[j:j + 10]) for j in (0, 10, 20)] for i in (0, 10, 20)]
    radii = np.sort(np.block(blocks), axis=1)[:, 3]
    np.testing.assert_array_equal(
        metrics.manifold_radii(sample, row_batch=10, col_batch=10, distances=tf_extractor.pairwise_distances), radii)
    assert np.any(radii != np.sort(adm_distances(sample, sample), axis=1)[:, 3])  # one block: all in float32
    assert metrics.precision_recall(ref, sample, row_batch=10, col_batch=10,
                                    distances=tf_extractor.pairwise_distances) == \
        metrics.precision_recall(ref, sample, row_batch=10, col_batch=10, distances=adm_distances)


# ---------------------------------------------------------------- streaming .npz reader

@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_iter_npz_batches(tmp_path, save):
    arr = np.random.default_rng(7).integers(0, 256, size=(23, 4, 5, 3), dtype=np.uint8)
    path = str(tmp_path / "a.npz")
    save(path, arr_0=arr, arr_1=np.arange(23))
    batches = list(fid.iter_npz_batches(path, 10))
    assert [len(b) for b in batches] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate(batches), arr)
    assert fid.npz_shape(path) == arr.shape
    with pytest.raises(KeyError, match="no array 'images'"):
        fid.npz_shape(path, key="images")


# ---------------------------------------------------------------- synthetic Inception graph

C_HIDDEN, C_SPATIAL, D_POOL, N_CLASSES = 16, 8, 12, 10


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """Tiny frozen graph with the real graph's tensor names; returns (path to .pb, weights for numpy)."""
    import tensorflow.compat.v1 as tf

    rng = np.random.default_rng(8)
    w = {
        "w0": rng.normal(size=(3, C_HIDDEN)).astype(np.float32),
        "w1": rng.normal(size=(C_HIDDEN, C_SPATIAL)).astype(np.float32),
        "b1": rng.normal(size=C_SPATIAL).astype(np.float32) * 0.1,
        "w2": rng.normal(size=(C_SPATIAL, D_POOL)).astype(np.float32),
        "ws": rng.normal(size=(D_POOL, N_CLASSES)).astype(np.float32),
        "bs": rng.normal(size=N_CLASSES).astype(np.float32),  # the graph has a bias; ADM's IS ignores it
    }
    g = tf.Graph()
    with g.as_default():
        # Like the real graph: one decoded image, cast, batch axis at ExpandDims (where ADM feeds batches).
        decoded = tf.placeholder(tf.uint8, [None, None, 3], name="DecodeJpeg")
        x = tf.expand_dims(tf.cast(decoded, tf.float32, name="Cast"), 0, name="ExpandDims")
        x = tf.multiply(tf.subtract(x, 128.0, name="Sub"), 1 / 128.0, name="Mul")
        # tanh units (none dead) keep the tiny feature covariances full rank.
        x = tf.tanh(tf.nn.conv2d(x, w["w0"][None, None], strides=1, padding="VALID"))  # (N, H, W, C_HIDDEN)
        x = tf.nn.avg_pool2d(x, ksize=4, strides=4, padding="VALID")  # (N, H/4, W/4, C_HIDDEN)
        conv = tf.nn.conv2d(x, w["w1"][None, None], strides=1, padding="VALID")
        spatial = tf.add(conv, w["b1"], name="mixed_6/conv")  # (N, h, w, C_SPATIAL)
        h = tf.tanh(tf.nn.conv2d(tf.tanh(spatial), w["w2"][None, None], strides=1, padding="VALID"))
        pool = tf.reduce_mean(h, axis=[1, 2], keepdims=True, name="pool_3")  # (N, 1, 1, D_POOL)
        flat = tf.reshape(pool, [1, D_POOL], name="pool_3/_reshape")  # batch 1 baked in, as in the real graph
        logits = tf.matmul(flat, tf.constant(w["ws"], name="softmax/weights"), name="softmax/logits/MatMul")
        tf.nn.softmax(tf.nn.bias_add(logits, w["bs"], name="softmax/logits"), name="softmax")
    path = tmp_path_factory.mktemp("inception") / "classify_image_graph_def.pb"
    path.write_bytes(g.as_graph_def(add_shapes=True).SerializeToString())  # with _output_shapes
    return str(path), w


def _numpy_features(images, w):
    """The synthetic graph's math in float64 numpy -> (pool, spatial first 7 channels flattened, probs)."""
    x = (images.astype(np.float64) - 128) / 128
    n, hh, ww, _ = x.shape
    x = np.tanh(x @ w["w0"]).reshape(n, hh // 4, 4, ww // 4, 4, C_HIDDEN).mean(axis=(2, 4))
    spatial = x @ w["w1"] + w["b1"]
    pool = np.tanh(np.tanh(spatial) @ w["w2"]).mean(axis=(1, 2))
    logits = pool @ w["ws"]  # no bias, as ADM
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return pool, spatial[..., :7].reshape(n, -1), probs


def _images(seed, n, low):
    return np.random.default_rng(seed).integers(low, 256, size=(n, 8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    d = tmp_path_factory.mktemp("batches")
    ref, sample = _images(9, 48, 0), _images(10, 40, 30)  # shifted: precision, recall ~0.6, 0.4
    np.savez(d / "ref.npz", arr_0=ref)
    np.savez(d / "sample.npz", arr_0=sample, arr_1=np.arange(40))  # labels are ignored
    return d, ref, sample


def test_inception_features_match_graph_math(graph, batches):
    path, w = graph
    _, ref, _ = batches
    with fid.InceptionV3TF(path) as extractor:
        pool, spatial, probs = extractor.pool_features(ref[:5])
    for got, want in zip((pool, spatial, probs), _numpy_features(ref[:5], w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_evaluate_end_to_end(graph, batches, adm_distances):
    path, w = graph
    d, ref, sample = batches
    result = fid.evaluate(str(d / "ref.npz"), str(d / "sample.npz"), batch_size=16, inception_path=path)

    ref_pool, ref_spatial, _ = _numpy_features(ref, w)
    pool, spatial, probs = _numpy_features(sample, w)
    stats = lambda x: (x.mean(0), np.cov(x, rowvar=False))
    py = probs.mean(0)
    expected = {
        "fid": _closed_form_fid(*stats(pool), *stats(ref_pool)),
        "sfid": _closed_form_fid(*stats(spatial), *stats(ref_spatial)),
        "inception_score": np.exp(np.mean(np.sum(probs * np.log(probs / py), axis=1))),
    }
    expected["precision"], expected["recall"] = metrics.precision_recall(
        ref_pool.astype(np.float32), pool.astype(np.float32), distances=adm_distances)
    assert set(result) == set(fid.METRIC_NAMES)
    for name in fid.METRIC_NAMES:
        assert result[name] == pytest.approx(expected[name], rel=1e-3, abs=1e-5), name
    assert 0 < result["precision"] < 1 and 0 < result["recall"] < 1  # a non-trivial check


def test_tf_backend_never_uses_the_numpy_distances(graph, batches, monkeypatch):
    d, _, _ = batches
    want = fid.evaluate(str(d / "ref.npz"), str(d / "sample.npz"), inception_path=graph[0])

    def refused(u, v, dtype):
        raise AssertionError("--backend tf computed a distance block outside TensorFlow")
    monkeypatch.setattr(metrics, "_sq_distances", refused)  # what metrics.pairwise_sq_distances computes with
    assert fid.evaluate(str(d / "ref.npz"), str(d / "sample.npz"), inception_path=graph[0]) == want


def test_evaluate_uses_stored_reference_statistics(graph, batches, tmp_path):
    path, w = graph
    d, ref, _ = batches
    other_pool, other_spatial, _ = _numpy_features(_images(11, 60, 30), w)
    mu, sigma = other_pool.mean(0), np.cov(other_pool, rowvar=False)
    mu_s, sigma_s = other_spatial.mean(0), np.cov(other_spatial, rowvar=False)
    ref_npz = str(tmp_path / "VIRTUAL_ref.npz")
    np.savez(ref_npz, arr_0=ref, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)

    result = fid.evaluate(ref_npz, str(d / "sample.npz"), batch_size=64, inception_path=path)
    full = fid.evaluate(str(d / "ref.npz"), str(d / "sample.npz"), batch_size=64, inception_path=path)
    pool, spatial, _ = _numpy_features(np.load(d / "sample.npz")["arr_0"], w)
    stats = lambda x: (x.mean(0), np.cov(x, rowvar=False))
    assert result["fid"] == pytest.approx(_closed_form_fid(*stats(pool), mu, sigma), rel=1e-3)
    assert result["sfid"] == pytest.approx(_closed_form_fid(*stats(spatial), mu_s, sigma_s), rel=1e-3)
    # Precision/recall still come from the reference images.
    assert (result["precision"], result["recall"]) == (full["precision"], full["recall"])


class _CountingExtractor:
    """A numpy FeatureExtractor (no spatial features) that records how many images it saw."""

    def __init__(self):
        self.seen = 0

    def pool_features(self, images):
        self.seen += len(images)
        x = images.reshape(len(images), -1).astype(np.float32) / 255
        pool = x[:, :6]
        logits = x[:, :4] * 5
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return pool, None, probs


def test_evaluate_with_plain_extractor_reads_reference_only_when_needed(batches, tmp_path):
    d, ref, sample = batches
    ref_npz = str(tmp_path / "ref_stats.npz")
    ref_pool = ref.reshape(len(ref), -1).astype(np.float32)[:, :6] / 255
    np.savez(ref_npz, arr_0=ref, mu=ref_pool.mean(0), sigma=np.cov(ref_pool, rowvar=False),
             mu_s=np.zeros(1), sigma_s=np.eye(1))

    ex = _CountingExtractor()
    quick = fid.evaluate_with(ex, ref_npz, str(d / "sample.npz"), batch_size=7, with_precision_recall=False)
    assert ex.seen == len(sample)  # stored statistics: reference images not read
    assert quick["sfid"] is None and quick["precision"] is None

    ex = _CountingExtractor()
    full = fid.evaluate_with(ex, ref_npz, str(d / "sample.npz"), batch_size=7)
    assert ex.seen == len(sample) + len(ref)
    assert full["fid"] == pytest.approx(quick["fid"])
    sample_pool = sample.reshape(len(sample), -1).astype(np.float32)[:, :6] / 255
    assert (full["precision"], full["recall"]) == metrics.precision_recall(ref_pool, sample_pool)


# ---------------------------------------------------------------- missing graph, CLI

def test_missing_graph_error(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere" / "classify_image_graph_def.pb")
    with pytest.raises(inception_graph.InceptionGraphMissing) as err:
        fid.InceptionV3TF(missing)
    assert missing in str(err.value) and inception_graph.INCEPTION_URL in str(err.value)

    monkeypatch.setenv(inception_graph.INCEPTION_ENV, missing)  # the environment variable is the next choice
    with pytest.raises(inception_graph.InceptionGraphMissing, match="nowhere"):
        inception_graph.resolve_inception_path()
    monkeypatch.delenv(inception_graph.INCEPTION_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))  # then ~/.cache/randar/, downloaded there: here from nowhere
    monkeypatch.setattr(inception_graph, "INCEPTION_URL", (tmp_path / "offline.pb").as_uri())
    with pytest.raises(inception_graph.InceptionGraphMissing, match=".cache/randar/classify_image_graph_def.pb"):
        inception_graph.resolve_inception_path()

    with pytest.raises(SystemExit, match=inception_graph.INCEPTION_URL):  # the CLI: one message, no traceback
        fid.main(["ref.npz", "sample.npz", "--inception-path", missing])


# ---------------------------------------------------------------- download on first use

def _use_default_cache(tmp_path, monkeypatch, url):
    """No flag, no $RANDAR_INCEPTION_PATH, HOME in tmp_path, the graph's URL replaced -> the cache path."""
    monkeypatch.delenv(inception_graph.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(inception_graph, "INCEPTION_URL", url)
    return tmp_path / ".cache" / "randar" / "classify_image_graph_def.pb"


def test_graph_is_downloaded_on_first_use(graph, batches, tmp_path, monkeypatch):
    path, w = graph
    _, ref, _ = batches
    cache = _use_default_cache(tmp_path, monkeypatch, pathlib.Path(path).as_uri())
    with fid.InceptionV3TF() as extractor:
        pool, _, _ = extractor.pool_features(ref[:3])
    np.testing.assert_allclose(pool, _numpy_features(ref[:3], w)[0], rtol=1e-4, atol=1e-5)
    assert cache.read_bytes() == pathlib.Path(path).read_bytes()
    assert os.listdir(cache.parent) == [cache.name]  # no temporary file left behind
    monkeypatch.setattr(inception_graph, "INCEPTION_URL", (tmp_path / "gone.pb").as_uri())  # later runs never fetch
    assert inception_graph.resolve_inception_path() == str(cache)


def _other_graph_bytes():
    import tensorflow.compat.v1 as tf

    g = tf.Graph()
    with g.as_default():
        tf.add(tf.placeholder(tf.float32, [None, 3], name="ExpandDims"), 1.0, name="pool_4")
    return g.as_graph_def().SerializeToString()


@pytest.mark.parametrize("kind, reason", [
    ("truncated", "not a serialized GraphDef"),
    ("html", "not a serialized GraphDef"),
    ("other graph", "no node pool_3, mixed_6/conv, softmax/logits/MatMul"),
    ("offline", "No such file|not found|URLError|urlopen"),
])
def test_bad_download_is_refused_and_not_cached(graph, tmp_path, monkeypatch, kind, reason):
    good = pathlib.Path(graph[0]).read_bytes()
    served = tmp_path / "served.pb"
    if kind == "truncated":
        served.write_bytes(good[: len(good) // 2])
    elif kind == "html":
        served.write_bytes(b"<html><body><h1>503 Service Unavailable</h1></body></html>\n")
    elif kind == "other graph":
        served.write_bytes(_other_graph_bytes())
    cache = _use_default_cache(tmp_path, monkeypatch, served.as_uri())
    with pytest.raises(inception_graph.InceptionGraphMissing, match=reason) as err:
        fid.InceptionV3TF()
    assert served.as_uri() in str(err.value) and "--inception-path" in str(err.value)
    assert not cache.exists() and os.listdir(cache.parent) == []  # nothing cached, no partial file
    with pytest.raises(SystemExit, match=served.as_uri()):  # the CLI: one message, no traceback
        fid.main(["ref.npz", "sample.npz"])


def test_given_graph_path_is_never_downloaded_over(tmp_path, monkeypatch, graph):
    missing = tmp_path / "mine.pb"
    monkeypatch.setattr(inception_graph, "INCEPTION_URL", pathlib.Path(graph[0]).as_uri())
    with pytest.raises(inception_graph.InceptionGraphMissing, match="--inception-path"):
        inception_graph.resolve_inception_path(str(missing))
    monkeypatch.setenv(inception_graph.INCEPTION_ENV, str(missing))
    with pytest.raises(inception_graph.InceptionGraphMissing, match=inception_graph.INCEPTION_ENV):
        inception_graph.resolve_inception_path()
    assert not missing.exists()


def test_cli_writes_json(graph, batches):
    path, _ = graph
    d, _, _ = batches
    out = subprocess.run(
        [sys.executable, "-m", "RandAR.eval.fid", str(d / "ref.npz"), str(d / "sample.npz"),
         "--inception-path", path, "--batch-size", "32"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stderr
    written = json.loads((d / "sample.metrics.json").read_text())
    expected = fid.evaluate(str(d / "ref.npz"), str(d / "sample.npz"), batch_size=32, inception_path=path)
    assert written == pytest.approx(expected, rel=1e-6)
    for name in fid.METRIC_NAMES:
        assert f"{name}: " in out.stdout
