"""What tools/inpaint.py and tools/outpaint.py share: flags, model loading, and sampling several completions of
one token grid (seeded per sample) into decoded images."""
import argparse
from typing import Optional

import numpy as np
import torch

from RandAR.applications.editing import generate_with_known
from RandAR.model.guidance import class_cfg
from RandAR.utils.checkpoint import CheckpointMismatchError
from RandAR.utils.sample_io import PRECISIONS, add_compile_arg, image_seeds, load_models, parse_pair

# Errors with a message meant for the user: the tools print it and exit with status 1.
USER_ERRORS = (FileNotFoundError, ValueError, CheckpointMismatchError)


def add_editing_args(p: argparse.ArgumentParser, default_output_dir: str):
    p.add_argument("--config", required=True, help="RandAR config (configs/randar/*.yaml): ar_model and tokenizer")
    p.add_argument("--gpt-ckpt", required=True, help="RandAR weights (.safetensors, or a torch file)")
    p.add_argument("--vq-ckpt", default=None, help="tokenizer weights (default: the config's vq_ckpt)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default=None,
                   help="RandAR weights' dtype (default: bf16 on CUDA, none = float32 on CPU)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--image", required=True, help="input image (non-RGB images are converted to RGB)")
    p.add_argument("--class-id", type=int, required=True, help="class of the result, 0..num_classes-1")
    p.add_argument("--num-samples", type=int, default=4, help="completions of the one input")
    p.add_argument("--seed", type=int, default=0,
                   help="with a sample's index, gives its seed (its order and every draw); the same flags give "
                        "the same images")
    p.add_argument("--batch-size", type=int, default=8, help="samples per forward batch (does not change them)")
    p.add_argument("--cfg-scales", default="1.0,4.0",
                   help="class CFG scale, linear from the first value (nothing known) to the second (all known); "
                        "off when the second is <= 1")
    p.add_argument("--num-inference-steps", type=int, default=None,
                   help="parallel-decoding steps for the unknown tokens (default: the config's; -1: one token per "
                        "step)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k filtering")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = no nucleus filtering")
    p.add_argument("--output-dir", default=default_output_dir)
    add_compile_arg(p)


def load_for_editing(args):
    """(model, tokenizer, device) from the flags; checks the flags that do not need the image."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError(f"--num-samples and --batch-size must be >= 1, got {args.num_samples}, {args.batch_size}")
    args.cfg_scales = parse_pair(args.cfg_scales, "--cfg-scales")
    model, tokenizer = load_models(args, device)
    if not 0 <= args.class_id < model.num_classes:
        raise ValueError(f"--class-id {args.class_id} is out of range: this model has classes "
                         f"0..{model.num_classes - 1}")
    if args.cfg_scales[-1] > 1.0 and not model.cls_embedding.has_null_class:
        raise ValueError("this model has no null class (class_dropout_prob=0), so no CFG; use --cfg-scales 1.0,1.0")
    return model, tokenizer, device


@torch.no_grad()
def sample_completions(model, tokenizer, args, tokens: torch.Tensor, known: torch.Tensor, image_size: int,
                       freqs_cis: Optional[torch.Tensor] = None) -> np.ndarray:
    """--num-samples completions of one grid (tokens, known: (1, N)) -> uint8 (S, image_size, image_size, 3)."""
    device = tokens.device
    seeds = torch.tensor(image_seeds(args.seed, range(args.num_samples)), dtype=torch.long)
    images = []
    for start in range(0, args.num_samples, args.batch_size):
        s = seeds[start:start + args.batch_size].to(device)
        b = len(s)
        cond = torch.full((b,), args.class_id, dtype=torch.long, device=device)
        ids = generate_with_known(model, cond, tokens.expand(b, -1), known.expand(b, -1),
                                  guidance=class_cfg(cond, args.cfg_scales, model.num_classes),
                                  num_inference_steps=args.num_inference_steps, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, freqs_cis=freqs_cis, seeds=s)
        assert torch.equal(ids[known.expand(b, -1)], tokens.expand(b, -1)[known.expand(b, -1)])
        images.append(tokenizer.decode_codes_to_img(ids, image_size))
    return np.concatenate(images)
