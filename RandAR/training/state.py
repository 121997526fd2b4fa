"""Everything a resumed run needs to continue exactly where an uninterrupted one would be.

The rule: randomness is a pure function of (global_seed, step, ...), never of history.
  * Data order: step s reads global batch s of a seeded per-epoch permutation (`StepBatchSampler`), so the
    data-loader position *is* the step; resuming means starting the sampler at the saved step.
  * Per-item randomness (which stored augmentation a code file gives) is seeded from (seed, epoch, index)
    (`SeededItems`), so it does not depend on the worker count, prefetching or restarts.
  * Model randomness (token orders, class dropout, dropout) comes from torch's global RNG, reseeded at the
    start of every optimizer step from (seed, rank, step) (Stream.TRAIN_STEP).
Every seed comes from RandAR.utils.seeding, one named stream per use.
`TrainState` (step, skipped steps) and `EMA` go into Accelerate's checkpoint as registered objects.
"""
import copy
import signal
from dataclasses import asdict, dataclass
from typing import Iterator, List, Tuple

import torch
from torch.utils.data import Dataset, Sampler

from RandAR.utils.seeding import Stream, seed_for


@dataclass
class TrainState:
    """Counters saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""
    step: int = 0             # optimizer steps done (skipped ones included)
    skipped: int = 0          # updates skipped for a non-finite or too large gradient

    def state_dict(self):
        return asdict(self)

    def load_state_dict(self, state):
        self.step, self.skipped = int(state["step"]), int(state["skipped"])


class EMA(torch.nn.Module):
    """Exponential moving average of a model's parameters (a frozen copy; buffers copied as they are).

    Checkpointed as a registered object; its state_dict has the model's own keys, so it exports and loads
    like the model.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float):
        ema = [p for p in self.module.parameters()]
        cur = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema)]
        torch._foreach_mul_(ema, decay)
        torch._foreach_add_(ema, cur, alpha=1.0 - decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


class StepBatchSampler(Sampler):
    """Micro-batches of one process, for optimizer steps start_step, start_step + 1, ... (endless).

    Global batch s is positions [(s % steps_per_epoch) * G, ... + G) of the permutation of epoch
    s // steps_per_epoch (seeded from (seed, epoch); the last incomplete batch of an epoch is dropped).
    It is cut into world_size * accum_steps micro-batches of `batch_size`; process `rank` takes chunks
    accum * world_size + rank, for accum = 0..accum_steps-1. The data seen at a step therefore does not depend
    on the number of processes. Yields lists of (dataset index, epoch) pairs, for `SeededItems`.
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, accum_steps: int = 1,
                 seed: int = 0, start_step: int = 0):
        self.global_batch = batch_size * world_size * accum_steps
        if num_samples < self.global_batch:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than one global batch of "
                             f"{self.global_batch}: lower global_batch_size or add data")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.world_size, self.rank, self.accum_steps = world_size, rank, accum_steps
        self.seed, self.start_step = seed, start_step
        self.steps_per_epoch = num_samples // self.global_batch

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed_for(self.seed, Stream.EPOCH, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def step_batches(self, step: int, perm: torch.Tensor) -> List[List[Tuple[int, int]]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        start = pos * self.global_batch
        out = []
        for a in range(self.accum_steps):
            off = start + (a * self.world_size + self.rank) * self.batch_size
            out.append([(i, epoch) for i in perm[off: off + self.batch_size].tolist()])
        return out

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        step, epoch, perm = self.start_step, None, None
        while True:
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                perm = self.epoch_permutation(epoch)
            yield from self.step_batches(step, perm)
            step += 1


class SeededItems(Dataset):
    """Wraps a dataset so that item (index, epoch) is read with torch's RNG seeded from (seed, epoch, index).

    The caller's RNG state is left untouched (so loading in the main process, num_workers=0, does not disturb
    training), and the item is the same whichever worker reads it, whenever.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]):
        index, epoch = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(self.seed, Stream.ITEM, epoch, index))
            return self.dataset[index]


class StopRequest:
    """Set by SIGUSR1 (SLURM's warning before the time limit): the loop checkpoints and exits at the next step."""

    def __init__(self, signum: int = signal.SIGUSR1):
        self.requested = False
        signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
