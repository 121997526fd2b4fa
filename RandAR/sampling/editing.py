"""What tools/inpaint.py and tools/outpaint.py share: model loading and sampling several completions of one
token grid (seeded per sample) into decoded images."""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from RandAR.applications.editing import generate_with_known
from RandAR.model.guidance import class_cfg, require_null_class
from RandAR.sampling.inputs import check_inputs, load_models
from RandAR.sampling.labels import image_seeds


@dataclass(frozen=True)
class Completions:
    """How the completions of one input are drawn."""
    class_id: int
    num_samples: int = 4
    seed: int = 0
    batch_size: int = 8
    cfg_scales: Tuple[float, float] = (1.0, 4.0)
    num_inference_steps: Optional[int] = None  # None: the model's default
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def load_for_editing(config_path: Optional[str], gpt_ckpt: str, vq_ckpt: Optional[str], device: torch.device,
                     completions: Completions, precision: Optional[str] = None, compile: bool = False):
    """(model, tokenizer), with the settings checked against the model."""
    model, tokenizer = load_models(check_inputs(config_path, gpt_ckpt, vq_ckpt), device, precision, compile)
    if not 0 <= completions.class_id < model.num_classes:
        raise ValueError(f"--class-id {completions.class_id} is out of range: this model has classes "
                         f"0..{model.num_classes - 1}")
    require_null_class(model, completions.cfg_scales[-1] > 1.0, "use --cfg-scales 1.0,1.0")
    return model, tokenizer


@torch.no_grad()
def sample_completions(model, tokenizer, completions: Completions, tokens: torch.Tensor, known: torch.Tensor,
                       image_size: int, freqs_cis: Optional[torch.Tensor] = None) -> np.ndarray:
    """completions.num_samples completions of one grid (tokens, known: (1, N)) -> uint8 (S, size, size, 3)."""
    device = tokens.device
    c = completions
    seeds = torch.tensor(image_seeds(c.seed, range(c.num_samples)), dtype=torch.long)
    images = []
    for start in range(0, c.num_samples, c.batch_size):
        s = seeds[start:start + c.batch_size].to(device)
        b = len(s)
        cond = torch.full((b,), c.class_id, dtype=torch.long, device=device)
        ids = generate_with_known(model, cond, tokens.expand(b, -1), known.expand(b, -1),
                                  guidance=class_cfg(cond, c.cfg_scales, model.num_classes),
                                  num_inference_steps=c.num_inference_steps, temperature=c.temperature,
                                  top_k=c.top_k, top_p=c.top_p, freqs_cis=freqs_cis, seeds=s)
        assert torch.equal(ids[known.expand(b, -1)], tokens.expand(b, -1)[known.expand(b, -1)])
        images.append(tokenizer.decode_codes_to_img(ids, image_size))
    return np.concatenate(images)
