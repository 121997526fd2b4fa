"""ADM's Inception-v3 graph file, `classify_image_graph_def.pb`: where it is, how it is fetched and checked, and the
tensors the evaluator reads from it. Both backends (RandAR.eval.fid.InceptionV3TF and
RandAR.eval.inception_torch.InceptionV3Torch) start here.
"""
import os
import urllib.request
from typing import Optional

from RandAR.utils.atomic import atomic_path
from RandAR.utils.progress import progress

INCEPTION_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/classify_image_graph_def.pb"
INCEPTION_ENV = "RANDAR_INCEPTION_PATH"
DEFAULT_INCEPTION_PATH = "~/.cache/randar/classify_image_graph_def.pb"

# Tensor names inside the graph, as ADM uses them. The graph decodes a JPEG, casts it to float and adds a batch
# axis at `ExpandDims`; ADM feeds float images in [0, 255] there, so the graph's own bilinear resize to 299 and
# (x - 128) / 128 scaling still apply.
INPUT_TENSOR = "ExpandDims:0"
POOL_TENSOR = "pool_3:0"  # (N, 1, 1, 2048): FID, precision, recall
SPATIAL_TENSOR = "mixed_6/conv:0"  # (N, 17, 17, 768): sFID uses the first 7 channels
LOGITS_MATMUL_OP = "softmax/logits/MatMul"  # its 2nd input is the (2048, 1008) classifier weight
SPATIAL_CHANNELS = 7
GRAPH_NODES = tuple(t.split(":")[0] for t in (INPUT_TENSOR, POOL_TENSOR, SPATIAL_TENSOR, LOGITS_MATMUL_OP))


class InceptionGraphMissing(FileNotFoundError):
    """The Inception-v3 graph file is not on disk; the message says where to get it and where to put it."""


def resolve_inception_path(path: Optional[str] = None) -> str:
    """`path`, else $RANDAR_INCEPTION_PATH, else ~/.cache/randar/classify_image_graph_def.pb.

    A path given by the flag or the variable must exist (offline clusters point at their copy); the default cache
    path is filled on first use by downloading ADM's copy from INCEPTION_URL, as ADM's evaluator does.
    """
    given = path or os.environ.get(INCEPTION_ENV)
    path = os.path.expanduser(given or DEFAULT_INCEPTION_PATH)
    if os.path.isfile(path):
        return path
    if given:
        raise InceptionGraphMissing(
            f"Inception-v3 graph not found at {path} (--inception-path / ${INCEPTION_ENV}).\n"
            f"Download ADM's copy there:  mkdir -p {os.path.dirname(path) or '.'} && wget -O {path} {INCEPTION_URL}\n"
            f"or leave both unset to download it into {DEFAULT_INCEPTION_PATH} on first use."
        )
    download_inception_graph(path)
    return path


def download_inception_graph(path: str, url: Optional[str] = None):
    """Fetch the graph to `path` through a temporary file, renamed only once it holds every tensor ADM reads, so an
    interrupted download or an HTML error page is never taken for the graph."""
    url = url or INCEPTION_URL
    print(f"downloading ADM's Inception-v3 graph {url} -> {path}", flush=True)
    try:
        with atomic_path(path) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
                size = response.headers.get("Content-Length")
                total = int(size) if size else None
                with progress(total=total, unit="B", unit_scale=True, desc="classify_image_graph_def.pb") as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
            received = os.path.getsize(tmp)
            if total is not None and received != total:
                raise ValueError(f"got {received} of {total} bytes")
            with open(tmp, "rb") as f:
                check_inception_graph(f.read())
    except (OSError, ValueError) as e:  # URLError and socket timeouts are OSErrors
        raise InceptionGraphMissing(
            f"could not download the Inception-v3 graph from {url}: {e}.\n"
            f"Without network access, fetch it elsewhere and pass it with --inception-path or ${INCEPTION_ENV} "
            f"(or put it at {path})."
        ) from e


def check_inception_graph(data: bytes):
    """Raise ValueError unless `data` is a serialized GraphDef with the nodes ADM reads (parsed by
    RandAR.eval.tf_graph's GraphDef schema: no TensorFlow needed)."""
    from google.protobuf.message import DecodeError

    from RandAR.eval.tf_graph import parse_graph_def

    try:
        names = {node.name for node in parse_graph_def(data).node}
    except DecodeError as e:
        raise ValueError(f"not a serialized GraphDef ({e})") from e
    missing = [name for name in GRAPH_NODES if name not in names]
    if missing:
        raise ValueError(f"not ADM's Inception graph: no node {', '.join(missing)}")
