"""Class-conditional sampling into a folder of PNGs, exact under any number of processes and any batch size.

Image i has its own class label, seed and generation order, all derived from (global seed, i) alone
(RandAR.sampling.labels), so which process makes it, in which batch, and whether the run was interrupted
before does not change what it is (pixel for pixel where the arithmetic is batch-invariant, e.g. at an equal
batch size). Used by sample_c2i.py, tools/resolution_extrapolation.py and tools/search_cfg_weights.py, which
samples many scales within one process group.

Layout: <sample-dir>/<run-name>/{i:06d}.png, then one <sample-dir>/<run-name>.npz (see
RandAR.utils.distributed.create_npz_from_sample_folder), and <sample-dir>/<run-name>.stamp.json, written before
the first image: fingerprints of both checkpoints' contents, the resolved config and every sampling setting
(RandAR.utils.run_stamp). A re-run with the same inputs only makes the PNGs that are missing; one with other
inputs under the same run name (e.g. another training's `iters_00360000.safetensors`) stops with the fields
that differ, unless force, which removes that run's outputs and starts it afresh.
"""
import glob
import math
import os
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from RandAR.sampling.image_io import save_png
from RandAR.sampling.inputs import SamplingInputs, ckpt_name, run_stamp_of
from RandAR.sampling.labels import class_labels
from RandAR.sampling.spec import SamplingSpec, sample_images
from RandAR.utils.distributed import DistInfo, barrier, broadcast_object, create_npz_from_sample_folder
from RandAR.utils.images import image_grid
from RandAR.utils.progress import progress
from RandAR.utils.run_stamp import StampMismatchError, claim

# Ranks wait in a collective while rank 0 alone packs the .npz (50k PNGs take minutes).
PACK_TIMEOUT = timedelta(hours=2)


def png_name(index: int) -> str:
    return f"{index:06d}.png"


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
            save_png(image, os.path.join(folder, png_name(index)))
        pbar.update(counts[step])  # rank 0 has the most steps; this counts all ranks' images of the step
    pbar.close()
    barrier()
    return len(missing)


def save_debug_grid(model, tokenizer, spec: SamplingSpec, path: str, batch_size: int,
                    sampler: Optional[Callable] = None) -> str:
    """Images 0..batch_size-1 as one grid PNG (the first batch of the run), for a look before a long run."""
    indices = list(range(batch_size))
    start = time.time()
    images = (sampler or sample_images)(model, tokenizer, indices, spec)
    labels = class_labels(indices, model.num_classes, spec.global_seed, spec.class_sampling)
    grid = image_grid(images, pad=2, background=0)
    save_png(np.pad(grid, ((2, 2), (2, 2), (0, 0))), path)  # black, with a 2 px frame
    print(f"debug: wrote {path} ({len(indices)} images in {time.time() - start:.1f}s, row-major class labels "
          f"{labels})", flush=True)
    return path


def sample_run(dist: DistInfo, model, tokenizer, spec: SamplingSpec, inputs: SamplingInputs, *, sample_dir: str,
               exp_name: str, num: int, batch_size: int, debug: bool = False, force: bool = False,
               sampler: Optional[Callable] = None):
    """The body of the sampling mains (sample_c2i.py, resolution extrapolation): with `debug` a grid of the first
    batch; otherwise the PNGs of <sample_dir>/<run-name>/ that are missing, then rank 0 packs <run-name>.npz."""
    folder = os.path.join(sample_dir, spec.run_name(exp_name, ckpt_name(inputs.gpt_ckpt)))
    if debug:
        if dist.is_main:
            save_debug_grid(model, tokenizer, spec, f"{folder}-debug.png", batch_size, sampler)
        return
    start = time.time()
    made = sample_to_folder(model, tokenizer, spec, folder, num, batch_size, dist, run_stamp_of(inputs, spec),
                            sampler, force=force)
    if dist.is_main:
        secs = time.time() - start
        print(f"sampled {made} images in {secs:.1f}s ({made / max(secs, 1e-9):.2f} img/s)", flush=True)
        npz = create_npz_from_sample_folder(folder, num)
        print(f"wrote {npz} [{num} images of {spec.image_size_eval}px]", flush=True)
