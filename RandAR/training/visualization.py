"""Training-time pictures: teacher-forced predictions, tokenizer reconstructions and free samples.

Everything here takes and returns uint8 numpy images [B, H, W, 3] (what `decode_codes_to_img` gives), so it
needs neither torchvision nor OpenCV.
"""
import math
import os
from typing import Dict, Sequence

import numpy as np
import torch
from accelerate.utils import DistributedType
from PIL import Image, ImageDraw

from RandAR.training.step import unwrap
from RandAR.utils.atomic import atomic_path
from RandAR.utils.images import image_grid
from RandAR.utils.seeding import Stream, seed_for

VIS_CFG_SCALES = (4.0, 4.0)  # guidance of the free samples in the visualisations (the original's)


def make_grid(imgs: np.ndarray) -> np.ndarray:
    """[B, H, W, 3] uint8 -> one grid with about twice as many columns as rows (the original's layout)."""
    b = imgs.shape[0]
    return image_grid(imgs, cols=math.ceil(b / max(1, int(math.sqrt(b / 2)))))


def enlarge(imgs: np.ndarray, min_size: int = 64) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor until images are at least min_size (tiny test models)."""
    f = max(1, math.ceil(min_size / imgs.shape[1]))
    return imgs.repeat(f, axis=1).repeat(f, axis=2) if f > 1 else imgs


def stack_panels(panels: Dict[str, np.ndarray], label_height: int = 14, gap: int = 6,
                 min_width: int = 160) -> np.ndarray:
    """Put named grids one above the other, each under a one-line caption, on a white canvas."""
    width = max([min_width] + [p.shape[1] for p in panels.values()])
    height = sum(label_height + p.shape[0] + gap for p in panels.values()) - gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for name, p in panels.items():
        draw.text((2, y + 1), name, fill=(0, 0, 0))
        canvas.paste(Image.fromarray(p), (0, y + label_height))
        y += label_height + p.shape[0] + gap
    return np.asarray(canvas)


def teacher_forced_ids(token_logits: torch.Tensor, token_order: torch.Tensor) -> torch.Tensor:
    """Training logits (B, N, V) in generation order -> argmax ids (B, N) in raster order."""
    pred = token_logits.argmax(dim=-1)                                       # (B, N) generation order
    return torch.zeros_like(pred).scatter_(1, token_order, pred)             # position order[b, i] <- pred[b, i]


@torch.no_grad()
def training_panels(model, tokenizer, token_logits: torch.Tensor, token_order: torch.Tensor, codes: torch.Tensor,
                    labels: torch.Tensor, num: int, cfg_scales: Sequence[float], num_inference_steps: int,
                    seed: int, free_samples: bool = True) -> Dict[str, np.ndarray]:
    """The grids logged during training, decoded by the tokenizer: `teacher_forced` (argmax of the training
    logits), `reconstruction` (the ground-truth codes) and `samples` (free generation; with free_samples).

    model: the unwrapped RandARTransformer (switched to eval for sampling, then back to train).
    token_logits/token_order/codes/labels: one training micro-batch and its forward outputs.
    Free samples use the batch's labels, a seeded generator (no effect on the training RNG) and
    `num_inference_steps` parallel-decoding steps.
    """
    num = min(num, codes.shape[0])
    image_size = tokenizer.downsample_factor * model.grid_size
    panels = {
        "teacher_forced": tokenizer.decode_codes_to_img(
            teacher_forced_ids(token_logits[:num], token_order[:num]), image_size),
        "reconstruction": tokenizer.decode_codes_to_img(codes[:num], image_size),
    }
    if free_samples:
        if not model.cls_embedding.has_null_class:
            cfg_scales = (1.0, 1.0)  # no null class to guide with
        generator = torch.Generator(codes.device).manual_seed(seed)
        was_training = model.training
        model.eval()
        try:
            ids = model.generate(labels[:num], cfg_scales=tuple(cfg_scales), num_inference_steps=num_inference_steps,
                                 temperature=1.0, top_k=0, top_p=1.0, generator=generator)
        finally:
            model.train(was_training)
        panels["samples"] = tokenizer.decode_codes_to_img(ids, image_size)
    return {name: make_grid(enlarge(imgs)) for name, imgs in panels.items()}


def visualize(accelerator, model, tokenizer, vis, cfg, step, exp_dir, logger):
    """Save (and log to wandb) the training panels of one micro-batch: <exp_dir>/visualizations/iters_<step>.png."""
    logits, order, codes, labels = vis
    raw = unwrap(accelerator, model)
    seed = seed_for(cfg.global_seed, Stream.VIS_SAMPLES, step)
    panels = training_panels(raw, tokenizer, logits, order, codes, labels, cfg.get("visualize_num", 32),
                             VIS_CFG_SCALES, raw.num_inference_steps, seed=seed,
                             free_samples=accelerator.distributed_type != DistributedType.FSDP)
    path = os.path.join(exp_dir, "visualizations", f"iters_{step:08d}.png")
    with atomic_path(path) as tmp:
        Image.fromarray(stack_panels(panels)).save(tmp)
    if "wandb" in str(cfg.accelerator.get("log_with")):
        import wandb
        accelerator.log({f"vis/{k}": wandb.Image(v) for k, v in panels.items()}, step=step)
    logger.info(f"saved visualisation {path}")
