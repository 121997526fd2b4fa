"""GraphDefs written node by node (like the 2015 Inception-v3 export), and a TensorFlow runner for them.

Nodes are written as NodeDef protos rather than through TF's Python ops so that the graph can hold ops that
current TensorFlow no longer builds (BatchNormWithGlobalNormalization, removed at GraphDef version 9: the graph
declares producer 8) and so that attributes left out (as old exports leave them out) take TF's defaults.
"""
import numpy as np

PRODUCER = 8  # older than BatchNormWithGlobalNormalization's removal (version 9)


class GraphBuilder:
    def __init__(self):
        import tensorflow.compat.v1 as tf

        self.tf = tf
        self.graph_def = tf.GraphDef()
        self.graph_def.versions.producer = PRODUCER
        self.prefix = ""  # put before every node name written (and every input named), e.g. "case3/"

    def _attr(self, value):
        from tensorflow.core.framework import tensor_pb2

        tf = self.tf
        if isinstance(value, tf.DType):
            return tf.AttrValue(type=value.as_datatype_enum)
        if isinstance(value, bool):
            return tf.AttrValue(b=value)
        if isinstance(value, int):
            return tf.AttrValue(i=value)
        if isinstance(value, float):
            return tf.AttrValue(f=value)
        if isinstance(value, str):
            return tf.AttrValue(s=value.encode())
        if isinstance(value, (list, tuple)):
            return tf.AttrValue(list=tf.AttrValue.ListValue(i=list(value)))
        if isinstance(value, np.ndarray):
            return tf.AttrValue(tensor=tf.make_tensor_proto(value))
        if isinstance(value, tensor_pb2.TensorProto):
            return tf.AttrValue(tensor=value)
        raise TypeError(f"attribute value {value!r}")

    def op(self, name, op, inputs=(), **attrs):
        control = [i.startswith("^") for i in inputs]
        inputs = [("^" if c else "") + self.prefix + i.lstrip("^") for i, c in zip(inputs, control)]
        node = self.graph_def.node.add(name=self.prefix + name, op=op, input=inputs)
        for key, value in attrs.items():
            node.attr[key].CopyFrom(self._attr(value))
        return name

    def const(self, name, value):
        value = np.asarray(value)
        return self.op(name, "Const", dtype=self.tf.as_dtype(value.dtype), value=value)

    def placeholder(self, name, dtype=None):
        return self.op(name, "Placeholder", dtype=dtype or self.tf.float32)

    def serialized(self) -> bytes:
        return self.graph_def.SerializeToString()


def run_tf(graph_bytes: bytes, feeds: dict, fetches: list):
    """Run a serialized GraphDef in TensorFlow (CPU): {tensor name: array} -> [array per fetch]."""
    import tensorflow.compat.v1 as tf

    graph_def = tf.GraphDef()
    graph_def.ParseFromString(graph_bytes)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.Session(graph=graph) as sess:
        return sess.run(fetches, feeds)


# ---------------------------------------------------------------- an Inception-like graph

def _stem_size(size: int) -> int:
    """Spatial size after the stem (3 stride-2 reductions) for a resize target `size`."""
    s = (size - 3) // 2 + 1 - 2  # conv (3x3 /2), conv_1 (3x3)
    s = (s - 3) // 2 + 1 - 2  # pool (3x3 /2), conv_4 (3x3)
    return (s - 3) // 2 + 1  # pool_1


class InceptionLike(GraphBuilder):
    """The op types, tensor names and block structure of classify_image_graph_def.pb (the 2015 Inception-v3
    export), with `width` channels per convolution, random weights and input resized to `size` (real: 299, 32+).

    Each convolution is written as the export writes it: `{name}/conv2d_params` -> `{name}/Conv2D` (no
    data_format/dilations attributes) -> legacy `{name}/batchnorm` -> `{name}/CheckNumerics` ->
    `{name}/control_dependency` (Identity with the check as control input) -> `{name}` (Relu). Joins are
    `Concat` with the axis as first input; the last block pools with MaxPool, the others with AvgPool that does
    not count padding; pool_3 averages the last 8x8 (here: whole) grid; pool_3/_reshape has a batch of 1.
    """

    def __init__(self, seed=0, size=75, width=8, num_classes=20):
        super().__init__()
        self.rng = np.random.default_rng(seed)
        self.width = width
        tf = self.tf
        self.placeholder("DecodeJpeg", tf.uint8)  # the real graph decodes a JPEG here; ADM feeds at ExpandDims
        self.op("Cast", "Cast", ["DecodeJpeg"], SrcT=tf.uint8, DstT=tf.float32)
        self.const("ExpandDims/dim", np.int32(0))
        self.op("ExpandDims", "ExpandDims", ["Cast", "ExpandDims/dim"], T=tf.float32, Tdim=tf.int32)
        self.const("ResizeBilinear/size", np.array([size, size], np.int32))
        self.op("ResizeBilinear", "ResizeBilinear", ["ExpandDims", "ResizeBilinear/size"], T=tf.float32,
                align_corners=False)
        self.const("Sub/y", np.float32(128))
        self.op("Sub", "Sub", ["ResizeBilinear", "Sub/y"], T=tf.float32)
        self.const("Mul/y", np.float32(1 / 128))
        x = self.op("Mul", "Mul", ["Sub", "Mul/y"], T=tf.float32)

        w = width
        x = self.conv("conv", x, 3, w, (3, 3), 2, "VALID")
        x = self.conv("conv_1", x, w, w, (3, 3), 1, "VALID")
        x = self.conv("conv_2", x, w, w, (3, 3), 1, "SAME")
        x = self.pool("pool", x, "MaxPool", 3, 2, "VALID")
        x = self.conv("conv_3", x, w, w, (1, 1), 1, "VALID")
        x = self.conv("conv_4", x, w, w, (3, 3), 1, "VALID")
        x = self.pool("pool_1", x, "MaxPool", 3, 2, "VALID")
        c = w
        for name in ("mixed", "mixed_1", "mixed_2"):
            x, c = self.block_a(name, x, c)
        x, c = self.block_reduce_b("mixed_3", x, c)
        for name in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
            x, c = self.block_c(name, x, c)
        x, c = self.block_reduce_d("mixed_8", x, c)
        x, c = self.block_e("mixed_9", x, c, "AvgPool")
        x, c = self.block_e("mixed_10", x, c, "MaxPool")  # the real graph's last block max-pools
        grid = (_stem_size(size) - 3) // 2 + 1
        grid = (grid - 3) // 2 + 1
        self.pool("pool_3", x, "AvgPool", grid, 1, "VALID")
        self.const("pool_3/_reshape/shape", np.array([1, c], np.int32))
        self.op("pool_3/_reshape", "Reshape", ["pool_3", "pool_3/_reshape/shape"], T=tf.float32, Tshape=tf.int32)
        self.const("softmax/weights", (self.rng.normal(size=(c, num_classes)) * 3 / np.sqrt(c)).astype(np.float32))
        self.const("softmax/biases", self.rng.normal(size=num_classes).astype(np.float32))
        self.op("softmax/logits/MatMul", "MatMul", ["pool_3/_reshape", "softmax/weights"], T=tf.float32,
                transpose_a=False, transpose_b=False)
        self.op("softmax/logits", "BiasAdd", ["softmax/logits/MatMul", "softmax/biases"], T=tf.float32)
        self.op("softmax", "Softmax", ["softmax/logits"], T=tf.float32)
        self.pool_dim = c

    def conv(self, name, x, cin, cout, k, stride, padding):
        tf, rng = self.tf, self.rng
        params = rng.normal(size=(*k, cin, cout)) * np.sqrt(2 / (k[0] * k[1] * cin))
        params -= params.mean(axis=(0, 1, 2))  # no per-channel offset from positive inputs: fewer dead units
        params = params.astype(np.float32)
        self.const(f"{name}/conv2d_params", params)
        self.op(f"{name}/Conv2D", "Conv2D", [x, f"{name}/conv2d_params"], T=tf.float32,
                strides=[1, stride, stride, 1], padding=padding, use_cudnn_on_gpu=True)
        bn = f"{name}/batchnorm"
        self.const(f"{bn}/beta", rng.uniform(0.5, 1.0, cout).astype(np.float32))
        self.const(f"{bn}/gamma", rng.uniform(0.5, 1.5, cout).astype(np.float32))
        self.const(f"{bn}/moving_mean", rng.normal(0, 0.2, cout).astype(np.float32))
        self.const(f"{bn}/moving_variance", rng.uniform(0.5, 1.5, cout).astype(np.float32))
        self.op(bn, "BatchNormWithGlobalNormalization",
                [f"{name}/Conv2D", f"{bn}/moving_mean", f"{bn}/moving_variance", f"{bn}/beta", f"{bn}/gamma"],
                T=tf.float32, variance_epsilon=0.001, scale_after_normalization=bool(rng.integers(2)))
        self.op(f"{name}/CheckNumerics", "CheckNumerics", [bn], T=tf.float32, message="LayerNorm")
        self.op(f"{name}/control_dependency", "Identity", [bn, f"^{name}/CheckNumerics"], T=tf.float32)
        return self.op(name, "Relu", [f"{name}/control_dependency"], T=tf.float32)

    def pool(self, name, x, op, k, stride, padding):
        return self.op(name, op, [x], T=self.tf.float32, ksize=[1, k, k, 1], strides=[1, stride, stride, 1],
                       padding=padding)

    def join(self, name, branches):
        self.const(f"{name}/concat_dim", np.int32(3))
        return self.op(name, "Concat", [f"{name}/concat_dim", *branches], T=self.tf.float32, N=len(branches))

    def block_a(self, b, x, c):
        w = self.width
        one = self.conv(f"{b}/conv", x, c, w, (1, 1), 1, "SAME")
        t = self.conv(f"{b}/tower/conv", x, c, w, (1, 1), 1, "SAME")
        t = self.conv(f"{b}/tower/conv_1", t, w, w, (5, 5), 1, "SAME")
        t1 = self.conv(f"{b}/tower_1/conv", x, c, w, (1, 1), 1, "SAME")
        t1 = self.conv(f"{b}/tower_1/conv_1", t1, w, w, (3, 3), 1, "SAME")
        t1 = self.conv(f"{b}/tower_1/conv_2", t1, w, w, (3, 3), 1, "SAME")
        p = self.pool(f"{b}/tower_2/pool", x, "AvgPool", 3, 1, "SAME")
        p = self.conv(f"{b}/tower_2/conv", p, c, w, (1, 1), 1, "SAME")
        return self.join(f"{b}/join", [one, t, t1, p]), 4 * w

    def block_reduce_b(self, b, x, c):
        w = self.width
        one = self.conv(f"{b}/conv", x, c, w, (3, 3), 2, "VALID")
        t = self.conv(f"{b}/tower/conv", x, c, w, (1, 1), 1, "SAME")
        t = self.conv(f"{b}/tower/conv_1", t, w, w, (3, 3), 1, "SAME")
        t = self.conv(f"{b}/tower/conv_2", t, w, w, (3, 3), 2, "VALID")
        p = self.pool(f"{b}/pool", x, "MaxPool", 3, 2, "VALID")
        return self.join(f"{b}/join", [one, t, p]), 2 * w + c

    def block_c(self, b, x, c):
        w = self.width
        one = self.conv(f"{b}/conv", x, c, w, (1, 1), 1, "SAME")  # mixed_6/conv: sFID's features
        t = self.conv(f"{b}/tower/conv", x, c, w, (1, 1), 1, "SAME")
        t = self.conv(f"{b}/tower/conv_1", t, w, w, (1, 7), 1, "SAME")
        t = self.conv(f"{b}/tower/conv_2", t, w, w, (7, 1), 1, "SAME")
        t1 = self.conv(f"{b}/tower_1/conv", x, c, w, (1, 1), 1, "SAME")
        for i, k in enumerate([(7, 1), (1, 7), (7, 1), (1, 7)]):
            t1 = self.conv(f"{b}/tower_1/conv_{i + 1}", t1, w, w, k, 1, "SAME")
        p = self.pool(f"{b}/tower_2/pool", x, "AvgPool", 3, 1, "SAME")
        p = self.conv(f"{b}/tower_2/conv", p, c, w, (1, 1), 1, "SAME")
        return self.join(f"{b}/join", [one, t, t1, p]), 4 * w

    def block_reduce_d(self, b, x, c):
        w = self.width
        t = self.conv(f"{b}/tower/conv", x, c, w, (1, 1), 1, "SAME")
        t = self.conv(f"{b}/tower/conv_1", t, w, w, (3, 3), 2, "VALID")
        t1 = self.conv(f"{b}/tower_1/conv", x, c, w, (1, 1), 1, "SAME")
        t1 = self.conv(f"{b}/tower_1/conv_1", t1, w, w, (1, 7), 1, "SAME")
        t1 = self.conv(f"{b}/tower_1/conv_2", t1, w, w, (7, 1), 1, "SAME")
        t1 = self.conv(f"{b}/tower_1/conv_3", t1, w, w, (3, 3), 2, "VALID")
        p = self.pool(f"{b}/pool", x, "MaxPool", 3, 2, "VALID")
        return self.join(f"{b}/join", [t, t1, p]), 2 * w + c

    def block_e(self, b, x, c, pool_op):
        w = self.width
        one = self.conv(f"{b}/conv", x, c, w, (1, 1), 1, "SAME")
        t = self.conv(f"{b}/tower/conv", x, c, w, (1, 1), 1, "SAME")
        t = self.join(f"{b}/tower/mixed", [self.conv(f"{b}/tower/mixed/conv", t, w, w, (1, 3), 1, "SAME"),
                                            self.conv(f"{b}/tower/mixed/conv_1", t, w, w, (3, 1), 1, "SAME")])
        t1 = self.conv(f"{b}/tower_1/conv", x, c, w, (1, 1), 1, "SAME")
        t1 = self.conv(f"{b}/tower_1/conv_1", t1, w, w, (3, 3), 1, "SAME")
        t1 = self.join(f"{b}/tower_1/mixed", [self.conv(f"{b}/tower_1/mixed/conv", t1, w, w, (1, 3), 1, "SAME"),
                                              self.conv(f"{b}/tower_1/mixed/conv_1", t1, w, w, (3, 1), 1, "SAME")])
        p = self.pool(f"{b}/tower_2/pool", x, pool_op, 3, 1, "SAME")
        p = self.conv(f"{b}/tower_2/conv", p, c, w, (1, 1), 1, "SAME")
        return self.join(f"{b}/join", [one, t, t1, p]), 6 * w


def write_inception_like(path, **kwargs) -> int:
    """Write an InceptionLike graph to `path` -> its pool_3 width."""
    graph = InceptionLike(**kwargs)
    with open(path, "wb") as f:
        f.write(graph.serialized())
    return graph.pool_dim
