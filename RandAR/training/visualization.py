"""Training-time pictures: teacher-forced predictions, tokenizer reconstructions and free samples.

Everything here takes and returns uint8 numpy images [B, H, W, 3] (what `decode_codes_to_img` gives), so it
needs neither torchvision nor OpenCV.
"""
import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def make_grid(imgs: np.ndarray, num_cols: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """[B, H, W, 3] uint8 -> one [rows*(H+pad)-pad, cols*(W+pad)-pad, 3] image, row by row.

    Default columns: about twice as many as rows (the original's layout).
    """
    B, H, W, C = imgs.shape
    cols = num_cols or math.ceil(B / max(1, int(math.sqrt(B / 2))))
    rows = math.ceil(B / cols)
    grid = np.full((rows * (H + pad) - pad, cols * (W + pad) - pad, C), 255, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, cols)
        grid[r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W] = imgs[i]
    return grid


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
