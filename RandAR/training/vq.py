"""Pieces of VQ tokenizer training (tools/train_tokenizer.py): settings, losses, data, checkpoints, evaluation.

The loss is LlamaGen's without the perceptual and GAN terms: a pixel loss (l2 or l1) on the reconstruction,
plus the quantizer's codebook, commitment and entropy losses as VQModel returns them, plus an optional l1 loss
on image gradients (off by default: on the toy data it slowed the fall of the pixel error). Two additions make
short CPU runs work: codes unused for a while are restarted on recent encoder outputs (else a 512-code book
collapses to ~50 codes), and the decoder's first layer starts scaled to the l2-normalised codes' small values.
"""
import glob
import math
import os
import re
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from RandAR.dataset.augmentation import center_crop_arr
from RandAR.dataset.imagenet import collate_skip_bad
from RandAR.utils.checkpoint import atomic_save_safetensors, load_model_weights
from RandAR.utils.config import load_config
from RandAR.utils.config_schema import VQTrainArgs


def load_train_config(path: str, overrides: Sequence[str] = ()) -> Tuple[DictConfig, VQTrainArgs]:
    """Load a tokenization YAML with `key=value` overrides (unknown keys and wrong types are errors, see
    RandAR.utils.config_schema), and fill its `train:` section with VQTrainArgs defaults so that the saved
    config shows every setting."""
    cfg = load_config(path, overrides)
    cfg.train = OmegaConf.merge(OmegaConf.structured(VQTrainArgs), cfg.get("train", None) or {})
    return cfg, VQTrainArgs(**OmegaConf.to_container(cfg.train, resolve=True))


def lr_at(step: int, args: VQTrainArgs) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at the last iteration."""
    if step < args.warmup_iters:
        return args.lr * (step + 1) / args.warmup_iters
    t = (step - args.warmup_iters) / max(1, args.iterations - args.warmup_iters)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


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


def optimize_step(model, optimizer, x: torch.Tensor, step: int, args: VQTrainArgs):
    """One update at the scheduled lr; returns what vq_training_step returns."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, args)
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
def restart_dead_codes(model, dead: torch.Tensor, z: torch.Tensor, generator: torch.Generator):
    """Move the codes `dead` onto randomly chosen encoder outputs z (N, C), so they get assigned again."""
    if len(dead) == 0:
        return
    pick = torch.randint(len(z), (len(dead),), generator=generator)
    new = z[pick]
    model.quantize.embedding.weight[dead] = F.normalize(new, dim=-1) if model.quantize.l2_norm else new


# ---------------------------------------------------------------- data

class CenterCropUint8:
    """PIL RGB image -> ADM centre crop as uint8 tensor (3, S, S). A class, so DataLoader workers can pickle it."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, pil_image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(center_crop_arr(pil_image, self.image_size)).copy()).permute(2, 0, 1)


def infinite_batches(dataset, batch_size: int, seed: int, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Endless uint8 batches (B, 3, S, S), reshuffled each epoch from `seed`; undecodable images are skipped."""
    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, drop_last=True, num_workers=num_workers,
                                             sampler=torch.utils.data.RandomSampler(dataset, generator=g),
                                             collate_fn=collate_skip_bad)
        for images, _, _, bad in loader:
            for b in bad:
                print(f"skipped undecodable image {b.path}: {b.reason}", flush=True)
            if images is not None:
                yield images
        epoch += 1


def spread(total: int, n: int) -> torch.Tensor:
    """min(n, total) evenly spaced indices into range(total): from every class of a class-sorted dataset."""
    return torch.from_numpy(np.linspace(0, total - 1, min(n, total)).round().astype(np.int64))


def fixed_images(dataset, n: int) -> torch.Tensor:
    """n evenly spaced items of a (class-sorted) dataset -> uint8 (n, 3, S, S)."""
    images = [dataset[int(i)][0] for i in spread(len(dataset), n)]
    images = [im for im in images if isinstance(im, torch.Tensor)]
    return torch.stack(images)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def to_model_range(images_uint8: torch.Tensor, model) -> torch.Tensor:
    return model.preprocess(images_uint8.float() / 255.0)


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
        c = model.encode_indices(to_model_range(images_uint8[start:start + batch_size], model))
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
    rows = []
    for start in range(0, n, per_row):
        for batch in (images_uint8, recs_uint8):
            rows.append(torch.cat(list(batch[start:start + per_row]), dim=2))  # (3, S, per_row * S)
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()  # (H, W, 3)
    image = Image.fromarray(grid)
    if upscale > 1:
        image = image.resize((grid.shape[1] * upscale, grid.shape[0] * upscale), Image.NEAREST)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.png"
    image.save(tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------- checkpoints

CKPT_RE = re.compile(r"^(\d{7})\.safetensors$")


def checkpoint_paths(ckpt_dir: str, step: int) -> Tuple[str, str]:
    """(model weights .safetensors, optimizer state .pt) of one step."""
    return os.path.join(ckpt_dir, f"{step:07d}.safetensors"), os.path.join(ckpt_dir, f"{step:07d}.train.pt")


def save_checkpoint(ckpt_dir: str, step: int, model, optimizer, metadata: Dict[str, str], keep: int):
    """Optimizer state first, weights last: a step counts as saved once its weights exist. Keeps `keep` newest."""
    os.makedirs(ckpt_dir, exist_ok=True)
    weights, state = checkpoint_paths(ckpt_dir, step)
    tmp = f"{state}.tmp.{os.getpid()}"
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp)
    os.replace(tmp, state)
    atomic_save_safetensors(model.state_dict(), weights, {**metadata, "step": str(step)})
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        for p in checkpoint_paths(ckpt_dir, old):
            if os.path.exists(p):
                os.remove(p)


def list_checkpoints(ckpt_dir: str):
    """Steps with both files present, ascending."""
    steps = []
    for p in glob.glob(os.path.join(ckpt_dir, "*.safetensors")):
        m = CKPT_RE.match(os.path.basename(p))
        if m and os.path.exists(checkpoint_paths(ckpt_dir, int(m.group(1)))[1]):
            steps.append(int(m.group(1)))
    return sorted(steps)


def resume_latest(ckpt_dir: str, model, optimizer) -> int:
    """Load the newest checkpoint (strictly) into model and optimizer; return its step, or 0 if there is none."""
    steps = list_checkpoints(ckpt_dir)
    if not steps:
        return 0
    weights, state = checkpoint_paths(ckpt_dir, steps[-1])
    load_model_weights(model, weights)
    optimizer.load_state_dict(torch.load(state, map_location="cpu", weights_only=True)["optimizer"])
    return steps[-1]

