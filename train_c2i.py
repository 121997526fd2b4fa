"""Train a class-conditional RandAR on pre-extracted token codes, with Accelerate.

    accelerate launch --mixed_precision=bf16 --multi_gpu train_c2i.py --exp-name randar_0.7b_llamagen_360k \
        --config configs/randar/randar_xl_0.7b_llamagen.yaml --data-path /tmp/imagenet-llamagen-adm-256_codes \
        --vq-ckpt /tmp/vq_ds16_c2i.pt --results-dir /tmp --disk-location /SLOW_DISK/training_ckpts

Also runs as `python train_c2i.py ...` (one process) and `torchrun --nproc_per_node N train_c2i.py ...`.
Config values are overridden by trailing `key.sub=value` arguments, and those by the explicit flags.
All step counts (max_iters, warm_up_iters, log/ckpt/visualize_every) are optimizer steps; global_batch_size is
the batch of one optimizer step over all processes and accumulation steps.

A relaunch with the same command resumes from the newest complete checkpoint (local or mirrored) and ends
with the same weights as an uninterrupted run; see RandAR/training/state.py for how. The pieces live in
RandAR/training/: setup (checks before any work), step (one optimizer step), export (checkpoints), visualization.
"""
import argparse
import os
import sys

import torch
from accelerate.utils import DistributedType, broadcast_object_list
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from RandAR.dataset.builder import build_latent_dataset
from RandAR.dataset.latent import check_codes_for_config
from RandAR.model.builder import build_randar
from RandAR.training.checkpoint_folders import (CheckpointError, clear_temporaries, experiment_name, find_resume_state,
                                         load_state_or_stop)
from RandAR.training.export import is_checkpoint_step, save_and_mirror
from RandAR.training.lr_schedule import scheduler_from_config
from RandAR.training.setup import (InputError, build_accelerator, check_checkpoint_kind, check_inputs,
                                   load_tokenizer)
from RandAR.training.state import EMA, SeededItems, StepBatchSampler, StopRequest, TrainState
from RandAR.training.step import build_optimizer, clip_and_check, forward_backward, unwrap
from RandAR.training.visualization import visualize
from RandAR.utils.config import load_config, to_plain
from RandAR.utils.config_schema import ConfigError
from RandAR.utils.distributed import allow_tf32
from RandAR.utils.logger import MetricMeter, create_logger, format_metrics, init_wandb
from RandAR.utils.progress import line_buffered_output
from RandAR.utils.seeding import Stream, seed_for
from RandAR.utils.versions import require_versions

# flag -> config key it overrides (flags win over the YAML and over dotlist overrides)
FLAG_KEYS = {"data_path": "dataset.params.root_dir", "vq_ckpt": "vq_ckpt", "results_dir": "results_dir",
             "log_every": "log_every", "ckpt_every": "ckpt_every", "visualize_every": "visualize_every",
             "visualize_num": "visualize_num", "keep_last_k": "keep_last_k", "num_workers": "num_workers",
             "global_seed": "global_seed", "mixed_precision": "accelerator.mixed_precision",
             "wandb_entity": "wandb_entity", "wandb_project": "wandb_project", "wandb_run_name": "wandb_run_name"}


def resolve_config(args):
    """The config with overrides and flags applied, checked (config_schema) and with every required key set."""
    cfg = load_config(args.config, args.overrides)
    for flag, key in FLAG_KEYS.items():
        if getattr(args, flag) is not None:
            OmegaConf.update(cfg, key, getattr(args, flag), merge=False)
    if args.wandb_offline:
        cfg.wandb_offline = True
    mp = str(cfg.accelerator.mixed_precision)  # YAML reads an unquoted `no` as false
    OmegaConf.update(cfg, "accelerator.mixed_precision",
                     "no" if mp.lower() in ("none", "no", "false", "fp32") else mp)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{args.config}: training needs {', '.join(missing)} (set in the YAML or as key=value)")
    for section in ("ar_model", "dataset"):
        if section not in cfg:
            raise ConfigError(f"{args.config}: training needs an `{section}:` section with `target` and `params`")
    return cfg


def main(args):
    line_buffered_output()
    allow_tf32()  # as the original release trained
    cfg = resolve_config(args)
    check_inputs(cfg, args.config, args.gpt_ckpt)
    try:  # codes of another tokenizer, vocabulary or split: stop before any folder is made
        check_codes_for_config(cfg)
    except ValueError as e:
        raise InputError(str(e)) from e
    exp_name = experiment_name(args.exp_name, cfg.global_batch_size, cfg.optimizer.lr)
    exp_dir = os.path.join(cfg.results_dir, exp_name)
    ckpt_dir = os.path.join(exp_dir, "checkpoints")
    mirror_dir = os.path.join(args.disk_location, exp_name) if args.disk_location else None
    vis_every = cfg.visualize_every
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
    assert cfg.global_batch_size % (world * accum) == 0, "checked by check_inputs (WORLD_SIZE, the config's accum)"
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
    found = broadcast_object_list([find_resume_state([ckpt_dir, mirror_dir], logger.warning)  # rank 0 decides
                                   if accelerator.is_main_process else None])[0]
    if found:
        check_checkpoint_kind(found[1], accelerator.distributed_type == DistributedType.FSDP)
        load_state_or_stop(accelerator.load_state, found[1])
        assert state.step == found[0], f"{found[1]} holds step {state.step}"
        logger.info(f"resumed from {found[1]} at step {state.step} ({state.skipped} skipped so far)")

    # ---- data ---------------------------------------------------------------------------------------
    dataset = build_latent_dataset(cfg.dataset, raw_model.vocab_size, raw_model.block_size, raw_model.num_classes,
                                   verbose=accelerator.is_main_process)
    sampler = StepBatchSampler(len(dataset), batch_size, world, rank, accum, cfg.global_seed, start_step=state.step)
    workers = cfg.num_workers
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
    log_every = cfg.log_every
    tokens_per_step = cfg.global_batch_size * raw_model.block_size
    model.train()
    while state.step < cfg.max_iters:
        torch.manual_seed(seed_for(cfg.global_seed, Stream.TRAIN_STEP, rank, state.step))  # = f(seed, rank, step)
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
        if is_checkpoint_step(cfg, state.step) or stop:
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
    p.add_argument("--vq-ckpt", type=str, default=None,
                   help="tokenizer weights, used for the visualisations only (a path, or a released file's name)")
    p.add_argument("--results-dir", type=str, default=None)
    p.add_argument("--disk-location", type=str, default="",
                   help="also copy every checkpoint to <disk-location>/<experiment name>/, and resume from there")
    p.add_argument("--gpt-ckpt", type=str, default=None,
                   help="initial weights (ignored when resuming; a path, or a released file's name)")
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
    except (ConfigError, InputError, CheckpointError) as e:  # a user's mistake, a damaged state, a full disk
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
