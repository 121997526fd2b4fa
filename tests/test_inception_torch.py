"""The Inception graph run by PyTorch (RandAR.eval.tf_graph) against TensorFlow running the same GraphDef.

Per op: every op type in tf_ops.OPS, on graphs written node by node with random shapes, strides, paddings and
attributes (SEEDS_PER_OP cases each), gives TF's outputs to float32 tolerance (tolerances.OP_RTOL). Whole graph:
an Inception-like graph with the real graph's op types and tensor names gives the same five metrics with --backend torch and --backend tf within
RandAR.eval.tolerances, also with TensorFlow hidden from the torch run.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from RandAR.eval import fid, tf_graph, tf_ops
from RandAR.eval.tolerances import FEATURE_RTOL, METRIC_RTOL, OP_RTOL, PRECISION_RECALL_ATOL
from RandAR.eval.tf_graph import TFGraph, parse_graph_def
from tf_graphs import GraphBuilder, run_tf, write_inception_like

tf = pytest.importorskip("tensorflow.compat.v1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = tf.float32


def _normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------- per-op cases: (graph, feeds) with output "y"

def case_conv2d(rng, g):
    n, h, w, cin, cout = rng.integers(1, 4), rng.integers(5, 13), rng.integers(5, 13), rng.integers(1, 6), \
        rng.integers(1, 7)
    k = rng.integers(1, 5, 2).tolist()
    dilated = rng.random() < 0.3
    s = [1, 1] if dilated else rng.integers(1, 4, 2).tolist()  # TF's CPU conv: dilations need stride 1
    padding = str(rng.choice(["SAME", "VALID", "EXPLICIT"]))
    attrs = dict(T=F32, strides=[1, *s, 1], padding=padding)
    if padding == "EXPLICIT":
        attrs["explicit_paddings"] = [0, 0, *rng.integers(0, 3, 4).tolist(), 0, 0]
    if dilated:
        attrs["dilations"] = [1, 2, 2, 1]
    elif rng.random() < 0.5:
        attrs["data_format"] = "NHWC"  # the 2015 export leaves these attributes out; TF's defaults apply
    g.placeholder("x")
    g.const("w", _normal(rng, *k, cin, cout))
    g.op("y", "Conv2D", ["x", "w"], **attrs)
    return {"x": _normal(rng, n, h, w, cin)}


def _pool_case(op):
    def case(rng, g):
        n, h, w, c = rng.integers(1, 4), rng.integers(4, 12), rng.integers(4, 12), rng.integers(1, 5)
        k, s = rng.integers(1, 5, 2).tolist(), rng.integers(1, 4, 2).tolist()
        padding = str(rng.choice(["SAME", "VALID"]))
        g.placeholder("x")
        g.op("y", op, ["x"], T=F32, ksize=[1, *k, 1], strides=[1, *s, 1], padding=padding)
        return {"x": _normal(rng, n, h, w, c)}
    return case


def case_resize_bilinear(rng, g):
    mode = int(rng.integers(3))  # legacy, align_corners, half_pixel_centers (TF forbids both)
    n, h, w, c = rng.integers(1, 3), rng.integers(2, 10), rng.integers(2, 10), rng.integers(1, 4)
    g.placeholder("x")
    g.const("size", rng.integers(1, 16, 2).astype(np.int32))
    attrs = dict(T=F32)
    if mode:  # mode 0 leaves the attributes out, as the 2015 export's half_pixel_centers
        attrs.update(align_corners=mode == 1, half_pixel_centers=mode == 2)
    g.op("y", "ResizeBilinear", ["x", "size"], **attrs)
    return {"x": rng.integers(0, 256, (n, h, w, c)).astype(np.float32)}


def case_batch_norm(rng, g):
    c = int(rng.integers(1, 6))
    g.placeholder("x")
    names = []
    for name, value in [("m", _normal(rng, c)), ("v", rng.uniform(0.1, 2, c).astype(np.float32)),
                        ("beta", _normal(rng, c)), ("gamma", _normal(rng, c))]:
        names.append(g.const(name, value))
    g.op("y", "BatchNormWithGlobalNormalization", ["x", *names], T=F32,
         variance_epsilon=float(rng.choice([1e-3, 1e-5, 0.5])), scale_after_normalization=bool(rng.integers(2)))
    return {"x": _normal(rng, int(rng.integers(1, 3)), 3, 4, c)}


def _concat_case(op):
    def case(rng, g):
        shape = rng.integers(1, 5, 4)
        axis = int(rng.integers(-4, 4))
        n = int(rng.integers(2, 4))
        feeds = {}
        for i in range(n):
            shape[axis] = rng.integers(1, 4)
            feeds[f"x{i}"] = _normal(rng, *shape)
            g.placeholder(f"x{i}")
        g.const("axis", np.int32(axis))
        inputs = [*feeds, "axis"] if op == "ConcatV2" else ["axis", *feeds]
        extra = dict(Tidx=tf.int32) if op == "ConcatV2" else {}
        g.op("y", op, inputs, T=F32, N=n, **extra)
        return feeds
    return case


def case_reshape(rng, g):
    x = _normal(rng, *rng.integers(1, 4, int(rng.integers(1, 5))))
    # Target: x's sizes shuffled, some neighbours merged, 1s inserted (often in front, also before a batch > 1),
    # and often one -1.
    dims = rng.permutation(x.shape).tolist()
    merged = [dims[0]]
    for d in dims[1:]:
        if rng.random() < 0.4:
            merged[-1] *= d
        else:
            merged.append(d)
    for _ in range(int(rng.integers(0, 3))):
        merged.insert(0 if rng.random() < 0.5 else int(rng.integers(len(merged) + 1)), 1)
    if rng.random() < 0.6:
        merged[int(rng.integers(len(merged)))] = -1
    g.placeholder("x")
    g.const("shape", np.array(merged, np.int32))
    g.op("y", "Reshape", ["x", "shape"], T=F32, Tshape=tf.int32)
    return {"x": x}


def case_expand_dims(rng, g):
    x = _normal(rng, *rng.integers(1, 4, int(rng.integers(1, 4))))
    g.placeholder("x")
    g.const("dim", np.int32(rng.integers(-x.ndim - 1, x.ndim + 1)))
    g.op("y", "ExpandDims", ["x", "dim"], T=F32, Tdim=tf.int32)
    return {"x": x}


def case_squeeze(rng, g):
    shape = rng.integers(1, 3, 4)
    x = _normal(rng, *shape)
    ones = [i for i in range(4) if shape[i] == 1]
    dims = [d for d in ones if rng.random() < 0.5]
    g.placeholder("x")
    g.op("y", "Squeeze", ["x"], T=F32, **({"squeeze_dims": dims} if dims else {}))
    return {"x": x}


def case_mean(rng, g):
    x = _normal(rng, *rng.integers(1, 5, 4))
    axes = sorted(rng.choice(4, int(rng.integers(1, 4)), replace=False).tolist())
    g.placeholder("x")
    g.const("axes", np.array(axes, np.int32))
    g.op("y", "Mean", ["x", "axes"], T=F32, Tidx=tf.int32, keep_dims=bool(rng.integers(2)))
    return {"x": x}


def case_matmul(rng, g):
    m, k, n = rng.integers(1, 6, 3)
    ta, tb = bool(rng.integers(2)), bool(rng.integers(2))
    g.placeholder("a")
    g.const("b", _normal(rng, *((n, k) if tb else (k, n))))
    g.op("y", "MatMul", ["a", "b"], T=F32, transpose_a=ta, transpose_b=tb)
    return {"a": _normal(rng, *((k, m) if ta else (m, k)))}


def case_cast(rng, g):
    if rng.integers(2):
        g.placeholder("x", tf.uint8)
        g.op("y", "Cast", ["x"], SrcT=tf.uint8, DstT=F32)
        return {"x": rng.integers(0, 256, (2, 3, 4, 3)).astype(np.uint8)}
    g.placeholder("x")
    g.op("y", "Cast", ["x"], SrcT=F32, DstT=tf.int32)  # truncates towards zero
    return {"x": _normal(rng, 5, 4) * 10}


def _binary_case(op):
    def case(rng, g):
        shape = rng.integers(1, 5, 4)
        x = _normal(rng, *shape)
        # The other operand: a graph constant of a broadcastable shape (scalar, [C], [W, C], full) or fed.
        kind = int(rng.integers(5))
        other_shape = [(), shape[-1:], shape[-2:], shape, shape][kind]
        other = _normal(rng, *other_shape) + (3 if op == "RealDiv" else 0)
        g.placeholder("x")
        if kind == 4:
            g.placeholder("other")
        else:
            g.const("other", other)
        g.op("y", op, ["x", "other"], T=F32)
        return {"x": x, **({"other": other} if kind == 4 else {})}
    return case


def case_bias_add(rng, g):
    x = _normal(rng, *rng.integers(1, 5, 4))
    g.placeholder("x")
    g.const("b", _normal(rng, x.shape[-1]))
    g.op("y", "BiasAdd", ["x", "b"], T=F32)
    return {"x": x}


def _unary_case(op, **attrs):
    def case(rng, g):
        g.placeholder("x")
        g.op("y", op, ["x"], T=F32, **attrs)
        return {"x": _normal(rng, *rng.integers(1, 5, int(rng.integers(2, 5))))}
    return case


def case_const(rng, g):
    # A short value list fills the shape by repeating its last value (how old exports store constants).
    proto = tf.make_tensor_proto(np.float32(0), shape=rng.integers(1, 4, 2).tolist())
    del proto.float_val[:]
    proto.float_val.extend(_normal(rng, int(rng.integers(1, 4))).tolist())
    g.op("y", "Const", dtype=F32, value=proto)
    return {}


CASES = {
    "Const": case_const,
    "Identity": _unary_case("Identity"),
    "StopGradient": _unary_case("StopGradient"),
    "CheckNumerics": _unary_case("CheckNumerics", message="check"),
    "Cast": case_cast,
    "ExpandDims": case_expand_dims,
    "Squeeze": case_squeeze,
    "Reshape": case_reshape,
    "ResizeBilinear": case_resize_bilinear,
    "Add": _binary_case("Add"),
    "AddV2": _binary_case("AddV2"),
    "BiasAdd": case_bias_add,
    "Sub": _binary_case("Sub"),
    "Mul": _binary_case("Mul"),
    "RealDiv": _binary_case("RealDiv"),
    "Conv2D": case_conv2d,
    "BatchNormWithGlobalNormalization": case_batch_norm,
    "Relu": _unary_case("Relu"),
    "Tanh": _unary_case("Tanh"),
    "MaxPool": _pool_case("MaxPool"),
    "AvgPool": _pool_case("AvgPool"),
    "Concat": _concat_case("Concat"),
    "ConcatV2": _concat_case("ConcatV2"),
    "Mean": case_mean,
    "MatMul": case_matmul,
    "Softmax": _unary_case("Softmax"),
}


def test_every_supported_op_has_a_case():
    assert set(CASES) == set(tf_ops.OPS) | {"Const"}


SEEDS_PER_OP = 50


@pytest.mark.parametrize("op", sorted(CASES))
def test_op_matches_tensorflow(op):
    # SEEDS_PER_OP random cases of the op, each under its own name scope of one graph: one TF session per op.
    g, feeds = GraphBuilder(), {}
    for seed in range(SEEDS_PER_OP):
        g.prefix = f"case{seed}/"
        case_feeds = CASES[op](np.random.default_rng([seed, sorted(CASES).index(op)]), g)
        feeds.update({f"case{seed}/{name}:0": value for name, value in case_feeds.items()})
    fetches = [f"case{seed}/y:0" for seed in range(SEEDS_PER_OP)]
    wants = run_tf(g.serialized(), feeds, fetches)
    gots = TFGraph(parse_graph_def(g.serialized()), list(feeds), fetches)(*map(torch.from_numpy, feeds.values()))
    for seed, want, got in zip(range(SEEDS_PER_OP), wants, gots):
        want, got = np.asarray(want), got.numpy()
        assert got.shape == want.shape and got.dtype == want.dtype, (seed, got.shape, want.shape, got.dtype,
                                                                     want.dtype)
        scale = max(1.0, float(np.abs(want).max(initial=0)))
        np.testing.assert_allclose(got, want, rtol=OP_RTOL, atol=OP_RTOL * scale, err_msg=f"seed {seed}")


def test_same_padding_is_split_as_tensorflow_splits_it():
    # Stride 2 over an even size: TF pads 0 before and 1 after (torch's symmetric padding would shift the grid).
    assert tf_ops._same_padding(8, 3, 2, 1) == (0, 1)
    assert tf_ops._same_padding(7, 3, 2, 1) == (1, 1)
    assert tf_ops._same_padding(8, 4, 1, 1) == (1, 2)


# ---------------------------------------------------------------- graph-level behaviour

def test_reshape_with_a_leading_one_is_tensorflows():
    # A target shape starting with 1 (like the graph's pool_3/_reshape) is a batch of 1 in TF, also for a fed
    # batch of 3: [1, -1] merges the batch, [1, 12] does not fit 36 values.
    g = GraphBuilder()
    g.placeholder("x")
    g.const("flat", np.array([1, -1], np.int32))
    g.op("y", "Reshape", ["x", "flat"], T=F32, Tshape=tf.int32)
    g.const("fixed", np.array([1, 12], np.int32))
    g.op("z", "Reshape", ["x", "fixed"], T=F32, Tshape=tf.int32)
    x = np.arange(3 * 12, dtype=np.float32).reshape(3, 1, 1, 12)
    want, = run_tf(g.serialized(), {"x:0": x}, ["y:0"])
    got, = TFGraph(parse_graph_def(g.serialized()), ["x:0"], ["y:0"])(torch.from_numpy(x))
    assert want.shape == got.shape == (1, 36)
    np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(tf.errors.InvalidArgumentError):
        run_tf(g.serialized(), {"x:0": x}, ["z:0"])
    with pytest.raises(RuntimeError, match="invalid for input of size 36"):
        TFGraph(parse_graph_def(g.serialized()), ["x:0"], ["z:0"])(torch.from_numpy(x))


def test_in_place_ops_never_overwrite_a_value_read_later():
    # a is read by a view (Reshape) and by ops after its first reader; z is fetched and also read in place.
    g = GraphBuilder()
    g.placeholder("x")
    g.const("c", np.float32(0.5))
    g.const("shape", np.array([2, 6], np.int32))
    g.op("a", "Sub", ["x", "c"], T=F32)
    g.op("view", "Reshape", ["a", "shape"], T=F32, Tshape=tf.int32)
    g.op("r", "Relu", ["a"], T=F32)
    g.op("z", "Mul", ["r", "c"], T=F32)
    g.op("z2", "Relu", ["z"], T=F32)
    g.op("flat", "Reshape", ["z2", "shape"], T=F32, Tshape=tf.int32)
    g.op("y", "Add", ["view", "flat"], T=F32)
    x = np.random.default_rng(0).normal(size=(2, 3, 2)).astype(np.float32)
    want = run_tf(g.serialized(), {"x:0": x}, ["y:0", "z:0", "a:0"])
    got = TFGraph(parse_graph_def(g.serialized()), ["x:0"], ["y:0", "z:0", "a:0"])(torch.from_numpy(x.copy()))
    for w, o in zip(want, got):
        np.testing.assert_allclose(o.numpy(), w, rtol=1e-6)


def test_check_numerics_raises_like_tensorflow():
    g = GraphBuilder()
    g.placeholder("x")
    g.op("bad", "CheckNumerics", ["x"], T=F32, message="conv_7")
    g.op("y", "Identity", ["x", "^bad"], T=F32)  # reached only through a control input, as in the export
    x = np.array([[1.0, np.nan]], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        run_tf(g.serialized(), {"x:0": x}, ["y:0"])
    graph = TFGraph(parse_graph_def(g.serialized()), ["x:0"], ["y:0"])
    with pytest.raises(tf_graph.CheckNumericsError, match="bad: conv_7"):
        graph(torch.from_numpy(x))
    np.testing.assert_array_equal(graph(torch.ones(1, 2))[0].numpy(), np.ones((1, 2)))  # fine input passes


def test_unknown_op_is_an_error_naming_it():
    g = GraphBuilder()
    g.placeholder("x")
    g.op("y", "Erf", ["x"], T=F32)
    with pytest.raises(NotImplementedError, match="node y: op type 'Erf' is not supported"):
        TFGraph(parse_graph_def(g.serialized()), ["x:0"], ["y:0"])


def test_unfed_placeholder_and_missing_node_are_errors():
    g = GraphBuilder()
    g.placeholder("x")
    g.placeholder("z")
    g.op("y", "Add", ["x", "z"], T=F32)
    with pytest.raises(ValueError, match="placeholder z"):
        TFGraph(parse_graph_def(g.serialized()), ["x:0"], ["y:0"])
    with pytest.raises(KeyError, match="no node 'pool_3'"):
        TFGraph(parse_graph_def(g.serialized()), ["x:0"], ["pool_3:0"])


# ---------------------------------------------------------------- the whole Inception-like graph

def _images(rng, n, low=0):
    """32x32 images made of 4x4 colour cells (smooth structure keeps deep features varied)."""
    cells = rng.integers(low, 256, size=(n, 4, 4, 3))
    noise = rng.integers(-8, 9, size=(n, 32, 32, 3))
    return np.clip(np.repeat(np.repeat(cells, 8, 1), 8, 2) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    d = tmp_path_factory.mktemp("inception_torch")
    path = str(d / "classify_image_graph_def.pb")
    write_inception_like(path, seed=0)
    rng = np.random.default_rng(1)
    np.savez(d / "ref.npz", arr_0=_images(rng, 160))
    np.savez(d / "sample.npz", arr_0=_images(rng, 120, low=60))  # brighter: precision/recall away from 0 and 1
    return path, str(d / "ref.npz"), str(d / "sample.npz")


def test_inception_like_features_match(inception):
    path, ref, _ = inception
    images = np.load(ref)["arr_0"][:24]
    from RandAR.eval.inception_torch import InceptionV3Torch
    with fid.InceptionV3TF(path) as tf_ex, InceptionV3Torch(path, device="cpu") as torch_ex:
        for want, got in zip(tf_ex.pool_features(images), torch_ex.pool_features(images)):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=FEATURE_RTOL, atol=FEATURE_RTOL)


def test_five_metrics_match_tensorflow(inception):
    path, ref, sample = inception
    want = fid.evaluate(ref, sample, batch_size=50, inception_path=path, backend="tf")
    got = fid.evaluate(ref, sample, batch_size=32, inception_path=path, backend="torch")
    assert 0 < want["precision"] < 1 and 0 < want["recall"] < 1, want  # the comparison below can fail
    for name in ("fid", "sfid", "inception_score"):
        assert got[name] == pytest.approx(want[name], rel=METRIC_RTOL), name
    # The torch backend's distances are ADM's formula in numpy (metrics.pairwise_sq_distances), the tf backend's
    # are ADM's TF ops: a few float16 ulps apart.
    for name in ("precision", "recall"):
        assert got[name] == pytest.approx(want[name], abs=PRECISION_RECALL_ATOL), name


def test_torch_backend_runs_without_tensorflow(inception):
    path, ref, sample = inception
    # `import tensorflow` raises ImportError when sys.modules holds None for it; afterwards no TF module is loaded.
    blocker = ("import sys; sys.modules['tensorflow'] = None; from RandAR.eval import fid; fid.main(sys.argv[1:]); "
               "assert not [m for m in sys.modules if m.split('.')[0] == 'tensorflow' and sys.modules[m]]")
    out = subprocess.run([sys.executable, "-c", blocker, ref, sample, "--inception-path", path, "--backend", "torch"],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    with open(fid.metrics_json_path(sample)) as f:
        written = json.load(f)
    want = fid.evaluate(ref, sample, inception_path=path, backend="tf")
    for name in ("fid", "sfid", "inception_score"):
        assert written[name] == pytest.approx(want[name], rel=METRIC_RTOL), name
    for name in ("precision", "recall"):
        assert written[name] == pytest.approx(want[name], abs=PRECISION_RECALL_ATOL), name


def test_search_passes_the_eval_backend_through(inception):
    # search_cfg_weights.main builds its extractor with build_extractor(args.evaluator, args.evaluator_path,
    # backend=args.eval_backend); the flags it parses must give the backend asked for.
    from helpers import load_script
    from RandAR.eval.inception_torch import InceptionV3Torch
    search = load_script("tools/search_cfg_weights.py")
    path, ref, _ = inception
    base = ["--config", "c.yaml", "--exp-name", "e", "--gpt-ckpt", "g", "--ref-path", ref, "--evaluator-path", path]

    def extractor(argv):
        args = search.parse_args(argv)
        return search.build_extractor(args.evaluator, args.evaluator_path, backend=args.eval_backend)
    assert isinstance(extractor(base + ["--eval-backend", "torch"]), InceptionV3Torch)
    assert isinstance(extractor(base), fid.InceptionV3TF)  # the default
