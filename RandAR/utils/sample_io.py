"""Class-conditional sampling into a folder of PNGs, exact under any number of processes and any batch size.

Image i has its own class label, seed and generation order, all derived from (global seed, i) alone, so
which process makes it, in which batch, and whether the run was interrupted before does not change what it
is (pixel for pixel where the arithmetic is batch-invariant, e.g. at an equal batch size). Shared by
sample_c2i.py and tools/search_cfg_weights.py, which samples many scales within one process group.

Layout: <sample-dir>/<run-name>/{i:06d}.png, then one <sample-dir>/<run-name>.npz (see
RandAR.utils.distributed.create_npz_from_sample_folder), and <sample-dir>/<run-name>.stamp.json, written before
the first image: fingerprints of both checkpoints' contents, the resolved config and every sampling setting
(RandAR.utils.run_stamp). A re-run with the same inputs only makes the PNGs that are missing; one with other
inputs under the same run name (e.g. another training's `iters_00360000.safetensors`) stops with the fields
that differ, unless --force, which removes that run's outputs and starts it afresh.
"""
import argparse
import difflib
import glob
import math
import os
import sys
import time
from datetime import timedelta
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from RandAR.utils.progress import progress

from RandAR.model.builder import build_randar
from RandAR.model.sampling import splitmix64
from RandAR.model.tokenizers import build_tokenizer
from RandAR.utils.config import load_config, to_plain
from RandAR.utils.distributed import DistInfo, barrier, broadcast_object, create_npz_from_sample_folder
from RandAR.utils.run_stamp import StampMismatchError, claim, file_fingerprint

# Ranks wait in a collective while rank 0 alone packs the .npz (50k PNGs take minutes).
PACK_TIMEOUT = timedelta(hours=2)
PRECISIONS = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CLASS_SAMPLING = ("random", "balanced")

# ---------------------------------------------------------------- per-image randomness

# Independent streams derived from one (global seed, index) pair.
_SEED_STREAM, _LABEL_STREAM, _BALANCED_STREAM = 0, 1, 2


def _derive(global_seed: int, indices: Sequence[int], stream: int) -> List[int]:
    """A 63-bit value (fits int64 and torch.manual_seed) per (global seed, index, stream); distinct inputs give
    unrelated values."""
    if not 0 <= global_seed < 2**31 or any(i < 0 for i in indices):
        raise ValueError(f"global seed must be in [0, 2**31) and image indices >= 0, got {global_seed}")
    h = splitmix64(splitmix64(torch.as_tensor(list(indices), dtype=torch.long) ^ (global_seed << 32)) ^ stream)
    return ((h >> 1) & ((1 << 63) - 1)).tolist()  # logical shift: a non-negative 63-bit value


def image_seeds(global_seed: int, indices: Sequence[int]) -> List[int]:
    """The seed of each image: it drives the image's token order and every token draw."""
    return _derive(global_seed, indices, _SEED_STREAM)


def class_labels(indices: Sequence[int], num_classes: int, global_seed: int, mode: str = "random") -> List[int]:
    """Class of each image index, a function of (global seed, index) only: the same for every world size,
    batch size and total count (a 10k run is the prefix of a 50k run).

    random: an independent uniform draw per image (the original drew labels at random too, per batch).
    balanced: indices come in blocks of num_classes, each block a seeded shuffle of all classes: every class
        equally often when the count is a multiple of num_classes, and within one of that in any prefix.
    """
    if mode == "random":
        return [v % num_classes for v in _derive(global_seed, indices, _LABEL_STREAM)]
    if mode != "balanced":
        raise ValueError(f"class sampling must be one of {CLASS_SAMPLING}, got {mode!r}")
    perms = {}
    labels = []
    for i in indices:
        block = i // num_classes
        if block not in perms:
            g = torch.Generator().manual_seed(_derive(global_seed, [block], _BALANCED_STREAM)[0])
            perms[block] = torch.randperm(num_classes, generator=g).tolist()
        labels.append(perms[block][i % num_classes])
    return labels


def token_orders(seeds: Sequence[int], num_tokens: int) -> torch.Tensor:
    """(B, N) generation order per image: a uniform permutation drawn from the image's own seed."""
    return torch.stack([torch.randperm(num_tokens, generator=torch.Generator().manual_seed(s)) for s in seeds])


# ---------------------------------------------------------------- what decides the pixels

@dataclass(frozen=True)
class SamplingSpec:
    """Every setting besides the weights that decides image i's pixels; `run_name` spells all of them."""
    cfg_scales: Tuple[float, float]
    num_inference_steps: int
    image_size: int  # what the tokenizer decodes: token grid x downsample factor
    image_size_eval: int  # what is saved (bicubic resize of the decoded float image when it differs)
    precision: str = "none"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    global_seed: int = 0
    class_sampling: str = "random"

    def run_name(self, exp_name: str, ckpt_name: str, with_cfg: bool = True) -> str:
        """e.g. randar-ckpt-size-256-256-cfg-1.0-4.0-steps-88-bf16-seed-0 (with_cfg=False drops the cfg part)."""
        a, b = self.cfg_scales
        name = (f"{exp_name}-{ckpt_name}-size-{self.image_size}-{self.image_size_eval}"
                + (f"-cfg-{a}-{b}" if with_cfg else "")
                + f"-steps-{self.num_inference_steps}-{'fp32' if self.precision == 'none' else self.precision}")
        # Non-default sampling settings only, to keep the common names short.
        if self.temperature != 1.0:
            name += f"-temp-{self.temperature}"
        if self.top_k:
            name += f"-topk-{self.top_k}"
        if self.top_p != 1.0:
            name += f"-topp-{self.top_p}"
        if self.class_sampling != "random":
            name += f"-{self.class_sampling}"
        return f"{name}-seed-{self.global_seed}"


@torch.no_grad()
def sample_images(model, tokenizer, indices: Sequence[int], spec: SamplingSpec) -> np.ndarray:
    """Images `indices` -> uint8 (B, size_eval, size_eval, 3), each from its own label, seed and order."""
    device = model.tok_embeddings.weight.device
    labels = class_labels(indices, model.num_classes, spec.global_seed, spec.class_sampling)
    seeds = image_seeds(spec.global_seed, indices)
    order = None if model.position_order == "raster" else token_orders(seeds, model.block_size).to(device)
    codes = model.generate(
        torch.tensor(labels, device=device), token_order=order, cfg_scales=spec.cfg_scales,
        num_inference_steps=spec.num_inference_steps, temperature=spec.temperature, top_k=spec.top_k,
        top_p=spec.top_p, seeds=torch.tensor(seeds, dtype=torch.long, device=device))   # (B, N) raster order
    # The float image is resized before rounding, as the original's decode_codes_to_img(codes, size_eval).
    return tokenizer.decode_codes_to_img(codes, spec.image_size_eval)


# ---------------------------------------------------------------- the folder

def png_name(index: int) -> str:
    return f"{index:06d}.png"


def save_png_atomic(image: np.ndarray, path: str):
    """Write to a temporary name, then rename: a killed run never leaves a truncated PNG that resume would keep."""
    tmp = f"{path}.tmp.{os.getpid()}"
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


def missing_indices(folder: str, num: int) -> List[int]:
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    return [i for i in range(num) if png_name(i) not in names]


def _per_step_counts(n_missing: int, world_size: int, batch_size: int) -> List[int]:
    """Images all ranks make together at each step (rank r holds missing[r::world]); for the progress bar."""
    shards = [len(range(r, n_missing, world_size)) for r in range(world_size)]
    steps = math.ceil(shards[0] / batch_size) if shards else 0
    return [sum(min(batch_size, max(0, s - t * batch_size)) for s in shards) for t in range(steps)]


def stamp_path(folder: str) -> str:
    return f"{folder.rstrip(os.sep)}.stamp.json"


def run_outputs(folder: str) -> List[str]:
    """A run's outputs besides its stamp: the PNG folder, <run-name>.npz and the search's <run-name>-<N>.npz."""
    folder = folder.rstrip(os.sep)
    return [folder, f"{folder}.npz", *sorted(glob.glob(f"{glob.escape(folder)}-*.npz"))]


def claim_run_folder(folder: str, stamp: Dict[str, Any], dist: DistInfo, force: bool = False) -> bool:
    """Rank 0 checks <folder>.stamp.json against `stamp` (see run_stamp.claim) before anything is sampled; on a
    mismatch every rank exits with the one-line error. Returns whether this resumes an earlier run."""
    error, resumed = None, False
    if dist.is_main:
        try:
            resumed = claim(stamp_path(folder), stamp, run_outputs(folder), force, what="sampling run")
        except StampMismatchError as e:
            error = str(e)
    error, resumed = broadcast_object((error, resumed))
    if error:
        sys.exit(f"error: {error}")
    return resumed


def sample_to_folder(model, tokenizer, spec: SamplingSpec, folder: str, num: int, batch_size: int,
                     dist: DistInfo, stamp: Dict[str, Any], sampler: Optional[Callable] = None,
                     force: bool = False) -> int:
    """Make the PNGs 0..num-1 that `folder` lacks; every rank calls this. Returns how many were made.
    `sampler(model, tokenizer, indices, spec)` -> uint8 images makes them (default `sample_images`; resolution
    extrapolation passes its own). `stamp` (see `run_stamp_of`) must match the folder's, else it stops before
    sampling; `force` removes the run's outputs first.

    Rank 0 lists the folder and every rank takes every world_size-th missing index, so a re-run after a crash
    makes only the missing images, on any number of processes. Returns after a barrier: all PNGs exist then.
    """
    claim_run_folder(folder, stamp, dist, force)
    if dist.is_main:
        os.makedirs(folder, exist_ok=True)
    # One listing for all ranks: a rank looking later could already see others' new files.
    missing = broadcast_object(missing_indices(folder, num) if dist.is_main else None)
    mine = missing[dist.rank::dist.world_size]
    if dist.is_main:
        print(f"{folder}: {num - len(missing)} of {num} images present, sampling {len(missing)} "
              f"on {dist.world_size} process(es)", flush=True)
    counts = _per_step_counts(len(missing), dist.world_size, batch_size)
    pbar = progress(total=len(missing), unit="img", disable=not dist.is_main, dynamic_ncols=True,
                desc=f"cfg {spec.cfg_scales[0]}-{spec.cfg_scales[1]}")
    for step, start in enumerate(range(0, len(mine), batch_size)):
        batch = mine[start:start + batch_size]
        for index, image in zip(batch, (sampler or sample_images)(model, tokenizer, batch, spec)):
            save_png_atomic(image, os.path.join(folder, png_name(index)))
        pbar.update(counts[step])  # rank 0 has the most steps; this counts all ranks' images of the step
    pbar.close()
    barrier()
    return len(missing)


def image_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """uint8 (B, H, W, 3) -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) image, as square as possible."""
    b, h, w, c = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img
    return grid


def save_debug_grid(model, tokenizer, spec: SamplingSpec, path: str, batch_size: int,
                    sampler: Optional[Callable] = None) -> str:
    """Images 0..batch_size-1 as one grid PNG (the first batch of the run), for a look before a long run."""
    indices = list(range(batch_size))
    start = time.time()
    images = (sampler or sample_images)(model, tokenizer, indices, spec)
    labels = class_labels(indices, model.num_classes, spec.global_seed, spec.class_sampling)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_png_atomic(image_grid(images), path)
    print(f"debug: wrote {path} ({len(indices)} images in {time.time() - start:.1f}s, row-major class labels "
          f"{labels})", flush=True)
    return path


def sample_run(args, dist: DistInfo, model, tokenizer, spec: SamplingSpec, inputs: "SamplingInputs",
               sampler: Optional[Callable] = None):
    """The body of the sampling mains (sample_c2i.py, resolution extrapolation): with --debug a grid of the first
    batch; otherwise the PNGs of <sample-dir>/<run-name>/ that are missing, then rank 0 packs <run-name>.npz."""
    folder = os.path.join(args.sample_dir, spec.run_name(args.exp_name, ckpt_name(args.gpt_ckpt)))
    if args.debug:
        if dist.is_main:
            save_debug_grid(model, tokenizer, spec, f"{folder}-debug.png", args.per_proc_batch_size, sampler)
        return
    start = time.time()
    made = sample_to_folder(model, tokenizer, spec, folder, args.num_fid_samples, args.per_proc_batch_size, dist,
                            run_stamp_of(inputs, spec), sampler, force=args.force)
    if dist.is_main:
        secs = time.time() - start
        print(f"sampled {made} images in {secs:.1f}s ({made / max(secs, 1e-9):.2f} img/s)", flush=True)
        npz = create_npz_from_sample_folder(folder, args.num_fid_samples)
        print(f"wrote {npz} [{args.num_fid_samples} images of {spec.image_size_eval}px]", flush=True)


# ---------------------------------------------------------------- command line (sample_c2i.py, the CFG search)

def add_sampling_args(p: argparse.ArgumentParser):
    """The model and sampling flags shared by sample_c2i.py and tools/search_cfg_weights.py."""
    p.add_argument("--config", required=True, help="RandAR config (configs/randar/*.yaml): ar_model and tokenizer")
    p.add_argument("--exp-name", required=True, help="first part of the run name (the sample folder)")
    p.add_argument("--gpt-ckpt", required=True, help="RandAR weights (.safetensors, or a torch file)")
    p.add_argument("--vq-ckpt", default=None, help="tokenizer weights (default: the config's vq_ckpt)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=None,
                   help="RandAR weights' dtype (default: bf16 on CUDA, none = float32 on CPU); the tokenizer "
                        "always decodes in float32")
    p.add_argument("--image-size", type=int, default=None,
                   help="decoded image size; must be the model's token grid x the tokenizer's downsample factor "
                        "(the default)")
    p.add_argument("--image-size-eval", type=int, default=None,
                   help="size of the saved images (default: --image-size); bicubic resize when different")
    p.add_argument("--num-inference-steps", type=int, default=None,
                   help="parallel-decoding steps (default: the config's ar_model num_inference_steps; "
                        "-1 or the token count = one token per step)")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    p.add_argument("--global-seed", type=int, default=0, help="with an image's index, gives its seed and label")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k filtering")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = no nucleus filtering")
    p.add_argument("--class-sampling", choices=CLASS_SAMPLING, default="random",
                   help="random: a uniform class per image (the original's numbers); balanced: every class "
                        "equally often, in a seeded shuffled order")
    p.add_argument("--sample-dir", default="samples", help="the run folders and .npz files go here")
    p.add_argument("--debug", action="store_true", help="write a grid of the first batch and exit")
    p.add_argument("--force", action="store_true",
                   help="start the run afresh: remove its outputs (PNG folder, .npz files, stamp) even when "
                        "they were made from other checkpoints, config or settings (without it that stops the run)")
    add_compile_arg(p)


def add_compile_arg(p: argparse.ArgumentParser):
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (CUDA graphs on CUDA): same images up to float round-off; "
                        "pays off on CUDA for runs of many batches, after about a minute of compilation")


def parse_pair(text: str, flag: str) -> Tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} takes two numbers like 1.0,4.0; got {text!r}") from None
    return a, b


def resolve_config_path(path: str) -> str:
    """`path` if it exists; else an error naming the closest shipped configs."""
    if os.path.isfile(path):
        return path
    folder = os.path.dirname(path) or "."
    candidates = sorted(glob.glob(os.path.join(folder if os.path.isdir(folder) else "configs/randar", "*.yaml")))
    close = difflib.get_close_matches(path, candidates, n=3, cutoff=0.3)
    raise FileNotFoundError(f"config {path} not found" + (f"; did you mean {' or '.join(close)}?" if close else "")
                            + (f" (available: {', '.join(candidates)})" if candidates else ""))


def ckpt_name(path: str) -> str:
    """Checkpoint file name without its extension, for run names."""
    name = os.path.basename(path)
    for ext in (".safetensors", ".pth", ".pt", ".bin"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    return precision or ("bf16" if device.type == "cuda" else "none")


@dataclass(frozen=True)
class SamplingInputs:
    """The checked --config (resolved) and checkpoint paths of a sampling run, with content fingerprints."""
    config: Any
    gpt_ckpt: str
    vq_ckpt: str
    fingerprints: Dict[str, str]


def check_inputs(args) -> SamplingInputs:
    """Everything about the inputs that can be checked without building a model: that --config, --gpt-ckpt
    and --vq-ckpt (or the config's vq_ckpt) exist and that the config's tokenizer and model agree."""
    config = load_config(resolve_config_path(args.config))
    vq_ckpt = args.vq_ckpt or config.get("vq_ckpt")
    if not vq_ckpt:
        raise ValueError(f"pass --vq-ckpt: the config {args.config} names no vq_ckpt")
    for what, path in (("--gpt-ckpt", args.gpt_ckpt), ("--vq-ckpt" if args.vq_ckpt else "the config's vq_ckpt",
                                                         vq_ckpt)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} {path} not found")
    vocab = config.get("ar_model", {}).get("params", {}).get("vocab_size")
    codebook = config.get("tokenizer", {}).get("params", {}).get("codebook_size")
    if vocab is not None and codebook is not None and vocab != codebook:
        raise ValueError(f"{args.config}: ar_model vocab_size {vocab} != tokenizer codebook_size {codebook}")
    return SamplingInputs(config, args.gpt_ckpt, vq_ckpt,
                          {"gpt_ckpt": file_fingerprint(args.gpt_ckpt), "vq_ckpt": file_fingerprint(vq_ckpt)})


def run_stamp_of(inputs: SamplingInputs, spec: SamplingSpec) -> Dict[str, Any]:
    """What decides a run's pixels: both checkpoints' contents, the resolved config, every sampling setting."""
    return {**inputs.fingerprints, "config": to_plain(inputs.config), "sampling": asdict(spec)}


def load_models(args, device: torch.device, inputs: Optional[SamplingInputs] = None):
    """(RandAR model in eval mode in --precision, tokenizer in float32), both strictly loaded, from --config.
    The inputs are checked (`check_inputs`) before anything is built."""
    inputs = inputs or check_inputs(args)
    config, vq_ckpt = inputs.config, inputs.vq_ckpt
    if device.type == "cuda":
        # As the original sampler: TF32 matmuls and convolutions.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = PRECISIONS[resolve_precision(args.precision, device)]
    model = build_randar(config, args.gpt_ckpt, device=device, dtype=dtype).eval()
    model.compile_decoding = getattr(args, "compile", False)  # generate's default
    tokenizer = build_tokenizer(config.tokenizer, vq_ckpt, device=device)
    return model, tokenizer


def spec_from_args(args, model, tokenizer, cfg_scales: Tuple[float, float], device: torch.device) -> SamplingSpec:
    """The flags with their defaults resolved from the model (steps, sizes) and checked against it."""
    native = model.grid_size * tokenizer.downsample_factor
    image_size = args.image_size or native
    if image_size != native:
        raise ValueError(f"--image-size {image_size}: this model decodes {model.grid_size}x{model.grid_size} "
                         f"tokens into {native}px images (x{tokenizer.downsample_factor}); use --image-size-eval "
                         f"to save another size (larger grids are resolution extrapolation)")
    steps = model.num_inference_steps if args.num_inference_steps is None else args.num_inference_steps
    if cfg_scales[-1] > 1.0 and not model.cls_embedding.has_null_class:
        raise ValueError(f"--cfg-scales {cfg_scales}: this model has no null class (class_dropout_prob=0), so "
                         f"no classifier-free guidance; use 1.0,1.0")
    if args.per_proc_batch_size < 1:
        raise ValueError(f"--per-proc-batch-size must be >= 1, got {args.per_proc_batch_size}")
    return SamplingSpec(cfg_scales=tuple(cfg_scales), num_inference_steps=steps, image_size=image_size,
                        image_size_eval=args.image_size_eval or image_size,
                        precision=resolve_precision(args.precision, device), temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, global_seed=args.global_seed,
                        class_sampling=args.class_sampling)
