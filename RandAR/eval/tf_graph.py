"""Run a frozen TensorFlow GraphDef with PyTorch: the graph's own nodes and constants, TF's op semantics.

    graph = TFGraph.from_file("classify_image_graph_def.pb", inputs=["ExpandDims:0"],
                              outputs=["pool_3:0", "mixed_6/conv:0"], device="cuda")
    pool, spatial = graph(images_nhwc_float32)

This is not a re-implementation of a network: `TFGraph` walks back from the requested outputs to the fed inputs
(control inputs included, so CheckNumerics nodes run as in TF), orders those nodes once, and calls one PyTorch
function per node with the node's attributes and the graph's constants. Every supported op type computes what
TensorFlow's kernel computes, to float32 rounding (resize coordinates, SAME padding split as TF splits it, average
pooling that does not count padding, the legacy BatchNormWithGlobalNormalization, ...); an op type outside `OPS`
is an error naming the node. The op builders are in RandAR/eval/tf_ops.py.

Reading the .pb: with the `protobuf` package and a GraphDef schema declared below in Python (descriptor_pb2,
TensorFlow's field numbers, a private descriptor pool). No TensorFlow, no generated _pb2 files (tensorboard's
would tie us to tensorboard), no one-off conversion step: the file ADM downloads is read as is, and the
protobuf runtime (C-accelerated) parses the 95 MB graph once per run.

Layout: tensors keep TensorFlow's layout (NHWC), so every op's axes, broadcasting and reshapes mean what the
graph says; convolutions and pools hand torch an NCHW *view* of the NHWC memory (torch's channels_last), which
is also torch's fastest CPU layout for these convolutions (1.2-2x faster than contiguous NCHW).

Batch: every op, Reshape included, computes what TF computes for the shapes it is given. The Inception graph
hard-codes a batch of 1 only in `pool_3/_reshape` (before its classifier), which is not between `ExpandDims:0`
and the fetched `pool_3:0` / `mixed_6/conv:0`, so a fed batch of N flows through as in TF. (ADM's
`_update_shapes` patches TF1's Python-side static shapes; it changes no op's result.)
"""
import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from RandAR.eval.tf_ops import IN_PLACE, OPS, PASS_THROUGH, VIEWS, Builder

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
