"""Learning-rate schedules, indexed by optimizer step: `cosine`, `constant` and `linear`, each with a linear warm-up.

`get_scheduler(name, optimizer, ...)` returns a `LambdaLR`; after k calls of `.step()` the rate is
`lr * multiplier(k)`. The training script calls `.step()` once per optimizer step, whatever the number of
processes or accumulation steps, so `warm_up_iters` and `max_iters` in a config are optimizer steps.

The values equal those of the original RandAR code (tests/fixtures/lr_schedules.json), but for the differences
listed in GETTING_STARTED.md, "Differences from the original release". `constant_with_warmup` is another name for
`constant`. With `num_cycles` omitted, cosine uses a full period (num_cycles=1): it falls to `min_lr_ratio` at
mid-training and rises back to the peak at the end; the shipped configs set 0.5. The tokenizer and toy
classifier trainers use the same cosine schedule.
"""
import math
from functools import partial
from typing import Optional

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "constant", "constant_with_warmup", "linear")


def warmup_multiplier(step: int, num_warmup_steps: int) -> float:
    return float(step) / float(max(1, num_warmup_steps))


def constant_multiplier(step: int, num_warmup_steps: int = 0) -> float:
    if step < num_warmup_steps:
        return warmup_multiplier(step, num_warmup_steps)
    return 1.0


def linear_multiplier(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return warmup_multiplier(step, num_warmup_steps)
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def cosine_multiplier(step: int, num_warmup_steps: int, num_training_steps: int, num_cycles: float = 1.0,
                      min_lr_ratio: float = 0.05) -> float:
    """Warm-up, then min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(2 pi num_cycles progress)) / 2."""
    if step < num_warmup_steps:
        return warmup_multiplier(step, num_warmup_steps)
    step = min(step, num_training_steps)  # hold the last value after the end of training
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    ratio = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    # Written as the original writes it, so that the values agree to the last bit.
    return min_lr_ratio * (1 - ratio) + 1.0 * ratio


def get_scheduler(name: str, optimizer: Optimizer, num_warmup_steps: Optional[int] = None,
                  num_training_steps: Optional[int] = None, num_cycles: float = 1.0, min_lr_ratio: float = 0.05,
                  last_epoch: int = -1) -> LambdaLR:
    """A LambdaLR for schedule `name`; `cosine` and `linear` need num_training_steps.

    num_warmup_steps None or 0 means no warm-up. num_cycles and min_lr_ratio are used by `cosine` only.
    """
    warmup = int(num_warmup_steps or 0)
    if name in ("constant", "constant_with_warmup"):
        fn = partial(constant_multiplier, num_warmup_steps=warmup)
    elif name in ("cosine", "linear"):
        if num_training_steps is None:
            raise ValueError(f"the {name} schedule needs num_training_steps (the config's max_iters)")
        if name == "cosine":
            fn = partial(cosine_multiplier, num_warmup_steps=warmup, num_training_steps=int(num_training_steps),
                         num_cycles=num_cycles, min_lr_ratio=min_lr_ratio)
        else:
            fn = partial(linear_multiplier, num_warmup_steps=warmup, num_training_steps=int(num_training_steps))
    else:
        raise ValueError(f"unknown lr schedule {name!r}; expected one of {SCHEDULES}")
    return LambdaLR(optimizer, fn, last_epoch)


def scheduler_from_config(optimizer: Optimizer, lr_cfg, max_iters: int) -> LambdaLR:
    """The `lr_scheduler:` section of a config (type, warm_up_iters, min_lr_ratio, num_cycles) -> a scheduler."""
    name = lr_cfg["type"]
    if name == "cosine" and lr_cfg.get("num_cycles") is None:
        raise ValueError("lr_scheduler.num_cycles is required for the cosine schedule (0.5 = one half-cosine "
                         "from the peak down to min_lr_ratio, as in the shipped configs)")
    return get_scheduler(name, optimizer, num_warmup_steps=lr_cfg.get("warm_up_iters", 0),
                         num_training_steps=max_iters, num_cycles=lr_cfg.get("num_cycles"),
                         min_lr_ratio=lr_cfg.get("min_lr_ratio", 0.05))
