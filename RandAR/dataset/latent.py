"""Pre-extracted token codes, in the layout of the released archives and of tools/extract_latent_codes.py:

    <root_dir>/<label>/<index>.npy     integer array [num_aug, L]  (one row per stored augmentation)

Each item picks one augmentation row at random: `(codes [L] int64, label, index)`.

tools/extract_latent_codes.py also writes `<root_dir>/manifest.json`: what made the codes (split, tokenizer,
codebook size, tokenizer checkpoint fingerprint, image size, aug mode, code length). Training refuses a folder
whose manifest does not fit the model and config (`check_codes_fit`: every field the config decides); the
released archives have no manifest: their folder names stand for one (RELEASED_CODES).
"""
import json
import os
from typing import Optional

import math

import numpy as np
import torch

from RandAR.utils.compat import canonical_manifest
from RandAR.utils.run_stamp import file_fingerprint, same_fingerprint

NUM_CHECKED_FILES = 64  # files read at start-up to catch a wrong archive before training starts
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "randar-codes-1"
# The released archives carry no manifest; their folder names say what made them (GETTING_STARTED.md, section 2).
RELEASED_CODES = {
    "imagenet-llamagen-adm-256_codes": dict(tokenizer="llamagen",
                                            tokenizer_target="RandAR.model.tokenizers.llamagen_vq.VQModel",
                                            codebook_size=16384, code_length=256, image_size=256, split="train"),
    "imagenet-maskgit-adm-256_codes": dict(tokenizer="maskgit",
                                           tokenizer_target="RandAR.model.tokenizers.maskgit_vqgan.MaskGITTokenizer",
                                           codebook_size=1024, code_length=256, image_size=256, split="train"),
}


def codes_manifest(*, split: str, dataset: str, tokenizer: str, tokenizer_target: str, codebook_size: int,
                   vq_ckpt: str, image_size: int, aug_mode: str, crop_range: Optional[float], code_length: int) -> dict:
    """What made a code folder (vq_ckpt: a content fingerprint, RandAR.utils.run_stamp.file_fingerprint)."""
    return {"format": MANIFEST_FORMAT, "split": split, "dataset": dataset, "tokenizer": tokenizer,
            "tokenizer_target": tokenizer_target, "codebook_size": int(codebook_size), "vq_ckpt": vq_ckpt,
            "image_size": int(image_size), "aug_mode": aug_mode, "crop_range": crop_range,
            "code_length": int(code_length)}


def read_manifest(root_dir: str) -> Optional[dict]:
    """The folder's manifest in canonical form (RandAR.utils.compat), or None (the released archives have none)."""
    path = os.path.join(root_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return canonical_manifest(json.load(f))


def check_codes_fit(root_dir: str, vocab_size: Optional[int] = None, block_size: Optional[int] = None,
                    tokenizer_target: Optional[str] = None, split: Optional[str] = None,
                    image_size: Optional[int] = None, vq_ckpt: Optional[str] = None):
    """ValueError when the manifest of `root_dir` says its codes do not fit a model with this vocabulary, token
    count, tokenizer, image size and tokenizer checkpoint (vq_ckpt: a path, compared by content fingerprint),
    or are of another split; the message names every differing field. Ids alone cannot tell: MaskGIT's ids
    (< 1024) are all valid ids of a 16384-entry LlamaGen vocabulary. Without a manifest, a released archive's
    folder name stands for one (RELEASED_CODES); any other folder without one passes. A value given as None
    (and a field the manifest lacks) is not compared. tokenizer_target: canonical (a config's, as read)."""
    if not os.path.isdir(root_dir):
        return
    source = os.path.join(root_dir, MANIFEST_NAME)
    manifest = read_manifest(root_dir)
    if manifest is None:
        name = os.path.basename(os.path.normpath(root_dir))
        manifest, source = RELEASED_CODES.get(name), f"the released archive's name {name}"
    if manifest is None:
        return
    # manifest key: (what the value is, the value)
    expected = {"codebook_size": ("the model's vocab_size", vocab_size),
                "code_length": ("the model's block_size", block_size),
                "tokenizer_target": ("the model's tokenizer target", tokenizer_target),
                "split": ("the model's training split", split),
                "image_size": ("the image size of block_size codes of the config's tokenizer", image_size),
                "vq_ckpt": (f"the fingerprint of vq_ckpt {vq_ckpt}", vq_ckpt and file_fingerprint(vq_ckpt))}
    wrong = [f"{key} {manifest.get(key)!r} ({what} is {value!r})" for key, (what, value) in expected.items()
             if value is not None and key in manifest and not same_fingerprint(manifest[key], value)]
    if wrong:
        raise ValueError(f"the codes in {root_dir} do not fit this model: {source} says {', '.join(wrong)}; "
                         f"they were made with tokenizer {manifest.get('tokenizer')!r} "
                         f"at {manifest.get('image_size')}px. Use the codes of the config's tokenizer, checkpoint "
                         f"and image size (and the train split), or the config (and --vq-ckpt) made for these codes")


def tokenizer_image_size(tokenizer_cfg, block_size: int) -> Optional[int]:
    """The image side a tokenizer config turns into block_size codes (built on the meta device: no weights)."""
    from RandAR.utils.config import instantiate_from_config
    side = math.isqrt(block_size)
    if side * side != block_size:
        return None
    with torch.device("meta"):
        return side * instantiate_from_config(tokenizer_cfg).downsample_factor


def check_codes_for_config(cfg):
    """check_codes_fit for a training config, before any model is built: its dataset root_dir against
    ar_model's vocab_size/block_size, the tokenizer's target and image size, the vq_ckpt's content (when the
    file is there; a config without one compares the rest), train split."""
    root_dir = cfg.get("dataset", {}).get("params", {}).get("root_dir")
    if not root_dir:
        return
    params = cfg.get("ar_model", {}).get("params", {})
    tokenizer = cfg.get("tokenizer", {})
    block_size, vq_ckpt = params.get("block_size"), cfg.get("vq_ckpt")
    image_size = tokenizer_image_size(tokenizer, block_size) if tokenizer.get("target") and block_size else None
    check_codes_fit(root_dir, vocab_size=params.get("vocab_size"), block_size=block_size,
                    tokenizer_target=tokenizer.get("target"), split="train", image_size=image_size,
                    vq_ckpt=vq_ckpt if vq_ckpt and os.path.isfile(vq_ckpt) else None)


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
        check_codes_fit(root_dir, vocab_size, block_size)
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
