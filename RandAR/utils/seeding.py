"""Every seed of the project, from one hash: splitmix64 over (global seed, named stream, integer keys).

A seed depends only on what it names (e.g. image index 17 of the run with global seed 0), never on batch size,
process count or what ran before, so interrupted runs resume exactly and sampling is the same on any number of
processes. Streams keep unrelated uses apart: the same keys in two streams give unrelated seeds.
"""
from enum import IntEnum
from typing import List, Sequence

import torch

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # the constants as signed int64
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


class Stream(IntEnum):
    IMAGE = 0             # a sampled image: its token order and every draw
    LABEL = 1             # a sampled image's class (class_sampling: random)
    BALANCED_BLOCK = 2    # a block of num_classes images (class_sampling: balanced)
    TRAIN_STEP = 3        # torch's RNG for one optimizer step on one process
    VIS_SAMPLES = 4       # the free samples of a training visualisation
    ITEM = 5              # one training item's augmentation
    EPOCH = 6             # the permutation of one epoch
    VQ_STEP = 7           # the tokenizer trainer: one step's batches and flips
    CODE_RESTART = 8      # the tokenizer trainer: dead-code restarts
    CLASSIFIER = 9        # the toy classifier trainer


def _shift_right(x: torch.Tensor, s: int) -> torch.Tensor:
    return (x >> s) & ((1 << (64 - s)) - 1)  # logical shift: torch's >> is arithmetic on negative int64


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 mixer on int64 tensors (a bijection scrambling every bit); products wrap modulo 2**64."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def seeds_for(global_seed: int, stream: int, first_keys: Sequence[int], *keys: int) -> List[int]:
    """One 63-bit seed (fits int64 and torch.manual_seed) per value of `first_keys`, each followed by `keys`."""
    if not 0 <= global_seed < 2**31 or any(k < 0 for k in first_keys) or any(k < 0 for k in keys):
        raise ValueError(f"seeds need a global seed in [0, 2**31) and keys >= 0, got {global_seed}, "
                         f"{list(first_keys)[:4]}, {keys}")
    h = splitmix64(torch.as_tensor(list(first_keys), dtype=torch.long) ^ (global_seed << 32))
    for k in keys:
        h = splitmix64(h ^ k)
    h = splitmix64(h ^ int(stream))
    return ((h >> 1) & ((1 << 63) - 1)).tolist()


def seed_for(global_seed: int, stream: int, key: int, *keys: int) -> int:
    """The seed of one (stream, key, *keys), e.g. seed_for(seed, Stream.TRAIN_STEP, rank, step)."""
    return seeds_for(global_seed, stream, [key], *keys)[0]
