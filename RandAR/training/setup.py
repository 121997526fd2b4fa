"""What train_c2i.py does before training: the config with flags applied, the checks of every input (before any
folder or model is made), the accelerator, the tokenizer of the visualisations, and the resume checks."""
import os

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from RandAR.training.lr_schedule import scheduler_from_config
from RandAR.training.step import skip_rule
from RandAR.utils.atomic import is_temporary
from RandAR.utils.config_schema import ConfigError
from RandAR.utils.checkpoint import resolve_checkpoint


class InputError(ValueError):
    """A missing or unusable input, found before anything is built or written."""


def check_data_folder(root):
    """The latent-code folder exists and holds at least one `<label>/<index>.npy` (cheap: stops at the first)."""
    if not root or not os.path.isdir(root):
        raise InputError(f"data folder not found: {root} (--data-path: the codes of tools/extract_latent_codes.py)")
    for entry in os.scandir(root):
        if entry.is_dir() and entry.name.isdigit():
            if any(f.name.endswith(".npy") and not is_temporary(f.name) for f in os.scandir(entry.path)):
                return
    raise InputError(f"data folder {root} holds no code files <label>/<index>.npy (--data-path: the codes of "
                     f"tools/extract_latent_codes.py)")


def check_inputs(cfg, config_path: str, gpt_ckpt=None):
    """Everything that can be checked cheaply, before the accelerator, the experiment folder or the model."""
    if cfg.accelerator.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"accelerator.mixed_precision={cfg.accelerator.mixed_precision!r}: use no, fp16 or bf16")
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun and accelerate launch
    accum = cfg.accelerator.gradient_accumulation_steps
    if cfg.global_batch_size < 1 or cfg.global_batch_size % (world * accum):
        raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not divisible by world size {world} x "
                          f"gradient_accumulation_steps {accum} (or not positive)")
    try:
        skip_rule(cfg.optimizer)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    # the schedule's settings, on a throw-away optimizer (the same code builds the real one)
    try:
        scheduler_from_config(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), cfg.lr_scheduler,
                              cfg.max_iters)
    except ValueError as e:
        raise ConfigError(f"{config_path}: {e}") from e
    check_data_folder((cfg.dataset.get("params") or {}).get("root_dir"))
    try:  # released checkpoints named by file name are fetched here, before anything else starts
        vq_ckpt = resolve_checkpoint(cfg.vq_ckpt, "--vq-ckpt") if cfg.visualize_every else None
        gpt_ckpt = resolve_checkpoint(gpt_ckpt, "--gpt-ckpt")
    except (FileNotFoundError, ValueError) as e:
        raise InputError(str(e)) from e
    if vq_ckpt and not os.path.isfile(vq_ckpt):
        raise InputError(f"tokenizer checkpoint not found: {cfg.vq_ckpt} (the visualisations decode with it: "
                         f"pass --vq-ckpt, or --visualize-every 0)")
    if gpt_ckpt and not os.path.isfile(gpt_ckpt):
        raise InputError(f"--gpt-ckpt not found: {gpt_ckpt}")


def build_accelerator(cfg, exp_dir, compile_model: bool):
    """Accelerator from the config's `accelerator:` section; returns it and the tracker name (or None)."""
    acc_cfg = cfg.get("accelerator", {})
    log_with = acc_cfg.get("log_with")
    log_with = None if str(log_with).lower() in ("none", "null", "") else log_with
    accelerator = Accelerator(
        mixed_precision=acc_cfg.mixed_precision, log_with=log_with,
        gradient_accumulation_steps=acc_cfg.get("gradient_accumulation_steps", 1),
        project_config=ProjectConfiguration(project_dir=exp_dir),
        cpu=not torch.cuda.is_available(),  # lets torchrun on CPU run as one gloo process group
        # inductor's CPU start-up is slow and needs a C++ toolchain, so CPU runs are never compiled
        dynamo_backend="inductor" if torch.cuda.is_available() and compile_model else "no")
    return accelerator, log_with


def load_tokenizer(cfg, model, device):
    """The tokenizer, for the visualisations only (training reads codes): main process, on demand."""
    from RandAR.model.tokenizers import build_tokenizer
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.vq_ckpt, device=device)
    if tokenizer.codebook_size != model.vocab_size:
        raise ValueError(f"tokenizer codebook {tokenizer.codebook_size} != model vocab_size {model.vocab_size}")
    return tokenizer


def check_checkpoint_kind(path, fsdp: bool):
    """A sharded FSDP state resumes only under FSDP, and a DDP/single-process state only outside it."""
    sharded = os.path.isdir(os.path.join(path, "pytorch_model_fsdp_0"))
    if sharded != fsdp:
        saved, now = ("FSDP", "without FSDP") if sharded else ("without FSDP", "under FSDP")
        raise SystemExit(f"error: {path} was saved {saved} and this run is {now}: relaunch it as it was saved, "
                         f"or start a new --exp-name from its export with --gpt-ckpt {path}.safetensors")
