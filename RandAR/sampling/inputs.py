"""What the sampling and zero-shot tools take in: their shared command-line flags, the checks of the flags'
values, of the config and checkpoints (before anything is built) and of the settings against the model, and the
models. The tools parse and check here, once; the library below takes values and trusts them. Each tool adds its
own flags next to these. A decoding knob is a DecodeConfig field (RandAR.model.generate), its flag in
`add_decoding_args`, and the line of `generate` that uses it.

The config comes from --config, or from the RandAR checkpoint itself: training's exports carry the config they
were trained with (RandAR.utils.checkpoint.export_config). With both, their ar_model and tokenizer sections
must agree.
"""
import argparse
import difflib
import glob
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Optional, Tuple

import torch

from RandAR.model.builder import build_randar
from RandAR.model.generate import DecodeConfig, default_steps, valid_step_count
from RandAR.model.tokenizers import build_tokenizer
from RandAR.sampling.folder import CLASS_SAMPLING
from RandAR.utils.checkpoint import CheckpointMismatchError, export_config
from RandAR.utils.config import load_config, to_plain
from RandAR.utils.distributed import allow_tf32
from RandAR.utils.checkpoint import resolve_checkpoint
from RandAR.utils.distributed import default_precision
from RandAR.utils.run_stamp import differences_text, file_fingerprint

PRECISIONS = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKED_SECTIONS = ("ar_model", "tokenizer")  # what --config must agree with in a checkpoint's own config


# ---- the flags -------------------------------------------------------------------------------------------------
# Errors with a message meant for the user: the tools print it and exit with status 1. (StampMismatchError, a
# run stamp that differs, and the config's ConfigError are ValueErrors.)
USER_ERRORS = (FileNotFoundError, ValueError, CheckpointMismatchError)


def add_model_args(p: argparse.ArgumentParser):
    """Which weights, in which precision, and whether to compile the decode step (the tool then builds one
    RandAR.model.generate.CompiledDecoder and passes it to every generate call)."""
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
    p.add_argument("--num-inference-steps", type=step_count, default=None,
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
    p.add_argument("--paste-known", type=feather_width, default=None, metavar="WIDTH",
                   help="paste the input's pixels back over the completions outside the generated cells, blended "
                        "into them over WIDTH pixels (0: a hard edge); default: the decoded tokens as they are")


def step_count(text: str) -> int:
    """--num-inference-steps' value: -1 (one token per step) or a count of at least 1."""
    steps = int(text)
    if not valid_step_count(steps):
        raise argparse.ArgumentTypeError(f"{text}: a step count is -1 (one token per step) or at least 1")
    return steps


def feather_width(text: str) -> int:
    """--paste-known's value: a width in pixels, 0 or more."""
    width = int(text)
    if width < 0:
        raise argparse.ArgumentTypeError(f"{text}: the feather width is in pixels, 0 or more")
    return width


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


# ---- the config and checkpoints --------------------------------------------------------------------------------


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """--precision, or by default bf16 on CUDA and on CPUs with native bfloat16, else none (float32)."""
    return precision or default_precision(device)


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


def model_sections(config) -> Dict[str, Any]:
    """The sections --config must agree on, as they decide the model (configs are canonical as read:
    RandAR.utils.compat)."""
    return {k: to_plain(config.get(k)) for k in CHECKED_SECTIONS}


def resolve_config(config, config_path: Optional[str], gpt_ckpt: str):
    """The run's config: `config` (loaded from --config), checked against the checkpoint's own config when it
    carries one; without --config (config None), the checkpoint's."""
    carried = export_config(gpt_ckpt)
    if config is None:
        if carried is None:
            raise ValueError(f"{gpt_ckpt} carries no config (e.g. an official checkpoint): pass --config")
        return carried
    if carried is not None:
        diff = differences_text(model_sections(carried), model_sections(config))
        if diff:
            raise ValueError(f"--config {config_path} does not match the config {gpt_ckpt} was trained with "
                             f"({diff.replace(' there,', ' in the checkpoint,')}); drop --config to use the "
                             f"checkpoint's")
    return config


@dataclass(frozen=True)
class SamplingInputs:
    """The checked config (resolved) and checkpoint paths of a sampling run, with content fingerprints."""
    config: Any
    gpt_ckpt: str
    vq_ckpt: str
    fingerprints: Dict[str, str]


def check_inputs(config_path: Optional[str], gpt_ckpt: str, vq_ckpt: Optional[str] = None) -> SamplingInputs:
    """Everything about the inputs that can be checked without building a model: that the config, the RandAR
    checkpoint and the tokenizer's (vq_ckpt, or the config's) exist and that the config's tokenizer and model
    agree."""
    config = load_config(resolve_config_path(config_path)) if config_path else None
    gpt_ckpt = resolve_checkpoint(gpt_ckpt, "--gpt-ckpt")
    if not os.path.isfile(gpt_ckpt):
        raise FileNotFoundError(f"--gpt-ckpt {gpt_ckpt} not found")
    config = resolve_config(config, config_path, gpt_ckpt)
    source = config_path or f"the config of {gpt_ckpt}"
    vq = vq_ckpt or config.get("vq_ckpt")
    if not vq:
        raise ValueError(f"pass --vq-ckpt: {source} names no vq_ckpt")
    vq = resolve_checkpoint(vq, "--vq-ckpt" if vq_ckpt else "the config's vq_ckpt")
    if not os.path.isfile(vq):
        what = "--vq-ckpt" if vq_ckpt else "the config's vq_ckpt"
        raise FileNotFoundError(f"{what} {vq} not found")
    vocab = config.get("ar_model", {}).get("params", {}).get("vocab_size")
    codebook = config.get("tokenizer", {}).get("params", {}).get("codebook_size")
    if vocab is not None and codebook is not None and vocab != codebook:
        raise ValueError(f"{source}: ar_model vocab_size {vocab} != tokenizer codebook_size {codebook}")
    return SamplingInputs(config, gpt_ckpt, vq, {"gpt_ckpt": file_fingerprint(gpt_ckpt),
                                                 "vq_ckpt": file_fingerprint(vq)})


def check_for_model(model, tokenizer, decode: DecodeConfig, image_size: Optional[int], grid: Optional[int] = None,
                    guided: Optional[bool] = None, fix: str = "use --cfg-scales 1.0,1.0",
                    class_id: Optional[int] = None) -> Tuple[DecodeConfig, int]:
    """The flags' checks that need the model: --image-size (the tokenizer's decoded size of the `grid` token
    grid, default the model's), --class-id, and guidance (`guided`, default: class CFG is on) on a model with
    the null class. Returns (decode with the model's default step count filled in, the decoded image size)."""
    if class_id is not None and not 0 <= class_id < model.num_classes:
        raise ValueError(f"--class-id {class_id} is out of range: this model has classes 0..{model.num_classes - 1}")
    native = (grid or model.grid_size) * tokenizer.downsample_factor
    if image_size not in (None, native):
        raise ValueError(f"--image-size {image_size}: this model decodes {grid or model.grid_size}x"
                         f"{grid or model.grid_size} tokens into {native}px images (x{tokenizer.downsample_factor}); "
                         f"use --image-size-eval to save another size"
                         + ("" if grid else " (larger grids are resolution extrapolation)"))
    guided = decode.cfg_scales[-1] > 1.0 if guided is None else guided
    if guided and not model.cls_embedding.has_null_class:
        raise ValueError(f"classifier-free guidance needs the null class, but this model was built with "
                         f"class_dropout_prob=0 (no null-class embedding row): {fix}")
    return replace(decode, num_inference_steps=default_steps(model, decode.num_inference_steps)), native


def run_stamp(inputs: SamplingInputs, settings: Dict[str, Any]) -> Dict[str, Any]:
    """What decides a run's pixels: both checkpoints' contents, the resolved config, every sampling setting."""
    return {**inputs.fingerprints, "config": to_plain(inputs.config), "sampling": settings}


def sampling_settings(decode: DecodeConfig, **settings) -> Dict[str, Any]:
    """A run's settings as its stamp and its name (RandAR.sampling.folder.run_name) record them: DecodeConfig's
    fields and `settings` (image sizes, precision, seed, class sampling, ...) in one flat dict."""
    return {**asdict(decode), **settings}


def load_models(inputs: SamplingInputs, device: torch.device, precision: Optional[str] = None):
    """(RandAR model in eval mode in `precision`, tokenizer in float32), both strictly loaded."""
    if device.type == "cuda":
        allow_tf32()  # as the original sampler
    dtype = PRECISIONS[resolve_precision(precision, device)]
    model = build_randar(inputs.config, inputs.gpt_ckpt, device=device, dtype=dtype).eval()
    tokenizer = build_tokenizer(inputs.config.tokenizer, inputs.vq_ckpt, device=device)
    return model, tokenizer
