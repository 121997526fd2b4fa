"""The command-line flags the sampling and zero-shot tools share, how they report a user's mistake, and the
one flags -> values step of the sampling mains.

The tools parse; the library (RandAR.sampling.*) takes values. Each tool adds its own flags next to these.
"""
import argparse
import sys
from typing import Callable, Optional, Tuple

import torch

from RandAR.sampling.editing import Completions, load_for_editing
from RandAR.sampling.extrapolation import sample_extrapolated_images
from RandAR.sampling.folder import PACK_TIMEOUT, sample_run
from RandAR.sampling.inputs import check_inputs, load_models
from RandAR.sampling.labels import CLASS_SAMPLING
from RandAR.sampling.spec import PRECISIONS, Extrapolation, SamplingSpec, build_spec, resolve_precision
from RandAR.utils.checkpoint import CheckpointMismatchError
from RandAR.utils.distributed import cleanup, init_distributed

# Errors with a message meant for the user: the tools print it and exit with status 1. (StampMismatchError, a
# run stamp that differs, and the config's ConfigError are ValueErrors.)
USER_ERRORS = (FileNotFoundError, ValueError, CheckpointMismatchError)


def add_model_args(p: argparse.ArgumentParser):
    """Which weights, in which precision, and whether to compile the decode step."""
    p.add_argument("--config", default=None,
                   help="RandAR config (configs/randar/*.yaml): ar_model and tokenizer (default: the config "
                        "training stored in --gpt-ckpt; when both are given they must agree)")
    p.add_argument("--gpt-ckpt", required=True, help="RandAR weights (.safetensors, or a torch file)")
    p.add_argument("--vq-ckpt", default=None, help="tokenizer weights (default: the config's vq_ckpt)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=None,
                   help="RandAR weights' dtype (default: bf16 on CUDA and on CPUs with native bfloat16, none = "
                        "float32 on other CPUs); the tokenizer always decodes in float32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (CUDA graphs on CUDA): same images up to float round-off; "
                        "pays off on CUDA for runs of many batches, after about a minute of compilation")


def add_decoding_args(p: argparse.ArgumentParser, cfg_scales: Optional[str] = "1.0,4.0"):
    """How tokens are drawn: CFG scales (default `cfg_scales`; None: no such flag, the CFG search picks the
    scales), steps, temperature and filtering."""
    if cfg_scales is not None:
        p.add_argument("--cfg-scales", default=cfg_scales,
                       help="class CFG scale, linear from the first value (nothing decoded) to the second (all "
                            "decoded); a,a for a constant scale; guidance is off when the second is <= 1")
    p.add_argument("--num-inference-steps", type=int, default=None,
                   help="parallel-decoding steps of the tokens to generate (default: the config's ar_model "
                        "num_inference_steps; -1 or the token count = one token per step)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k filtering")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = no nucleus filtering")


def add_run_args(p: argparse.ArgumentParser):
    """A sampling run into <sample-dir>/<run-name>/: its name, sizes, seeds and resume behaviour."""
    p.add_argument("--exp-name", required=True, help="first part of the run name (the sample folder)")
    p.add_argument("--image-size", type=int, default=None,
                   help="decoded image size; must be the model's token grid x the tokenizer's downsample factor "
                        "(the default)")
    p.add_argument("--image-size-eval", type=int, default=None,
                   help="size of the saved images (default: --image-size); bicubic resize when different")
    p.add_argument("--per-proc-batch-size", type=int, default=32)
    p.add_argument("--global-seed", type=int, default=0, help="with an image's index, gives its seed and label")
    p.add_argument("--class-sampling", choices=CLASS_SAMPLING, default="random",
                   help="random: a uniform class per image (the original's numbers); balanced: every class "
                        "equally often, in a seeded shuffled order")
    p.add_argument("--sample-dir", default="samples", help="the run folders and .npz files go here")
    p.add_argument("--debug", action="store_true", help="write a grid of the first batch and exit")
    p.add_argument("--force", action="store_true",
                   help="start the run afresh: remove its outputs (PNG folder, .npz files, stamp) even when "
                        "they were made from other checkpoints, config or settings (without it that stops the run)")


def add_editing_args(p: argparse.ArgumentParser, default_output_dir: str):
    """The flags of tools/inpaint.py and tools/outpaint.py: several completions of one input image."""
    add_model_args(p)
    add_decoding_args(p)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--image", required=True, help="input image (non-RGB images are converted to RGB)")
    p.add_argument("--class-id", type=int, required=True, help="class of the result, 0..num_classes-1")
    p.add_argument("--num-samples", type=int, default=4, help="completions of the one input")
    p.add_argument("--seed", type=int, default=0,
                   help="with a sample's index, gives its seed (its order and every draw); the same flags give "
                        "the same images")
    p.add_argument("--batch-size", type=int, default=8, help="samples per forward batch (does not change them)")
    p.add_argument("--output-dir", default=default_output_dir)
    p.add_argument("--paste-known", type=int, default=None, metavar="WIDTH",
                   help="paste the input's pixels back over the completions outside the generated cells, blended "
                        "into them over WIDTH pixels (0: a hard edge); default: the decoded tokens as they are")


def add_extrapolation_args(p: argparse.ArgumentParser):
    """Resolution extrapolation's own flags (tools/resolution_extrapolation.py, and the CFG search's
    --spatial-cfg-scales form of it)."""
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


def extrapolation_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_run_args(p)
    add_decoding_args(p, cfg_scales="3.0,3.0")
    add_extrapolation_args(p)
    return p


def parse_pair(text: str, flag: str) -> Tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} takes two numbers like 1.0,4.0; got {text!r}") from None
    return a, b


def check_at_least_one(**counts: int):
    """e.g. check_at_least_one(per_proc_batch_size=0) -> ValueError naming --per-proc-batch-size."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def spec_from_flags(args, model, tokenizer, device, cfg_scales: Tuple[float, float],
                    extrapolation: Optional[Extrapolation] = None) -> SamplingSpec:
    """build_spec with the values of add_model_args, add_run_args and add_decoding_args."""
    return build_spec(model, tokenizer, cfg_scales=cfg_scales, num_inference_steps=args.num_inference_steps,
                      image_size=args.image_size, image_size_eval=args.image_size_eval,
                      precision=resolve_precision(args.precision, device), temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, global_seed=args.global_seed,
                      class_sampling=args.class_sampling, extrapolation=extrapolation)


def run_sampling(args, extrapolation: Optional[Extrapolation] = None, sampler: Optional[Callable] = None):
    """sample_c2i.py and tools/resolution_extrapolation.py after parsing: the flags and inputs are checked before
    anything is built, then the models are loaded and the run sampled (RandAR.sampling.folder.sample_run)."""
    try:
        cfg_scales = parse_pair(args.cfg_scales, "--cfg-scales")
        check_at_least_one(per_proc_batch_size=args.per_proc_batch_size)
        inputs = check_inputs(args.config, args.gpt_ckpt, args.vq_ckpt)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    dist = init_distributed(timeout=PACK_TIMEOUT)
    try:
        model, tokenizer = load_models(inputs, dist.device, args.precision, args.compile)
        spec = spec_from_flags(args, model, tokenizer, dist.device, cfg_scales, extrapolation)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    sample_run(dist, model, tokenizer, spec, inputs, sample_dir=args.sample_dir, exp_name=args.exp_name,
               num=args.num_fid_samples, batch_size=args.per_proc_batch_size, debug=args.debug, force=args.force,
               sampler=sampler)
    cleanup()


def editing_from_flags(args):
    """tools/inpaint.py and tools/outpaint.py: (model, tokenizer, device, Completions) from add_editing_args'
    flags, checked before the image is read."""
    check_at_least_one(num_samples=args.num_samples, batch_size=args.batch_size)
    if args.paste_known is not None and args.paste_known < 0:
        raise ValueError(f"--paste-known {args.paste_known}: the feather width is in pixels, 0 or more")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    completions = Completions(args.class_id, args.num_samples, args.seed, args.batch_size,
                              parse_pair(args.cfg_scales, "--cfg-scales"), args.num_inference_steps,
                              args.temperature, args.top_k, args.top_p)
    model, tokenizer = load_for_editing(args.config, args.gpt_ckpt, args.vq_ckpt, device, completions,
                                        args.precision, args.compile)
    return model, tokenizer, device, completions


def run_extrapolation(args):
    """tools/resolution_extrapolation.py after parsing: run_sampling with the extrapolation flags (checked first)."""
    try:
        if args.extrapolation_factor < 2:
            raise ValueError(f"--extrapolation-factor must be >= 2, got {args.extrapolation_factor}")
        if not 0.0 <= args.spatial_masking_ratio <= 1.0:
            raise ValueError(f"--spatial-masking-ratio must be in [0, 1], got {args.spatial_masking_ratio}")
        extrapolation = Extrapolation(parse_pair(args.spatial_cfg_scales, "--spatial-cfg-scales"),
                                      args.spatial_masking_ratio, args.extrapolation_factor, args.ntk_boundary)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    run_sampling(args, extrapolation, sampler=sample_extrapolated_images)
