"""Tokenize a dataset of images into the code files training reads (the layout of the released archives).

    torchrun --nproc_per_node 8 tools/extract_latent_codes.py --data-path /data/imagenet --code-path /data \
        --vq-ckpt vq_ds16_c2i.pt --config configs/tokenization/llamagen.yaml --image-size 256 --aug-mode adm

writes `<code-path>/<dataset>-<tokenizer>-<aug>-<size>_codes/<label>/<index>.npy` (the val split of --debug:
`..._val_codes`), each an int64 array [num_aug, L]: `adm` = (image, flip), `ten-crop` = 10 crops, `none` = 1,
and `manifest.json` (RandAR.dataset.latent.MANIFEST_NAME): split, tokenizer, codebook size, a fingerprint of
--vq-ckpt, image size, aug mode, code length. Plain `python` runs one process. Rank r encodes items r, r+N, ...;
a file that already exists is skipped, and files appear atomically, so a killed job is simply started again;
a folder whose manifest differs from this run's (or that has codes but no manifest) stops the run before any
work, naming the differences. Images that cannot be decoded are skipped and reported; when more than
--max-bad-fraction of the split is bad the run exits non-zero (the good codes stay written).
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.dataset.augmentation import AUG_MODES, DEFAULT_CROP_RANGE, to_tokenizer_input, views_transform  # noqa: E402
from RandAR.dataset.builder import build_image_dataset, image_source  # noqa: E402
from RandAR.dataset.imagenet import collate_skip_bad  # noqa: E402
from RandAR.dataset.latent import MANIFEST_NAME, codes_manifest, read_manifest  # noqa: E402
from RandAR.model.tokenizers import build_tokenizer  # noqa: E402
from RandAR.utils.atomic import atomic_open  # noqa: E402
from RandAR.utils.checkpoint import CheckpointMismatchError  # noqa: E402
from RandAR.utils.config import load_config  # noqa: E402
from RandAR.utils.checkpoint import resolve_checkpoint  # noqa: E402
from RandAR.utils.distributed import (all_reduce_sum, allow_tf32, broadcast_object, cleanup,  # noqa: E402
                                      init_distributed, shard)
from RandAR.utils.run_stamp import StampMismatchError, claim, file_fingerprint  # noqa: E402
from RandAR.utils.progress import progress  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402

CODE_DTYPE = np.int64  # what the original script (and so the released archives) stored


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-path", required=True, help="folder holding train.tar/val.tar (or class folders)")
    p.add_argument("--code-path", required=True, help="where the <dataset>-<tokenizer>-<aug>-<size>_codes folder goes")
    p.add_argument("--vq-ckpt", required=True,
                   help="tokenizer weights (.pt/.pth/.bin/.safetensors; or a released file's name, fetched)")
    p.add_argument("--config", required=True,
                   help="tokenizer config (configs/tokenization/*.yaml, `model:` section) or a RandAR config "
                        "(`tokenizer:` section)")
    p.add_argument("--tokenizer-name", default=None,
                   help="name used in the output folder; default: the stem of a tokenizer config's file name "
                        "(llamagen, maskgit); required with a RandAR config")
    p.add_argument("--dataset", choices=("imagenet", "folder"), default="imagenet",
                   help="imagenet: <data-path>/train.tar read in place; folder: <data-path>[/train]/<class>/<file>")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--aug-mode", choices=AUG_MODES, default="adm")
    p.add_argument("--crop-range", type=float, default=None,
                   help=f"ten-crop only: centre-crop to image-size * crop-range first (default {DEFAULT_CROP_RANGE})")
    p.add_argument("--batch-size", type=int, default=32, help="images per step per process")
    p.add_argument("--num-workers", type=int, default=8, help="DataLoader workers per process")
    p.add_argument("--debug", action="store_true",
                   help="use the val split (val.tar) instead of train; its codes go to <...>_val_codes")
    p.add_argument("--max-bad-fraction", type=float, default=0.001,
                   help="exit non-zero when more than this fraction of the split's images cannot be decoded "
                        "(their codes are missing; the good codes stay written)")
    args = p.parse_args(argv)
    if not 0.0 <= args.max_bad_fraction <= 1.0:
        p.error(f"--max-bad-fraction must be in [0, 1], got {args.max_bad_fraction}")
    if args.crop_range is not None and args.aug_mode != "ten-crop":
        p.error("--crop-range only applies to --aug-mode ten-crop")
    if args.crop_range is None:
        args.crop_range = DEFAULT_CROP_RANGE
    if args.crop_range < 1.0:
        p.error(f"--crop-range must be >= 1, got {args.crop_range}")
    return args


def tokenizer_section(config_path: str, tokenizer_name):
    """`model:` of a tokenizer config or `tokenizer:` of a RandAR config -> ({target, params}, name)."""
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"--config not found: {config_path}")
    cfg = load_config(config_path)
    for section in ("model", "tokenizer"):
        if section in cfg and "target" in cfg[section]:
            if tokenizer_name is None and section == "tokenizer":
                raise ValueError(f"{config_path} is a RandAR config: pass --tokenizer-name (e.g. llamagen) "
                                 "to name the output folder")
            name = tokenizer_name or os.path.splitext(os.path.basename(config_path))[0]
            return cfg[section], name
    raise ValueError(f"{config_path} has neither a `model:` nor a `tokenizer:` section with a `target`")


def split_name(args) -> str:
    return "val" if args.debug else "train"


def code_dir(args, tokenizer_name: str) -> str:
    """The released archives' name for the train split; the val split gets its own folder."""
    suffix = "_val_codes" if args.debug else "_codes"
    return os.path.join(args.code_path, f"{args.dataset}-{tokenizer_name}-{args.aug_mode}-{args.image_size}{suffix}")


def run_manifest(args, tok_cfg, tokenizer, tokenizer_name: str) -> dict:
    return codes_manifest(
        split=split_name(args), dataset=args.dataset, tokenizer=tokenizer_name, tokenizer_target=tok_cfg["target"],
        codebook_size=tokenizer.codebook_size, vq_ckpt=file_fingerprint(args.vq_ckpt), image_size=args.image_size,
        aug_mode=args.aug_mode, crop_range=args.crop_range if args.aug_mode == "ten-crop" else None,
        code_length=(args.image_size // tokenizer.downsample_factor) ** 2)


def claim_code_dir(out_dir: str, manifest: dict):
    """Write the folder's manifest, or check that the one there is equal: a resume must continue the same
    extraction (never, e.g., fill a train folder with val codes or with another tokenizer's)."""
    if read_manifest(out_dir) == manifest:  # a resume (compared in canonical form: an earlier target spelling too)
        return
    has_codes = os.path.isdir(out_dir) and any(e.is_dir() for e in os.scandir(out_dir))
    claim(os.path.join(out_dir, MANIFEST_NAME), manifest, [out_dir] if has_codes else [], what="code extraction",
          fix=f"use another --code-path, or remove {out_dir} to extract again")


def code_file(out_dir: str, label: int, index: int) -> str:
    return os.path.join(out_dir, str(label), f"{index}.npy")


@torch.no_grad()
def encode_views(tokenizer, views: torch.Tensor, device) -> np.ndarray:
    """uint8 views [B, A, 3, S, S] -> codes [B, A, L] in CODE_DTYPE."""
    b, a = views.shape[:2]
    x = to_tokenizer_input(views.to(device, non_blocking=True).flatten(0, 1), tokenizer)
    codes = tokenizer.encode_indices(x).reshape(b, a, -1)
    return codes.cpu().numpy().astype(CODE_DTYPE)


def setup(args):
    """Everything that can fail on bad inputs, done before the process group and any encoding."""
    tok_cfg, tokenizer_name = tokenizer_section(args.config, args.tokenizer_name)
    args.vq_ckpt = resolve_checkpoint(args.vq_ckpt, "--vq-ckpt")
    if not os.path.isfile(args.vq_ckpt):
        raise FileNotFoundError(f"--vq-ckpt not found: {args.vq_ckpt}")
    image_source(args.dataset, args.data_path, is_train=not args.debug)  # raises if train.tar etc. is missing
    tokenizer = build_tokenizer(tok_cfg, args.vq_ckpt, device="cpu")  # strict load: a wrong config fails here
    if args.image_size % tokenizer.downsample_factor:
        raise ValueError(f"--image-size {args.image_size} is not a multiple of the tokenizer's downsample factor "
                         f"{tokenizer.downsample_factor}")
    return tokenizer.float(), tokenizer_name, run_manifest(args, tok_cfg, tokenizer, tokenizer_name)


def check_bad_fraction(bad: int, total: int, max_fraction: float, out_dir: str):
    if total and bad / total > max_fraction:
        sys.exit(f"error: {bad} of {total} images ({bad / total:.2%}) could not be decoded, more than "
                 f"--max-bad-fraction {max_fraction}; their codes are missing from {out_dir} (the {total - bad} "
                 f"good ones are written). Fix or remove those images and run again")


def main(argv=None):
    line_buffered_output()
    args = parse_args(argv)
    try:
        tokenizer, tokenizer_name, manifest = setup(args)
    except (FileNotFoundError, ValueError, CheckpointMismatchError) as e:
        sys.exit(f"error: {e}")

    dist = init_distributed()
    allow_tf32()  # as the original extractor (and so the released archives) ran
    tokenizer = tokenizer.to(dist.device)

    out_dir = code_dir(args, tokenizer_name)  # checked before the dataset is indexed (minutes for ImageNet)
    error = None
    if dist.is_main:
        try:
            claim_code_dir(out_dir, manifest)
        except StampMismatchError as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        sys.exit(f"error: {error}")

    dataset = build_image_dataset(args.dataset, args.data_path, is_train=not args.debug,
                            transform=views_transform(args.aug_mode, args.image_size, args.crop_range))
    for label in range(dataset.num_classes):
        os.makedirs(os.path.join(out_dir, str(label)), exist_ok=True)

    mine = shard(len(dataset), dist.rank, dist.world_size)
    todo = [i for i in mine if not os.path.exists(code_file(out_dir, dataset.label(i), i))]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, todo), batch_size=args.batch_size, shuffle=False,
        num_workers=args.num_workers, collate_fn=collate_skip_bad, pin_memory=dist.device.type == "cuda")
    if dist.is_main:
        print(f"rank 0 of {dist.world_size}: {len(todo)} images to encode, {len(mine) - len(todo)} already done "
              f"-> {out_dir}", flush=True)

    written, bad, start = 0, 0, time.time()
    pbar = progress(total=len(todo), unit="img", disable=not dist.is_main, dynamic_ncols=True)
    for views, labels, indices, bad_items in loader:
        for item in bad_items:
            pbar.write(f"[rank {dist.rank}] skipped bad image {item.path}: {item.reason}")
        bad += len(bad_items)
        if views is not None:
            codes = encode_views(tokenizer, views, dist.device)
            for c, label, index in zip(codes, labels.tolist(), indices.tolist()):
                with atomic_open(code_file(out_dir, label, index), "wb") as f:  # hidden until complete
                    np.save(f, c)
            written += len(codes)
        pbar.update(len(bad_items) + len(labels))
    pbar.close()

    written, done, bad = all_reduce_sum([written, len(mine) - len(todo), bad], dist.device)
    if dist.is_main:
        secs = time.time() - start
        print(f"summary: written {int(written)}, skipped as done {int(done)}, skipped as bad {int(bad)} "
              f"({secs:.1f}s, {written / max(secs, 1e-9):.1f} img/s) -> {out_dir}", flush=True)
    cleanup()
    check_bad_fraction(int(bad), int(written + done + bad), args.max_bad_fraction, out_dir)


if __name__ == "__main__":
    main()
