"""The one decoding loop of RandAR: KV-cached, parallel decoding in any order, with (linear) CFG.

Cache layout: slots follow the training sequence [cls, q_1, x_1, ..., q_N, x_N]. A step that decodes tokens
a..b feeds their queries q_a..q_b side by side (causal among themselves) and reads one logit row per query.
The next step keeps q_a where it is and writes, from the following slot on, [x_a, q_(a+1), x_(a+1), ...,
q_b, x_b, new queries], overwriting the provisional q_(a+1)..q_b; so once every token is known the cache
holds exactly the teacher-forced sequence. This is the original release's scheme: its checkpoints'
reference outputs depend on it.

Applications reuse this loop by choosing the order, a prefix of known tokens, the RoPE table (a larger
grid for extrapolation) and the guidance (`Guidance`, below); they never copy it.
"""
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from RandAR.utils.seeding import splitmix64


# ---- the training sequence's layout, shared with the model's forward ----------------------------------------
def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, n, ...) and (B, n, ...) -> (B, 2n, ...) as a_1, b_1, a_2, b_2, ..."""
    return torch.stack([a, b], dim=2).flatten(1, 2)


# ---- drawing tokens: logits -> probabilities -> ids, stateless and free of host synchronisation -------------
# Randomness enters as uniform numbers (one per token to draw): torch's RNG, or `counter_uniform`, a hash of
# (per-image seed, counter) that makes every image's draws independent of the batch it is generated in.
def counter_uniform(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Deterministic uniforms in [0, 1): seeds (B,) int64, counters (n,) int64 -> (B, n) float32.

    The value for (seed, counter) never depends on which other rows or counters are in the call.
    """
    x = splitmix64(splitmix64(seeds.long()[:, None]) ^ counters.long()[None, :])
    return ((x >> 40) & ((1 << 24) - 1)).float() / float(1 << 24)  # top 24 bits (logical shift)


def top_k_top_p_filter(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the nucleus of mass top_p to -inf (last dim).

    top_k <= 0 and top_p >= 1 disable each filter. The nucleus keeps the smallest prefix of the sorted
    tokens whose probability reaches top_p (so the most likely token always stays).
    """
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = (cum - sorted_logits.softmax(-1)) > top_p  # mass before this token already exceeds top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    logits = logits.float() / max(temperature, 1e-5)
    return top_k_top_p_filter(logits, top_k, top_p).softmax(dim=-1)


def sample_from_probs(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: probs (..., V), uniform (...) in [0, 1) -> ids (...) long."""
    cdf = probs.cumsum(-1)
    u = uniform.unsqueeze(-1) * cdf[..., -1:]  # scale by the total so round-off never runs past the end
    idx = (cdf <= u).sum(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


# ---- guidance: which class ids each branch sees, and how the branches' logits combine -----------------------
# Every branch runs in the same batch (branches stacked along the batch axis). Class CFG has two branches
# [cond, null]; spatial CFG (resolution extrapolation) three; no guidance is one branch whose logits pass through.
@dataclass(frozen=True)
class Guidance:
    """branch_classes: per branch, (B,) class ids. combine(logits per branch (B, n, V), fraction of all tokens
    known before this step) -> (B, n, V). known_token_keep: per branch, None or a (B, K) 0/1 weight on the known
    tokens' embeddings (spatial CFG hides part of the context in one branch)."""
    branch_classes: List[torch.Tensor]
    combine: Callable[[List[torch.Tensor], float], torch.Tensor]
    known_token_keep: Optional[List[Optional[torch.Tensor]]] = None

    @property
    def uses_null_class(self) -> bool:
        return len(self.branch_classes) > 1


def linear_scale(scales: Sequence[float], fraction: float) -> float:
    """Scale that goes linearly from scales[0] (nothing decoded) to scales[-1] (everything decoded)."""
    return scales[0] + (scales[-1] - scales[0]) * fraction


def no_guidance(cond: torch.Tensor) -> Guidance:
    return Guidance([cond], lambda logits, fraction: logits[0])


def class_cfg(cond: torch.Tensor, cfg_scales: Sequence[float], null_class: int) -> Guidance:
    """Plain class CFG: [cond, null] combined as u + s * (c - u), s linear in the fraction decoded; as in the
    original, guidance is on when the *last* scale is > 1 (else no guidance)."""
    if cfg_scales[-1] <= 1.0:
        return no_guidance(cond)

    def combine(logits, fraction):
        c, u = logits
        return u + linear_scale(cfg_scales, fraction) * (c - u)
    return Guidance([cond, torch.full_like(cond, null_class)], combine)


# ---- the decoding loop ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeConfig:
    """How tokens are decoded: the one settings object every tool builds from its flags and `generate` reads.

    cfg_scales: class CFG scale, linear from the first value (nothing decoded) to the second (all decoded);
    guidance is off when the second is <= 1. num_inference_steps: parallel-decoding steps of the tokens to
    generate (None: the model's default; -1: one token per step). temperature, top_k (0: off), top_p (1.0:
    off): how each token is drawn from the guided logits.
    """
    cfg_scales: Tuple[float, float] = (1.0, 1.0)
    num_inference_steps: Optional[int] = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def valid_step_count(num_inference_steps: int) -> bool:
    """A parallel-decoding step count is -1 (one token per step) or at least 1."""
    return num_inference_steps == -1 or num_inference_steps >= 1


def parallel_decoding_schedule(num_tokens: int, num_inference_steps: int, num_known: int = 0) -> List[int]:
    """Tokens decoded at each step: one first, then a cosine ramp so that about `num_inference_steps` steps
    decode all `num_tokens` (-1 or num_tokens: one token per step). Equal to the original's bookkeeping,
    including its edge cases (1 step runs 2: one token, then the rest; more steps than tokens act as one
    token per step).

    num_known: tokens already known before the first step. The ramp then runs over all num_known + num_tokens
    tokens and counts the known ones as decoded (-1 = one step per token of that total), as the original's
    resolution extrapolation does: steps decode one token each until the ramp passes the known tokens."""
    if num_tokens <= 0:
        return []
    all_tokens = num_known + num_tokens
    if num_inference_steps is not None and not valid_step_count(num_inference_steps):
        raise ValueError(f"num_inference_steps must be -1 or >= 1, got {num_inference_steps}")
    total = all_tokens if num_inference_steps in (-1, None) else num_inference_steps
    counts, done = [1], num_known + 1
    while done < all_tokens:
        t = len(counts)
        target = min(int((1.0 - math.cos(math.pi / 2.0 * (t + 1) / total)) * all_tokens + 1), all_tokens)
        n = min(max(target - done, 1), all_tokens - done)
        counts.append(n)
        done += n
    return counts


def default_steps(model, num_inference_steps: Optional[int]) -> int:
    """The step count to use: the given one, or the model's default (its config's num_inference_steps)."""
    return model.num_inference_steps if num_inference_steps is None else num_inference_steps


STATIC_CHUNK = 16  # rows per static decode piece: one 88-step decode of 256 tokens needs at most 13


class CompiledDecoder:
    """The model's decode step through torch.compile, and the static KV caches it runs on: one set per
    (batch, length, dtype, device), kept between generate calls, because CUDA graphs replay on fixed addresses
    (also when calls alternate between two grids, as resolution extrapolation's do). The caller keeps it (a
    script builds one from --compile) and passes it to generate as `decoder`.

    backend: torch.compile's; the GPU check's CPU dry run passes "aot_eager" (dynamo and AOTAutograd as on the
    GPU, without inductor's minutes of C++ builds). mode: inductor's, by default CUDA graphs ("reduce-overhead")
    on CUDA, where per-step launch overhead dominates small batches, and "default" elsewhere.
    dynamic=False: one graph per batch size (the piece size and cache length are fixed), which the warm-up
    compiles; fullgraph=True: a graph break is an error, not a silent partial fallback to eager.
    """

    def __init__(self, model, backend: str = "inductor", mode: Optional[str] = None):
        if mode is None:
            mode = "reduce-overhead" if model.tok_embeddings.weight.device.type == "cuda" else "default"
        self.model = model
        options = {"mode": mode} if backend == "inductor" else {"backend": backend}
        self.step = torch.compile(model.decode_step, dynamic=False, fullgraph=True, **options)
        self.cuda_graphs = backend == "inductor" and mode == "reduce-overhead"
        self.caches = {}

    def setup_caches(self, batch: int, max_len: int, dtype, device):
        """Attach this shape's caches to the model's layers, allocated on first use."""
        key = (batch, max_len, dtype, torch.device(device))
        if key in self.caches:
            self.model.attach_caches(self.caches[key])
        else:
            self.caches[key] = self.model.setup_caches(batch, max_len, dtype, device)  # allocated and attached

    def __call__(self, x: torch.Tensor, freqs: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous call's outputs were consumed
        return self.step(x, freqs, pos)


def decode_in_pieces(step_fn, x: torch.Tensor, freqs: torch.Tensor, start: int, num_logits: int,
                     chunk: int) -> torch.Tensor:
    """A decode chunk x (nB, S, dim) for slots [start, start + S), fed through `step_fn` (the decode step)
    as ceil(S / chunk) pieces of `chunk` rows, the last zero-padded, one after the other (a piece attends to the
    ones before it through the cache). Returns the logits (nB, num_logits, V) of the last num_logits rows."""
    S = x.shape[1]
    pad = -S % chunk
    x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    freqs = torch.nn.functional.pad(freqs, (0, 0, 0, 0, 0, pad))
    first = S - num_logits
    out = []
    for lo in range(0, S, chunk):
        pos = torch.arange(start + lo, start + lo + chunk, device=x.device)
        logits = step_fn(x[:, lo:lo + chunk].contiguous(), freqs[:, lo:lo + chunk].contiguous(), pos)
        if lo + chunk > first:  # this piece holds query rows; copy them out (CUDA graphs reuse output memory)
            out.append(logits[:, max(first - lo, 0):min(S - lo, chunk)].clone())
    return torch.cat(out, dim=1)


def generate(model, cond: torch.Tensor, decode: DecodeConfig = DecodeConfig(),
             token_order: Optional[torch.Tensor] = None, guidance: Optional[Guidance] = None,
             known_tokens: Optional[torch.Tensor] = None, freqs_cis: Optional[torch.Tensor] = None,
             seeds: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
             tokens_per_step: Optional[Sequence[int]] = None,
             decoder: Optional[CompiledDecoder] = None) -> torch.Tensor:
    """Generate image tokens with a RandARTransformer: ids (B, N) in raster order.

    cond (B,) class ids. token_order (B, N) generation order per sample (a permutation of raster positions;
    drawn at random, or raster for a raster model, when None).
    decode: guidance scales, steps, temperature and filtering (DecodeConfig).
    guidance: the branches and how their logits combine (`Guidance`), for an application's own
        guidance; None: class CFG from decode.cfg_scales.
    known_tokens (B, K): ids already known at positions token_order[:, :K]; they enter the cache in one
        forward pass and are returned unchanged. The schedule spreads the N - K unknown tokens over
        decode.num_inference_steps steps; guidance scales follow the fraction of all N tokens known before a step.
    freqs_cis: RoPE table [cls + N, head_dim/2, 2] for another grid (resolution extrapolation).
    seeds (B,) int64: draw each sample's random numbers from its own seed (batch-independent); else torch's
        RNG / generator.
    tokens_per_step: the tokens each step decodes (positive, summing to N - K), instead of that schedule.
    decoder: run the steps after the prefill through this CompiledDecoder (same tokens up to float round-off);
        None: eager, with a KV cache allocated for this call only.
    """
    return _generate(model, cond, decode, token_order=token_order, guidance=guidance, known_tokens=known_tokens,
                     freqs_cis=freqs_cis, seeds=seeds, generator=generator, tokens_per_step=tokens_per_step,
                     decoder=decoder)


@torch.no_grad()
def _generate(model, cond: torch.Tensor, decode: DecodeConfig = DecodeConfig(),
              token_order: Optional[torch.Tensor] = None, guidance: Optional[Guidance] = None,
              known_tokens: Optional[torch.Tensor] = None, freqs_cis: Optional[torch.Tensor] = None,
              seeds: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
              tokens_per_step: Optional[Sequence[int]] = None, decoder: Optional[CompiledDecoder] = None,
              static_shapes: bool = False, chunk_size: int = STATIC_CHUNK, return_logits: bool = False):
    """generate, with the knobs of tests and benchmarks. static_shapes: after the prefill, feed every step as
    pieces of chunk_size rows attending to the whole cache (same results; what the decoder compiles, implied
    by it): one shape per batch size, whatever the step count. return_logits: also return the (B, N, V) logits
    each token was drawn from (generation order, after guidance, before temperature/top-k/top-p)."""
    device = cond.device
    B = cond.shape[0]
    if cond.ndim != 1:
        raise ValueError(f"cond must be (B,) class ids, got shape {tuple(cond.shape)}")
    if B and (int(cond.min()) < 0 or int(cond.max()) > model.num_classes):
        raise ValueError(f"class ids must be in [0, {model.num_classes - 1}] (or {model.num_classes} = null class); "
                         f"got range [{int(cond.min())}, {int(cond.max())}]")
    rope = (model.freqs_cis if freqs_cis is None else freqs_cis).to(device)
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

    guidance = class_cfg(cond, decode.cfg_scales, model.num_classes) if guidance is None else guidance
    # Checked where the settings enter (RandAR.sampling.inputs.check_for_model): this is the caller's bug.
    assert model.cls_embedding.has_null_class or not guidance.uses_null_class, \
        "guidance needs the null class, which this model (class_dropout_prob=0) does not have"
    n_branch = len(guidance.branch_classes)

    # Everything the loop feeds, precomputed for the whole order: (nB, N, ...) with branches stacked.
    dtype = model.tok_embeddings.weight.dtype
    token_freqs = rope[cls_n:][token_order]                                           # (B, N, hd/2, 2)
    queries = model.position_instruction_tokens(token_freqs).to(dtype)               # (B, N, dim)
    token_freqs = token_freqs.repeat(n_branch, 1, 1, 1)
    queries = queries.repeat(n_branch, 1, 1)
    cls_emb = model.cls_embedding(torch.cat(guidance.branch_classes), train=False)   # (nB, cls_n, dim)
    cls_freqs = rope[:cls_n].expand(n_branch * B, -1, -1, -1)

    result = torch.zeros(B, N, dtype=torch.long, device=device)                      # generation order
    step_logits = torch.zeros(B, N, model.vocab_size, device=device) if return_logits else None
    if tokens_per_step is None:
        counts = parallel_decoding_schedule(N - K, default_steps(model, decode.num_inference_steps))
    else:
        counts = [int(n) for n in tokens_per_step]
        if sum(counts) != N - K or min(counts, default=1) < 1:
            raise ValueError(f"tokens_per_step must be positive counts summing to the {N - K} unknown tokens; "
                             f"got {counts}")
    static_shapes = static_shapes or decoder is not None
    assert chunk_size >= 1, chunk_size
    decode_static = model.decode_step if decoder is None else decoder

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
        x.append(interleave(queries[:, :K], embed(known_tokens, guidance.known_token_keep)))
        f.append(interleave(token_freqs[:, :K], token_freqs[:, :K]))
        result[:, :K] = known_tokens
    x.append(queries[:, K:K + first])
    f.append(token_freqs[:, K:K + first])
    x, f, start = torch.cat(x, dim=1), torch.cat(f, dim=1), 0

    # Room for a padded piece past the last slot, on both paths (the decoder's caches are kept between calls).
    max_len = cls_n + 2 * N + chunk_size
    if decoder is None:
        model.setup_caches(n_branch * B, max_len, dtype, device)
    else:
        decoder.setup_caches(n_branch * B, max_len, dtype, device)
    try:
        a = K                                                                        # first token of this step
        for step, n in enumerate(counts):
            if static_shapes and step > 0:
                logits = decode_in_pieces(decode_static, x, f, start, n, chunk_size)
            else:
                pos = torch.arange(start, start + x.shape[1], device=device)
                logits = model.decode_step(x, f, pos, n)                             # (nB, n, V)
            logits = guidance.combine(list(logits.chunk(n_branch)), a / N)                    # (B, n, V)
            if seeds is not None:
                u = counter_uniform(seeds.to(device), torch.arange(a, a + n, device=device))
            else:
                u = torch.rand(B, n, device=device, generator=generator)
            ids = sample_from_probs(logits_to_probs(logits, decode.temperature, decode.top_k, decode.top_p), u)
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
        model.attach_caches(None)

    raster = torch.zeros_like(result).scatter_(1, token_order, result)
    return (raster, step_logits) if return_logits else raster
