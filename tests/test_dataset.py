"""Datasets and augmentations: ImageNet tar reader, image folder, latent codes, ADM crop and ten-crop."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from RandAR.dataset.augmentation import center_crop_arr, make_views, views_transform
from RandAR.dataset.builder import build_image_dataset, build_latent_dataset
from RandAR.dataset.imagenet import BadImage, ImageFolderDataset, ImageTarDataset, collate_skip_bad
from RandAR.dataset.latent import (MANIFEST_NAME, INatLatentDataset, LatentCodeDataset, check_codes_fit,
                                   codes_manifest, read_manifest)
from RandAR.utils.compat import canonical_config

# (wnid, file, kind, (width, height)); written to the tar in this (unsorted) order.
SPEC = [
    ("n03000000", "c.JPEG", "rgb", (48, 40)),
    ("n01000000", "b.JPEG", "gray", (40, 70)),
    ("n01000000", "a.JPEG", "rgb", (130, 96)),  # short side >= 2 * 32: exercises the box halving
    ("n02000000", "cmyk.JPEG", "cmyk", (36, 50)),
    ("n02000000", "broken.JPEG", "truncated", (64, 64)),
    ("n03000000", "png.JPEG", "png", (50, 33)),
    ("n02000000", "p.JPEG", "palette", (44, 44)),
    ("n03000000", "a.JPEG", "rgb", (33, 90)),
    ("n01000000", "c.JPEG", "rgb", (64, 64)),
]


def _pixels(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return np.clip(smooth + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def image_bytes(kind, size, seed):
    img = Image.fromarray(_pixels(*size, seed))
    buf = io.BytesIO()
    if kind == "gray":
        img.convert("L").save(buf, "JPEG", quality=95)
    elif kind == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=95)
    elif kind == "png":
        img.save(buf, "PNG")
    elif kind == "palette":
        img.convert("P").save(buf, "PNG")
    else:
        img.save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2] if kind == "truncated" else data


def make_imagenet_tar(root, split="train", spec=SPEC, prefix=""):
    """Write `<root>/<split>.tar` in ImageNet layout; return {member name: bytes} and the set of bad names."""
    os.makedirs(root, exist_ok=True)
    members, bad = {}, set()
    with tarfile.open(os.path.join(root, f"{split}.tar"), "w") as tar:
        for wnid in sorted({s[0] for s in spec}, reverse=True):  # directory entries, as `tar -cf` writes them
            info = tarfile.TarInfo(f"{prefix}{split}/{wnid}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for seed, (wnid, fname, kind, size) in enumerate(spec):
            name = f"{split}/{wnid}/{fname}"
            data = image_bytes(kind, size, seed)
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            members[name] = data
            if kind == "truncated":
                bad.add(name)
    return members, bad


def adm_reference(img, size):
    """The package's ADM centre crop as an array; the crop itself is checked against known pixels below."""
    return np.asarray(center_crop_arr(img, size))


# ---------------------------------------------------------------- augmentation

def test_center_crop_box_halving_is_exact_on_block_images():
    # 4x4 (2x2) constant blocks: each box halving gives the block values exactly; the short side then is 32, so
    # no bicubic resize, and the 40-pixel-wide result loses (40 - 32) // 2 = 4 columns on the left.
    small = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    for factor in (4, 2):  # 128x160 halves twice; 64x80 (short side exactly 2 * 32) halves once
        image = np.kron(small, np.ones((factor, factor, 1), np.uint8))
        np.testing.assert_array_equal(adm_reference(Image.fromarray(image), 32), small[:, 4:36])


def test_center_crop_offsets_round_down():
    rng = np.random.default_rng(1)
    tall = rng.integers(0, 256, (43, 32, 3), dtype=np.uint8)  # margin 11: 5 above, 6 below (round() gives 6)
    wide = rng.integers(0, 256, (32, 43, 3), dtype=np.uint8)  # margin 11: 5 left, 6 right
    np.testing.assert_array_equal(adm_reference(Image.fromarray(tall), 32), tall[5:37])
    np.testing.assert_array_equal(adm_reference(Image.fromarray(wide), 32), wide[:, 5:37])


def test_center_crop_bicubic_upscale_of_a_parabola():
    # 16x16 -> 32x32 (bicubic, x2, nothing cropped). Output column i samples the source at x = i / 2 - 0.25, and
    # PIL's cubic kernel (a = -0.5) reproduces polynomials up to degree 2 exactly wherever its 4 taps lie inside
    # the image (columns 4..27). Channel 0: f(j) = 3 j^2 - 45 j + 169 = 3 (j - 7.5)^2 + 1/4, so the output is
    # 3 (2i - 31)^2 / 16 + 1/4, rounded half up (bilinear would be 9/16 higher); channel 2: the ramp 200 - 8 j
    # -> 202 - 4 i; channel 1 is constant.
    j = np.arange(16)
    row = np.stack([3 * j ** 2 - 45 * j + 169, np.full(16, 77), 200 - 8 * j], -1)  # (16, 3)
    image = np.broadcast_to(row, (16, 16, 3)).astype(np.uint8)
    i = np.arange(4, 28)
    expected = np.stack([(3 * (2 * i - 31) ** 2 + 4 + 8) // 16, np.full(24, 77), 202 - 4 * i], -1)  # (24, 3)
    out = adm_reference(Image.fromarray(image), 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[:, 4:28], np.broadcast_to(expected, (32, 24, 3)))


def test_views_per_mode():
    img = Image.fromarray(_pixels(70, 50, 1))
    adm = make_views(img, "adm", 32)
    assert adm.shape == (2, 32, 32, 3) and adm.dtype == np.uint8
    np.testing.assert_array_equal(adm[0], adm_reference(img, 32))
    np.testing.assert_array_equal(adm[1], adm[0][:, ::-1])
    assert make_views(img, "none", 32).shape == (1, 32, 32, 3)
    tc = make_views(img, "ten-crop", 32, crop_range=1.1)
    assert tc.shape == (10, 32, 32, 3)
    base = adm_reference(img, 35)
    np.testing.assert_array_equal(tc[0], base[:32, :32])
    np.testing.assert_array_equal(tc[4], base[2:34, 2:34])
    t = views_transform("adm", 32)(img)
    assert t.shape == (2, 3, 32, 32) and t.dtype == torch.uint8
    np.testing.assert_array_equal(t[0].permute(1, 2, 0).numpy(), adm[0])
    with pytest.raises(ValueError):
        make_views(img, "random", 32)


# ---------------------------------------------------------------- image datasets

@pytest.mark.parametrize("prefix", ["", "./"])
def test_tar_dataset_index_labels_and_odd_images(tmp_path, prefix):
    members, bad = make_imagenet_tar(str(tmp_path), prefix=prefix)
    ds = ImageTarDataset(str(tmp_path / "train.tar"))
    names = sorted(members)
    assert len(ds) == len(names)
    assert ds.classes == ["n01000000", "n02000000", "n03000000"]
    for i, name in enumerate(names):
        image, label, index = ds[i]
        assert index == i and label == ds.classes.index(name.split("/")[1]) == ds.label(i)
        if name in bad:
            assert isinstance(image, BadImage) and name in image.path and "truncated" in image.reason
        else:
            assert image.mode == "RGB"
            ref = Image.open(io.BytesIO(members[name])).convert("RGB")
            np.testing.assert_array_equal(np.asarray(image), np.asarray(ref))


def test_tar_dataset_workers_and_collate(tmp_path):
    members, bad = make_imagenet_tar(str(tmp_path))
    ds = ImageTarDataset(str(tmp_path / "train.tar"), transform=views_transform("adm", 32), verbose=False)
    ds[0]  # open the handle in the parent: workers must not share it
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_skip_bad)
    seen, bad_seen = [], []
    for views, labels, indices, bad_items in loader:
        if views is not None:
            assert views.shape == (len(labels), 2, 3, 32, 32) and views.dtype == torch.uint8
        seen += indices.tolist()
        bad_seen += bad_items
    assert len(seen) == len(members) - len(bad) and len(bad_seen) == len(bad)
    names = sorted(members)
    for i in seen:
        img = Image.open(io.BytesIO(members[names[i]])).convert("RGB")
        np.testing.assert_array_equal(ds[i][0][0].permute(1, 2, 0).numpy(), adm_reference(img, 32))


def test_tar_index_reads_headers_only(tmp_path, monkeypatch):
    """Indexing 1.28M members must not read their data: count what tarfile reads while the index is built."""
    path = str(tmp_path / "big.tar")
    member_size, n = 32 * 1024, 300
    payload = {}
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            info = tarfile.TarInfo(f"train/n{i % 30:08d}/{i}.JPEG")
            data = bytes([i % 251]) * member_size
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            payload[info.name.encode()] = data

    read_bytes = []

    class CountingFile:
        def __init__(self, f):
            self.f = f

        def read(self, size=-1):
            data = self.f.read(size)
            read_bytes.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

    real_open = tarfile.bltn_open
    monkeypatch.setattr(tarfile, "bltn_open", lambda *a, **k: CountingFile(real_open(*a, **k)))
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("indexing decoded an image"))
    ds = ImageTarDataset(path, verbose=False)
    assert len(ds) == n and ds.num_classes == 30
    # A 512-byte header (plus tarfile's 1-byte end-of-data probe) per member; the data is 64 blocks each.
    assert sum(read_bytes) <= (n + 2) * 513, sum(read_bytes)
    name = b"train/n00000007/7.JPEG"
    assert ds._read(ds.names.tolist().index(name)) == payload[name]


def test_tar_without_imagenet_layout_is_rejected(tmp_path):
    path = str(tmp_path / "train.tar")
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("flat.JPEG")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="train/<wnid>"):
        ImageTarDataset(path)


def test_folder_dataset_and_builder(tmp_path):
    members, bad = make_imagenet_tar(str(tmp_path / "tar"))
    for name, data in members.items():
        p = tmp_path / "folder" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (tmp_path / "folder" / "train" / "n01000000" / "notes.txt").write_text("not an image")
    ds = build_image_dataset("folder", str(tmp_path / "folder"))  # picks <data-path>/train
    tar_ds = build_image_dataset("imagenet", str(tmp_path / "tar"))
    assert isinstance(ds, ImageFolderDataset) and len(ds) == len(tar_ds) == len(members)
    assert ds.classes == tar_ds.classes
    for i in range(len(ds)):
        a, b = ds[i], tar_ds[i]
        assert a[1:] == b[1:]
        if isinstance(a[0], BadImage):
            assert isinstance(b[0], BadImage)
        else:
            np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    with pytest.raises(FileNotFoundError, match="val.tar"):
        build_image_dataset("imagenet", str(tmp_path / "tar"), is_train=False)


# ---------------------------------------------------------------- latent codes

def write_codes(root, files, num_aug=2, length=16, vocab=64, dtype=np.int64, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for label, index in files:
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
        codes = rng.integers(0, vocab, (num_aug, length)).astype(dtype)
        np.save(os.path.join(root, str(label), f"{index}.npy"), codes)
        out[(label, index)] = codes
    return out


def test_latent_dataset_reads_codes(tmp_path):
    files = [(0, 3), (0, 10), (2, 1), (1, 7), (10, 2)]
    codes = write_codes(str(tmp_path), files)
    (tmp_path / "1" / ".7.npy.tmp123").write_bytes(b"partial")  # an interrupted write is ignored
    ds = INatLatentDataset(str(tmp_path), vocab_size=64, block_size=16)
    assert LatentCodeDataset is INatLatentDataset
    assert len(ds) == 5 and ds.num_classes == 11
    order = sorted(files, key=lambda f: (f[0], f[1]))
    for i, (label, index) in enumerate(order):
        x, y, idx = ds[i]
        assert x.shape == (16,) and x.dtype == torch.long and y == label and idx == i
        assert any(torch.equal(x, torch.from_numpy(row)) for row in codes[(label, index)])
    rows = {tuple(ds[0][0].tolist()) for _ in range(40)}
    assert len(rows) == 2  # both augmentations get picked
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch[0].shape == (5, 16)


@pytest.mark.parametrize("case, match", [
    ("out_of_range", "id 64 out of range for vocab_size 64"),
    ("negative", "negative id"),
    ("block_size", r"expected \(num_aug, 16\)"),
    ("float", "integer dtype"),
    ("ndim", "shape"),
])
def test_latent_dataset_rejects_bad_files(tmp_path, case, match):
    write_codes(str(tmp_path), [(0, i) for i in range(5)])
    bad = tmp_path / "0" / "3.npy"
    codes = np.load(bad)
    if case == "out_of_range":
        codes[1, 5] = 64
    elif case == "negative":
        codes[0, 0] = -1
    elif case == "block_size":
        codes = codes[:, :8]
    elif case == "float":
        codes = codes.astype(np.float32)
    else:
        codes = codes[None]
    np.save(bad, codes)
    with pytest.raises(ValueError, match=match) as e:
        INatLatentDataset(str(tmp_path), vocab_size=64, block_size=16)
    assert str(bad) in str(e.value)


def test_latent_dataset_points_at_wrong_level(tmp_path):
    write_codes(str(tmp_path / "imagenet-llamagen-adm-256_codes"), [(0, 0)])
    with pytest.raises(ValueError, match="one level further down"):
        INatLatentDataset(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        build_latent_dataset(latent_section(str(tmp_path / "missing")), vocab_size=64, block_size=16)


def latent_section(root_dir):
    return OmegaConf.create({"target": "RandAR.dataset.latent.LatentCodeDataset", "params": {"root_dir": root_dir}})


def test_build_latent_dataset_checks_codes_and_labels_against_the_model(tmp_path):
    """The config's dataset section, built with the model's vocab_size, block_size and num_classes."""
    write_codes(str(tmp_path), [(0, 0), (2, 1)])
    ds = build_latent_dataset(latent_section(str(tmp_path)), vocab_size=64, block_size=16, num_classes=3,
                              verbose=False)
    assert len(ds) == 2 and ds.num_classes == 3 and (ds.vocab_size, ds.block_size) == (64, 16)
    with pytest.raises(ValueError, match="block_size 8"):
        build_latent_dataset(latent_section(str(tmp_path)), vocab_size=64, block_size=8, verbose=False)
    with pytest.raises(ValueError, match="labels up to 2 but the model has num_classes=2"):
        build_latent_dataset(latent_section(str(tmp_path)), vocab_size=64, block_size=16, num_classes=2,
                             verbose=False)


def _manifest(root, tokenizer_target):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, MANIFEST_NAME), "w") as f:
        json.dump(codes_manifest(split="train", dataset="imagenet", tokenizer="t", tokenizer_target=tokenizer_target,
                                 codebook_size=64, vq_ckpt="x", image_size=32, aug_mode="adm", crop_range=None,
                                 code_length=16), f)


def test_manifest_tokenizer_target_compares_canonical_targets(tmp_path):
    """A folder extracted when its tokenizer lived under an older module path (LEGACY_TARGETS) fits a config naming
    the new path, and the reverse (both are read in canonical form); another tokenizer does not."""
    root = str(tmp_path / "codes")
    _manifest(root, "RandAR.model.tokenizer.VQModel")  # the old path of the LlamaGen VQ
    assert read_manifest(root)["tokenizer_target"] == "RandAR.model.tokenizers.llamagen_vq.VQModel"
    check_codes_fit(root, vocab_size=64, block_size=16, tokenizer_target="RandAR.model.tokenizers.llamagen_vq.VQModel")
    with pytest.raises(ValueError, match="tokenizer_target 'RandAR.model.tokenizers.llamagen_vq.VQModel'"):
        check_codes_fit(root, vocab_size=64, block_size=16,
                        tokenizer_target="RandAR.model.tokenizers.maskgit_vqgan.MaskGITTokenizer")
    _manifest(root, "RandAR.model.tokenizers.maskgit_vqgan.MaskGITTokenizer")
    old_config = {"tokenizer": {"target": "RandAR.model.maskgit_tokenizer.MaskGITTokenizer"}}
    check_codes_fit(root, vocab_size=64, block_size=16,
                    tokenizer_target=canonical_config(old_config)["tokenizer"]["target"])
    with pytest.raises(ValueError, match="tokenizer_target"):  # an unknown target is not equal to a known one
        check_codes_fit(root, vocab_size=64, block_size=16, tokenizer_target="RandAR.model.gone.VQModel")