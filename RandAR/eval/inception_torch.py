"""ADM's Inception-v3 features computed by PyTorch from the same frozen graph, without TensorFlow.

`InceptionV3Torch` is the torch twin of RandAR.eval.fid.InceptionV3TF: it runs classify_image_graph_def.pb's
own nodes and constants (RandAR.eval.tf_graph) from `ExpandDims:0` to `pool_3:0` and `mixed_6/conv:0` (the names
in RandAR.eval.inception_graph), and takes IS's classifier weight from the graph's `softmax/logits/MatMul`, so it
returns the same three arrays that fid.evaluate_with scores. Float32 throughout, with TF32 switched off while it
runs on CUDA.
"""
import contextlib
from typing import Optional

import numpy as np
import torch

from RandAR.eval import inception_graph as adm
from RandAR.eval.tf_graph import TFGraph, read_graph_def

BYTES_PER_IMAGE = 64 << 20  # generous peak activation memory of one 299x299 image through the graph, float32
# On CPU the graph runs 8 images at a time: a layer's activations then mostly stay in cache between the
# convolution and the batch norm, CheckNumerics and Relu that read them (measured 1.3x faster than 64 at once).
CPU_CHUNK = 8


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_batch_size(device) -> int:
    """64 on CPU (as TF's default); on CUDA as many images as a quarter of the free memory holds, 32..500."""
    device = torch.device(device)
    if device.type != "cuda":
        return 64
    free, _ = torch.cuda.mem_get_info(device)
    return int(np.clip(free // 4 // BYTES_PER_IMAGE, 32, 500))


@contextlib.contextmanager
def exact_float32():
    """TF computes these convolutions and matmuls in full float32; so must we (no TF32 on Ampere+)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class InceptionV3Torch:
    """pool_3 (2048), mixed_6/conv's first 7 channels flattened, softmax(pool_3 @ W) without bias, as
    InceptionV3TF, computed by PyTorch on `device` (default: CUDA when available)."""

    def __init__(self, inception_path: Optional[str] = None, device=None):
        path = adm.resolve_inception_path(inception_path)
        self.device = torch.device(device) if device is not None else default_device()
        self.batch_size = default_batch_size(self.device)
        graph_def = read_graph_def(path)
        self.graph = TFGraph(graph_def, [adm.INPUT_TENSOR], [adm.POOL_TENSOR, adm.SPATIAL_TENSOR], self.device)
        matmul = next((n for n in graph_def.node if n.name == adm.LOGITS_MATMUL_OP), None)
        if matmul is None or len(matmul.input) < 2:
            raise ValueError(f"{path}: no node {adm.LOGITS_MATMUL_OP} with a weight input; not ADM's Inception graph?")
        # ADM's IS classifier: the MatMul's second input (a constant in the graph), evaluated once.
        self.softmax_weight, = TFGraph(graph_def, [], [matmul.input[1]], self.device)()  # (D, C)

    def pool_features(self, images: np.ndarray):
        x = torch.from_numpy(np.array(images)).to(self.device).float()  # (N, H, W, 3) in [0, 255]
        chunk = CPU_CHUNK if self.device.type == "cpu" else len(x)
        pools, spatials = [], []
        with exact_float32():
            for start in range(0, len(x), chunk):
                pool, spatial = self.graph(x[start:start + chunk])  # (n, 1, 1, D), (n, h, w, C)
                pools.append(pool.reshape(len(pool), -1))
                spatials.append(spatial[..., :adm.SPATIAL_CHANNELS].reshape(len(spatial), -1))
            pool = torch.cat(pools)
            probs = torch.softmax(pool @ self.softmax_weight, dim=-1)  # (N, classes)
        return pool.cpu().numpy(), torch.cat(spatials).cpu().numpy(), probs.cpu().numpy()

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
