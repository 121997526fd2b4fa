"""Image datasets for code extraction: ImageNet read in place from `train.tar`/`val.tar`, or an image folder.

Both yield `(image, label, index)`. Labels are the sorted class folder names mapped to 0..C-1; `index` is the
item's position in the name-sorted member list, so it names the same image whatever order the tar was written
in. An image that cannot be decoded comes back as a `BadImage` (path and reason) in place of the image, so
one broken JPEG never kills a long run: `collate_skip_bad` separates them out of a batch.
"""
import io
import os
import tarfile
import time
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImage(NamedTuple):
    """Stands in for an image that could not be decoded."""
    path: str
    reason: str


def decode_rgb(data: bytes) -> Image.Image:
    """Decode image bytes of any format PIL knows (a PNG named .JPEG included) into an RGB image.

    Grayscale, CMYK, palette and alpha images are converted like torchvision's loader does (`convert("RGB")`),
    which is what the released code archives were made with.
    """
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now: a truncated file raises here, not later inside the transform
    return img.convert("RGB")


class _ImageDataset(torch.utils.data.Dataset):
    """Shared item logic; subclasses fill `names` (np.bytes_ [N]), `labels` (int64 [N]), `classes` and
    implement `_read(i) -> bytes`."""

    names: np.ndarray
    labels: np.ndarray
    classes: List[str]
    transform: Optional[Callable]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, index: int) -> str:
        return self.names[index].decode()

    def label(self, index: int) -> int:
        """Label without reading the image (lets the extractor skip finished files cheaply)."""
        return int(self.labels[index])

    def __getitem__(self, index: int) -> Tuple[object, int, int]:
        label = int(self.labels[index])
        try:
            image = decode_rgb(self._read(index))
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            return BadImage(self.path(index), f"{type(e).__name__}: {e}"), label, index
        if self.transform is not None:
            image = self.transform(image)
        return image, label, index

    def _read(self, index: int) -> bytes:
        raise NotImplementedError


def _class_labels(class_names: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    classes = sorted(set(class_names))
    to_label = {c: i for i, c in enumerate(classes)}
    return classes, np.array([to_label[c] for c in class_names], dtype=np.int64)


class ImageTarDataset(_ImageDataset):
    """ImageNet read in place from an uncompressed tar with members `<split>/<wnid>/<file>`.

    The constructor makes one pass over the tar headers and keeps only (name, data offset, size) per member,
    as compact numpy arrays; items are then read with one seek + read. The file handle is opened lazily, once
    per process, so each DataLoader worker gets its own.
    """

    def __init__(self, tar_file: str, transform: Optional[Callable] = None, verbose: bool = True):
        if not os.path.isfile(tar_file):
            raise FileNotFoundError(f"tar file not found: {tar_file}")
        self.tar_file = tar_file
        self.transform = transform
        t0 = time.time()
        names, offsets, sizes = self._scan(tar_file)
        if not names:
            raise ValueError(f"{tar_file} has no members like train/<wnid>/<file>.JPEG (a folder per class "
                             "under one top-level folder, as `tar -cf train.tar train/` makes)")
        order = sorted(range(len(names)), key=names.__getitem__)
        names = [names[i] for i in order]
        self.names = np.array([n.encode() for n in names], dtype=np.bytes_)
        self.offsets = np.array(offsets, dtype=np.int64)[order]
        self.sizes = np.array(sizes, dtype=np.int64)[order]
        self.classes, self.labels = _class_labels([n.split("/")[1] for n in names])
        self._fh, self._fh_pid = None, None
        if verbose:
            print(f"{tar_file}: {len(self)} images in {self.num_classes} classes "
                  f"(index built in {time.time() - t0:.1f}s)", flush=True)

    @staticmethod
    def _scan(tar_file: str):
        names, offsets, sizes = [], [], []
        with tarfile.open(tar_file, "r:") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                # tarfile keeps every TarInfo it reads (~0.5 KB each, 1.28M of them); we need three numbers.
                tar.members.clear()
                name = member.name[2:] if member.name.startswith("./") else member.name
                if not member.isreg() or name.count("/") != 2:
                    continue
                names.append(name)
                offsets.append(member.offset_data)
                sizes.append(member.size)
        return names, offsets, sizes

    def _read(self, index: int) -> bytes:
        if self._fh is None or self._fh_pid != os.getpid():
            # A handle inherited through fork would share its file position with the parent: reopen.
            self._fh, self._fh_pid = open(self.tar_file, "rb"), os.getpid()
        self._fh.seek(int(self.offsets[index]))
        return self._fh.read(int(self.sizes[index]))

    def path(self, index: int) -> str:
        return f"{self.tar_file}:{self.names[index].decode()}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fh"], state["_fh_pid"] = None, None
        return state


class ImageFolderDataset(_ImageDataset):
    """Images under `<root>/<class>/<file>` (image extensions only), classes and files sorted by name."""

    def __init__(self, root: str, transform: Optional[Callable] = None, verbose: bool = True):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder not found: {root}")
        self.root = root
        self.transform = transform
        paths, class_names = [], []
        for cls in sorted(e.name for e in os.scandir(root) if e.is_dir()):
            files = sorted(e.name for e in os.scandir(os.path.join(root, cls))
                           if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
            paths += [os.path.join(root, cls, f) for f in files]
            class_names += [cls] * len(files)
        if not paths:
            raise ValueError(f"no images found under {root}/<class>/<file> (extensions {IMG_EXTENSIONS})")
        self.names = np.array([p.encode() for p in paths], dtype=np.bytes_)
        self.classes, self.labels = _class_labels(class_names)
        if verbose:
            print(f"{root}: {len(self)} images in {self.num_classes} classes", flush=True)

    def _read(self, index: int) -> bytes:
        with open(self.path(index), "rb") as f:
            return f.read()


def collate_skip_bad(batch):
    """Batch the good items; return `(images, labels, indices, bad)` with `bad` a list of BadImage.

    `images` is the stacked transform output (None when the whole batch was bad).
    """
    good = [item for item in batch if not isinstance(item[0], BadImage)]
    bad = [item[0] for item in batch if isinstance(item[0], BadImage)]
    if not good:
        return None, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), bad
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return images, labels, indices, bad
