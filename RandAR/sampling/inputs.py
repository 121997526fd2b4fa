"""The inputs of a sampling run (config and checkpoints), checked before anything is built, and the models.

The config comes from --config, or from the RandAR checkpoint itself: training's exports carry the config they
were trained with (RandAR.utils.checkpoint.export_config). With both, their ar_model and tokenizer sections
must agree.
"""
import difflib
import glob
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Optional, Tuple

import torch

from RandAR.model.builder import build_randar
from RandAR.model.generate import DecodeConfig, default_steps
from RandAR.model.guidance import require_null_class
from RandAR.model.tokenizers import build_tokenizer
from RandAR.utils.checkpoint import export_config
from RandAR.utils.config import load_config, to_plain
from RandAR.utils.config_schema import OFFICIAL_UNUSED_KEYS
from RandAR.utils.distributed import allow_tf32
from RandAR.utils.run_stamp import differences_text, file_fingerprint
from RandAR.utils.targets import canonical_target

PRECISIONS = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKED_SECTIONS = ("ar_model", "tokenizer")  # what --config must agree with in a checkpoint's own config


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    return precision or ("bf16" if device.type == "cuda" else "none")


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
    """The sections --config must agree on, as they decide the model: targets under their current module path,
    without the official keys no class reads (a checkpoint trained with either spelling fits either config)."""
    sections = {k: to_plain(config.get(k)) for k in CHECKED_SECTIONS}
    for section in sections.values():
        if isinstance(section, dict) and section.get("target"):
            section["target"] = canonical_target(section["target"])
    params = (sections.get("ar_model") or {}).get("params") or {}
    for key in OFFICIAL_UNUSED_KEYS["ar_model.params"]:
        params.pop(key, None)
    return sections


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
    if not os.path.isfile(gpt_ckpt):
        raise FileNotFoundError(f"--gpt-ckpt {gpt_ckpt} not found")
    config = resolve_config(config, config_path, gpt_ckpt)
    source = config_path or f"the config of {gpt_ckpt}"
    vq = vq_ckpt or config.get("vq_ckpt")
    if not vq:
        raise ValueError(f"pass --vq-ckpt: {source} names no vq_ckpt")
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
    require_null_class(model, decode.cfg_scales[-1] > 1.0 if guided is None else guided, fix)
    return replace(decode, num_inference_steps=default_steps(model, decode.num_inference_steps)), native


def run_stamp(inputs: SamplingInputs, settings: Dict[str, Any]) -> Dict[str, Any]:
    """What decides a run's pixels: both checkpoints' contents, the resolved config, every sampling setting."""
    return {**inputs.fingerprints, "config": to_plain(inputs.config), "sampling": settings}


def sampling_settings(decode: DecodeConfig, **settings) -> Dict[str, Any]:
    """A run's settings as its stamp and its name (RandAR.sampling.folder.run_name) record them: DecodeConfig's
    fields and `settings` (image sizes, precision, seed, class sampling, ...) in one flat dict."""
    return {**asdict(decode), **settings}


def load_models(inputs: SamplingInputs, device: torch.device, precision: Optional[str] = None,
                compile: bool = False):
    """(RandAR model in eval mode in `precision`, tokenizer in float32), both strictly loaded. compile: the
    model's default for generate's `compile` (the tools' --compile)."""
    if device.type == "cuda":
        allow_tf32()  # as the original sampler
    dtype = PRECISIONS[resolve_precision(precision, device)]
    model = build_randar(inputs.config, inputs.gpt_ckpt, device=device, dtype=dtype).eval()
    model.compile_decoding = compile
    tokenizer = build_tokenizer(inputs.config.tokenizer, inputs.vq_ckpt, device=device)
    return model, tokenizer
