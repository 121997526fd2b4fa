"""Train a class-conditional RandAR on pre-extracted token codes, with Accelerate.

    accelerate launch --mixed_precision=bf16 --multi_gpu train_c2i.py --exp-name randar_0.7b_llamagen_360k \
        --config configs/randar/randar_xl_0.7b_llamagen.yaml --data-path /tmp/imagenet-llamagen-adm-256_codes \
        --vq-ckpt /tmp/vq_ds16_c2i.pt --results-dir /tmp --disk-location /SLOW_DISK/training_ckpts

Also runs as `python train_c2i.py ...` (one process) and `torchrun --nproc_per_node N train_c2i.py ...`.
Config values are overridden by trailing `key.sub=value` arguments, and those by the explicit flags.
All step counts (max_iters, warm_up_iters, log/ckpt/visualize_every) are optimizer steps; global_batch_size is
the batch of one optimizer step over all processes and accumulation steps.

A relaunch with the same command resumes from the newest complete checkpoint (local or mirrored) and ends
with the same weights as an uninterrupted run; see RandAR/utils/train_state.py for how.
"""
import argparse
import inspect
import math
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

try:
    from torch.distributed.tensor import DTensor, Partial
except ImportError:  # torch < 2.5 (no FSDP2 there: gradients are never DTensors)
    from torch.distributed._tensor import DTensor
    Partial = None

from RandAR.dataset.latent import check_codes_for_config
from RandAR.model.builder import build_randar
from RandAR.utils.checkpoint import export_metadata, strip_wrapper_prefixes
from RandAR.utils.checkpoint_rotation import (clear_temporaries, experiment_name, latest_checkpoint,
                                              mirror_checkpoint, prune_checkpoints, save_checkpoint)
from RandAR.utils.config import get_obj_from_str, load_config, to_plain
from RandAR.utils.config_schema import ConfigError, constructor_arguments
from RandAR.utils.logger import MetricMeter, create_logger, format_metrics, init_wandb
from RandAR.utils.lr_scheduler import scheduler_from_config
from RandAR.utils.train_state import (EMA, SeededItems, StepBatchSampler, StopRequest, TrainState, sample_seed,
                                      step_seed)
from RandAR.utils.versions import require_versions
from RandAR.utils.visualization import stack_panels, training_panels

torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True

# flag -> config key it overrides (flags win over the YAML and over dotlist overrides)
FLAG_KEYS = {"data_path": "dataset.params.root_dir", "vq_ckpt": "vq_ckpt", "results_dir": "results_dir",
             "log_every": "log_every", "ckpt_every": "ckpt_every", "visualize_every": "visualize_every",
             "visualize_num": "visualize_num", "keep_last_k": "keep_last_k", "num_workers": "num_workers",
             "global_seed": "global_seed", "mixed_precision": "accelerator.mixed_precision",
             "wandb_entity": "wandb_entity", "wandb_project": "wandb_project", "wandb_run_name": "wandb_run_name"}
VIS_CFG_SCALES = (4.0, 4.0)  # guidance of the free samples in the visualisations (the original's)


class InputError(ValueError):
    """A missing or unusable input, found before anything is built or written."""


def resolve_config(args):
    """The config with overrides and flags applied, checked (config_schema) and with every required key set."""
    cfg = load_config(args.config, args.overrides)
    for flag, key in FLAG_KEYS.items():
        if getattr(args, flag) is not None:
            OmegaConf.update(cfg, key, getattr(args, flag), merge=False)
    if args.wandb_offline:
        cfg.wandb_offline = True
    mp = str(cfg.accelerator.mixed_precision)
    OmegaConf.update(cfg, "accelerator.mixed_precision", "no" if mp.lower() in ("none", "no", "fp32") else mp)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{args.config}: training needs {', '.join(missing)} (set in the YAML or as key=value)")
    for section in ("ar_model", "dataset"):
        if section not in cfg:
            raise ConfigError(f"{args.config}: training needs an `{section}:` section with `target` and `params`")
    return cfg


def check_data_folder(root):
    """The latent-code folder exists and holds at least one `<label>/<index>.npy` (cheap: stops at the first)."""
    if not root or not os.path.isdir(root):
        raise InputError(f"data folder not found: {root} (--data-path: the codes of tools/extract_latent_codes.py)")
    for entry in os.scandir(root):
        if entry.is_dir() and entry.name.isdigit():
            if any(f.name.endswith(".npy") for f in os.scandir(entry.path)):
                return
    raise InputError(f"data folder {root} holds no code files <label>/<index>.npy (--data-path: the codes of "
                     f"tools/extract_latent_codes.py)")


def check_inputs(cfg, args):
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
        raise ConfigError(f"{args.config}: {e}") from e
    root = (cfg.dataset.get("params") or {}).get("root_dir")
    if root is not None or "root_dir" in (constructor_arguments(cfg.dataset.target) or ()):
        check_data_folder(root)
    if cfg.visualize_every and cfg.vq_ckpt and not os.path.isfile(cfg.vq_ckpt):
        raise InputError(f"tokenizer checkpoint not found: {cfg.vq_ckpt} (the visualisations decode with it: "
                         f"pass --vq-ckpt, or --visualize-every 0)")
    if args.gpt_ckpt and not os.path.isfile(args.gpt_ckpt):
        raise InputError(f"--gpt-ckpt not found: {args.gpt_ckpt}")


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


def build_dataset(cfg, model, verbose: bool = True):
    """The config's dataset with root_dir from --data-path; ids and lengths checked against the model."""
    params = dict(to_plain(cfg.dataset.get("params", {})) or {})
    cls = get_obj_from_str(cfg.dataset.target)
    accepted = inspect.signature(cls).parameters
    if "vocab_size" in accepted:
        params.update(vocab_size=model.vocab_size, block_size=model.block_size)
    if "verbose" in accepted:
        params.update(verbose=verbose)
    dataset = cls(**params)
    if getattr(dataset, "num_classes", 0) > model.num_classes:
        raise ValueError(f"the data has labels up to {dataset.num_classes - 1} but the model has "
                         f"num_classes={model.num_classes}")
    return dataset


def build_optimizer(model, opt_cfg, fused: bool):
    """AdamW; weight decay only on tensors of 2 or more dimensions (matmul weights, embeddings)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": opt_cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=(opt_cfg.beta1, opt_cfg.beta2), fused=fused)


SKIP_RULES = ("sum_clipped", "global_norm")


def skip_rule(opt_cfg) -> str:
    """optimizer.skip_grad_rule: "sum_clipped" (the original release's, the default) or "global_norm"."""
    rule = str(opt_cfg.get("skip_grad_rule", "sum_clipped"))
    if rule not in SKIP_RULES:
        raise ValueError(f"optimizer.skip_grad_rule: {rule!r} is not one of {', '.join(SKIP_RULES)}")
    return rule


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (what FSDP2 hands out) as the plain tensor it stands for; other tensors as they are."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def sum_of_grad_norms(parameters) -> torch.Tensor:
    """Sum over parameters of the 2-norm of each gradient, on the device (the original's skip measure).

    Under FSDP2 a gradient is a DTensor sharded over ranks: its squared norm is the sum of its shards' squared
    norms, so the local sums of squares of all sharded tensors are reduced in one collective per device mesh.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    total = torch.stack(torch._foreach_norm(plain)).float().sum() if plain else None
    by_layout = {}
    for g in grads:
        if isinstance(g, DTensor):
            by_layout.setdefault((g.device_mesh, tuple(g.placements)), []).append(g)
    for (mesh, placements), group in by_layout.items():
        local = torch.stack(torch._foreach_norm([g.to_local() for g in group])).float().pow(2)
        # sharded dimensions of the mesh hold parts of the sum; replicated ones hold copies of it
        squares = DTensor.from_local(local, mesh, [Partial() if p.is_shard() else p for p in placements])
        part = squares.full_tensor().sqrt().sum()
        total = part if total is None else total + part.to(total.device)
    return total if total is not None else torch.zeros(())


def clip_and_check(accelerator, model, loss, opt_cfg, step, stop_requested):
    """Clip, then decide on the device whether to skip this update; one host sync for the whole decision.

    Returns (global grad norm before clipping, as a plain tensor, skip, stop). Skip: a non-finite loss or
    gradient on any process, or, from step skip_grad_iter on, a gradient above skip_grad_norm measured by
    optimizer.skip_grad_rule: "sum_clipped" (the original release's rule: the sum of the per-tensor gradient
    norms after clipping is >= skip_grad_norm) or "global_norm" (the global norm before clipping is > it).
    """
    rule = skip_rule(opt_cfg)
    max_norm = opt_cfg.get("max_grad_norm", 0.0) or math.inf  # 0 = no clipping, still measure the norm
    norm = full_tensor(accelerator.clip_grad_norm_(model.parameters(), max_norm)).float()
    skip = ~torch.isfinite(norm) | ~torch.isfinite(loss)
    limit = opt_cfg.get("skip_grad_norm", None)
    if limit and step >= opt_cfg.get("skip_grad_iter", 0):
        if rule == "sum_clipped":
            skip = skip | (sum_of_grad_norms(model.parameters()).to(norm.device) >= limit)
        else:
            skip = skip | (norm > limit)
    flags = torch.stack([skip.float(), torch.tensor(float(stop_requested), device=norm.device)])
    skip, stop = (accelerator.reduce(flags, "max") > 0).tolist()
    return norm, skip, stop


def unwrap(accelerator, model):
    """The plain module under Accelerate's wrappers and torch.compile's, with any Accelerate version (the
    keep_torch_compile argument appeared only in 1.3; before, unwrap_model keeps the compiled wrapper)."""
    raw = accelerator.unwrap_model(model)
    return getattr(raw, "_orig_mod", raw)


def forward_backward(accelerator, model, codes, labels, keep_for_vis: int):
    """One micro-batch; returns the detached loss and, if asked, what the visualisation needs."""
    with accelerator.accumulate(model):
        logits, loss, order = model(codes, labels, targets=codes)
        accelerator.backward(loss)
    vis = (logits[:keep_for_vis].detach(), order[:keep_for_vis], codes, labels) if keep_for_vis else None
    return loss.detach(), vis


def check_checkpoint_kind(path, fsdp: bool):
    """A sharded FSDP state resumes only under FSDP, and a DDP/single-process state only outside it."""
    sharded = os.path.isdir(os.path.join(path, "pytorch_model_fsdp_0"))
    if sharded != fsdp:
        saved, now = ("FSDP", "without FSDP") if sharded else ("without FSDP", "under FSDP")
        raise SystemExit(f"error: {path} was saved {saved} and this run is {now}: relaunch it as it was saved, "
                         f"or start a new --exp-name from its export with --gpt-ckpt {path}.safetensors")


def export_steps(cfg):
    """Steps whose model-only exports outlive their full training state: the milestones and the last step."""
    return set(cfg.export_milestones) | {cfg.max_iters}


def save_and_mirror(accelerator, model, ema, cfg, state, ckpt_dir, mirror_dir, logger):
    exports = {".safetensors": (strip_wrapper_prefixes(accelerator.get_state_dict(model)),
                                export_metadata(cfg, state.step, "model"))}
    if ema is not None:
        exports[".ema.safetensors"] = (ema.state_dict(), export_metadata(cfg, state.step, "ema"))
    path = save_checkpoint(accelerator, ckpt_dir, state.step, exports)
    if accelerator.is_main_process:
        logger.info(f"saved checkpoint {path}")
        keep_exports = export_steps(cfg)
        prune_checkpoints(ckpt_dir, cfg.keep_last_k, keep_exports)
        if mirror_dir:
            try:
                copy = mirror_checkpoint(ckpt_dir, state.step, mirror_dir, cfg.keep_last_k, keep_exports)
                logger.info(f"mirrored checkpoint to {copy}")
            except Exception as e:  # a full or flaky slow disk must not stop training
                logger.error(f"could not mirror checkpoint {state.step} to {mirror_dir}: {type(e).__name__}: {e}")
    accelerator.wait_for_everyone()


def visualize(accelerator, model, tokenizer, vis, cfg, step, exp_dir, logger):
    logits, order, codes, labels = vis
    raw = unwrap(accelerator, model)
    panels = training_panels(raw, tokenizer, logits, order, codes, labels, cfg.get("visualize_num", 32),
                             VIS_CFG_SCALES, raw.num_inference_steps, seed=sample_seed(cfg.global_seed, step),
                             free_samples=accelerator.distributed_type != DistributedType.FSDP)
    path = os.path.join(exp_dir, "visualizations", f"iters_{step:08d}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(stack_panels(panels)).save(path)
    if "wandb" in str(cfg.accelerator.get("log_with")):
        import wandb
        accelerator.log({f"vis/{k}": wandb.Image(v) for k, v in panels.items()}, step=step)
    logger.info(f"saved visualisation {path}")


def main(args):
    cfg = resolve_config(args)
    check_inputs(cfg, args)
    try:  # codes of another tokenizer, vocabulary or split: stop before any folder is made
        check_codes_for_config(cfg)
    except ValueError as e:
        raise InputError(str(e)) from e
    exp_name = experiment_name(args.exp_name, cfg.global_batch_size, cfg.optimizer.lr)
    exp_dir = os.path.join(cfg.results_dir, exp_name)
    ckpt_dir = os.path.join(exp_dir, "checkpoints")
    mirror_dir = os.path.join(args.disk_location, exp_name) if args.disk_location else None
    vis_every = cfg.get("visualize_every", 0) or 0
    accelerator, log_with = build_accelerator(cfg, exp_dir, compile_model=not args.no_compile)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if accelerator.distributed_type == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin,
                                                                        "fsdp_version", 1) != 2:
        raise SystemExit("error: FSDP training needs FSDP2 (fsdp_version: 2 in the accelerate config, "
                         "accelerate>=1.6.0); see configs/accelerate/fsdp.yaml")
    if accelerator.is_main_process:
        os.makedirs(ckpt_dir, exist_ok=True)
        clear_temporaries(ckpt_dir)
        OmegaConf.save(cfg, os.path.join(exp_dir, "config.yaml"))
    accelerator.wait_for_everyone()
    logger = create_logger(exp_dir if accelerator.is_main_process else None, rank)
    logger.info(f"experiment {exp_dir}, {world} process(es), {accelerator.distributed_type}, "
                f"mixed precision {accelerator.mixed_precision}")
    launcher_mp = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher_mp and launcher_mp != accelerator.mixed_precision:
        logger.warning(f"the launcher asked for mixed precision {launcher_mp}; using the config's "
                       f"{accelerator.mixed_precision} (set accelerator.mixed_precision or --mixed-precision)")

    # ---- batch sizes --------------------------------------------------------------------------------
    accum = accelerator.gradient_accumulation_steps
    if cfg.global_batch_size % (world * accum):
        raise ValueError(f"global_batch_size {cfg.global_batch_size} is not divisible by world size {world} x "
                         f"gradient_accumulation_steps {accum}")
    batch_size = cfg.global_batch_size // (world * accum)

    # ---- model, EMA, optimizer, schedule ------------------------------------------------------------
    torch.manual_seed(cfg.global_seed)  # the same initial weights on every process and every launch
    model = build_randar(cfg, ckpt_path=args.gpt_ckpt)
    logger.info(f"RandAR parameters: {sum(p.numel() for p in model.parameters()):,}"
                + (f", initial weights {args.gpt_ckpt}" if args.gpt_ckpt else ""))
    ema = None
    if cfg.get("ema", False):
        if accelerator.distributed_type == DistributedType.FSDP:
            raise ValueError("ema: true is not supported with FSDP (the EMA would hold only this rank's shard)")
        ema = EMA(model).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, fused=device.type == "cuda")
    scheduler = scheduler_from_config(optimizer, cfg.lr_scheduler, cfg.max_iters)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = unwrap(accelerator, model)
    state = TrainState()
    accelerator.register_for_checkpointing(state, scheduler, *([ema] if ema is not None else []))

    # ---- resume -------------------------------------------------------------------------------------
    found = broadcast_object_list([latest_checkpoint([ckpt_dir, mirror_dir])])[0]  # rank 0's view decides
    if found:
        check_checkpoint_kind(found[1], accelerator.distributed_type == DistributedType.FSDP)
        accelerator.load_state(found[1])
        assert state.step == found[0], f"{found[1]} holds step {state.step}"
        logger.info(f"resumed from {found[1]} at step {state.step} ({state.skipped} skipped so far)")

    # ---- data ---------------------------------------------------------------------------------------
    dataset = build_dataset(cfg, raw_model, verbose=accelerator.is_main_process)
    sampler = StepBatchSampler(len(dataset), batch_size, world, rank, accum, cfg.global_seed, start_step=state.step)
    workers = cfg.get("num_workers", 0)
    loader = DataLoader(SeededItems(dataset, cfg.global_seed), batch_sampler=sampler, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=4 if workers > 0 else None)
    batches = iter(loader)
    logger.info(f"{len(dataset):,} samples, {sampler.steps_per_epoch:,} steps per epoch; global batch "
                f"{cfg.global_batch_size} = {world} x {accum} x {batch_size}; steps {state.step} -> {cfg.max_iters}")

    # ---- logging and visualisation ------------------------------------------------------------------
    if log_with and accelerator.is_main_process:
        init_wandb(accelerator, exp_dir, cfg.get("wandb_run_name") or exp_name, cfg.get("wandb_project") or "RandAR",
                   cfg.get("wandb_entity"), cfg.get("wandb_offline", False), to_plain(cfg))
    tokenizer = None
    if vis_every and not cfg.get("vq_ckpt"):
        logger.warning("no --vq-ckpt: visualisations are off")
    elif vis_every and accelerator.is_main_process:
        tokenizer = load_tokenizer(cfg, raw_model, device)

    # ---- training loop ------------------------------------------------------------------------------
    stop_request = StopRequest()
    meter = MetricMeter(device)
    log_every, ckpt_every = cfg.get("log_every", 100), cfg.get("ckpt_every", 0)
    tokens_per_step = cfg.global_batch_size * raw_model.block_size
    model.train()
    while state.step < cfg.max_iters:
        torch.manual_seed(step_seed(cfg.global_seed, rank, state.step))  # randomness = f(seed, rank, step)
        want_vis = tokenizer is not None and (state.step + 1) % vis_every == 0
        loss = 0.0
        for micro in range(accum):
            codes, labels, _ = next(batches)
            codes, labels = codes.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            keep = cfg.get("visualize_num", 32) if want_vis and micro == accum - 1 else 0
            micro_loss, vis = forward_backward(accelerator, model, codes, labels, keep)
            loss = loss + micro_loss / accum
        grad_norm, skip, stop = clip_and_check(accelerator, model, loss, cfg.optimizer, state.step,
                                               stop_request.requested)
        lr = optimizer.param_groups[0]["lr"]
        if not skip:
            optimizer.step()
            if ema is not None:
                ema.update(raw_model, cfg.get("ema_decay", 0.9999))
        state.skipped += int(skip)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state.step += 1
        meter.update(loss, grad_norm, skip)

        if log_every and state.step % log_every == 0:
            metrics = meter.summary(lambda t: accelerator.reduce(t, "mean"), tokens_per_step, lr, state.skipped)
            logger.info(format_metrics(state.step, metrics))
            accelerator.log(metrics, step=state.step)
            meter.reset()
        if want_vis:
            visualize(accelerator, model, tokenizer, vis, cfg, state.step, exp_dir, logger)
        if (ckpt_every and state.step % ckpt_every == 0) or state.step in export_steps(cfg) or stop:
            save_and_mirror(accelerator, model, ema, cfg, state, ckpt_dir, mirror_dir, logger)
        if stop:
            logger.info(f"stop requested (SIGUSR1): checkpointed at step {state.step}, exiting")
            break
    accelerator.wait_for_everyone()
    logger.info(f"done: step {state.step} of {cfg.max_iters}, {state.skipped} skipped updates")
    accelerator.end_training()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=str, default="configs/randar/randar_xl_0.7b_llamagen.yaml")
    p.add_argument("--exp-name", type=str, required=True,
                   help="the experiment folder is <results-dir>/<exp-name>_bs_<global_batch_size>_lr_<lr>")
    p.add_argument("--data-path", type=str, default=None, help="latent codes folder (dataset.params.root_dir)")
    p.add_argument("--vq-ckpt", type=str, default=None, help="tokenizer weights, used for the visualisations only")
    p.add_argument("--results-dir", type=str, default=None)
    p.add_argument("--disk-location", type=str, default="",
                   help="also copy every checkpoint to <disk-location>/<experiment name>/, and resume from there")
    p.add_argument("--gpt-ckpt", type=str, default=None, help="initial weights (ignored when resuming)")
    p.add_argument("--no-compile", action="store_true", help="do not torch.compile the model (only used on CUDA)")
    p.add_argument("--mixed-precision", type=str, default=None, choices=["no", "none", "fp16", "bf16"])
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--visualize-every", type=int, default=None, help="in optimizer steps; 0 turns it off")
    p.add_argument("--visualize-num", type=int, default=None, help="images per grid (at most the per-process batch)")
    p.add_argument("--keep-last-k", type=int, default=None,
                   help="full training states kept (the config's keep_last_k, default 1); <= 0 keeps all")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--global-seed", type=int, default=None)
    p.add_argument("--wandb-offline", action="store_true", help="log to local wandb files only (no network)")
    p.add_argument("--wandb-entity", type=str, default=None)
    p.add_argument("--wandb-project", type=str, default=None)
    p.add_argument("--wandb-run-name", type=str, default=None, help="default: the experiment folder name")
    p.add_argument("overrides", nargs="*", help="config overrides, key.sub=value (OmegaConf dotlist)")
    return p.parse_intermixed_args(argv)  # overrides may sit anywhere among the flags


if __name__ == "__main__":
    require_versions()
    try:
        main(parse_args())
    except (ConfigError, InputError) as e:  # a user's mistake: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
