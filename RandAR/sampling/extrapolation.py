"""The per-batch sampler of resolution extrapolation, for the sampling folder (RandAR.sampling.folder)."""
from typing import Sequence

import numpy as np
import torch

from RandAR.applications.resolution_extrapolation import generate_resolution_extrapolation
from RandAR.sampling.labels import class_labels, image_seeds
from RandAR.sampling.spec import ExtrapolationSpec


@torch.no_grad()
def sample_extrapolated_images(model, tokenizer, indices: Sequence[int], spec: ExtrapolationSpec) -> np.ndarray:
    """Images `indices` -> uint8 (B, size_eval, size_eval, 3); labels and seeds as spec.sample_images, so
    image i's low-resolution pass is the image sample_c2i.py makes for index i with the same settings."""
    device = model.tok_embeddings.weight.device
    labels = torch.tensor(class_labels(indices, model.num_classes, spec.global_seed, spec.class_sampling),
                          device=device)
    seeds = torch.tensor(image_seeds(spec.global_seed, indices), dtype=torch.long)
    ids, _ = generate_resolution_extrapolation(
        model, labels, cfg_scales=spec.cfg_scales, spatial_cfg_scales=spec.spatial_cfg_scales,
        spatial_masking_ratio=spec.spatial_masking_ratio, num_inference_steps=spec.num_inference_steps,
        extrapolation_factor=spec.extrapolation_factor, ntk_boundary=spec.ntk_boundary,
        temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p, seeds=seeds)
    return tokenizer.decode_codes_to_img(ids, spec.image_size_eval)
