"""The MaskGIT VQGAN tokenizer (16x downsampling, 1024 codes of dimension 256), as RandAR uses it.

Encoder: bias-free residual conv blocks with average-pool downsampling, no attention; the encoder output is
quantized directly (no projection), by plain squared distance to the codebook. Decoder: the mirror image,
with nearest-neighbour upsampling followed by a conv. Module names and shapes follow the official weights.
"""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from RandAR.model.tokenizers import code_grid, resize_square, to_uint8_hwc

GROUPS = 32  # GroupNorm groups, fixed by the original


def conv(in_ch: int, out_ch: int, k: int, bias: bool = True) -> nn.Conv2d:
    # The original pads "same" by hand; for stride 1 and an odd kernel that is k // 2 on every side.
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2, bias=bias)


def norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, ch, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a residual.

    Where the width changes, the original cannot add the input; instead it adds a 1x1 conv of the block's
    own output (`nin_shortcut`, out -> out), so such a block returns h + W h. The weights were trained that way.
    """

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.norm1 = norm(in_ch)
        self.conv1 = conv(in_ch, out_ch, 3, bias=False)
        self.norm2 = norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_ch, out_ch, 3, bias=False)
        self.changes_width = in_ch != out_ch
        if self.changes_width:
            self.nin_shortcut = conv(out_ch, out_ch, 1, bias=False)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + (self.nin_shortcut(h) if self.changes_width else x)


def res_blocks(in_ch: int, out_ch: int, n: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, dropout) for i in range(n))


class DownLevel(nn.Module):
    """Residual blocks, then a 2x2 average pool unless this is the lowest resolution."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, dropout: float, downsample: bool):
        super().__init__()
        self.block = res_blocks(in_ch, out_ch, n_blocks, dropout)
        self.downsample = downsample

    def forward(self, h):
        for block in self.block:
            h = block(h)
        return F.avg_pool2d(h, 2) if self.downsample else h


class UpLevel(nn.Module):
    """Residual blocks, then 2x nearest upsampling and a conv unless this is the full resolution."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, dropout: float, upsample: bool):
        super().__init__()
        self.block = res_blocks(in_ch, out_ch, n_blocks, dropout)
        self.upsample = upsample
        if upsample:
            self.upsample_conv = conv(out_ch, out_ch, 3)

    def forward(self, h):
        for block in self.block:
            h = block(h)
        if self.upsample:
            h = self.upsample_conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h


class Encoder(nn.Module):
    """[B, C_img, H, W] -> [B, z_channels, H / 2**(L-1), W / 2**(L-1)], L = len(channel_mult)."""

    def __init__(self, num_channels: int, hidden: int, channel_mult: Sequence[int], num_res_blocks: int,
                 z_channels: int, dropout: float):
        super().__init__()
        widths = [hidden] + [hidden * m for m in channel_mult]
        last = len(channel_mult) - 1
        self.conv_in = conv(num_channels, hidden, 3, bias=False)
        self.down = nn.ModuleList(DownLevel(widths[i], widths[i + 1], num_res_blocks, dropout, downsample=i != last)
                                  for i in range(len(channel_mult)))
        self.mid = res_blocks(widths[-1], widths[-1], num_res_blocks, dropout)
        self.norm_out = norm(widths[-1])
        self.conv_out = conv(widths[-1], z_channels, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, C_img, h * 2**(L-1), w * 2**(L-1)]. `up[i]` works at the resolution of
    encoder level i (the checkpoint's numbering), so the forward pass runs `up` backwards."""

    def __init__(self, num_channels: int, hidden: int, channel_mult: Sequence[int], num_res_blocks: int,
                 z_channels: int, dropout: float):
        super().__init__()
        widths = [hidden * m for m in channel_mult] + [hidden * channel_mult[-1]]  # widths[i + 1]: input of up[i]
        self.conv_in = conv(z_channels, widths[-1], 3)
        self.mid = res_blocks(widths[-1], widths[-1], num_res_blocks, dropout)
        self.up = nn.ModuleList(UpLevel(widths[i + 1], widths[i], num_res_blocks, dropout, upsample=i != 0)
                                for i in range(len(channel_mult)))
        self.norm_out = norm(widths[0])
        self.conv_out = conv(widths[0], num_channels, 3)

    def forward(self, z):
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest code by squared euclidean distance (no normalisation), with a straight-through gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.commitment_cost = num_embeddings, embedding_dim, commitment_cost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, h, w) -> indices (B, h*w), raster order."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.embedding_dim)
        e = self.embedding.weight  # (n, C)
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()  # |z - e|^2, (B*h*w, n)
        return d.argmin(1).view(z.shape[0], -1)

    def forward(self, z: torch.Tensor):
        """z (B, C, h, w) -> (z_q (B, C, h, w) straight-through, indices (B, h*w), loss)."""
        idx = self.nearest(z)
        z_q = self.get_codebook_entry(idx.view(z.shape[0], *z.shape[2:]))
        # As in the original: the commitment weight sits on the codebook term, the encoder term has weight 1.
        loss = torch.mean((z_q.detach() - z) ** 2) + self.commitment_cost * torch.mean((z_q - z.detach()) ** 2)
        return z + (z_q - z).detach(), idx, loss

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, h*w) square or (B, h, w) -> code vectors (B, C, h, w)."""
        flat, h, w = code_grid(indices, self.embedding.num_embeddings)
        return self.embedding(flat).view(flat.shape[0], h, w, -1).permute(0, 3, 1, 2)


class MaskGITTokenizer(nn.Module):
    """MaskGIT VQGAN. Input images are in [0, 1] (`pixel_range`); `preprocess` leaves [0, 1] images as they are.

    Constructor arguments are the official config's (configs/tokenization/maskgit.yaml). `num_resolutions`
    must equal len(channel_mult) and `z_channels` must equal `embedding_dim` (the latent is quantized as is);
    `resolution` is accepted for config compatibility and has no effect.
    """

    pixel_range = (0.0, 1.0)

    def __init__(self, channel_mult: Sequence[int] = (1, 1, 2, 2, 4), num_resolutions: int = 5, dropout: float = 0.0,
                 hidden_channels: int = 128, num_channels: int = 3, num_res_blocks: int = 2, resolution: int = 256,
                 z_channels: int = 256, num_embeddings: int = 1024, embedding_dim: int = 256,
                 commitment_cost: float = 0.25):
        super().__init__()
        assert num_resolutions == len(channel_mult), f"num_resolutions {num_resolutions} != len({list(channel_mult)})"
        assert z_channels == embedding_dim, f"z_channels {z_channels} must equal embedding_dim {embedding_dim}"
        self.encoder = Encoder(num_channels, hidden_channels, channel_mult, num_res_blocks, z_channels, dropout)
        self.decoder = Decoder(num_channels, hidden_channels, channel_mult, num_res_blocks, z_channels, dropout)
        self.quantize = VectorQuantizer(num_embeddings, embedding_dim, commitment_cost)
        self.codebook_size = num_embeddings
        self.downsample_factor = 2 ** (num_resolutions - 1)

    def preprocess(self, images_01: torch.Tensor) -> torch.Tensor:
        return images_01

    def encode(self, x):
        """x (B, 3, H, W) in [0, 1] -> (quant (B, C, h, w) straight-through, indices (B, h*w), loss)."""
        return self.quantize(self.encoder(x))

    def forward(self, x):
        """Training step: x -> (reconstruction (B, 3, H, W), loss). The reconstruction is unclamped and decoded
        from the straight-through codes, so a pixel loss on it trains the encoder too; the caller adds it."""
        quant, _, loss = self.encode(x)
        return self.decoder(quant), loss

    @torch.no_grad()
    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> codes LongTensor (B, h*w), raster order per image."""
        return self.quantize.nearest(self.encoder(images))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h*w) square or (B, h, w) -> images (B, 3, H, W) clamped to [0, 1]."""
        return self.decoder(self.quantize.get_codebook_entry(codes)).clamp(0.0, 1.0)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(codes)

    @torch.no_grad()
    def decode_codes_to_img(self, codes: torch.Tensor, image_size: int):
        """codes -> uint8 numpy (B, image_size, image_size, 3): bicubic resize of the clamped float output if
        needed, then x * 255 rounded down, as the original does."""
        return to_uint8_hwc(resize_square(self.decode(codes), image_size) * 255)
