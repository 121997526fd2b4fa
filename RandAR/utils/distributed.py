"""torchrun helpers shared by extraction, sampling and evaluation: one process group, rank-exact splits,
and the packing of a sample folder into the single .npz the evaluator reads."""
import os
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from RandAR.utils.atomic import atomic_path
from RandAR.utils.progress import progress


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout: Optional[timedelta] = None) -> DistInfo:
    """Start the process group under torchrun (nccl on CUDA, gloo on CPU); a plain `python` run is rank 0 of 1.

    `device`: "auto" (CUDA when available), "cpu" or "cuda". `timeout`: how long a collective may wait
    (torch's default when None); raise it where ranks wait while rank 0 alone packs or evaluates.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        extra = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", **extra)
    return DistInfo(rank, world_size, local_rank, dev)


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int, rank: int, world_size: int) -> range:
    """Indices rank, rank + world, ...: disjoint over ranks, covering 0..n-1 exactly."""
    return range(rank, n, world_size)


def all_reduce_sum(values, device) -> list:
    """Sum a list of numbers over ranks (counts for end-of-run summaries)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank, so all ranks act on one view (e.g. of files on disk)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def create_npz_from_sample_folder(sample_dir: str, num: int, npz_path: Optional[str] = None) -> str:
    """Pack `sample_dir/{i:06d}.png`, i < num, into `npz_path` (default `<sample_dir>.npz`) as uint8 `arr_0`
    [num, H, W, 3], the layout ADM's evaluator reads.

    Images are streamed into the archive one at a time (50k 512px images would be 39 GB in memory), and the
    file appears atomically: a crash never leaves a truncated .npz under the final name.
    """
    npz_path = npz_path or f"{sample_dir.rstrip(os.sep)}.npz"

    def read(i):
        path = os.path.join(sample_dir, f"{i:06d}.png")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: sampling did not finish; run it again to make the rest")
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)

    first = read(0)
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (num,) + first.shape}
    with atomic_path(npz_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for i in progress(range(num), desc=f"packing {os.path.basename(npz_path)}", unit="img"):
                img = first if i == 0 else read(i)
                if img.shape != first.shape:
                    raise ValueError(f"{sample_dir}/{i:06d}.png is {img.shape}, image 0 is {first.shape}")
                f.write(img.tobytes())
    return npz_path


def allow_tf32():
    """TF32 matmuls and convolutions on Ampere and newer GPUs (as the original); no effect on CPU."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


# ---- the default precision, from what the machine does natively (never from a timing, which changes with load)
# CUDA: bf16. CPU: bf16 where it multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16/SVE-BF16),
# about 2x faster than float32 there; float32 elsewhere (e.g. AVX2-only CPUs: bfloat16 is emulated, ~2x slower).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")  # torch.cpu.get_capabilities() keys
CPUINFO_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo "flags" (x86) / "Features" (Arm)
CPUINFO = "/proc/cpuinfo"


def cpu_capabilities() -> Dict[str, object]:
    """What torch detects on this CPU (torch.cpu.get_capabilities()); without it (older torch), the bf16 flags of
    /proc/cpuinfo, and {} when neither is there."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    if os.path.isfile(CPUINFO):
        words = set()
        for line in open(CPUINFO):
            if line.startswith(("flags", "Features")):
                words.update(line.split(":", 1)[1].split())
        return {flag: flag in words for flag in CPUINFO_BF16_FLAGS}
    return {}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AVX512-BF16, AMX-BF16, Arm BF16)."""
    caps = cpu_capabilities()
    return any(bool(caps.get(flag)) for flag in NATIVE_BF16_FLAGS)


def default_precision(device) -> str:
    """bf16 on CUDA and on CPUs with native bfloat16, else "none" (float32)."""
    if torch.device(device).type == "cuda":
        return "bf16"
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "none"


def describe_cpu() -> str:
    """One line for logs: e.g. 'AMD EPYC, AVX2, no native bfloat16'."""
    caps = cpu_capabilities()
    name = caps.get("cpu_name") or caps.get("architecture") or "CPU"
    native = [flag for flag in NATIVE_BF16_FLAGS if caps.get(flag)]
    return (f"{name}, {torch.backends.cpu.get_cpu_capability()}, "
            + (f"native bfloat16 ({', '.join(native)})" if native else "no native bfloat16"))
