"""Pre-extracted token codes, in the layout of the released archives and of tools/extract_latent_codes.py:

    <root_dir>/<label>/<index>.npy     integer array [num_aug, L]  (one row per stored augmentation)

Each item picks one augmentation row at random: `(codes [L] int64, label, index)`.
"""
import os
from typing import Optional

import numpy as np
import torch

NUM_CHECKED_FILES = 64  # files read at start-up to catch a wrong archive before training starts


class INatLatentDataset(torch.utils.data.Dataset):
    """Token codes under `root_dir/<label>/<index>.npy`, checked against the model on construction.

    vocab_size / block_size: when given, a sample of files must hold ids in [0, vocab_size) and rows of
    length block_size; a mismatch raises ValueError naming the file and the expected values.
    """

    def __init__(self, root_dir: str, vocab_size: Optional[int] = None, block_size: Optional[int] = None,
                 num_checked_files: int = NUM_CHECKED_FILES, verbose: bool = True):
        if not os.path.isdir(root_dir):
            raise FileNotFoundError(f"latent code folder not found: {root_dir}")
        self.root_dir = root_dir
        self.vocab_size, self.block_size = vocab_size, block_size
        entries = sorted(e.name for e in os.scandir(root_dir) if e.is_dir() and not e.name.startswith("."))
        not_labels = [e for e in entries if not e.isdigit()]
        if not_labels:
            raise ValueError(f"{root_dir} should hold one folder per class label (0, 1, ...), found "
                             f"{not_labels[:3]}; is the code folder one level further down?")
        paths, labels = [], []
        for label in sorted(int(e) for e in entries):
            d = os.path.join(root_dir, str(label))
            # Only `<int>.npy`: skips the extractor's hidden temporary files from an interrupted run.
            files = sorted((e.name for e in os.scandir(d) if e.name.endswith(".npy") and e.name[:-4].isdigit()),
                           key=lambda n: int(n[:-4]))
            paths += [os.path.join(d, f) for f in files]
            labels += [label] * len(files)
        if not paths:
            raise ValueError(f"no code files <label>/<index>.npy under {root_dir}")
        self.paths = np.array([p.encode() for p in paths], dtype=np.bytes_)
        self.labels = np.array(labels, dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1
        # Evenly spaced, so every part of the (label-sorted) list is looked at.
        for i in np.unique(np.linspace(0, len(paths) - 1, min(num_checked_files, len(paths))).astype(np.int64)):
            self._load(int(i))
        if verbose:
            print(f"{root_dir}: {len(self)} code files in {self.num_classes} classes", flush=True)

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, index: int) -> np.ndarray:
        path = self.paths[index].decode()
        codes = np.load(path)
        problem = None
        if codes.ndim != 2:
            problem = f"shape {codes.shape}, expected (num_aug, {self.block_size or 'L'})"
        elif not np.issubdtype(codes.dtype, np.integer):
            problem = f"dtype {codes.dtype}, expected an integer dtype"
        elif self.block_size is not None and codes.shape[1] != self.block_size:
            problem = f"shape {codes.shape}, expected (num_aug, {self.block_size}) for block_size {self.block_size}"
        elif codes.size and codes.min() < 0:
            problem = f"negative id {codes.min()}"
        elif self.vocab_size is not None and codes.size and codes.max() >= self.vocab_size:
            problem = f"id {codes.max()} out of range for vocab_size {self.vocab_size} (expected 0..{self.vocab_size - 1})"
        if problem:
            raise ValueError(f"bad code file {path}: {problem}. Were the codes extracted with the tokenizer "
                             "and image size this model is configured for?")
        return codes

    def __getitem__(self, index: int):
        codes = self._load(index)
        aug = torch.randint(codes.shape[0], (1,)).item()  # torch RNG: reseeded per DataLoader worker
        return torch.from_numpy(codes[aug].astype(np.int64)), int(self.labels[index]), index


LatentCodeDataset = INatLatentDataset
