"""A sampling run's folder: its name, its stamp, which images it still lacks, and the debug grid.

Image i has its own class label, seed and generation order, all derived from (global seed, i) alone
(below), so which process makes it, in which batch, and whether the run was interrupted
before does not change what it is (pixel for pixel where the arithmetic is batch-invariant, e.g. at an equal
batch size). The scripts (sample_c2i.py, tools/resolution_extrapolation.py, tools/search_cfg_weights.py) run
the batch loop themselves with these pieces.

Layout: <sample-dir>/<run-name>/{i:06d}.png, then one <sample-dir>/<run-name>.npz (see
RandAR.utils.distributed.create_npz_from_sample_folder), and <sample-dir>/<run-name>.stamp.json, written before
the first image: fingerprints of both checkpoints' contents, the resolved config and every sampling setting
(RandAR.utils.run_stamp). A re-run with the same inputs only makes the PNGs that are missing; one with other
inputs under the same run name (e.g. another training's `iters_00360000.safetensors`) stops with the fields
that differ, unless force, which removes that run's outputs and starts it afresh.
"""
import glob
import os
import sys
from dataclasses import fields
from datetime import timedelta
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

from RandAR.model.generate import DecodeConfig
from RandAR.sampling.image_io import save_png
from RandAR.utils.distributed import DistInfo, broadcast_object
from RandAR.utils.images import image_grid
from RandAR.utils.progress import progress
from RandAR.utils.run_stamp import StampMismatchError, claim
from RandAR.utils.seeding import Stream, seeds_for

# Ranks wait in a collective while rank 0 alone packs the .npz (50k PNGs take minutes).
PACK_TIMEOUT = timedelta(hours=2)
# How a decoding setting other than the CFG scales and steps is spelt in a run name (when not its default).
NAME_TAGS = {"temperature": "temp", "top_k": "topk", "top_p": "topp"}
DECODE_DEFAULTS = {f.name: f.default for f in fields(DecodeConfig)
                   if f.name not in ("cfg_scales", "num_inference_steps")}  # always in the name


def precision_name(precision: str) -> str:
    """How a sampling precision ("bf16", "fp16", "none") is spelt in run names and reports: "none" is "fp32"."""
    return "fp32" if precision == "none" else precision


def run_name(exp_name: str, ckpt_name: str, settings: Dict[str, Any], with_cfg: bool = True) -> str:
    """Every setting of `settings` (a run stamp's "sampling" part: DecodeConfig's fields, image sizes, precision,
    seed, class sampling, resolution extrapolation's) that changes the pixels, spelt out, e.g.
    randar-ckpt-size-256-256-cfg-1.0-4.0-steps-88-bf16-seed-0 (with_cfg=False drops the cfg part). Decoding
    settings at their defaults are left out, to keep the common names short."""
    s = settings
    a, b = s["cfg_scales"]
    name = (f"{exp_name}-{ckpt_name}-size-{s['image_size']}-{s['image_size_eval']}"
            + (f"-cfg-{a}-{b}" if with_cfg else "")
            + f"-steps-{s['num_inference_steps']}-{precision_name(s['precision'])}")
    for key, default in DECODE_DEFAULTS.items():
        if s[key] != default:
            name += f"-{NAME_TAGS.get(key, key.replace('_', ''))}-{s[key]}"
    if s["class_sampling"] != "random":
        name += f"-{s['class_sampling']}"
    if "extrapolation_factor" in s:
        c, d = s["spatial_cfg_scales"]
        name += (f"-extrap-{s['extrapolation_factor']}-ntk-{s['ntk_boundary']}-scfg-{c}-{d}"
                 f"-smask-{s['spatial_masking_ratio']}")
    return f"{name}-seed-{s['global_seed']}"


# ---- per-image randomness: each image's seed and class label depend on (global seed, image index) alone --------
CLASS_SAMPLING = ("random", "balanced")


def image_seeds(global_seed: int, indices: Sequence[int]) -> List[int]:
    """The seed of each image: it drives the image's token order and every token draw."""
    return seeds_for(global_seed, Stream.IMAGE, indices)


def class_labels(indices: Sequence[int], num_classes: int, global_seed: int, mode: str = "random") -> List[int]:
    """Class of each image index, a function of (global seed, index) only: the same for every world size,
    batch size and total count (a 10k run is the prefix of a 50k run).

    random: an independent uniform draw per image (the original drew labels at random too, per batch).
    balanced: indices come in blocks of num_classes, each block a seeded shuffle of all classes: every class
        equally often when the count is a multiple of num_classes, and within one of that in any prefix.
    """
    if mode == "random":
        return [v % num_classes for v in seeds_for(global_seed, Stream.LABEL, indices)]
    if mode != "balanced":
        raise ValueError(f"class sampling must be one of {CLASS_SAMPLING}, got {mode!r}")
    perms = {}
    labels = []
    for i in indices:
        block = i // num_classes
        if block not in perms:
            g = torch.Generator().manual_seed(seeds_for(global_seed, Stream.BALANCED_BLOCK, [block])[0])
            perms[block] = torch.randperm(num_classes, generator=g).tolist()
        labels.append(perms[block][i % num_classes])
    return labels


# ---- the run folder --------------------------------------------------------------------------------------------
def png_name(index: int) -> str:
    return f"{index:06d}.png"


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
            os.makedirs(folder, exist_ok=True)
        except StampMismatchError as e:
            error = str(e)
    error, resumed = broadcast_object((error, resumed))
    if error:
        sys.exit(f"error: {error}")
    return resumed


def missing_indices(folder: str, num: int) -> List[int]:
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    return [i for i in range(num) if png_name(i) not in names]


def my_missing_indices(folder: str, num: int, dist: DistInfo) -> Tuple[List[int], int]:
    """(this rank's share of the PNGs 0..num-1 that `folder` lacks, how many all ranks make). Rank 0 lists the
    folder once for all ranks (a rank looking later could already see others' new files) and every rank takes
    every world_size-th one, so a re-run after a crash makes only the missing images, on any number of
    processes."""
    missing = broadcast_object(missing_indices(folder, num) if dist.is_main else None)
    if dist.is_main:
        print(f"{folder}: {num - len(missing)} of {num} images present, sampling {len(missing)} "
              f"on {dist.world_size} process(es)", flush=True)
    return missing[dist.rank::dist.world_size], len(missing)


def batches(mine: Sequence[int], total: int, batch_size: int, dist: DistInfo, desc: str) -> Iterator[List[int]]:
    """`mine` in batches of batch_size, with a progress bar on rank 0 over the `total` images of all ranks."""
    shards = [len(range(r, total, dist.world_size)) for r in range(dist.world_size)]
    bar = progress(total=total, unit="img", disable=not dist.is_main, dynamic_ncols=True, desc=desc)
    for step, start in enumerate(range(0, len(mine), batch_size)):
        yield list(mine[start:start + batch_size])
        # rank 0 has the most steps; this counts all ranks' images of the step
        bar.update(sum(min(batch_size, max(0, n - step * batch_size)) for n in shards))
    bar.close()


def save_debug_grid(images: np.ndarray, labels: Sequence[int], path: str, seconds: float) -> str:
    """The first batch's images as one grid PNG (black, with a 2 px frame), for a look before a long run."""
    grid = image_grid(images, pad=2, background=0)
    save_png(np.pad(grid, ((2, 2), (2, 2), (0, 0))), path)
    print(f"debug: wrote {path} ({len(images)} images in {seconds:.1f}s, row-major class labels "
          f"{list(labels)})", flush=True)
    return path
