"""Pieces of VQ tokenizer training (tools/train_tokenizer.py): config, losses, schedule, data, evaluation, checkpoints.

The loss is LlamaGen's without the perceptual and GAN terms: a pixel loss (l2 or l1) on the reconstruction,
plus the quantizer's codebook, commitment and entropy losses as VQModel returns them, plus an optional l1 loss
on image gradients (off by default: on the toy data it slowed the fall of the pixel error). Two additions make
short CPU runs work: codes unused for a while are restarted on recent encoder outputs (else a 512-code book
collapses to ~50 codes), and the decoder's first layer starts scaled to the l2-normalised codes' small values.
"""
import math
import os
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from RandAR.dataset.augmentation import to_tokenizer_input
from RandAR.dataset.imagenet import collate_skip_bad
from RandAR.training.checkpoint_folders import (find_resume_state, load_state_or_stop, prune_checkpoints, save_checkpoint,
                                         state_problem)
from RandAR.training.lr_schedule import get_scheduler
from RandAR.training.state import SeededItems, StepBatchSampler
from RandAR.utils.atomic import atomic_path
from RandAR.utils.checkpoint import load_model_weights
from RandAR.utils.config import load_config
from RandAR.utils.config_schema import ConfigError, VQTrainArgs
from RandAR.utils.images import image_grid
from RandAR.utils.seeding import Stream, seed_for


def load_train_config(path: str, overrides: Sequence[str] = ()) -> Tuple[DictConfig, VQTrainArgs]:
    """Load a tokenization YAML with `key=value` overrides (unknown keys and wrong types are errors, see
    RandAR.utils.config_schema), and fill its `train:` section with VQTrainArgs defaults so that the saved
    config shows every setting."""
    cfg = load_config(path, overrides)
    cfg.train = OmegaConf.merge(OmegaConf.structured(VQTrainArgs), cfg.get("train", None) or {})
    try:
        return cfg, VQTrainArgs(**OmegaConf.to_container(cfg.train, resolve=True))
    except ConfigError as e:  # a value out of range (VQTrainArgs.__post_init__)
        raise ConfigError(f"{path}: {e}") from e


@torch.no_grad()
def init_for_training(model):
    """Scale the decoder's first layer (post_quant_conv) up by sqrt(code dim) when codes are l2-normalised:
    their coordinates then have std ~1/sqrt(dim), and default-initialised convs expect ~1. On the toy data this
    halves the reconstruction loss reached in the first few hundred steps. Called on fresh models only."""
    if model.quantize.l2_norm:
        model.post_quant_conv.weight.mul_(math.sqrt(model.codebook_embed_dim))


# ---------------------------------------------------------------- losses

def edge_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean l1 difference of horizontal and vertical pixel gradients, (B, 3, H, W) each."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(rec) - dx(x)).abs().mean() + (dy(rec) - dy(x)).abs().mean()


def vq_training_step(model, x: torch.Tensor, args: VQTrainArgs):
    """x (B, 3, H, W) in the model's pixel range -> (total loss, {name: float}, code indices (B*h*w,), encoder
    outputs (B*h*w, C) before quantization, for code restarts)."""
    z = model.quant_conv(model.encoder(x))  # (B, C, h, w)
    quant, q_losses, (_, _, idx) = model.quantize(z)
    rec = model.decode(quant).float()  # losses in float32, also under autocast
    pixel = F.mse_loss(rec, x) if args.recon_loss == "l2" else F.l1_loss(rec, x)
    codebook = q_losses.vq_loss + q_losses.commit_loss + q_losses.entropy_loss
    total = args.recon_weight * pixel + args.codebook_weight * codebook
    parts = {"rec": pixel.item(), "vq": q_losses.vq_loss.item(), "commit": q_losses.commit_loss.item()}
    if args.edge_weight > 0:
        edge = edge_loss(rec, x)
        total = total + args.edge_weight * edge
        parts["edge"] = edge.item()
    return total, parts, idx, z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def build_schedule(optimizer, args: VQTrainArgs):
    """Linear warm-up, then one half-cosine from lr to lr * min_lr_ratio at the last iteration (call .step() after
    every optimizer step)."""
    return get_scheduler("cosine", optimizer, args.warmup_iters, args.iterations, num_cycles=0.5,
                         min_lr_ratio=args.min_lr_ratio)


def optimize_step(model, optimizer, x: torch.Tensor, args: VQTrainArgs):
    """One update at the optimizer's current lr; returns what vq_training_step returns."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        loss, parts, idx, z = vq_training_step(model, x, args)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    return loss, parts, idx, z


def restart_due(done: int, args: VQTrainArgs) -> bool:
    """Whether dead codes are restarted after `done` steps."""
    return (args.restart_dead_codes_every > 0 and done % args.restart_dead_codes_every == 0
            and done < args.restart_until * args.iterations)


class CodeUsage:
    """Which codes were assigned during the last `window` steps."""

    def __init__(self, codebook_size: int, window: int):
        self.last_seen = torch.full((codebook_size,), -10 ** 9, dtype=torch.long)
        self.window = window

    def update(self, step: int, idx: torch.Tensor):
        self.last_seen[idx.unique()] = step

    def dead(self, step: int) -> torch.Tensor:
        return (self.last_seen <= step - self.window).nonzero().flatten()

    def used(self, step: int) -> int:
        return int((self.last_seen > step - self.window).sum())


@torch.no_grad()
def restart_dead_codes(model, dead: torch.Tensor, z: torch.Tensor, seed: int, step: int):
    """Move the codes `dead` onto randomly chosen encoder outputs z (N, C), so they get assigned again."""
    if len(dead) == 0:
        return
    g = torch.Generator().manual_seed(seed_for(seed, Stream.CODE_RESTART, step))
    pick = torch.randint(len(z), (len(dead),), generator=g)
    new = z[pick]
    model.quantize.embedding.weight[dead] = F.normalize(new, dim=-1) if model.quantize.l2_norm else new


# ---------------------------------------------------------------- data

def step_batches(dataset, batch_size: int, seed: int, start_step: int = 0, num_workers: int = 0
                 ) -> Iterator[torch.Tensor]:
    """Endless uint8 batches (B, 3, S, S): batch s is the same for a run resumed at any step (train_c2i's
    StepBatchSampler, one process); undecodable images are skipped (their batch comes out smaller)."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed=seed, start_step=start_step)
    loader = torch.utils.data.DataLoader(SeededItems(dataset, seed), batch_sampler=sampler, num_workers=num_workers,
                                         collate_fn=collate_skip_bad)
    for images, _, _, bad in loader:
        for b in bad:
            print(f"skipped undecodable image {b.path}: {b.reason}", flush=True)
        if images is not None:
            yield images


def spread(total: int, n: int) -> torch.Tensor:
    """min(n, total) evenly spaced indices into range(total): from every class of a class-sorted dataset."""
    return torch.from_numpy(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64))


def fixed_images(dataset, n: int) -> torch.Tensor:
    """n evenly spaced items of a (class-sorted) dataset -> uint8 (n, 3, S, S)."""
    images = [dataset[int(i)][0] for i in spread(len(dataset), n)]
    images = [im for im in images if isinstance(im, torch.Tensor)]
    return torch.stack(images)


def random_flip(x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Each image of step `step`'s batch mirrored with probability 1/2 (a function of the seed and step)."""
    g = torch.Generator().manual_seed(seed_for(seed, Stream.VQ_STEP, step))
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def to_uint8(images: torch.Tensor, model) -> torch.Tensor:
    """Model-range floats (B, 3, H, W) -> uint8 (B, 3, H, W), rounded."""
    lo, hi = model.pixel_range
    return ((images - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- evaluation and pictures

@torch.no_grad()
def reconstruct(model, images_uint8: torch.Tensor, batch_size: int = 100) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, S, S) -> (reconstructions uint8 (N, 3, S, S), codes (N, h*w)), via the tokenizer's public
    encode_indices / decode_codes, i.e. exactly what code extraction and sampling see."""
    was_training = model.training
    model.eval()
    recs, codes = [], []
    for start in range(0, len(images_uint8), batch_size):
        c = model.encode_indices(to_tokenizer_input(images_uint8[start:start + batch_size], model))
        recs.append(to_uint8(model.decode_codes(c), model))
        codes.append(c)
    model.train(was_training)
    return torch.cat(recs), torch.cat(codes)


def reconstruction_metrics(images_uint8: torch.Tensor, recs_uint8: torch.Tensor, codes: torch.Tensor,
                           codebook_size: int) -> Dict[str, float]:
    """MSE and PSNR on [0, 1] pixels, distinct codes used and the code perplexity (exp of the code entropy)."""
    mse = ((images_uint8.float() - recs_uint8.float()) / 255).pow(2).mean().item()
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-12)), "codes_used": int((counts > 0).sum()),
            "code_perplexity": float(torch.exp(-(p * p.log()).sum())), "num_images": len(images_uint8)}


def save_recon_grid(images_uint8: torch.Tensor, recs_uint8: torch.Tensor, path: str, per_row: int = 8,
                    upscale: int = 4):
    """PNG of pairs of rows: inputs, then their reconstructions; nearest-neighbour upscaled for viewing."""
    n = len(images_uint8) // per_row * per_row
    assert n > 0, f"need at least {per_row} images for a reconstruction grid"
    pairs = torch.stack([images_uint8[:n], recs_uint8[:n]]).unflatten(1, (n // per_row, per_row))  # (2, R, P, ...)
    rows = pairs.transpose(0, 1).flatten(0, 2).permute(0, 2, 3, 1).numpy()  # input row, its reconstructions, ...
    image = Image.fromarray(image_grid(rows, cols=per_row, pad=0))
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp)


# ---------------------------------------------------------------- checkpoints

TRAIN_STATE = "train.pt"  # in a checkpoint folder: optimizer, LR schedule, code usage


def save_state(ckpt_dir: str, step: int, model, optimizer, scheduler, usage: CodeUsage, metadata: Dict[str, str],
               keep: int):
    """Checkpoint `step` in training/checkpoint_folders.py's layout: iters_<step>/train.pt (optimizer, schedule, code
    usage), the weights as the export iters_<step>.safetensors. Keeps the `keep` newest (<= 0: all)."""
    def write_state(folder: str):
        os.makedirs(folder, exist_ok=True)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "code_last_seen": usage.last_seen}, os.path.join(folder, TRAIN_STATE))
    exports = {".safetensors": (model.state_dict(), {**metadata, "step": str(step)})}
    path = save_checkpoint(ckpt_dir, step, write_state, exports)
    problem = state_problem(path)
    if problem is None:  # prune only once the new state matches its record
        prune_checkpoints(ckpt_dir, keep)
    else:
        print(f"the new checkpoint {path} does not match its record ({problem}): older states are kept", flush=True)


def resume_latest(ckpt_dir: str, model, optimizer, scheduler, usage: CodeUsage) -> int:
    """Load the newest checkpoint (strictly) into model, optimizer, schedule and code usage; return its step, or 0
    if there is none. The run then continues as if it had not stopped (same batches, flips and restarts). The newest
    intact state is taken (a damaged one is named and set aside: training/checkpoint_folders.find_resume_state)."""
    found = find_resume_state([ckpt_dir], lambda line: print(line, flush=True))
    if found is None:
        return 0
    step, path = found

    def load(path: str):
        load_model_weights(model, path + ".safetensors")
        state = torch.load(os.path.join(path, TRAIN_STATE), map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        usage.last_seen.copy_(state["code_last_seen"])
    load_state_or_stop(load, path)
    return step
