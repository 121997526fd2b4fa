"""`--dataset` name -> dataset: `imagenet` (train.tar / val.tar in place), `folder` (<class>/<file> tree), `latent`."""
import os
from typing import Callable, Optional

DATASETS = ("imagenet", "folder", "latent")


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
    raise ValueError(f"unknown image dataset {dataset!r}; expected imagenet or folder")


def build_dataset(dataset: str, data_path: str, is_train: bool = True, transform: Optional[Callable] = None,
                  **latent_kwargs):
    """Image datasets take `transform` (PIL RGB image -> anything); the latent one takes vocab_size/block_size."""
    if dataset == "latent":
        from RandAR.dataset.latent import INatLatentDataset
        return INatLatentDataset(root_dir=data_path, **latent_kwargs)
    from RandAR.dataset.imagenet import ImageFolderDataset, ImageTarDataset
    source = image_source(dataset, data_path, is_train)
    cls = ImageTarDataset if dataset == "imagenet" else ImageFolderDataset
    return cls(source, transform=transform)
