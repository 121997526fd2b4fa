"""Per-image randomness: each image's seed and class label depend on (global seed, image index) alone, so which
process makes an image, in which batch, and whether the run was interrupted before never changes it."""
from typing import List, Sequence

import torch

from RandAR.utils.seeding import Stream, seeds_for

CLASS_SAMPLING = ("random", "balanced")


def image_seeds(global_seed: int, indices: Sequence[int]) -> List[int]:
    """The seed of each image: it drives the image's token order and every token draw."""
    return seeds_for(global_seed, Stream.IMAGE, indices)


def class_labels(indices: Sequence[int], num_classes: int, global_seed: int, mode: str = "random") -> List[int]:
    """Class of each image index, a function of (global seed, index) only: the same for every world size,
    batch size and total count (a 10k run is the prefix of a 50k run).

    random: an independent uniform draw per image (the original drew labels at random too, per batch).
    balanced: indices come in blocks of num_classes, each block a seeded shuffle of all classes: every class
        equally often when the count is a multiple of num_classes, and within one of that in any prefix.
    """
    if mode == "random":
        return [v % num_classes for v in seeds_for(global_seed, Stream.LABEL, indices)]
    if mode != "balanced":
        raise ValueError(f"class sampling must be one of {CLASS_SAMPLING}, got {mode!r}")
    perms = {}
    labels = []
    for i in indices:
        block = i // num_classes
        if block not in perms:
            g = torch.Generator().manual_seed(seeds_for(global_seed, Stream.BALANCED_BLOCK, [block])[0])
            perms[block] = torch.randperm(num_classes, generator=g).tolist()
        labels.append(perms[block][i % num_classes])
    return labels
