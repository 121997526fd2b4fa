"""Zero-shot resolution extrapolation: a 256 px RandAR (16x16 tokens) samples 512 px images (32x32 tokens).

    torchrun --nproc_per_node 8 tools/resolution_extrapolation.py --config configs/randar/randar_xl_0.7b_llamagen.yaml \
        --exp-name randar_0.7b_extrapolation --gpt-ckpt randar_0.7b_llamagen_360k.safetensors \
        --vq-ckpt vq_ds16_c2i.pt --cfg-scales 3.0,3.0 --spatial-cfg-scales 2.5,2.5 --num-inference-steps 1024 \
        --per-proc-batch-size 8 --num-fid-samples 50000 --sample-dir ./samples

Each image: first its low-resolution version (every --extrapolation-factor-th row and column) as an ordinary
image of the model's grid, then the other tokens of the large grid in random order with parallel decoding,
the low-resolution tokens as known context, under the extrapolation RoPE table (--ntk-boundary) and class CFG
plus, with --spatial-cfg-scales > 1, spatial CFG (a third branch that hides --spatial-masking-ratio of the
low-resolution context). --num-inference-steps applies to each of the two passes (default: the config's;
-1 or at least the token count: one token per step).

Writes <sample-dir>/<run-name>/{i:06d}.png, <sample-dir>/<run-name>.npz and the run's stamp like sample_c2i.py
(resumable when the stamp matches, --force to start afresh; the same images on any number of processes; plain
`python` runs one process). --debug writes
<sample-dir>/<run-name>-debug.png, a grid of the first --per-proc-batch-size images, and stops. The
documentation's `torchrun tools/search_cfg_weights.py ... --cfg-scales 3.0,3.0 --spatial-cfg-scales 2.5,2.5
--num-inference-steps 1024 --debug` runs this.

The folder, resume, per-index labels and seeds, .npz packing and --debug grid are RandAR.utils.sample_io's;
this module adds the extrapolation settings (`ExtrapolationSpec`) and the per-batch sampler that calls
`RandAR.applications.resolution_extrapolation.generate_resolution_extrapolation`.
"""
import argparse
import sys
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

from RandAR.applications.resolution_extrapolation import (extrapolation_grid, extrapolation_rope,
                                                          generate_resolution_extrapolation)
from RandAR.utils.checkpoint import CheckpointMismatchError
from RandAR.utils.distributed import cleanup, init_distributed
from RandAR.utils.sample_io import (PACK_TIMEOUT, SamplingSpec, add_sampling_args, check_inputs, class_labels,
                                    image_seeds, load_models, parse_pair, resolve_precision, sample_run)


@dataclass(frozen=True)
class ExtrapolationSpec(SamplingSpec):
    """SamplingSpec plus the extrapolation settings; image_size is the large grid's decoded size."""
    spatial_cfg_scales: Tuple[float, float] = (1.0, 1.0)
    spatial_masking_ratio: float = 0.5
    extrapolation_factor: int = 2
    ntk_boundary: int = 2

    def run_name(self, exp_name: str, ckpt_name: str, with_cfg: bool = True) -> str:
        base, seed = super().run_name(exp_name, ckpt_name, with_cfg).rsplit("-seed-", 1)
        a, b = self.spatial_cfg_scales
        return (f"{base}-extrap-{self.extrapolation_factor}-ntk-{self.ntk_boundary}-scfg-{a}-{b}"
                f"-smask-{self.spatial_masking_ratio}-seed-{seed}")


@torch.no_grad()
def sample_extrapolated_images(model, tokenizer, indices: Sequence[int], spec: ExtrapolationSpec) -> np.ndarray:
    """Images `indices` -> uint8 (B, size_eval, size_eval, 3); labels and seeds as sample_io.sample_images, so
    image i's low-resolution pass is the image sample_c2i.py makes for index i with the same settings."""
    device = model.tok_embeddings.weight.device
    labels = torch.tensor(class_labels(indices, model.num_classes, spec.global_seed, spec.class_sampling),
                          device=device)
    seeds = torch.tensor(image_seeds(spec.global_seed, indices), dtype=torch.long)
    ids, _ = generate_resolution_extrapolation(
        model, labels, cfg_scales=spec.cfg_scales, spatial_cfg_scales=spec.spatial_cfg_scales,
        spatial_masking_ratio=spec.spatial_masking_ratio, num_inference_steps=spec.num_inference_steps,
        extrapolation_factor=spec.extrapolation_factor, ntk_boundary=spec.ntk_boundary,
        temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p, seeds=seeds)
    return tokenizer.decode_codes_to_img(ids, spec.image_size_eval)


def add_extrapolation_args(p: argparse.ArgumentParser):
    p.add_argument("--cfg-scales", default="3.0,3.0",
                   help="class CFG scale, linear from the first value (nothing decoded) to the second (all decoded)")
    p.add_argument("--spatial-cfg-scales", default="2.5,2.5",
                   help="spatial CFG scale, linear likewise; on when the second is > 1 (1.0,1.0: class CFG only)")
    p.add_argument("--spatial-masking-ratio", type=float, default=0.5,
                   help="fraction of the low-resolution tokens hidden in the spatial-CFG branch")
    p.add_argument("--extrapolation-factor", type=int, default=2,
                   help="token grid (and image) side / the model's: the low-resolution image fills every f-th "
                        "row and column")
    p.add_argument("--ntk-boundary", type=int, default=2,
                   help="RoPE frequencies below this index (per axis) are extrapolated, the others interpolated")
    p.add_argument("--num-fid-samples", type=int, default=50000)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(p)
    add_extrapolation_args(p)
    return p.parse_args(argv)


def check_flags(args):
    """The checks that need no model, done before one is built."""
    if args.extrapolation_factor < 2:
        raise ValueError(f"--extrapolation-factor must be >= 2, got {args.extrapolation_factor}")
    if not 0.0 <= args.spatial_masking_ratio <= 1.0:
        raise ValueError(f"--spatial-masking-ratio must be in [0, 1], got {args.spatial_masking_ratio}")
    if args.per_proc_batch_size < 1:
        raise ValueError(f"--per-proc-batch-size must be >= 1, got {args.per_proc_batch_size}")
    parse_pair(args.cfg_scales, "--cfg-scales")
    parse_pair(args.spatial_cfg_scales, "--spatial-cfg-scales")


def spec_from_args(args, model, tokenizer, device: torch.device) -> ExtrapolationSpec:
    """The flags, resolved against the model and checked."""
    check_flags(args)
    if model.position_order == "raster":
        raise ValueError("resolution extrapolation needs a random-order model (position_order: random)")
    extrapolation_rope(model, args.extrapolation_factor, args.ntk_boundary)  # checks --ntk-boundary
    grid = extrapolation_grid(model, args.extrapolation_factor)
    native = grid * tokenizer.downsample_factor
    if args.image_size not in (None, native):
        raise ValueError(f"--image-size {args.image_size}: with --extrapolation-factor {args.extrapolation_factor} "
                         f"this model decodes {grid}x{grid} tokens into {native}px images; use --image-size-eval "
                         f"to save another size")
    cfg_scales = parse_pair(args.cfg_scales, "--cfg-scales")
    spatial = parse_pair(args.spatial_cfg_scales, "--spatial-cfg-scales")
    if max(cfg_scales[-1], spatial[-1]) > 1.0 and not model.cls_embedding.has_null_class:
        raise ValueError("this model has no null class (class_dropout_prob=0), so no guidance; use "
                         "--cfg-scales 1.0,1.0 --spatial-cfg-scales 1.0,1.0")
    steps = model.num_inference_steps if args.num_inference_steps is None else args.num_inference_steps
    return ExtrapolationSpec(
        cfg_scales=cfg_scales, num_inference_steps=steps, image_size=native,
        image_size_eval=args.image_size_eval or native, precision=resolve_precision(args.precision, device),
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, global_seed=args.global_seed,
        class_sampling=args.class_sampling, spatial_cfg_scales=spatial,
        spatial_masking_ratio=args.spatial_masking_ratio, extrapolation_factor=args.extrapolation_factor,
        ntk_boundary=args.ntk_boundary)


def main(argv=None):
    """Sample --num-fid-samples extrapolated images into <sample-dir>/<run-name>/ and pack <run-name>.npz; with
    --debug, write <run-name>-debug.png (a grid of the first --per-proc-batch-size images) and stop."""
    args = parse_args(argv)
    try:
        check_flags(args)
        inputs = check_inputs(args)  # paths and cheap compatibility first: nothing is built before they pass
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    dist = init_distributed(timeout=PACK_TIMEOUT)
    try:
        model, tokenizer = load_models(args, dist.device, inputs)
        spec = spec_from_args(args, model, tokenizer, dist.device)
    except (FileNotFoundError, ValueError, CheckpointMismatchError) as e:
        sys.exit(f"error: {e}")
    sample_run(args, dist, model, tokenizer, spec, inputs, sampler=sample_extrapolated_images)
    cleanup()
