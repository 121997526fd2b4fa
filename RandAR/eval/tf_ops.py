"""TensorFlow's op types in PyTorch, one builder per op type, for RandAR.eval.tf_graph.TFGraph.

An entry of `OPS` takes a `Builder` (the node, its constant inputs, the device) once, while the plan is made, and
returns the function that runs the node on torch tensors. Each computes what TensorFlow's kernel computes, to
float32 rounding: resize coordinates, SAME padding split as TF splits it, average pooling that does not count
padding, the legacy BatchNormWithGlobalNormalization. Tensors are NHWC, as in the graph; convolutions and pools
hand torch an NCHW *view* of that memory (torch's channels_last), its fastest CPU layout for these convolutions.
"""
import functools
from typing import Callable, Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

class Builder:
    """What an op implementation may read while the plan is built: the node (a tf_graph.Node) and its
    constant inputs."""

    def __init__(self, node, constants: Dict[str, np.ndarray], device):
        self.node, self._constants, self.device = node, constants, device
        self.inplace = False  # True when input 0 may be overwritten (set by TFGraph for IN_PLACE ops)

    def const(self, i: int) -> np.ndarray:
        """The value of data input i, which must be a constant in the graph (an axis, a shape, ...)."""
        name, _ = self.node.inputs[i]
        if name not in self._constants:
            raise ValueError(f"node {self.node.name} ({self.node.op}): input {i} ({name}) must be a Const")
        return self._constants[name]

    def nhwc(self) -> None:
        fmt = self.node.attr("data_format", "NHWC")
        if fmt != "NHWC":
            raise ValueError(f"node {self.node.name} ({self.node.op}): data_format {fmt} is not supported (NHWC only)")


_TORCH_DTYPES = {1: torch.float32, 2: torch.float64, 3: torch.int32, 4: torch.uint8, 5: torch.int16, 6: torch.int8,
                 9: torch.int64, 10: torch.bool, 19: torch.float16}


def _same_padding(size: int, k: int, s: int, d: int) -> Tuple[int, int]:
    """TF's SAME: output ceil(size / s); the total padding is split with the extra pixel at the end."""
    k_eff = (k - 1) * d + 1
    total = max((-(-size // s) - 1) * s + k_eff - size, 0)
    return total // 2, total - total // 2


def _window(b: Builder, key: str):
    v = b.node.attr(key)
    if v is None or len(v) != 4 or v[0] != 1 or v[3] != 1:
        raise ValueError(f"node {b.node.name} ({b.node.op}): {key}={v}: only spatial windows (1, h, w, 1) "
                         f"are supported")
    return v[1], v[2]


def _paddings(b: Builder, x: torch.Tensor, k, s, d=(1, 1)):
    """(top, bottom, left, right) for the node's padding attribute on NHWC input x."""
    padding = b.node.attr("padding")
    if padding == "VALID":
        return 0, 0, 0, 0
    if padding == "SAME":
        return (*_same_padding(x.shape[1], k[0], s[0], d[0]), *_same_padding(x.shape[2], k[1], s[1], d[1]))
    if padding == "EXPLICIT":
        p = b.node.attr("explicit_paddings")  # NHWC pairs
        return p[2], p[3], p[4], p[5]
    raise ValueError(f"node {b.node.name} ({b.node.op}): padding {padding!r} is not supported")


def _nchw(x):  # NHWC memory seen as NCHW (torch's channels_last); no copy
    return x.permute(0, 3, 1, 2)


def _nhwc(x):
    return x.permute(0, 2, 3, 1)


def op_conv2d(b: Builder):
    b.nhwc()
    s, d = _window(b, "strides"), _window(b, "dilations") if b.node.attr("dilations") else (1, 1)
    w = torch.as_tensor(b.const(1)).permute(3, 2, 0, 1).to(b.device)  # HWIO -> OIHW
    w = w.contiguous(memory_format=torch.channels_last)

    def run(x, _w):
        t, bo, l, r = _paddings(b, x, w.shape[2:], s, d)
        x = _nchw(x)
        if t == bo and l == r:
            return _nhwc(F.conv2d(x, w, stride=s, padding=(t, l), dilation=d))
        return _nhwc(F.conv2d(F.pad(x, (l, r, t, bo)), w, stride=s, dilation=d))
    return run


def _pool(b: Builder, torch_padded, explicit):
    """A pooling op: torch's own symmetric padding where it can pad as TF does (at most half the window),
    else `explicit(x, k, s, (left, right, top, bottom))` on NCHW x."""
    b.nhwc()
    k, s = _window(b, "ksize"), _window(b, "strides")

    def run(x):
        t, bo, l, r = _paddings(b, x, k, s)
        x = _nchw(x)
        if t == bo and l == r and 2 * t <= k[0] and 2 * l <= k[1]:
            return _nhwc(torch_padded(x, k, s, (t, l)))
        return _nhwc(explicit(x, k, s, (l, r, t, bo)))
    return run


def op_max_pool(b: Builder):
    """torch pads with -inf, as TF's MaxPool ignores the padding."""
    return _pool(b, lambda x, k, s, p: F.max_pool2d(x, k, s, padding=p),
                 lambda x, k, s, p: F.max_pool2d(F.pad(x, p, value=-float("inf")), k, s))


def op_avg_pool(b: Builder):
    """Mean over the window's pixels inside the image: padding is not counted (TF's AvgPool)."""
    def explicit(x, k, s, p):
        total = F.avg_pool2d(F.pad(x, p), k, s, divisor_override=1)
        ones = F.pad(x.new_ones(1, 1, *x.shape[2:]), p)
        return total / F.avg_pool2d(ones, k, s, divisor_override=1)

    return _pool(b, lambda x, k, s, p: F.avg_pool2d(x, k, s, padding=p, count_include_pad=False), explicit)


def op_batch_norm_global(b: Builder):
    """The legacy BatchNormWithGlobalNormalization(t, m, v, beta, gamma) = (t - m) * rsqrt(v + eps) [* gamma] + beta,
    computed in one pass as t * scale + (beta - m * scale): TF's kernel subtracts m first, so the two round
    differently (by a few float32 ulps of t * scale), for one memory pass instead of two."""
    eps, scaled, inplace = b.node.attr("variance_epsilon"), b.node.attr("scale_after_normalization"), b.inplace

    def run(x, m, v, beta, gamma):
        scale = torch.rsqrt(v + eps)
        if scaled:
            scale = scale * gamma
        return torch.addcmul(beta - m * scale, x, scale, out=x if inplace else None)
    return run


def op_resize_bilinear(b: Builder):
    """TF's ResizeBilinear: coordinates in float32, legacy (x * scale), half-pixel or align_corners."""
    out_h, out_w = (int(v) for v in b.const(1))
    align, half = b.node.attr("align_corners", False), b.node.attr("half_pixel_centers", False)

    @functools.lru_cache(maxsize=8)
    def weights(in_size: int, out_size: int, device):
        scale = np.float32((in_size - 1) / (out_size - 1) if align and out_size > 1 else in_size / out_size)
        i = np.arange(out_size, dtype=np.float32)
        src = (i + np.float32(0.5)) * scale - np.float32(0.5) if half else i * scale
        floor = np.floor(src)
        lower = np.maximum(floor, 0).astype(np.int64)
        upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
        lerp = (src - floor).astype(np.float32)
        return (torch.as_tensor(lower, device=device), torch.as_tensor(upper, device=device),
                torch.as_tensor(lerp, device=device))

    def run(x, _size):
        x = x.float()
        y0, y1, fy = weights(x.shape[1], out_h, x.device)
        x0, x1, fx = weights(x.shape[2], out_w, x.device)
        # TF: top = tl + (tr - tl) * fx, bottom likewise, out = top + (bottom - top) * fy. The x-lerp of an
        # output row only depends on its input row, so it is done once per input row (same arithmetic).
        left = x[:, :, x0]  # (N, H, out_w, C)
        across = x[:, :, x1].sub_(left).mul_(fx[:, None]).add_(left)
        top = across[:, y0]  # (N, out_h, out_w, C)
        return across[:, y1].sub_(top).mul_(fy[:, None, None]).add_(top)
    return run


def op_concat(axis_input: int):
    def build(b: Builder):
        axis = int(b.const(axis_input))
        first = 1 if axis_input == 0 else 0

        def run(*xs):
            xs = xs[first:first + len(xs) - 1]
            return torch.cat(xs, dim=axis)
        return run
    return build


def op_reshape(b: Builder):
    """The graph's target shape as it is (at most one -1), as TF: a leading 1 is a batch of 1."""
    shape = [int(v) for v in b.const(1)]
    return lambda x, _shape: x.reshape(shape)


def op_expand_dims(b: Builder):
    dim = int(b.const(1))
    return lambda x, _dim: x.unsqueeze(dim)


def op_squeeze(b: Builder):
    dims = b.node.attr("squeeze_dims", [])
    return lambda x: x.squeeze(tuple(dims)) if dims else x.squeeze()


def op_mean(b: Builder):
    axes = [int(a) for a in np.atleast_1d(b.const(1))]
    keep = b.node.attr("keep_dims", False)
    return lambda x, _axes: x.mean(dim=axes, keepdim=keep)


def op_matmul(b: Builder):
    ta, tb = b.node.attr("transpose_a", False), b.node.attr("transpose_b", False)
    return lambda x, y: (x.T if ta else x) @ (y.T if tb else y)


def op_cast(b: Builder):
    dtype = b.node.attr("DstT")
    if dtype not in _TORCH_DTYPES:
        raise ValueError(f"node {b.node.name} (Cast): DstT enum {dtype} is not supported")
    return lambda x: x.to(_TORCH_DTYPES[dtype])


def op_check_numerics(b: Builder):
    """Passes its input through and records an all-finite flag; TFGraph raises after the pass if one is False
    (one host sync per call instead of one per node)."""
    message = b.node.attr("message", "")

    def run(x):
        run.checks.append((b.node.name, message, torch.isfinite(torch.stack(torch.aminmax(x))).all()))
    run.checks = None  # set by TFGraph
    return run


def _simple(fn: Callable) -> Callable:
    return lambda b: fn


def _binary(fn: Callable) -> Callable:
    """Elementwise op with numpy broadcasting; writes into x when allowed and the result has x's shape and dtype."""
    def build(b: Builder):
        if not b.inplace:
            return fn

        def run(x, y):
            if x.dtype == y.dtype and torch.broadcast_shapes(x.shape, y.shape) == x.shape:
                return fn(x, y, out=x)
            return fn(x, y)
        return run
    return build


OPS: Dict[str, Callable[[Builder], Callable]] = {
    "Identity": _simple(lambda x: x),
    "StopGradient": _simple(lambda x: x),
    "CheckNumerics": op_check_numerics,
    "Cast": op_cast,
    "ExpandDims": op_expand_dims,
    "Squeeze": op_squeeze,
    "Reshape": op_reshape,
    "ResizeBilinear": op_resize_bilinear,
    "Add": _binary(torch.add),
    "AddV2": _binary(torch.add),
    "BiasAdd": _binary(torch.add),  # NHWC: the bias is on the last axis, numpy broadcasting
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "RealDiv": _binary(torch.div),
    "Conv2D": op_conv2d,
    "BatchNormWithGlobalNormalization": op_batch_norm_global,
    "Relu": lambda b: torch.relu_ if b.inplace else torch.relu,
    "Tanh": _simple(torch.tanh),
    "MaxPool": op_max_pool,
    "AvgPool": op_avg_pool,
    "Concat": op_concat(axis_input=0),
    "ConcatV2": op_concat(axis_input=-1),
    "Mean": op_mean,
    "MatMul": op_matmul,
    "Softmax": _simple(lambda x: torch.softmax(x, dim=-1)),
}


PASS_THROUGH = {"Identity", "StopGradient", "CheckNumerics"}  # output = the input tensor (CheckNumerics also checks)
VIEWS = {"Reshape", "ExpandDims", "Squeeze", "Cast"}  # output may share the input's memory
# may overwrite input 0 when no one else reads it
IN_PLACE = {"BatchNormWithGlobalNormalization", "Relu", "Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv"}
