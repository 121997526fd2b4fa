"""LlamaGen's VQ tokenizer (VQ-16: 16x downsampling, 16384 codes of dimension 8, l2-normalised codes).

A convolutional encoder with self-attention at the lowest resolution maps an image to a grid of
`z_channels` features; a 1x1 conv projects them to `codebook_embed_dim`; each vector is replaced by its
nearest codebook entry (cosine similarity, since both sides are l2-normalised); a mirrored decoder maps the
codes back to pixels. Module names and shapes follow the official checkpoint `vq_ds16_c2i.pt`.
"""
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from RandAR.model.tokenizers import code_grid, resize_square, to_uint8_hwc

USAGE_WINDOW = 65536  # length of the rolling record of recent codes kept in `codebook_used` (official size)


class VQLosses(NamedTuple):
    """Quantizer losses, in LlamaGen's order (trainers sum the first three)."""
    vq_loss: torch.Tensor          # pulls the codes towards the encoder outputs
    commit_loss: torch.Tensor      # beta * pulls the encoder outputs towards their codes
    entropy_loss: torch.Tensor     # ratio * (per-vector entropy - batch entropy) of the code assignment
    codebook_usage: float          # fraction of codes seen in the last USAGE_WINDOW assignments (training only)


def entropy_loss(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """affinity [N, n_codes] (negative distances). Low when each vector picks one code confidently
    while the batch as a whole spreads over many codes."""
    logits = affinity / temperature
    probs = logits.softmax(-1)
    per_vector = -(probs * logits.log_softmax(-1)).sum(-1).mean()
    mean_probs = probs.mean(0)
    batch = -(mean_probs * torch.log(mean_probs + 1e-5)).sum()
    return per_vector - batch


def swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv twice, plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # Identity has no weights, so the checkpoint holds `nin_shortcut` only where the width changes.
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all cells of the feature map, with a residual."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))  # (B, 1, hw, C)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, 1, hw, C), softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(y[:, 0].transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom only, so H/2 x W/2 comes out exactly


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each followed by attention at the
    lowest resolution, then an optional resampling (named `downsample` or `upsample`, as in the checkpoint)."""

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, attn: bool, resample: Optional[str],
                 dropout: float, groups: int):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(in_ch if i == 0 else out_ch, out_ch, dropout, groups)
                                 for i in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(out_ch, groups) for _ in range(n_blocks if attn else 0))
        self.resample_name = resample
        if resample == "downsample":
            self.downsample = Downsample(out_ch)
        elif resample == "upsample":
            self.upsample = Upsample(out_ch)

    def forward(self, h):
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return getattr(self, self.resample_name)(h) if self.resample_name else h


def middle(ch: int, dropout: float, groups: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(ch, ch, dropout, groups), AttnBlock(ch, groups),
                          ResnetBlock(ch, ch, dropout, groups)])


class Encoder(nn.Module):
    """[B, 3, H, W] -> [B, z_channels, H / 2**(L-1), W / 2**(L-1)] for L = len(ch_mult)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, dropout: float,
                 groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        widths = [ch] + [ch * m for m in ch_mult]
        last = len(ch_mult) - 1
        self.conv_blocks = nn.ModuleList(
            Level(widths[i], widths[i + 1], num_res_blocks, attn=i == last,
                  resample=None if i == last else "downsample", dropout=dropout, groups=groups)
            for i in range(len(ch_mult)))
        self.mid = middle(widths[-1], dropout, groups)
        self.norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> [B, 3, h * 2**(L-1), w * 2**(L-1)]. Levels run from the widest (lowest
    resolution, with attention) to the first; each has one more residual block than the encoder's."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, dropout: float,
                 groups: int):
        super().__init__()
        widths = [ch * m for m in reversed(ch_mult)]  # level order of the forward pass
        last = len(ch_mult) - 1
        self.conv_in = nn.Conv2d(z_channels, widths[0], 3, padding=1)
        self.mid = middle(widths[0], dropout, groups)
        self.conv_blocks = nn.ModuleList(
            Level(widths[max(i - 1, 0)], widths[i], num_res_blocks + 1, attn=i == 0,
                  resample=None if i == last else "upsample", dropout=dropout, groups=groups)
            for i in range(len(ch_mult)))
        self.norm_out = nn.GroupNorm(groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    @property
    def last_layer(self):
        return self.conv_out.weight  # for the adaptive GAN weight of LlamaGen-style tokenizer training

    def forward(self, z):
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with a straight-through gradient.

    With `l2_norm` both the inputs and the codebook are l2-normalised first (nearest = highest cosine
    similarity), and the returned codes are the normalised ones.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float, entropy_loss_ratio: float, l2_norm: bool, show_usage: bool):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.entropy_loss_ratio, self.l2_norm, self.show_usage = entropy_loss_ratio, l2_norm, show_usage
        self.embedding = nn.Embedding(n_e, e_dim)
        if show_usage:
            # Rolling record of recently assigned codes (as floats, as in the checkpoint); never read at inference.
            self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)
            if self.l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight  # (n_e, e_dim)
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def lookup(self, z: torch.Tensor):
        """z (B, C, h, w) -> z as (B, h, w, C) (normalised if l2_norm), distances (B*h*w, n_e), indices (B*h*w,)."""
        z = z.permute(0, 2, 3, 1)
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        flat = z.reshape(-1, self.e_dim)
        e = self.codebook()
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()  # |z - e|^2
        return z, d, d.argmin(1)

    def forward(self, z: torch.Tensor):
        """z (B, C, h, w) -> (z_q (B, C, h, w) straight-through, VQLosses, (None, None, indices (B*h*w,))).
        Always float32, also under autocast: bfloat16 distances would pick wrong codes for close pairs."""
        with torch.autocast(z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor):
        z, d, idx = self.lookup(z)
        z_q = self.codebook()[idx].view(z.shape)  # (B, h, w, C)
        vq_loss = torch.mean((z_q - z.detach()) ** 2)
        commit_loss = self.beta * torch.mean((z_q.detach() - z) ** 2)
        ent = self.entropy_loss_ratio * entropy_loss(-d) if self.entropy_loss_ratio > 0 else vq_loss.new_zeros(())
        usage = 0.0
        if self.show_usage and self.training:
            with torch.no_grad():
                self.codebook_used.copy_(torch.cat([self.codebook_used, idx.float()])[-USAGE_WINDOW:])
                usage = torch.unique(self.codebook_used).numel() / self.n_e
        z_q = z + (z_q - z).detach()  # forward value = code, gradient flows to the encoder
        # The two Nones stand for LlamaGen's (perplexity, one-hot encodings), which it never computes.
        return z_q.permute(0, 3, 1, 2), VQLosses(vq_loss, commit_loss, ent, usage), (None, None, idx)

    def get_codebook_entry(self, indices: torch.Tensor, shape=None, channel_first: bool = True) -> torch.Tensor:
        """indices (any shape) -> code vectors (*indices.shape, C); reshaped to `shape` = (B, C, h, w) if
        channel_first else (B, h, w, C)."""
        z_q = self.codebook()[indices]
        if shape is None:
            return z_q
        if channel_first:
            b, c, h, w = shape
            return z_q.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return z_q.reshape(shape)


class VQModel(nn.Module):
    """LlamaGen VQ tokenizer. Input images are in [-1, 1] (`pixel_range`); use `preprocess` on [0, 1] images.

    Constructor arguments are the official config's (configs/tokenization/llamagen.yaml), plus
    `base_channels`, `num_res_blocks` and `norm_groups`, which the original fixes at 128, 2 and 32.
    """

    pixel_range = (-1.0, 1.0)

    def __init__(self, codebook_size: int = 16384, codebook_embed_dim: int = 8, codebook_l2_norm: bool = True,
                 codebook_show_usage: bool = True, commit_loss_beta: float = 0.25, entropy_loss_ratio: float = 0.0,
                 encoder_ch_mult: Sequence[int] = (1, 1, 2, 2, 4), decoder_ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                 z_channels: int = 256, dropout_p: float = 0.0,
                 base_channels: int = 128, num_res_blocks: int = 2, norm_groups: int = 32):
        super().__init__()
        assert len(encoder_ch_mult) == len(decoder_ch_mult), \
            f"encoder and decoder need as many levels: {list(encoder_ch_mult)} vs {list(decoder_ch_mult)}"
        self.encoder = Encoder(base_channels, encoder_ch_mult, num_res_blocks, z_channels, dropout_p, norm_groups)
        self.decoder = Decoder(base_channels, decoder_ch_mult, num_res_blocks, z_channels, dropout_p, norm_groups)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim, commit_loss_beta, entropy_loss_ratio,
                                        codebook_l2_norm, codebook_show_usage)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)
        self.codebook_size = codebook_size
        self.codebook_embed_dim = codebook_embed_dim
        self.downsample_factor = 2 ** (len(encoder_ch_mult) - 1)

    def preprocess(self, images_01: torch.Tensor) -> torch.Tensor:
        return images_01 * 2.0 - 1.0

    def encode(self, x):
        """x (B, 3, H, W) in [-1, 1] -> (quant (B, C, h, w) straight-through, VQLosses,
        (None, None, indices (B*h*w,))): the original's layout, indices flattened over the batch."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant):
        """quant (B, C, h, w) -> images (B, 3, H, W), roughly in [-1, 1], not clamped."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b, shape=None, channel_first: bool = True):
        """Codes -> images; `shape` = (B, C, h, w) of the code grid (see VectorQuantizer.get_codebook_entry)."""
        return self.decode(self.quantize.get_codebook_entry(code_b, shape, channel_first))

    def forward(self, x):
        """Training step: x (B, 3, H, W) -> (reconstruction (B, 3, H, W), VQLosses). The reconstruction is decoded
        from the straight-through codes, so a pixel loss on it trains the encoder too; the caller adds it."""
        quant, losses, _ = self.encode(x)
        return self.decode(quant), losses

    @torch.no_grad()
    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> codes LongTensor (B, h*w), raster order per image.
        (The original returned them flattened over the batch; this does not touch `codebook_used`.)"""
        _, _, idx = self.quantize.lookup(self.quant_conv(self.encoder(images)))
        return idx.view(images.shape[0], -1)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h*w) square or (B, h, w) -> float images (B, 3, H, W) in about [-1, 1], not clamped."""
        codes, h, w = code_grid(codes, self.codebook_size)
        return self.decode_code(codes, (codes.shape[0], self.codebook_embed_dim, h, w))

    @torch.no_grad()
    def decode_codes_to_img(self, codes: torch.Tensor, image_size: int):
        """codes -> uint8 numpy (B, image_size, image_size, 3): bicubic resize of the float output if needed,
        then (x + 1) * 127.5 rounded half up, as LlamaGen does (truncating cast of x * 127.5 + 128)."""
        return to_uint8_hwc(resize_square(self.decode_codes(codes), image_size) * 127.5 + 128)
