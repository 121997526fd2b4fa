"""The datasets, built by plain calls: the latent codes training reads (a config's `dataset:` section) and the
images the extractor and the tokenizer trainer read (`--dataset imagenet`: train.tar / val.tar in place,
`folder`: a <class>/<file> tree)."""
import os
from typing import Callable, Optional

from RandAR.dataset.imagenet import ImageFolderDataset, ImageTarDataset
from RandAR.utils.config import to_plain
from RandAR.utils.config_schema import get_obj_from_str

IMAGE_DATASETS = ("imagenet", "folder")


def build_latent_dataset(section, vocab_size: int, block_size: int, num_classes: Optional[int] = None,
                         verbose: bool = True):
    """The `dataset:` section (target, params with root_dir) -> the code dataset, its ids and code length checked
    against the model's vocab_size and block_size; ValueError when it has more classes than num_classes."""
    params = dict(to_plain(section.get("params", {})) or {})
    dataset = get_obj_from_str(section["target"])(**params, vocab_size=vocab_size, block_size=block_size,
                                                  verbose=verbose)
    if num_classes is not None and dataset.num_classes > num_classes:
        raise ValueError(f"the data has labels up to {dataset.num_classes - 1} but the model has "
                         f"num_classes={num_classes}")
    return dataset


def image_source(dataset: str, data_path: str, is_train: bool = True) -> str:
    """Where the images of a split live: `<data_path>/{train,val}.tar` for imagenet; for folder,
    `<data_path>/{train,val}/` when that exists, else `<data_path>` itself. Raises if it is missing."""
    split = "train" if is_train else "val"
    if dataset == "imagenet":
        path = os.path.join(data_path, f"{split}.tar")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--dataset imagenet expects {path} (ImageNet packed with `tar -cf {split}.tar "
                                    f"{split}/`); use --dataset folder for an unpacked <class>/<file> tree")
        return path
    if dataset == "folder":
        path = os.path.join(data_path, split)
        path = path if os.path.isdir(path) else data_path
        if not os.path.isdir(path):
            raise FileNotFoundError(f"--dataset folder expects a directory of <class>/<file> images at {data_path}")
        return path
    raise ValueError(f"unknown image dataset {dataset!r}; expected one of {', '.join(IMAGE_DATASETS)}")


def build_image_dataset(dataset: str, data_path: str, is_train: bool = True, transform: Optional[Callable] = None):
    """`dataset` (imagenet or folder) at data_path; `transform`: PIL RGB image -> anything."""
    source = image_source(dataset, data_path, is_train)
    cls = ImageTarDataset if dataset == "imagenet" else ImageFolderDataset
    return cls(source, transform=transform)
