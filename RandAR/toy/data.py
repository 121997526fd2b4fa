"""A procedural 10-class image dataset for the CPU quickstart, written in ImageNet's tar layout.

Each class is a shape, texture or layout (disc, ring, two dots, plus, corner, stripes, checker, split, band,
frame) in one of four colours on a dark or light background, with random position, size, rotation (within
23 degrees of upright), period and colours, so classes differ by shape only and every image is new. The classes
differ at the scale of the 8x8 token grid, which a RandAR model trained for minutes can get right. Masks are drawn
at 4x resolution and box-averaged down, which gives anti-aliased edges a small tokenizer can reproduce.

Images are a pure function of (seed, split, label, index): the same seed gives byte-identical tars, and asking
for more images per class keeps the first ones. Splits are written as `train.tar` / `val.tar` with members
`<split>/<wnid>/<wnid>_<i>.JPEG` (wnids n00000000.. sort in class order), so the real ImageNet reader
(RandAR.dataset.imagenet.ImageTarDataset) and the extraction tools read them unchanged.
"""
import io
import math
import os
import tarfile
from typing import Dict, Tuple

import numpy as np
from PIL import Image, ImageDraw

from RandAR.utils.atomic import atomic_path, write_json

CLASS_NAMES = ("disc", "ring", "two_dots", "plus", "corner", "stripes", "checker", "split", "band", "frame")
SPLITS = {"train": 0, "val": 1}  # part of each image's seed, so train and val never share an image
SUPERSAMPLE = 4
JPEG_QUALITY = 95
# Few colours: every shape/background pair needs its own edge codes in the 128-code tokenizer and its own share of
# the training data, so each pair added costs training time (README, "Quickstart results").
SHAPE_COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200)], dtype=np.float32)
BACKGROUND_COLOURS = np.array([(20, 20, 20), (245, 245, 245)], dtype=np.float32)
MIN_COLOUR_DISTANCE = 120.0  # RGB distance between shape and background colours
MAX_ROTATION = 0.4  # radians either way from each class's upright pose


def wnid(label: int) -> str:
    """ImageNet-like folder name of a class; zero-padded so that sorting names sorts labels."""
    return f"n{label:08d}"


def _rotated(points, cx: float, cy: float, theta: float):
    """Rotate (x, y) offsets by theta and move them to (cx, cy)."""
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _shape_mask(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Coverage in [0, 1] of the class's shape, float32 [size, size]. Geometry is in output pixels, drawn at
    SUPERSAMPLE x and box-averaged. Classes differ in layout at the scale of the 8x8 token grid (one blob, a blob
    with a hole, two blobs, ..., a border), so a small model's slightly wobbly edges do not change the class."""
    ss = SUPERSAMPLE
    n = size * ss
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12, size=2) * size
    r = rng.uniform(0.28, 0.38) * size
    theta = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)

    def poly(points):
        draw.polygon([(x * ss, y * ss) for x, y in _rotated(points, cx, cy, theta)], fill=255)

    def disc(x, y, rad, fill=255):
        draw.ellipse([(x - rad) * ss, (y - rad) * ss, (x + rad) * ss, (y + rad) * ss], fill=fill)

    name = CLASS_NAMES[label]
    if name == "disc":
        disc(cx, cy, r)
    elif name == "ring":
        disc(cx, cy, r * 1.1)
        disc(cx, cy, r * rng.uniform(0.5, 0.62), fill=0)
    elif name == "two_dots":
        d, rad = r * 0.85, r * 0.5
        dx, dy = d * math.cos(theta), d * math.sin(theta)
        disc(cx - dx, cy - dy, rad)
        disc(cx + dx, cy + dy, rad)
    elif name == "plus":
        a, w = r * 1.3, r * 0.42  # long, thick arms: four lobes even at the 8x8 token scale
        poly([(-a, -w), (a, -w), (a, w), (-a, w)])
        poly([(-w, -a), (w, -a), (w, a), (-w, a)])
    else:
        # Textures, half-planes, bands and borders: computed on the supersampled pixel grid.
        y, x = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / ss
        u = (x - cx) * math.cos(theta) + (y - cy) * math.sin(theta)
        v = -(x - cx) * math.sin(theta) + (y - cy) * math.cos(theta)
        if name == "stripes":  # vertical
            period = rng.uniform(7.0, 10.0)
            mask = np.mod(u, period) < period / 2
        elif name == "checker":
            cell = rng.uniform(5.0, 8.0)
            mask = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
        elif name == "split":  # two halves, side by side
            mask = u > 0
        elif name == "corner":  # a quarter of the plane, towards one of the four image corners
            su, sv = rng.choice([-1.0, 1.0], size=2)
            mask = (su * u > 0) & (sv * v > 0)
        elif name == "band":  # one horizontal bar across the image
            mask = np.abs(v) < rng.uniform(0.15, 0.22) * size
        else:  # frame: the shape colour everywhere but a square window
            mask = np.maximum(np.abs(u), np.abs(v)) > rng.uniform(0.2, 0.28) * size
        canvas = Image.fromarray((mask * 255).astype(np.uint8))
    full = np.asarray(canvas, dtype=np.float32) / 255.0
    return full.reshape(size, ss, size, ss).mean(axis=(1, 3))


def _colours(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """(shape colour, background colour), far enough apart to keep the shape visible."""
    while True:
        fg = SHAPE_COLOURS[rng.integers(len(SHAPE_COLOURS))]
        bg = BACKGROUND_COLOURS[rng.integers(len(BACKGROUND_COLOURS))]
        if np.linalg.norm(fg - bg) >= MIN_COLOUR_DISTANCE:
            return fg, bg


def render_image(label: int, rng: np.random.Generator, image_size: int = 32) -> np.ndarray:
    """One image of class `label` -> uint8 [image_size, image_size, 3]."""
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES) - 1}], got {label}")
    fg, bg = _colours(rng)
    mask = _shape_mask(label, rng, image_size)[..., None]  # (H, W, 1)
    image = bg * (1 - mask) + fg * mask
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def image_rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
    """The generator of one image: independent of how many images a split holds."""
    return np.random.default_rng([seed, SPLITS[split], label, index])


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    # 4:4:4 chroma: at 32 px, 4:2:0 subsampling would smear the colour edges that define the shapes.
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def write_split_tar(path: str, split: str, num_per_class: int, seed: int, image_size: int = 32,
                    quality: int = JPEG_QUALITY) -> int:
    """Write `<split>/<wnid>/<wnid>_<i>.JPEG` for every class into an uncompressed tar, atomically.
    Headers carry no time or owner, so the bytes depend on the arguments only. Returns the image count."""
    count = 0
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for label in range(len(CLASS_NAMES)):
            for i in range(num_per_class):
                data = encode_jpeg(render_image(label, image_rng(seed, split, label, i), image_size), quality)
                info = tarfile.TarInfo(f"{split}/{wnid(label)}/{wnid(label)}_{i:06d}.JPEG")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
                count += 1
    return count


def make_toy_dataset(out_dir: str, num_train_per_class: int, num_val_per_class: int, seed: int = 0,
                     image_size: int = 32) -> Dict[str, str]:
    """Write train.tar, val.tar and classes.json ({"0": "disc", ...}) under `out_dir`; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"train": os.path.join(out_dir, "train.tar"), "val": os.path.join(out_dir, "val.tar"),
             "classes": os.path.join(out_dir, "classes.json")}
    write_split_tar(paths["train"], "train", num_train_per_class, seed, image_size)
    if num_val_per_class > 0:
        write_split_tar(paths["val"], "val", num_val_per_class, seed, image_size)
    write_json({str(i): name for i, name in enumerate(CLASS_NAMES)}, paths["classes"])
    return paths


def load_tar_arrays(tar_path: str, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """All images of a tar split (ADM centre crop to image_size) -> (uint8 [N, S, S, 3], int64 labels [N]).
    Meant for small datasets like this one, which fit in memory."""
    from RandAR.dataset.augmentation import center_crop_arr
    from RandAR.dataset.imagenet import BadImage, ImageTarDataset

    ds = ImageTarDataset(tar_path, transform=lambda im: np.asarray(center_crop_arr(im, image_size)), verbose=False)
    images = np.empty((len(ds), image_size, image_size, 3), np.uint8)
    for i in range(len(ds)):
        image, _, _ = ds[i]
        if isinstance(image, BadImage):
            raise ValueError(f"cannot decode {image.path}: {image.reason}")
        images[i] = image
    return images, ds.labels.copy()
