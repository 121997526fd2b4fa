"""Checkpoints of train_c2i.py: the full training state plus model-only exports that carry their config.

Export metadata (safetensors header): `format` "randar", `weights` "model" or "ema", `step`, `config` (the whole
resolved config, JSON) and `ar_model` (its model section, JSON): sampling rebuilds the model from them.
"""
from RandAR.training.checkpoint_folders import (UNRECORDED, mirror_checkpoint, prune_checkpoints, save_checkpoint,
                                         state_problem)
from RandAR.utils.checkpoint import export_metadata, strip_wrapper_prefixes


def export_steps(cfg):
    """Steps whose model-only exports outlive their full training state: the milestones and the last step."""
    return set(cfg.export_milestones) | {cfg.max_iters}


def is_checkpoint_step(cfg, step: int) -> bool:
    """Training saves a checkpoint after this optimizer step: every `ckpt_every` steps (0: never on that
    account), at each step of `export_milestones` and at the last step."""
    return bool(cfg.ckpt_every and step % cfg.ckpt_every == 0) or step in export_steps(cfg)


def save_and_mirror(accelerator, model, ema, cfg, state, ckpt_dir, mirror_dir, logger):
    """Checkpoint the current step (every process), verify it against its record, then prune old states and copy
    it to the mirror folder (a state that fails the check is logged and the older ones are kept)."""
    exports = {".safetensors": (strip_wrapper_prefixes(accelerator.get_state_dict(model)),
                                export_metadata(cfg, state.step, "model"))}
    if ema is not None:
        exports[".ema.safetensors"] = (ema.state_dict(), export_metadata(cfg, state.step, "ema"))
    path = save_checkpoint(ckpt_dir, state.step, accelerator.save_state, exports, accelerator.is_main_process,
                           accelerator.wait_for_everyone)
    problem = state_problem(path) if accelerator.is_main_process else None
    if problem is not None and problem != UNRECORDED:
        logger.error(f"the new checkpoint {path} does not match its record ({problem}): older states are kept")
    elif accelerator.is_main_process:
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
