"""Build a RandAR model from a config and (optionally) load its weights strictly."""
from typing import Optional

import torch

from RandAR.utils.checkpoint import load_model_weights
from RandAR.utils.config import instantiate_from_config
from RandAR.utils.checkpoint import resolve_checkpoint


def build_randar(config, ckpt_path: Optional[str] = None, device="cpu", dtype: Optional[torch.dtype] = None):
    """config: a full RandAR config (with `ar_model`) or the `ar_model` section itself, as read by
    RandAR.utils.config (canonical). device "meta": shapes only, no memory.

    Loads `ckpt_path` (.safetensors, or a torch file holding a state dict or one under `model`; a released
    checkpoint's file name fetches it, RandAR.utils.checkpoint) with strict key/shape checking; a mismatch raises
    CheckpointMismatchError naming the file and a fitting config.
    """
    section = config["ar_model"] if "ar_model" in config else config
    model = instantiate_from_config(section)
    if ckpt_path:
        load_model_weights(model, resolve_checkpoint(ckpt_path, "RandAR checkpoint"))
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model
