"""One optimizer step of train_c2i.py, in pieces: the optimizer, forward/backward of a micro-batch, clipping and the
decision to skip an update (on the device, one host sync per step)."""
import math

import torch

try:
    from torch.distributed.tensor import DTensor, Partial
except ImportError:  # torch < 2.5 (no FSDP2 there: gradients are never DTensors)
    from torch.distributed._tensor import DTensor
    Partial = None


def build_optimizer(model, opt_cfg, fused: bool):
    """AdamW; weight decay only on tensors of 2 or more dimensions (matmul weights, embeddings)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": opt_cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=(opt_cfg.beta1, opt_cfg.beta2), fused=fused)


SKIP_RULES = ("sum_clipped", "global_norm")


def skip_rule(opt_cfg) -> str:
    """optimizer.skip_grad_rule: "sum_clipped" (the original release's, the default) or "global_norm"; a ValueError
    for anything else (train_c2i.py checks it at start-up, RandAR.training.setup.check_inputs)."""
    rule = str(opt_cfg.get("skip_grad_rule", "sum_clipped"))
    if rule not in SKIP_RULES:
        raise ValueError(f"optimizer.skip_grad_rule: {rule!r} is not one of {', '.join(SKIP_RULES)}")
    return rule


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (what FSDP2 hands out) as the plain tensor it stands for; other tensors as they are."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def sum_of_grad_norms(parameters) -> torch.Tensor:
    """Sum over parameters of the 2-norm of each gradient, on the device (the original's skip measure).

    Under FSDP2 a gradient is a DTensor sharded over ranks: its squared norm is the sum of its shards' squared
    norms, so the local sums of squares of all sharded tensors are reduced in one collective per device mesh.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    total = torch.stack(torch._foreach_norm(plain)).float().sum() if plain else None
    by_layout = {}
    for g in grads:
        if isinstance(g, DTensor):
            by_layout.setdefault((g.device_mesh, tuple(g.placements)), []).append(g)
    for (mesh, placements), group in by_layout.items():
        local = torch.stack(torch._foreach_norm([g.to_local() for g in group])).float().pow(2)
        # sharded dimensions of the mesh hold parts of the sum; replicated ones hold copies of it
        squares = DTensor.from_local(local, mesh, [Partial() if p.is_shard() else p for p in placements])
        part = squares.full_tensor().sqrt().sum()
        total = part if total is None else total + part.to(total.device)
    return total if total is not None else torch.zeros(())


def clip_and_check(accelerator, model, loss, opt_cfg, step, stop_requested):
    """Clip, then decide on the device whether to skip this update; one host sync for the whole decision.

    Returns (global grad norm before clipping, as a plain tensor, skip, stop). Skip: a non-finite loss or
    gradient on any process, or, from step skip_grad_iter on, a gradient above skip_grad_norm measured by
    optimizer.skip_grad_rule: "sum_clipped" (the original release's rule: the sum of the per-tensor gradient
    norms after clipping is >= skip_grad_norm) or "global_norm" (the global norm before clipping is > it).
    """
    rule = opt_cfg.get("skip_grad_rule", "sum_clipped")
    assert rule in SKIP_RULES, rule
    max_norm = opt_cfg.get("max_grad_norm", 0.0) or math.inf  # 0 = no clipping, still measure the norm
    norm = full_tensor(accelerator.clip_grad_norm_(model.parameters(), max_norm)).float()
    skip = ~torch.isfinite(norm) | ~torch.isfinite(loss)
    limit = opt_cfg.get("skip_grad_norm", None)
    if limit and step >= opt_cfg.get("skip_grad_iter", 0):
        if rule == "sum_clipped":
            skip = skip | (sum_of_grad_norms(model.parameters()).to(norm.device) >= limit)
        else:
            skip = skip | (norm > limit)
    flags = torch.stack([skip.float(), torch.tensor(float(stop_requested), device=norm.device)])
    skip, stop = (accelerator.reduce(flags, "max") > 0).tolist()
    return norm, skip, stop


def unwrap(accelerator, model):
    """The plain module under Accelerate's wrappers and torch.compile's, with any Accelerate version (the
    keep_torch_compile argument appeared only in 1.3; before, unwrap_model keeps the compiled wrapper)."""
    raw = accelerator.unwrap_model(model)
    return getattr(raw, "_orig_mod", raw)


def forward_backward(accelerator, model, codes, labels, keep_for_vis: int):
    """One micro-batch; returns the detached loss and, if asked, what the visualisation needs."""
    with accelerator.accumulate(model):
        logits, loss, order = model(codes, labels, targets=codes)
        accelerator.backward(loss)
    vis = (logits[:keep_for_vis].detach(), order[:keep_for_vis], codes, labels) if keep_for_vis else None
    return loss.detach(), vis
