"""tools/extract_latent_codes.py end to end on a tiny ImageNet-layout tar with a tiny random VQ tokenizer:
plain `python` and `torchrun --nproc_per_node 2` give identical files equal to the tokenizer applied directly,
re-runs resume, the latent dataset reads the result back, and bad inputs fail before any work."""
import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from RandAR.dataset.latent import INatLatentDataset
from RandAR.model.tokenizer import VQModel
from helpers import load_script
from test_dataset import SPEC, adm_reference, make_imagenet_tar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "extract_latent_codes.py")
TINY = dict(codebook_size=64, codebook_embed_dim=8, encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1], z_channels=32,
            base_channels=32, num_res_blocks=1, norm_groups=8)
SIZE, L = 32, (32 // 2) ** 2
SUMMARY = re.compile(r"summary: written (\d+), skipped as done (\d+), skipped as bad (\d+)")

extract = load_script("tools/extract_latent_codes.py")


def _config(path, params):
    lines = ["model:", "  target: RandAR.model.tokenizer.VQModel", "  params:"]
    lines += [f"    {k}: {v}" for k, v in params.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    members, bad = make_imagenet_tar(str(root / "data"))
    val_members, _ = make_imagenet_tar(str(root / "data"), split="val", spec=SPEC[:4])
    torch.manual_seed(0)
    model = VQModel(**TINY).eval()
    save_file(model.state_dict(), str(root / "tiny.safetensors"))
    cfg = _config(root / "tiny.yaml", TINY)
    return dict(root=root, data=str(root / "data"), members=members, bad=bad, val_members=val_members,
                model=model, cfg=cfg, ckpt=str(root / "tiny.safetensors"))


def _argv(s, code_path, *extra):
    return ["--data-path", s["data"], "--code-path", code_path, "--vq-ckpt", s["ckpt"], "--config", s["cfg"],
            "--image-size", str(SIZE), "--batch-size", "3", *extra]


def _run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def _summary(text):
    return tuple(int(x) for x in SUMMARY.search(text).groups())


def _read_tree(out_dir):
    files = {}
    for label in sorted(os.listdir(out_dir)):
        for f in os.listdir(os.path.join(out_dir, label)):
            if not f.endswith(".npy"):  # a hidden temporary file from a killed run
                continue
            files[(int(label), f)] = np.load(os.path.join(out_dir, label, f))
    return files


def _expected_adm(s):
    """{(label, 'index.npy'): codes [2, L]}: the tokenizer applied directly to the crop and its flip."""
    names = sorted(s["members"])
    classes = sorted({n.split("/")[1] for n in names})
    out = {}
    for index, name in enumerate(names):
        if name in s["bad"]:
            continue
        crop = adm_reference(Image.open(io.BytesIO(s["members"][name])).convert("RGB"), SIZE)
        x = torch.from_numpy(np.stack([crop, crop[:, ::-1]]).copy()).permute(0, 3, 1, 2).float() / 255
        out[(classes.index(name.split("/")[1]), f"{index}.npy")] = s["model"].encode_indices(
            s["model"].preprocess(x)).numpy()
    return out


@pytest.fixture(scope="module")
def runs(setup):
    s = setup
    plain = _run([sys.executable, SCRIPT, *_argv(s, str(s["root"] / "plain"), "--num-workers", "2")])
    dist = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT,
                 *_argv(s, str(s["root"] / "dist"), "--num-workers", "0")])
    return dict(plain=plain, dist=dist, plain_dir=str(s["root"] / "plain" / "imagenet-tiny-adm-32_codes"),
                dist_dir=str(s["root"] / "dist" / "imagenet-tiny-adm-32_codes"))


def test_plain_run_layout_and_codes(setup, runs):
    files = _read_tree(runs["plain_dir"])
    expected = _expected_adm(setup)
    assert sorted(files) == sorted(expected)
    assert sorted(os.listdir(runs["plain_dir"])) == ["0", "1", "2"]
    for key, codes in files.items():
        assert codes.shape == (2, L) and codes.dtype == np.int64
        np.testing.assert_array_equal(codes, expected[key], err_msg=str(key))
    n_good = len(setup["members"]) - len(setup["bad"])
    assert _summary(runs["plain"]) == (n_good, 0, 1)
    assert "skipped bad image" in runs["plain"] and "broken.JPEG" in runs["plain"] and "truncated" in runs["plain"]


def test_torchrun_matches_plain(setup, runs):
    plain, dist = _read_tree(runs["plain_dir"]), _read_tree(runs["dist_dir"])
    assert sorted(plain) == sorted(dist)
    for key in plain:
        np.testing.assert_array_equal(plain[key], dist[key], err_msg=str(key))
    assert "rank 0 of 2" in runs["dist"] and _summary(runs["dist"]) == (len(plain), 0, 1)


def test_rerun_resumes(setup, runs, tmp_path):
    out = tmp_path / "imagenet-tiny-adm-32_codes"
    shutil.copytree(runs["plain_dir"], out)
    before = _read_tree(str(out))
    mtimes = {p: os.path.getmtime(p) for p in map(str, out.rglob("*.npy"))}
    argv = _argv(setup, str(tmp_path), "--num-workers", "0")

    extract.main(argv)
    assert {p: os.path.getmtime(p) for p in map(str, out.rglob("*.npy"))} == mtimes

    removed = sorted(out.rglob("*.npy"))[:2]
    for p in removed:
        p.unlink()
    (removed[0].parent / f".{removed[0].name}.tmp999").write_bytes(b"half a file from a killed run")
    extract.main(argv)
    after = _read_tree(str(out))
    assert sorted(after) == sorted(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_rerun_summary(setup, runs, tmp_path, capsys):
    shutil.copytree(runs["plain_dir"], tmp_path / "imagenet-tiny-adm-32_codes")
    extract.main(_argv(setup, str(tmp_path), "--num-workers", "0"))
    n_good = len(setup["members"]) - len(setup["bad"])
    assert _summary(capsys.readouterr().out) == (0, n_good, 1)  # the bad file is retried and reported again


def test_latent_dataset_reads_extracted_codes(runs, tmp_path):
    ds = INatLatentDataset(runs["plain_dir"], vocab_size=TINY["codebook_size"], block_size=L)
    files = _read_tree(runs["plain_dir"])
    assert len(ds) == len(files)
    for i in range(len(ds)):
        codes, label, index = ds[i]
        assert codes.shape == (L,) and codes.dtype == torch.long
        stored = files[(label, os.path.basename(ds.paths[i].decode()))]
        assert any(torch.equal(codes, torch.from_numpy(row)) for row in stored)
    with pytest.raises(ValueError, match=f"block_size {4 * L}"):
        INatLatentDataset(runs["plain_dir"], vocab_size=TINY["codebook_size"], block_size=4 * L)

    out = tmp_path / "codes"
    shutil.copytree(runs["plain_dir"], out)
    victim = sorted(out.rglob("*.npy"))[0]
    codes = np.load(victim)
    codes[0, 0] = TINY["codebook_size"]
    np.save(victim, codes)
    with pytest.raises(ValueError, match=str(victim)):
        INatLatentDataset(str(out), vocab_size=TINY["codebook_size"], block_size=L)


@pytest.mark.parametrize("mode, num_aug", [("ten-crop", 10), ("none", 1)])
def test_other_aug_modes_on_val(setup, tmp_path, mode, num_aug):
    extract.main(_argv(setup, str(tmp_path), "--aug-mode", mode, "--num-workers", "0", "--debug",
                       "--tokenizer-name", "mytok"))
    files = _read_tree(str(tmp_path / f"imagenet-mytok-{mode}-32_codes"))
    names = sorted(setup["val_members"])
    assert len(files) == len(names)
    model = setup["model"]
    classes = sorted({n.split("/")[1] for n in names})
    for index, name in enumerate(names):
        codes = files[(classes.index(name.split("/")[1]), f"{index}.npy")]
        assert codes.shape == (num_aug, L)
        img = Image.open(io.BytesIO(setup["val_members"][name])).convert("RGB")
        if mode == "ten-crop":
            base = adm_reference(img, int(SIZE * 1.1))  # 35: crops at offsets 0, 3 and centre 2
            views = [base[y:y + SIZE, x:x + SIZE] for y, x in [(0, 0), (0, 3), (3, 0), (3, 3), (2, 2)]]
            views += [v for v in [base[:, ::-1][y:y + SIZE, x:x + SIZE]
                                  for y, x in [(0, 0), (0, 3), (3, 0), (3, 3), (2, 2)]]]
        else:
            views = [adm_reference(img, SIZE)]
        x = torch.from_numpy(np.stack(views).copy()).permute(0, 3, 1, 2).float() / 255
        np.testing.assert_array_equal(codes, model.encode_indices(model.preprocess(x)).numpy())


def test_folder_dataset_run(setup, tmp_path):
    for name, data in setup["val_members"].items():
        p = tmp_path / "images" / name.split("/", 1)[1]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    extract.main(["--dataset", "folder", "--data-path", str(tmp_path / "images"), "--code-path", str(tmp_path),
                  "--vq-ckpt", setup["ckpt"], "--config", setup["cfg"], "--image-size", "32", "--num-workers", "0"])
    files = _read_tree(str(tmp_path / "folder-tiny-adm-32_codes"))
    assert len(files) == len(setup["val_members"])


def test_bad_inputs_fail_before_any_work(setup, tmp_path):
    s, out = setup, str(tmp_path / "out")

    def fails(argv, match):
        with pytest.raises(SystemExit) as e:
            extract.main(argv)
        assert re.search(match, str(e.value.code)), e.value.code
        assert not os.path.exists(out)

    def with_flag(flag, value):
        argv = _argv(s, out)
        argv[argv.index(flag) + 1] = value
        return argv

    fails(with_flag("--vq-ckpt", str(tmp_path / "nope.pt")), "vq-ckpt not found")
    fails(with_flag("--config", _config(tmp_path / "wrong.yaml", dict(TINY, codebook_size=32))), "does not fit")
    fails(with_flag("--data-path", str(tmp_path)), "train.tar")
    randar = tmp_path / "randar.yaml"
    randar.write_text(open(s["cfg"]).read().replace("model:", "tokenizer:"))
    fails(with_flag("--config", str(randar)), "--tokenizer-name")
    fails(_argv(s, out, "--image-size", "33"), "downsample factor")
    with pytest.raises(SystemExit):
        extract.main(_argv(s, out, "--crop-range", "1.2"))  # ten-crop only
    # a RandAR config with an explicit name is accepted
    extract.main(with_flag("--config", str(randar)) + ["--tokenizer-name", "x", "--debug", "--num-workers", "0"])
    assert len(_read_tree(os.path.join(out, "imagenet-x-adm-32_codes"))) == len(s["val_members"])
