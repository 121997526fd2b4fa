"""Sample-quality metrics on feature arrays, with the numerics of the ADM evaluator (guided-diffusion).

Plain numpy/scipy and no feature extractor in here, so any network's features can be scored:
  FID / sFID   `compute_statistics` + `frechet_distance`
  IS           `inception_score` on class probabilities
  precision / recall   `precision_recall` (Kynkaanniemi et al. 2019, k = 3 nearest-neighbour balls), from
                       blocks of pairwise distances: by default `pairwise_sq_distances` (ADM's float16 formula in
                       numpy); RandAR.eval.fid.InceptionV3TF passes ADM's own TensorFlow distance block instead
"""
import warnings

import numpy as np
from scipy import linalg


def compute_statistics(features: np.ndarray):
    """Mean and covariance of features [N, D] -> (mu [D], sigma [D, D]).

    Like ADM, the mean keeps the features' dtype (float32 features -> float32 mean) and np.cov works in float64.
    """
    mu = np.mean(features, axis=0)
    sigma = np.cov(features, rowvar=False)
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2)).

    Same steps as ADM (after TTUR): scipy sqrtm of the product; if that is not finite, retry with eps on both
    diagonals; drop a small imaginary part, but raise when the diagonal's imaginary part exceeds 1e-3.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    assert mu1.shape == mu2.shape, f"mean vectors differ in length: {mu1.shape} vs {mu2.shape}"
    assert sigma1.shape == sigma2.shape, f"covariances differ in shape: {sigma1.shape} vs {sigma2.shape}"
    diff = mu1 - mu2

    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # The product is close to singular (e.g. fewer samples than dimensions).
        warnings.warn(f"FID: singular product, adding {eps} to the diagonal of both covariances")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))

    if np.iscomplexobj(covmean):
        # Round-off can leave a tiny imaginary part; a large one means the statistics are broken.
        # (RandAR's copy returns 0 here, a fake perfect FID; ADM raises, and so do we.)
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrt(sigma1 sigma2)")
        covmean = covmean.real

    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """Inception Score of class probabilities p(y|x) [N, C], as ADM (after improved-gan) computes it.

    The samples are cut, in order, into consecutive splits of `split_size` (the last one may be shorter);
    per split: exp(mean_x KL(p(y|x) || p(y))) with p(y) the split's mean; the score is the mean over splits.
    Terms with p(y|x) = 0 count as 0 (ADM would get nan there; where ADM is finite the result is the same).
    """
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]  # (S, C)
        marginal = np.mean(part, axis=0, keepdims=True)  # (1, C) p(y) over this split
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0)
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores))


# ADM's ManifoldEstimator settings: k = 3 and 10000 x 10000 distance blocks. The block size matters beyond memory:
# the float32 fallback below is decided per block.
NHOOD_SIZE = 3
BLOCK_SIZE = 10000


def _sq_distances(u: np.ndarray, v: np.ndarray, dtype) -> np.ndarray:
    """|u|^2 - 2 u.v + |v|^2 clamped at 0 with every tensor of ADM's graph (squares, norms, product, each sum)
    rounded to `dtype`. Norms and the product accumulate in float32 and round once, as cuBLAS does for float16;
    TF builds and devices differ from each other in the order of the norms' sums (the last float16 bit)."""
    u, v = u.astype(dtype), v.astype(dtype)
    norm_u = np.sum(np.square(u), axis=1, dtype=np.float32).astype(dtype)[:, None]  # (Nu, 1)
    norm_v = np.sum(np.square(v), axis=1, dtype=np.float32).astype(dtype)[None, :]  # (1, Nv)
    uv = (u.astype(np.float32) @ v.astype(np.float32).T).astype(dtype)  # (Nu, Nv)
    return np.maximum(norm_u - 2 * uv + norm_v, dtype(0))


def pairwise_sq_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(u), len(v)] -> float32 with ADM's DistanceBlock's formula and dtypes: in
    float16, and in float32 only when some entry of the float16 block is not finite (overflow).

    Not bit for bit TensorFlow's: TF sums the float16 norms and the product in its own order, so entries differ
    by about a float16 ulp of |u|^2 + |v|^2 (RandAR.eval.tolerances.FLOAT16_DISTANCE_RTOL); ADM's numbers come from
    InceptionV3TF.pairwise_distances, which runs ADM's ops in TensorFlow."""
    with np.errstate(over="ignore", invalid="ignore"):
        d = _sq_distances(np.asarray(u, np.float32), np.asarray(v, np.float32), np.float16)
    if np.isfinite(d).all():
        return d.astype(np.float32)
    return _sq_distances(np.asarray(u, np.float32), np.asarray(v, np.float32), np.float32)


def manifold_radii(features: np.ndarray, k: int = NHOOD_SIZE, row_batch: int = BLOCK_SIZE,
                   col_batch: int = BLOCK_SIZE, distances=pairwise_sq_distances) -> np.ndarray:
    """Squared distance from each feature vector to its k-th nearest neighbour in the same set -> [N] float32.

    The point itself (distance ~0) is one of the candidates, as in ADM: the radius is the (k+1)-th smallest
    entry of its distance row. Rows are done `row_batch` at a time (memory row_batch x N), each row batch in
    blocks of `col_batch` columns, as ADM; `distances(u, v)` computes one block.
    """
    n = len(features)
    assert n > k, f"need more than k={k} feature vectors for k-NN radii, got {n}"
    radii = np.empty(n, dtype=np.float32)
    rows = np.empty((min(row_batch, n), n), dtype=np.float32)
    for r0 in range(0, n, row_batch):
        r1 = min(r0 + row_batch, n)
        for c0 in range(0, n, col_batch):
            c1 = min(c0 + col_batch, n)
            rows[: r1 - r0, c0:c1] = distances(features[r0:r1], features[c0:c1])
        radii[r0:r1] = np.partition(rows[: r1 - r0], k, axis=1)[:, k]
    return radii


def precision_recall(ref_features: np.ndarray, sample_features: np.ndarray, k: int = NHOOD_SIZE,
                     row_batch: int = BLOCK_SIZE, col_batch: int = BLOCK_SIZE, distances=pairwise_sq_distances):
    """Improved precision and recall (k-NN manifolds) -> (precision, recall), as ADM's ManifoldEstimator.

    precision: fraction of samples inside at least one reference ball (radius = that reference's k-NN distance);
    recall: fraction of references inside at least one sample ball. Distances between the sets are computed in
    blocks of `row_batch` references x `col_batch` samples, each by `distances(u, v)`.
    """
    ref_radii = manifold_radii(ref_features, k, row_batch, col_batch, distances)  # (Nr,)
    sample_radii = manifold_radii(sample_features, k, row_batch, col_batch, distances)  # (Ns,)
    ref_in = np.zeros(len(ref_features), dtype=bool)
    sample_in = np.zeros(len(sample_features), dtype=bool)
    for r0 in range(0, len(ref_features), row_batch):
        r1 = r0 + row_batch
        for s0 in range(0, len(sample_features), col_batch):
            s1 = s0 + col_batch
            d = distances(ref_features[r0:r1], sample_features[s0:s1])  # (Br, Bs)
            ref_in[r0:r1] |= np.any(d <= sample_radii[None, s0:s1], axis=1)
            sample_in[s0:s1] |= np.any(d <= ref_radii[r0:r1, None], axis=0)
    return float(np.mean(sample_in)), float(np.mean(ref_in))
