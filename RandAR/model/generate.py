"""The one decoding loop of RandAR: KV-cached, parallel decoding in any order, with (linear) CFG.

Cache layout: slots follow the training sequence [cls, q_1, x_1, ..., q_N, x_N]. A step that decodes tokens
a..b feeds their queries q_a..q_b side by side (causal among themselves) and reads one logit row per query.
The next step keeps q_a where it is and writes, from the following slot on, [x_a, q_(a+1), x_(a+1), ...,
q_b, x_b, new queries], overwriting the provisional q_(a+1)..q_b; so once every token is known the cache
holds exactly the teacher-forced sequence. This is the original release's scheme: its checkpoints'
reference outputs depend on it.

Applications reuse this loop by choosing the order, a prefix of known tokens, the RoPE table (a larger
grid for extrapolation) and extra guidance branches; they never copy it.
"""
import math
from typing import Callable, List, Optional, Sequence

import torch

from RandAR.model.randar_gpt import interleave
from RandAR.model.sampling import counter_uniform, logits_to_probs, sample_from_probs


def parallel_decoding_schedule(num_tokens: int, num_inference_steps: int) -> List[int]:
    """Tokens decoded at each step: one first, then a cosine ramp so that about `num_inference_steps` steps
    decode all `num_tokens` (-1 or num_tokens: one token per step). Equal to the original's bookkeeping,
    including its edge cases (1 step runs 2: one token, then the rest; more steps than tokens act as one
    token per step)."""
    if num_tokens <= 0:
        return []
    total = num_tokens if num_inference_steps in (-1, None) else num_inference_steps
    if total < 1:
        raise ValueError(f"num_inference_steps must be -1 or >= 1, got {num_inference_steps}")
    counts, done = [1], 1
    while done < num_tokens:
        t = len(counts)
        target = min(int((1.0 - math.cos(math.pi / 2.0 * (t + 1) / total)) * num_tokens + 1), num_tokens)
        n = min(max(target - done, 1), num_tokens - done)
        counts.append(n)
        done += n
    return counts


def linear_scale(scales: Sequence[float], fraction: float) -> float:
    """Scale that goes linearly from scales[0] (nothing decoded) to scales[-1] (everything decoded)."""
    return scales[0] + (scales[-1] - scales[0]) * fraction


def class_cfg_branches(cond: torch.Tensor, cfg_scales: Sequence[float], null_class: int):
    """Guidance branches for plain class CFG: [cond] without guidance, [cond, null] with it.

    As in the original, guidance is on when the *last* scale is > 1.
    """
    if cfg_scales[-1] > 1.0:
        def combine(logits, fraction):
            c, u = logits
            return u + linear_scale(cfg_scales, fraction) * (c - u)
        return [cond, torch.full_like(cond, null_class)], combine
    return [cond], lambda logits, fraction: logits[0]


def _compiled_decode_step(model):
    """torch.compile of the model's static decode step, built once per model and reused across calls."""
    if getattr(model, "_compiled_decode_step", None) is None:
        model._compiled_decode_step = torch.compile(model.decode_step_static, dynamic=False)
    return model._compiled_decode_step


@torch.no_grad()
def generate(model, cond: torch.Tensor, token_order: Optional[torch.Tensor] = None,
             cfg_scales: Sequence[float] = (1.0, 1.0), num_inference_steps: int = 88, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, known_tokens: Optional[torch.Tensor] = None,
             freqs_cis: Optional[torch.Tensor] = None, branch_classes: Optional[List[torch.Tensor]] = None,
             combine: Optional[Callable] = None, known_token_keep: Optional[List[Optional[torch.Tensor]]] = None,
             seeds: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
             static_shapes: bool = False, compile: bool = False, return_logits: bool = False):
    """Generate image tokens with a RandARTransformer.

    cond (B,) class ids. token_order (B, N) generation order per sample (a permutation of raster positions;
    drawn at random, or raster for a raster model, when None). Returns ids (B, N) in raster order, and with
    return_logits also the (B, N, V) logits each token was drawn from (generation order, after guidance,
    before temperature/top-k/top-p).

    known_tokens (B, K): ids already known at positions token_order[:, :K]; they enter the cache in one
        forward pass and are returned unchanged. The schedule spreads the N - K unknown tokens over
        num_inference_steps steps; guidance scales follow the fraction of all N tokens known before a step.
    freqs_cis: RoPE table [cls + N, head_dim/2, 2] for another grid (resolution extrapolation).
    branch_classes / combine: guidance branches (class ids per branch, stacked into one batch) and the
        function (list of per-branch logits, fraction) -> logits. Default: class CFG from cfg_scales.
    known_token_keep: per branch, an optional (B, K) 0/1 weight on the known tokens' embeddings (spatial CFG
        hides part of the context in one branch).
    seeds (B,) int64: draw each sample's random numbers from its own seed (batch-independent); else torch's
        RNG / generator.
    static_shapes: after the prefill, feed every step as a chunk of one fixed size attending to the whole
        cache (same results); compile: also run those steps through torch.compile (implies static_shapes;
        meant for CUDA, where per-step overhead dominates small batches).
    """
    device = cond.device
    B = cond.shape[0]
    if cond.ndim != 1:
        raise ValueError(f"cond must be (B,) class ids, got shape {tuple(cond.shape)}")
    if B and (int(cond.min()) < 0 or int(cond.max()) > model.num_classes):
        raise ValueError(f"class ids must be in [0, {model.num_classes - 1}] (or {model.num_classes} = null class); "
                         f"got range [{int(cond.min())}, {int(cond.max())}]")
    rope = model.rope_table(device) if freqs_cis is None else freqs_cis.to(device)
    cls_n = model.cls_token_num
    N = rope.shape[0] - cls_n
    if token_order is None:
        if N != model.block_size:
            raise ValueError("pass token_order when generating on a grid other than the model's")
        token_order = model.random_token_order(B, device, generator)
    token_order = token_order.to(device)
    if token_order.shape != (B, N) or not torch.equal(token_order.sort(dim=1).values,
                                                      torch.arange(N, device=device).expand(B, N)):
        raise ValueError(f"token_order must hold one permutation of 0..{N - 1} per sample, shape ({B}, {N}); "
                         f"got shape {tuple(token_order.shape)}")
    K = 0 if known_tokens is None else known_tokens.shape[1]
    if K:
        if known_tokens.shape[0] != B or K > N:
            raise ValueError(f"known_tokens must be (B, K<=N) = ({B}, <= {N}); got {tuple(known_tokens.shape)}")
        if int(known_tokens.min()) < 0 or int(known_tokens.max()) >= model.vocab_size:
            raise ValueError(f"known token ids must be in [0, {model.vocab_size - 1}]")

    if branch_classes is None:
        branch_classes, combine = class_cfg_branches(cond, cfg_scales, model.num_classes)
    n_branch = len(branch_classes)
    if n_branch > 1 and not model.cls_embedding.has_null_class:
        raise ValueError("classifier-free guidance needs the null-class embedding row, but this model was built "
                         "with class_dropout_prob=0 (no null class). Use cfg_scales=(1.0, 1.0).")

    # Everything the loop feeds, precomputed for the whole order: (nB, N, ...) with branches stacked.
    dtype = model.tok_embeddings.weight.dtype
    token_freqs = rope[cls_n:][token_order]                                           # (B, N, hd/2, 2)
    queries = model.position_instruction_tokens(token_freqs).to(dtype)               # (B, N, dim)
    token_freqs = token_freqs.repeat(n_branch, 1, 1, 1)
    queries = queries.repeat(n_branch, 1, 1)
    cls_emb = model.cls_embedding(torch.cat(branch_classes), train=False)            # (nB, cls_n, dim)
    cls_freqs = rope[:cls_n].expand(n_branch * B, -1, -1, -1)

    result = torch.zeros(B, N, dtype=torch.long, device=device)                      # generation order
    step_logits = torch.zeros(B, N, model.vocab_size, device=device) if return_logits else None
    counts = parallel_decoding_schedule(N - K, num_inference_steps)
    static_shapes = static_shapes or compile
    # Largest decode chunk ([x_a, q_(a+1), ..., x_b, next queries]) and query count, for static shapes.
    s_max = max([2 * counts[i - 1] - 1 + counts[i] for i in range(1, len(counts))], default=1)
    n_max = max(counts[1:], default=1)
    decode_static = _compiled_decode_step(model) if compile else model.decode_step_static

    def embed(ids, keep=None):                                                       # (B, n) -> (nB, n, dim)
        e = model.tok_embeddings(ids)
        if keep is None:
            return e.repeat(n_branch, 1, 1)
        return torch.cat([e if w is None else e * w.unsqueeze(-1).to(e.dtype) for w in keep])

    # Prefill: class token(s), the known tokens with their queries, and the first step's queries.
    first = counts[0] if counts else 0
    x = [cls_emb]
    f = [cls_freqs]
    if K:
        x.append(interleave(queries[:, :K], embed(known_tokens, known_token_keep)))
        f.append(interleave(token_freqs[:, :K], token_freqs[:, :K]))
        result[:, :K] = known_tokens
    x.append(queries[:, K:K + first])
    f.append(token_freqs[:, K:K + first])
    x, f, start = torch.cat(x, dim=1), torch.cat(f, dim=1), 0

    model.setup_caches(n_branch * B, cls_n + 2 * N + (s_max if static_shapes else 0), dtype, device)
    try:
        a = K                                                                        # first token of this step
        for step, n in enumerate(counts):
            if static_shapes and step > 0:
                L = x.shape[1]
                x = torch.nn.functional.pad(x, (0, 0, 0, s_max - L))
                f = torch.nn.functional.pad(f, (0, 0, 0, 0, 0, s_max - L))
                rows = (torch.arange(n_max, device=device) + (L - n)).clamp_max(L - 1)  # the n query rows
                logits = decode_static(x, f, torch.arange(start, start + s_max, device=device), rows)[:, :n]
            else:
                logits = model.decode_step(x, f, start, n)                           # (nB, n, V)
            logits = combine(list(logits.chunk(n_branch)), a / N)                    # (B, n, V)
            if seeds is not None:
                u = counter_uniform(seeds.to(device), torch.arange(a, a + n, device=device))
            else:
                u = torch.rand(B, n, device=device, generator=generator)
            ids = sample_from_probs(logits_to_probs(logits, temperature, top_k, top_p), u)
            result[:, a:a + n] = ids
            if return_logits:
                step_logits[:, a:a + n] = logits
            if step + 1 == len(counts):
                break
            # Next chunk: [x_a, q_(a+1), x_(a+1), ..., q_b, x_b, next queries], written after q_a's slot.
            b = a + n
            nxt = counts[step + 1]
            tf = interleave(queries[:, a:b], embed(ids))[:, 1:]
            tf_freqs = interleave(token_freqs[:, a:b], token_freqs[:, a:b])[:, 1:]
            x = torch.cat([tf, queries[:, b:b + nxt]], dim=1)
            f = torch.cat([tf_freqs, token_freqs[:, b:b + nxt]], dim=1)
            start = cls_n + 2 * a + 1                                                # q_a sits at slot cls_n + 2a
            a = b
    finally:
        model.remove_caches()

    raster = torch.zeros_like(result).scatter_(1, token_order, result)
    return (raster, step_logits) if return_logits else raster
