"""Run a frozen TensorFlow GraphDef with PyTorch: the graph's own nodes and constants, TF's op semantics.

    graph = TFGraph.from_file("classify_image_graph_def.pb", inputs=["ExpandDims:0"],
                              outputs=["pool_3:0", "mixed_6/conv:0"], device="cuda")
    pool, spatial = graph(images_nhwc_float32)

This is not a re-implementation of a network: `TFGraph` walks back from the requested outputs to the fed inputs
(control inputs included, so CheckNumerics nodes run as in TF), orders those nodes once, and calls one PyTorch
function per node with the node's attributes and the graph's constants. Every supported op type computes what
TensorFlow's kernel computes, to float32 rounding (resize coordinates, SAME padding split as TF splits it, average
pooling that does not count padding, the legacy BatchNormWithGlobalNormalization, ...); an op type outside `OPS`
is an error naming the node.

Reading the .pb: with the `protobuf` package and a GraphDef schema declared below in Python (descriptor_pb2,
TensorFlow's field numbers, a private descriptor pool). No TensorFlow, no generated _pb2 files (tensorboard's
would tie us to tensorboard), no one-off conversion step: the file ADM downloads is read as is, and the
protobuf runtime (C-accelerated) parses the 95 MB graph once per run.

Layout: tensors keep TensorFlow's layout (NHWC), so every op's axes, broadcasting and reshapes mean what the
graph says; convolutions and pools hand torch an NCHW *view* of the NHWC memory (torch's channels_last), which
is also torch's fastest CPU layout for these convolutions (measured: 1.2-2x faster than contiguous NCHW).

Batch: a Reshape whose target shape starts with 1 keeps the input's batch size instead, as ADM (after TTUR)
makes the graph's batch-1 shapes batch-free.
"""
import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------- GraphDef schema (TensorFlow's field numbers)

# (message, [(field, number, type, repeated, message type or None, in the `value` oneof)])
_T = {"string": 9, "bytes": 12, "int32": 5, "int64": 3, "float": 2, "double": 1, "bool": 8, "uint32": 13,
      "uint64": 4, "message": 11}
_SCHEMA = {
    "GraphDef": [("node", 1, "message", True, "NodeDef"), ("versions", 4, "message", False, "VersionDef")],
    "VersionDef": [("producer", 1, "int32", False, None), ("min_consumer", 2, "int32", False, None)],
    "NodeDef": [("name", 1, "string", False, None), ("op", 2, "string", False, None),
                ("input", 3, "string", True, None), ("device", 4, "string", False, None),
                ("attr", 5, "message", True, "NodeDef.AttrEntry")],
    "NodeDef.AttrEntry": [("key", 1, "string", False, None), ("value", 2, "message", False, "AttrValue")],
    # DataType enums are read as int32 (same wire encoding).
    "AttrValue": [("list", 1, "message", False, "AttrValue.ListValue", True), ("s", 2, "bytes", False, None, True),
                  ("i", 3, "int64", False, None, True), ("f", 4, "float", False, None, True),
                  ("b", 5, "bool", False, None, True), ("type", 6, "int32", False, None, True),
                  ("shape", 7, "message", False, "TensorShapeProto", True),
                  ("tensor", 8, "message", False, "TensorProto", True),
                  ("placeholder", 9, "string", False, None, True)],
    "AttrValue.ListValue": [("s", 2, "bytes", True, None), ("i", 3, "int64", True, None),
                            ("f", 4, "float", True, None), ("b", 5, "bool", True, None),
                            ("type", 6, "int32", True, None), ("shape", 7, "message", True, "TensorShapeProto"),
                            ("tensor", 8, "message", True, "TensorProto")],
    "TensorShapeProto": [("dim", 2, "message", True, "TensorShapeProto.Dim"), ("unknown_rank", 3, "bool", False, None)],
    "TensorShapeProto.Dim": [("size", 1, "int64", False, None), ("name", 2, "string", False, None)],
    "TensorProto": [("dtype", 1, "int32", False, None), ("tensor_shape", 2, "message", False, "TensorShapeProto"),
                    ("tensor_content", 4, "bytes", False, None), ("half_val", 13, "int32", True, None),
                    ("float_val", 5, "float", True, None), ("double_val", 6, "double", True, None),
                    ("int_val", 7, "int32", True, None), ("string_val", 8, "bytes", True, None),
                    ("int64_val", 10, "int64", True, None), ("bool_val", 11, "bool", True, None),
                    ("uint32_val", 16, "uint32", True, None), ("uint64_val", 17, "uint64", True, None)],
}
_PACKAGE = "randar_tf_graph"  # not TF's package name, so the schema cannot clash with TF's in one process


@functools.lru_cache(maxsize=None)
def graph_def_class():
    """The GraphDef message class, built from `_SCHEMA` in a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="randar_tf_graph.proto", package=_PACKAGE, syntax="proto3")
    made = {}
    for full_name, fields in _SCHEMA.items():
        parent, _, name = full_name.rpartition(".")
        msg = (made[parent].nested_type if parent else f.message_type).add(name=name)
        made[full_name] = msg
        if name == "AttrEntry":
            msg.options.map_entry = True
        if any(len(spec) == 6 for spec in fields):
            msg.oneof_decl.add(name="value")
        for spec in fields:
            field, number, kind, repeated, type_name = spec[:5]
            fd = msg.field.add(name=field, number=number, type=_T[kind], label=3 if repeated else 1)
            if type_name:
                fd.type_name = f".{_PACKAGE}.{type_name}"
            if len(spec) == 6:
                fd.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    descriptor = pool.FindMessageTypeByName(f"{_PACKAGE}.GraphDef")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def parse_graph_def(data: bytes):
    """A serialized GraphDef -> its message (no TensorFlow needed)."""
    graph_def = graph_def_class()()
    graph_def.ParseFromString(data)
    return graph_def


def read_graph_def(path: str):
    """Parse a binary GraphDef file (no TensorFlow needed)."""
    with open(path, "rb") as f:
        graph_def = parse_graph_def(f.read())
    if not graph_def.node:
        raise ValueError(f"{path}: no nodes; is it a binary GraphDef (.pb)?")
    return graph_def


# ---------------------------------------------------------------- attribute and tensor decoding

_NP_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 7: object,
              9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
_VAL_FIELDS = {np.float32: "float_val", np.float64: "double_val", np.int32: "int_val", np.uint8: "int_val",
               np.int16: "int_val", np.int8: "int_val", np.uint16: "int_val", object: "string_val",
               np.int64: "int64_val", np.bool_: "bool_val", np.float16: "half_val", np.uint32: "uint32_val",
               np.uint64: "uint64_val"}


def tensor_to_numpy(t) -> np.ndarray:
    """TensorProto -> numpy, with TF's rule that a short value list repeats its last value."""
    if t.dtype not in _NP_DTYPES:
        raise ValueError(f"tensor dtype enum {t.dtype} is not supported")
    dtype = _NP_DTYPES[t.dtype]
    shape = tuple(d.size for d in t.tensor_shape.dim)
    n = int(np.prod(shape))
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype=dtype).reshape(shape).copy()
    values = list(getattr(t, _VAL_FIELDS[dtype]))
    if dtype is np.float16:  # half_val holds the bit patterns
        flat = np.array(values, np.uint16).view(np.float16)
    else:
        flat = np.array(values, dtype=dtype)
    if len(flat) < n:
        flat = np.concatenate([flat, np.full(n - len(flat), flat[-1] if len(flat) else 0, dtype=flat.dtype)])
    return flat[:n].reshape(shape)


def _attr_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "list":
        lst = v.list
        for name in ("s", "i", "f", "b", "type"):
            if len(getattr(lst, name)):
                vals = list(getattr(lst, name))
                return [x.decode() for x in vals] if name == "s" else vals
        if len(lst.shape):
            return [[d.size for d in s.dim] for s in lst.shape]
        if len(lst.tensor):
            return [tensor_to_numpy(t) for t in lst.tensor]
        return []
    if kind == "s":
        return v.s.decode()
    if kind == "shape":
        return None if v.shape.unknown_rank else [d.size for d in v.shape.dim]
    if kind == "tensor":
        return tensor_to_numpy(v.tensor)
    return getattr(v, kind)


class Node:
    """One NodeDef: name, op type, data inputs as (node, output index), control inputs, decoded attributes."""

    def __init__(self, node_def):
        self.name, self.op = node_def.name, node_def.op
        self.inputs: List[Tuple[str, int]] = []
        self.control_inputs: List[str] = []
        for ref in node_def.input:
            if ref.startswith("^"):
                self.control_inputs.append(ref[1:])
            else:
                self.inputs.append(parse_ref(ref))
        self.attrs = {key: _attr_value(value) for key, value in node_def.attr.items()}

    def attr(self, key, default=None):
        value = self.attrs.get(key)
        return default if value is None else value


def parse_ref(ref: str) -> Tuple[str, int]:
    """'name:k' -> (name, k); 'name' -> (name, 0)."""
    name, _, index = ref.rpartition(":")
    if name and index.isdigit():
        return name, int(index)
    return ref, 0


# ---------------------------------------------------------------- op implementations (TensorFlow semantics)

class Builder:
    """What an op implementation may read while the plan is built: the node and its constant inputs."""

    def __init__(self, node: Node, constants: Dict[str, np.ndarray], device):
        self.node, self._constants, self.device = node, constants, device
        self.inplace = False  # True when input 0 may be overwritten (set by TFGraph for IN_PLACE ops)

    def const(self, i: int) -> np.ndarray:
        """The value of data input i, which must be a constant in the graph (an axis, a shape, ...)."""
        name, _ = self.node.inputs[i]
        if name not in self._constants:
            raise ValueError(f"node {self.node.name} ({self.node.op}): input {i} ({name}) must be a Const")
        return self._constants[name]

    def is_const(self, i: int) -> bool:
        return self.node.inputs[i][0] in self._constants

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


def op_max_pool(b: Builder):
    b.nhwc()
    k, s = _window(b, "ksize"), _window(b, "strides")

    def run(x):
        t, bo, l, r = _paddings(b, x, k, s)
        x = _nchw(x)
        if t == bo and l == r and 2 * t <= k[0] and 2 * l <= k[1]:  # torch pads with -inf itself
            return _nhwc(F.max_pool2d(x, k, s, padding=(t, l)))
        return _nhwc(F.max_pool2d(F.pad(x, (l, r, t, bo), value=-float("inf")), k, s))
    return run


def op_avg_pool(b: Builder):
    """Mean over the window's pixels inside the image: padding is not counted (TF's AvgPool)."""
    b.nhwc()
    k, s = _window(b, "ksize"), _window(b, "strides")

    def run(x):
        t, bo, l, r = _paddings(b, x, k, s)
        x = _nchw(x)
        if t == bo and l == r and 2 * t <= k[0] and 2 * l <= k[1]:
            return _nhwc(F.avg_pool2d(x, k, s, padding=(t, l), count_include_pad=False))
        total = F.avg_pool2d(F.pad(x, (l, r, t, bo)), k, s, divisor_override=1)
        ones = F.pad(x.new_ones(1, 1, *x.shape[2:]), (l, r, t, bo))
        return _nhwc(total / F.avg_pool2d(ones, k, s, divisor_override=1))
    return run


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
    shape = [int(v) for v in b.const(1)]
    batch_free = bool(shape) and shape[0] == 1 and not b.is_const(0)

    def run(x, _shape):
        if batch_free:  # the graph's batch of 1 becomes the fed batch, as ADM patches it
            return x.reshape(x.shape[0], *shape[1:])
        return x.reshape(shape)
    return run


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


class CheckNumericsError(RuntimeError):
    """A CheckNumerics node saw NaN or Inf."""


# ---------------------------------------------------------------- the executor

class TFGraph:
    """The part of a GraphDef between `inputs` (fed tensors) and `outputs`, as an ordered list of torch calls."""

    def __init__(self, graph_def, inputs: Sequence[str], outputs: Sequence[str], device="cpu"):
        self.device = torch.device(device)
        nodes = {n.name: Node(n) for n in graph_def.node}
        feeds = [parse_ref(r) for r in inputs]
        fetches = [parse_ref(r) for r in outputs]
        for name, _ in feeds + fetches:
            if name not in nodes:
                raise KeyError(f"the graph has no node {name!r}")

        order = self._order(nodes, {n for n, _ in feeds}, [n for n, _ in fetches])
        constants = {n: nodes[n].attrs["value"] for n in order if nodes[n].op == "Const"}
        # Values live in numbered slots; an Identity-like node's output is its input's slot.
        slots = {ref: i for i, ref in enumerate(feeds)}  # (node, index) -> slot
        self._constant_values: List[Tuple[int, torch.Tensor]] = []
        planned: List[Tuple[Node, List[int], Optional[int]]] = []
        for name in order:
            node = nodes[name]
            if (name, 0) in slots:
                continue
            if node.op != "Const" and node.op not in OPS:
                raise NotImplementedError(
                    f"node {name}: op type {node.op!r} is not supported by RandAR.eval.tf_graph "
                    f"(supported: {', '.join(sorted(OPS))})")
            for ref in node.inputs:
                if ref[1] != 0:
                    raise NotImplementedError(f"node {name}: input {ref[0]}:{ref[1]}: only first outputs are supported")
            ins = [slots[ref] for ref in node.inputs]
            if node.op in PASS_THROUGH:
                slots[(name, 0)] = ins[0]
                if node.op == "CheckNumerics":
                    planned.append((node, ins, None))
                continue
            slots[(name, 0)] = slot = len(slots)
            if node.op == "Const":
                if constants[name].dtype != object:
                    self._constant_values.append((slot, torch.as_tensor(constants[name]).to(self.device)))
                continue
            planned.append((node, ins, slot))
        self._num_slots = len(slots)
        self._num_feeds = len(feeds)
        self._outputs = [slots[ref] for ref in fetches]

        # Each slot is freed after its last reader; a slot that only one op's fresh output ever held may be
        # overwritten in place by its last reader (saves an allocation and a pass over memory per layer).
        last_use = {s: i for i, (_, ins, _) in enumerate(planned) for s in ins}
        keep = set(self._outputs) | {s for s, _ in self._constant_values} | set(range(self._num_feeds))
        fresh = {out for node, _, out in planned if out is not None and node.op not in VIEWS}
        fresh -= {ins[0] for node, ins, _ in planned if node.op in VIEWS}  # a view of it may be read later
        self._free_after = [[] for _ in planned]
        for s, i in last_use.items():
            if s not in keep:
                self._free_after[i].append(s)
        self._checks: List[Tuple[str, str, torch.Tensor]] = []
        self._steps: List[Tuple[Callable, List[int], Optional[int]]] = []
        for i, (node, ins, out) in enumerate(planned):
            builder = Builder(node, constants, self.device)
            builder.inplace = (node.op in IN_PLACE and ins[0] in fresh and ins[0] not in keep
                               and last_use[ins[0]] == i)
            fn = OPS[node.op](builder)
            if hasattr(fn, "checks"):
                fn.checks = self._checks
            self._steps.append((fn, ins, out))

    @staticmethod
    def _order(nodes: Dict[str, Node], fed: set, fetch: List[str]) -> List[str]:
        """Nodes the fetches need (data and control inputs; not behind a fed node), inputs first."""
        order, state = [], {}
        for root in fetch:
            stack = [(root, False)]
            while stack:
                name, expanded = stack.pop()
                if expanded:
                    state[name] = "done"
                    order.append(name)
                    continue
                if state.get(name) == "done":
                    continue
                if state.get(name) == "open":
                    raise ValueError(f"the graph has a cycle through node {name}")
                if name not in nodes:
                    raise KeyError(f"the graph refers to a missing node {name!r}")
                state[name] = "open"
                stack.append((name, True))
                if name in fed:
                    continue
                node = nodes[name]
                if node.op in ("Placeholder", "PlaceholderV2"):
                    raise ValueError(f"placeholder {name} is needed for {fetch} but is not among the inputs")
                for dep in [n for n, _ in node.inputs] + node.control_inputs:
                    if state.get(dep) != "done":
                        if state.get(dep) == "open":
                            raise ValueError(f"the graph has a cycle through node {dep}")
                        stack.append((dep, False))
        return order

    @classmethod
    def from_file(cls, path: str, inputs: Sequence[str], outputs: Sequence[str], device="cpu") -> "TFGraph":
        return cls(read_graph_def(path), inputs, outputs, device)

    @torch.no_grad()
    def __call__(self, *feeds: torch.Tensor) -> List[torch.Tensor]:
        if len(feeds) != self._num_feeds:
            raise ValueError(f"expected {self._num_feeds} inputs, got {len(feeds)}")
        values: List[Optional[torch.Tensor]] = [None] * self._num_slots
        values[:len(feeds)] = feeds
        for slot, value in self._constant_values:
            values[slot] = value
        self._checks.clear()
        for (fn, ins, out), free in zip(self._steps, self._free_after):
            value = fn(*[values[s] for s in ins])
            if out is not None:
                values[out] = value
            for s in free:
                values[s] = None
        if self._checks and not bool(torch.stack([ok for _, _, ok in self._checks]).all()):
            name, message, _ = next(c for c in self._checks if not bool(c[2]))
            raise CheckNumericsError(f"CheckNumerics node {name}: {message} : Tensor had NaN or Inf values")
        return [values[s] for s in self._outputs]
