"""What decides the pixels of a sampling run besides the weights (`SamplingSpec`, spelt out by its run name), the
one builder that resolves and checks it against the model, and the sampler of class-conditional images."""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from RandAR.applications.resolution_extrapolation import extrapolation_grid, extrapolation_rope
from RandAR.model.generate import default_steps, generate
from RandAR.model.guidance import class_cfg, require_null_class
from RandAR.model.orders import random_permutations
from RandAR.sampling.labels import class_labels, image_seeds
from RandAR.utils.precision import default_precision

PRECISIONS = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """--precision, or by default bf16 on CUDA and on CPUs with native bfloat16, else none (float32)."""
    return precision or default_precision(device)


@dataclass(frozen=True)
class SamplingSpec:
    """Every setting besides the weights that decides image i's pixels; `run_name` spells all of them."""
    cfg_scales: Tuple[float, float]
    num_inference_steps: int
    image_size: int  # what the tokenizer decodes: token grid x downsample factor
    image_size_eval: int  # what is saved (bicubic resize of the decoded float image when it differs)
    precision: str = "none"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    global_seed: int = 0
    class_sampling: str = "random"

    def run_name(self, exp_name: str, ckpt_name: str, with_cfg: bool = True) -> str:
        """e.g. randar-ckpt-size-256-256-cfg-1.0-4.0-steps-88-bf16-seed-0 (with_cfg=False drops the cfg part)."""
        a, b = self.cfg_scales
        name = (f"{exp_name}-{ckpt_name}-size-{self.image_size}-{self.image_size_eval}"
                + (f"-cfg-{a}-{b}" if with_cfg else "")
                + f"-steps-{self.num_inference_steps}-{'fp32' if self.precision == 'none' else self.precision}")
        # Non-default sampling settings only, to keep the common names short.
        if self.temperature != 1.0:
            name += f"-temp-{self.temperature}"
        if self.top_k:
            name += f"-topk-{self.top_k}"
        if self.top_p != 1.0:
            name += f"-topp-{self.top_p}"
        if self.class_sampling != "random":
            name += f"-{self.class_sampling}"
        return f"{name}-seed-{self.global_seed}"


@dataclass(frozen=True)
class Extrapolation:
    """The settings of resolution extrapolation (RandAR.applications.resolution_extrapolation)."""
    spatial_cfg_scales: Tuple[float, float] = (1.0, 1.0)
    spatial_masking_ratio: float = 0.5
    extrapolation_factor: int = 2
    ntk_boundary: int = 2


@dataclass(frozen=True)
class ExtrapolationSpec(SamplingSpec):
    """SamplingSpec plus the extrapolation settings; image_size is the large grid's decoded size."""
    spatial_cfg_scales: Tuple[float, float] = (1.0, 1.0)
    spatial_masking_ratio: float = 0.5
    extrapolation_factor: int = 2
    ntk_boundary: int = 2

    def run_name(self, exp_name: str, ckpt_name: str, with_cfg: bool = True) -> str:
        base, seed = super().run_name(exp_name, ckpt_name, with_cfg).rsplit("-seed-", 1)
        a, b = self.spatial_cfg_scales
        return (f"{base}-extrap-{self.extrapolation_factor}-ntk-{self.ntk_boundary}-scfg-{a}-{b}"
                f"-smask-{self.spatial_masking_ratio}-seed-{seed}")


def build_spec(model, tokenizer, *, cfg_scales: Sequence[float], num_inference_steps: Optional[int],
               image_size: Optional[int], image_size_eval: Optional[int], precision: str, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, global_seed: int = 0, class_sampling: str = "random",
               extrapolation: Optional[Extrapolation] = None) -> SamplingSpec:
    """The settings with their defaults resolved from the model (steps, sizes) and checked against it; an
    ExtrapolationSpec when `extrapolation` is given."""
    cfg_scales = tuple(cfg_scales)
    grid, guided = model.grid_size, cfg_scales[-1] > 1.0
    if extrapolation is not None:
        if model.position_order == "raster":
            raise ValueError("resolution extrapolation needs a random-order model (position_order: random)")
        extrapolation_rope(model, extrapolation.extrapolation_factor, extrapolation.ntk_boundary)  # checks both
        grid = extrapolation_grid(model, extrapolation.extrapolation_factor)
        guided = guided or extrapolation.spatial_cfg_scales[-1] > 1.0
    native = grid * tokenizer.downsample_factor
    if image_size not in (None, native):
        raise ValueError(f"--image-size {image_size}: this model decodes {grid}x{grid} tokens into {native}px "
                         f"images (x{tokenizer.downsample_factor}); use --image-size-eval to save another size"
                         + ("" if extrapolation else " (larger grids are resolution extrapolation)"))
    require_null_class(model, guided, "use --cfg-scales 1.0,1.0"
                       + (" --spatial-cfg-scales 1.0,1.0" if extrapolation else ""))
    settings = dict(cfg_scales=cfg_scales, num_inference_steps=default_steps(model, num_inference_steps),
                    image_size=native, image_size_eval=image_size_eval or native, precision=precision,
                    temperature=temperature, top_k=top_k, top_p=top_p, global_seed=global_seed,
                    class_sampling=class_sampling)
    if extrapolation is None:
        return SamplingSpec(**settings)
    return ExtrapolationSpec(**settings, spatial_cfg_scales=tuple(extrapolation.spatial_cfg_scales),
                             spatial_masking_ratio=extrapolation.spatial_masking_ratio,
                             extrapolation_factor=extrapolation.extrapolation_factor,
                             ntk_boundary=extrapolation.ntk_boundary)


@torch.no_grad()
def sample_images(model, tokenizer, indices: Sequence[int], spec: SamplingSpec) -> np.ndarray:
    """Images `indices` -> uint8 (B, size_eval, size_eval, 3), each from its own label, seed and order."""
    device = model.tok_embeddings.weight.device
    labels = torch.tensor(class_labels(indices, model.num_classes, spec.global_seed, spec.class_sampling),
                          device=device)
    seeds = image_seeds(spec.global_seed, indices)
    order = None
    if model.position_order != "raster":
        order = random_permutations(len(seeds), [model.block_size], seeds)[0].to(device)
    codes = generate(model, labels, token_order=order, guidance=class_cfg(labels, spec.cfg_scales, model.num_classes),
                     num_inference_steps=spec.num_inference_steps, temperature=spec.temperature, top_k=spec.top_k,
                     top_p=spec.top_p, seeds=torch.tensor(seeds, dtype=torch.long, device=device))  # (B, N) raster
    # The float image is resized before rounding, as the original's decode_codes_to_img(codes, size_eval).
    return tokenizer.decode_codes_to_img(codes, spec.image_size_eval)
