"""RandAR: a decoder-only GPT over image tokens in random orders, guided by position instruction tokens.

Training sequence for N image tokens taken in an order o (a permutation of the raster positions):

    [class token(s), q_1, x_1, q_2, x_2, ..., q_N, x_N]

x_i is the embedding of the token at raster position o_i; q_i is the *position instruction token* of that
position: one learned vector, rotated per head by the 2-D RoPE of o_i. Both q_i and x_i carry the RoPE of o_i.
The logits read at q_i predict x_i, so the model is told *where* before it says *what*.

State-dict keys, shapes and numerics follow the official checkpoints. Generation lives in `generate.py`.
"""
import contextlib
import math
from dataclasses import fields
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from RandAR.model.generate import DecodeConfig, generate, interleave
from RandAR.model.orders import random_orders
from RandAR.model.rope import apply_rotary_emb, precompute_freqs_cis_2d


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()  # normalise in float32 whatever the activation dtype, as the checkpoints were trained
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU MLP; hidden size = find_multiple(int(ffn_dim_multiplier * int(8 * dim / 3)), multiple_of)."""

    def __init__(self, dim: int, ffn_dim_multiplier: Optional[float], multiple_of: int, ffn_dropout_p: float):
        super().__init__()
        hidden = int(2 * (4 * dim) / 3)
        if ffn_dim_multiplier is not None:
            hidden = int(ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(ffn_dropout_p)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of whole samples during training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class LabelEmbedder(nn.Module):
    """Class embedding; with class_dropout_prob > 0 it has one extra row (id num_classes) = the null class for CFG."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    @property
    def has_null_class(self) -> bool:
        return self.embedding_table.num_embeddings > self.num_classes

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        # labels: (B,) -> (B, 1, dim)
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)


class KVCache(nn.Module):
    """Keys/values of one layer: (B, n_kv_head, max_len, head_dim), allocated per generation call, or once per
    (batch, length) by a CompiledDecoder. Non-persistent buffers: never in the state dict, and torch.compile
    treats them as fixed addresses, which CUDA graphs need for a cache written in place.

    Slots are sequence indices (not RoPE positions): the caller writes each chunk at its slots.
    """

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, n_kv, S, hd) at slots pos (S,) and return the whole cache (fixed shapes, for
        torch.compile). k, v are cast to the cache's dtype (autocast computes them in bf16 while the cache has
        the weights' dtype)."""
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        return self.k, self.v


def attention_dtype(dtype, device) -> torch.dtype:
    """The dtype attention computes in: CPU's bfloat16 attention kernels run 2-3x slower than float32 (torch 2.x),
    so bf16 on CPU attends in float32; KV caches are stored in it (bf16 keys and values held exactly, no upcast of
    the whole cache at every step)."""
    return torch.float32 if torch.device(device).type == "cpu" and dtype == torch.bfloat16 else dtype


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: Optional[int], attn_dropout_p: float, resid_dropout_p: float):
        super().__init__()
        assert dim % n_head == 0, f"dim {dim} must be divisible by n_head {n_head}"
        self.dim, self.n_head = dim, n_head
        self.n_kv_head = n_kv_head or n_head
        assert n_head % self.n_kv_head == 0, f"n_head {n_head} must be a multiple of n_kv_head {self.n_kv_head}"
        self.head_dim = dim // n_head
        self.wqkv = nn.Linear(dim, (n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)
        self.kv_cache: Optional[KVCache] = None  # attached by RandARTransformer.setup_caches for generation

    def forward(self, x, freqs_cis, cache_pos=None, mask: Optional[torch.Tensor] = None):
        """x (B, S, dim), freqs_cis (B, S, head_dim/2, 2).

        cache_pos None: causal self-attention over x (training; a cache left from generation is ignored).
        Otherwise write this chunk's keys and values at slots `cache_pos` (S,) and attend to the whole cache
        under `mask` (S, slots).
        """
        B, S, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv, kv], dim=-1)
        q = apply_rotary_emb(q.view(B, S, self.n_head, self.head_dim), freqs_cis).transpose(1, 2)  # (B, H, S, hd)
        k = apply_rotary_emb(k.view(B, S, self.n_kv_head, self.head_dim), freqs_cis).transpose(1, 2)
        v = v.view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)
        causal = cache_pos is None
        if not causal:
            k, v = self.kv_cache.update(cache_pos, k, v)  # (B, n_kv, L, hd)
        if self.n_kv_head != self.n_head:  # grouped-query attention: share each kv head among n_head/n_kv queries
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        # Attend in float32 where attention_dtype says so (autocast off, or it would cast back); the projections
        # around it keep the bfloat16 speed-up.
        dtype = q.dtype
        upcast = attention_dtype(dtype, q.device) != dtype
        if upcast:
            q, k, v = q.float(), k.float(), v.float()
        with torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               dropout_p=self.attn_dropout_p if self.training else 0.0)
        y = y.to(dtype)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, S, self.dim)))


class TransformerBlock(nn.Module):
    def __init__(self, dim, n_head, n_kv_head, multiple_of, ffn_dim_multiplier, norm_eps,
                 attn_dropout_p, resid_dropout_p, ffn_dropout_p, drop_path):
        super().__init__()
        self.attention = Attention(dim, n_head, n_kv_head, attn_dropout_p, resid_dropout_p)
        self.feed_forward = FeedForward(dim, ffn_dim_multiplier, multiple_of, ffn_dropout_p)
        self.attention_norm = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, freqs_cis, cache_pos=None, mask=None):
        h = x + self.drop_path(self.attention(self.attention_norm(x), freqs_cis, cache_pos, mask))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class RandARTransformer(nn.Module):
    """The RandAR class-conditional GPT (constructor arguments = the `ar_model.params` of the official configs).

    The official configs' `caption_dim`, `max_batch_size`, `max_seq_len` and `zero_class_qk` are not arguments:
    reading a config drops them (RandAR.utils.compat). Text-to-image is not implemented, the KV cache is sized
    per generation call, and the class token's query and key are always zero (its RoPE rows are zero, and the
    checkpoints depend on that). `initializer_range` only affects initialisation. `num_inference_steps` is
    the default step count of `generate`. `position_order` ("random" or "raster") picks the training order
    when none is given.
    """

    def __init__(self, dim=4096, n_layer=32, n_head=32, n_kv_head=None, multiple_of=256, ffn_dim_multiplier=None,
                 rope_base=10000, norm_eps=1e-5, initializer_range=0.02, token_dropout_p=0.1, attn_dropout_p=0.0,
                 resid_dropout_p=0.1, ffn_dropout_p=0.1, drop_path_rate=0.0, num_classes=1000,
                 class_dropout_prob=0.1, model_type="c2i", vocab_size=16384, cls_token_num=1, block_size=256,
                 position_order="random", num_inference_steps=88, grad_checkpointing=True):
        super().__init__()
        if model_type != "c2i":
            raise NotImplementedError(f"model_type={model_type!r}: only class-conditional ('c2i') models are supported")
        if cls_token_num != 1:
            raise ValueError(f"cls_token_num={cls_token_num}: a class-conditional model uses exactly one class token")
        if position_order not in ("random", "raster"):
            raise ValueError(f"position_order={position_order!r}: expected 'random' or 'raster'")
        self.grid_size = math.isqrt(block_size)
        if self.grid_size ** 2 != block_size:
            raise ValueError(f"block_size={block_size} is not a square number of tokens")
        self.dim, self.n_layer, self.n_head = dim, n_layer, n_head
        self.n_kv_head = n_kv_head or n_head
        self.head_dim = dim // n_head
        self.rope_base = rope_base
        self.vocab_size, self.block_size, self.num_classes = vocab_size, block_size, num_classes
        self.cls_token_num = cls_token_num
        self.position_order = position_order
        self.num_inference_steps = num_inference_steps
        self.grad_checkpointing = grad_checkpointing
        self.initializer_range = initializer_range

        self.cls_embedding = LabelEmbedder(num_classes, dim, class_dropout_prob)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.tok_dropout = nn.Dropout(token_dropout_p)
        self.layers = nn.ModuleList(
            TransformerBlock(dim, n_head, n_kv_head, multiple_of, ffn_dim_multiplier, norm_eps, attn_dropout_p,
                             resid_dropout_p, ffn_dropout_p, drop_path_rate * i / max(n_layer - 1, 1))
            for i in range(n_layer))
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        self.pos_instruct_embeddings = nn.Parameter(torch.zeros(1, dim))
        # Plain attribute, not a buffer: it is not in the official state dict and must stay float32 when the
        # model is cast to bf16. `_apply` moves it with the parameters, so forward never moves or reassigns it.
        self.freqs_cis = precompute_freqs_cis_2d(self.grid_size, self.head_dim, rope_base, cls_token_num)
        self.initialize_weights()

    def initialize_weights(self):
        std = self.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
        nn.init.zeros_(self.output.weight)  # start from uniform predictions
        nn.init.normal_(self.pos_instruct_embeddings, mean=0.0, std=std)

    # ---- shared pieces -------------------------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        """Every .to()/.cuda()/.to_empty() passes here: move the RoPE table to the parameters' device, once,
        keeping it float32 (a bf16 cast of the model does not round it)."""
        super()._apply(fn, *args, **kwargs)
        device = self.pos_instruct_embeddings.device
        if self.freqs_cis.is_meta and device.type != "meta":  # built on the meta device: no values to move
            self.freqs_cis = precompute_freqs_cis_2d(self.grid_size, self.head_dim, self.rope_base, self.cls_token_num)
        self.freqs_cis = self.freqs_cis.to(device)
        return self

    def random_token_order(self, batch: int, device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, N) orders: one uniform random permutation per sample (drawn for the batch at once), or raster."""
        if self.position_order == "raster":
            return torch.arange(self.block_size, device=device).expand(batch, -1).contiguous()
        return random_orders(batch, self.block_size, device, generator)

    def position_instruction_tokens(self, token_freqs: torch.Tensor) -> torch.Tensor:
        """token_freqs (B, n, head_dim/2, 2), the RoPE of each target position -> (B, n, dim)."""
        B, n = token_freqs.shape[:2]
        q = self.pos_instruct_embeddings.view(1, 1, self.n_head, self.head_dim).expand(B, n, -1, -1)
        return apply_rotary_emb(q, token_freqs).reshape(B, n, self.dim)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(h)).float()

    # ---- training ------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, cond_idx: torch.Tensor, token_order: Optional[torch.Tensor] = None,
                targets: Optional[torch.Tensor] = None):
        """Teacher-forced pass.

        idx (B, N) token ids in raster order; cond_idx (B,) class ids (num_classes = null class);
        token_order (B, N) permutation per sample (drawn when None); targets (B, N) raster-order ids for the
        loss (usually idx).
        Returns (token_logits (B, N, V) in generation order, loss or None, token_order).
        """
        B = idx.shape[0]
        if token_order is None:
            token_order = self.random_token_order(B, idx.device)
        cond_emb = self.cls_embedding(cond_idx.reshape(B), train=self.training)       # (B, 1, dim)
        tokens = self.tok_dropout(self.tok_embeddings(idx.gather(1, token_order)))   # (B, N, dim)
        rope = self.freqs_cis.to(idx.device)  # no-op after model.to(device); a copy if a wrapper moved only params
        token_freqs = rope[self.cls_token_num:][token_order]                          # (B, N, hd/2, 2)
        h = torch.cat([cond_emb, interleave(self.position_instruction_tokens(token_freqs), tokens)], dim=1)
        freqs = torch.cat([rope[: self.cls_token_num].expand(B, -1, -1, -1), interleave(token_freqs, token_freqs)], dim=1)
        for layer in self.layers:
            if self.grad_checkpointing and self.training:
                h = checkpoint(layer, h, freqs, use_reentrant=False)
            else:
                h = layer(h, freqs)
        token_logits = self.logits(h[:, self.cls_token_num::2])                      # read at the q_i positions

        loss = None
        if targets is not None:
            ordered_targets = targets.gather(1, token_order)
            per_token = F.cross_entropy(token_logits.flatten(0, 1), ordered_targets.flatten(), reduction="none")
            loss = per_token.mean()
        return token_logits, loss, token_order

    # ---- generation ----------------------------------------------------------------------------------
    def setup_caches(self, batch: int, max_len: int, dtype, device) -> List[KVCache]:
        """New KV caches for `batch` sequences of up to `max_len` slots, one per layer, attached to the layers
        (where the decode step reads them); returned, so that a CompiledDecoder can keep and re-attach them.
        `dtype` is the activations'; the caches hold attention_dtype of it."""
        self.attach_caches(None)  # let the previous ones go before allocating
        dtype = attention_dtype(dtype, device)
        caches = [KVCache(batch, self.n_kv_head, max_len, self.head_dim, dtype, device) for _ in self.layers]
        self.attach_caches(caches)
        return caches

    def attach_caches(self, caches: Optional[List[KVCache]]):
        """Put one cache per layer on the layers; None takes them off (nothing of them stays in the model)."""
        for i, layer in enumerate(self.layers):
            layer.attention.kv_cache = None if caches is None else caches[i]

    def decode_step(self, x: torch.Tensor, freqs_cis: torch.Tensor, cache_pos: torch.Tensor,
                    num_logits: Optional[int] = None) -> torch.Tensor:
        """One cached forward of a chunk x (B, S, dim) written at slots cache_pos (S,), consecutive.

        Each row attends to its own slot and every earlier one, over the whole cache under a mask, so the shapes
        depend only on (B, S) and the cache: torch.compile (and CUDA graphs) build it once per batch when the
        decoding loop feeds fixed-size pieces (rows past the real chunk, zero-padded, write slots that nothing
        attends to before a later step overwrites them). Returns the logits (B, num_logits, V) of the last
        num_logits rows (the query tokens), or of all S rows when None.
        """
        slots = torch.arange(self.layers[0].attention.kv_cache.k.shape[2], device=x.device)
        mask = slots[None, :] <= cache_pos[:, None]                                    # (S, max_len)
        h = x
        for layer in self.layers:
            h = layer(h, freqs_cis, cache_pos, mask)
        return self.logits(h if num_logits is None else h[:, h.shape[1] - num_logits:])

    def generate(self, cond, token_order=None, cfg_scales=(1.0, 1.0), **kwargs):
        """The original release's API: sample token ids (B, block_size) in raster order with class CFG from
        cfg_scales; DecodeConfig's other fields (num_inference_steps, temperature, ...) by name, and
        `RandAR.model.generate.generate`'s other arguments."""
        names = {f.name for f in fields(DecodeConfig)}
        decode = DecodeConfig(**{k: kwargs.pop(k) for k in list(kwargs) if k in names}, cfg_scales=tuple(cfg_scales))
        return generate(self, cond, decode, token_order=token_order, **kwargs)
