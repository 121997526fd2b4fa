"""The command-line flags the sampling and zero-shot tools share, and the checks of their values.

The tools parse and check here, once; the library below takes values and trusts them. Each tool adds its own
flags next to these. A decoding knob is a DecodeConfig field (RandAR.model.generate), its flag in
`add_decoding_args`, and the line of `generate` that uses it.
"""
import argparse
from dataclasses import fields
from typing import Optional, Tuple

from RandAR.model.generate import DecodeConfig
from RandAR.sampling.inputs import PRECISIONS
from RandAR.sampling.labels import CLASS_SAMPLING
from RandAR.utils.checkpoint import CheckpointMismatchError

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
                   help="RandAR weights' dtype (default: bf16 on CUDA, none = float32 on CPU); the tokenizer "
                        "always decodes in float32")
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


def add_extrapolation_args(p: argparse.ArgumentParser):
    """Resolution extrapolation's own flags (tools/resolution_extrapolation.py)."""
    p.add_argument("--spatial-cfg-scales", default="2.5,2.5",
                   help="spatial CFG scale, linear likewise; on when the second is > 1 (1.0,1.0: class CFG only)")
    p.add_argument("--spatial-masking-ratio", type=float, default=0.5,
                   help="fraction of the low-resolution tokens hidden in the spatial-CFG branch")
    p.add_argument("--extrapolation-factor", type=int, default=2,
                   help="token grid (and image) side / the model's: the low-resolution image fills every f-th "
                        "row and column")
    p.add_argument("--ntk-boundary", type=int, default=2,
                   help="RoPE frequencies below this index (per axis) are extrapolated, the others interpolated")


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


def decode_config(args, cfg_scales: Optional[Tuple[float, float]] = None) -> DecodeConfig:
    """The DecodeConfig of add_decoding_args' flags; cfg_scales: instead of --cfg-scales (the CFG search)."""
    scales = cfg_scales if cfg_scales is not None else parse_pair(args.cfg_scales, "--cfg-scales")
    return DecodeConfig(cfg_scales=scales, **{f.name: getattr(args, f.name) for f in fields(DecodeConfig)
                                              if f.name != "cfg_scales"})
