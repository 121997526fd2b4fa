"""tools/extract_latent_codes.py end to end on a tiny ImageNet-layout tar with a tiny random VQ tokenizer:
plain `python` and `torchrun --nproc_per_node 2` give identical files equal to the tokenizer applied directly,
re-runs resume, the latent dataset reads the result back, and bad inputs fail before any work."""
import io
import json
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

from RandAR.dataset.latent import INatLatentDataset, check_codes_fit, codes_manifest
from RandAR.utils.run_stamp import file_fingerprint, legacy_fingerprint
from RandAR.model.tokenizers.llamagen_vq import VQModel
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
    # One of the 9 train images is broken: allow it (the default 0.001 stops the run, tested below).
    return ["--data-path", s["data"], "--code-path", code_path, "--vq-ckpt", s["ckpt"], "--config", s["cfg"],
            "--image-size", str(SIZE), "--batch-size", "3", "--max-bad-fraction", "0.2", *extra]


def _run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def _summary(text):
    return tuple(int(x) for x in SUMMARY.search(text).groups())


def _read_tree(out_dir):
    files = {}
    for label in sorted(d for d in os.listdir(out_dir) if d.isdigit()):
        for f in os.listdir(os.path.join(out_dir, label)):
            if not (f.endswith(".npy") and f[:-4].isdigit()):  # a hidden temporary file from a killed run
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
    assert sorted(os.listdir(runs["plain_dir"])) == ["0", "1", "2", "manifest.json"]
    manifest = json.load(open(os.path.join(runs["plain_dir"], "manifest.json")))
    assert manifest == dict(format="randar-codes-1", split="train", dataset="imagenet", tokenizer="tiny",
                            tokenizer_target="RandAR.model.tokenizers.llamagen_vq.VQModel", codebook_size=64,
                            vq_ckpt=file_fingerprint(setup["ckpt"]), image_size=SIZE, aug_mode="adm",
                            crop_range=None, code_length=L)
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
    (removed[0].parent / f".{removed[0].stem}.tmp.999.npy").write_bytes(b"half a file from a killed run")
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
    with pytest.raises(ValueError, match=f"code_length {L} \\(the model's block_size is {4 * L}\\)"):
        INatLatentDataset(runs["plain_dir"], vocab_size=TINY["codebook_size"], block_size=4 * L)

    out = tmp_path / "codes"
    shutil.copytree(runs["plain_dir"], out)
    os.remove(out / "manifest.json")  # as the released archives: the files themselves are checked
    with pytest.raises(ValueError, match=f"expected \\(num_aug, {4 * L}\\) for block_size {4 * L}"):
        INatLatentDataset(str(out), vocab_size=TINY["codebook_size"], block_size=4 * L)
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
    files = _read_tree(str(tmp_path / f"imagenet-mytok-{mode}-32_val_codes"))
    assert json.load(open(tmp_path / f"imagenet-mytok-{mode}-32_val_codes" / "manifest.json"))["split"] == "val"
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
    assert len(_read_tree(os.path.join(out, "imagenet-x-adm-32_val_codes"))) == len(s["val_members"])


def test_val_split_never_mixes_into_train_codes(setup, runs, tmp_path):
    """--debug (val) goes to its own folder; a train folder whose manifest says val (or another tokenizer,
    image size, aug mode) is not resumed: the run stops before any work, naming the difference."""
    s = setup
    extract.main(_argv(s, str(tmp_path), "--debug", "--num-workers", "0"))
    train_dir = tmp_path / "imagenet-tiny-adm-32_codes"
    assert not train_dir.exists() and (tmp_path / "imagenet-tiny-adm-32_val_codes").is_dir()

    shutil.copytree(runs["plain_dir"], train_dir)
    mtimes = {p: os.path.getmtime(p) for p in map(str, train_dir.rglob("*.npy"))}
    manifest = json.load(open(train_dir / "manifest.json"))
    json.dump({**manifest, "split": "val"}, open(train_dir / "manifest.json", "w"))
    with pytest.raises(SystemExit, match=r"^error: .*manifest\.json records another code extraction "
                                         r"\(split: 'val' there, 'train' now\)"):
        extract.main(_argv(s, str(tmp_path), "--num-workers", "0"))
    # a manifest naming the tokenizer's old module path (an earlier version's) is the same extraction: resumed
    old_spelling = {**manifest, "tokenizer_target": "RandAR.model.tokenizer.VQModel"}
    json.dump(old_spelling, open(train_dir / "manifest.json", "w"))
    extract.main(_argv(s, str(tmp_path), "--num-workers", "0"))
    json.dump(manifest, open(train_dir / "manifest.json", "w"))
    torch.manual_seed(1)  # another tokenizer of the same architecture and config name
    save_file(VQModel(**TINY).eval().state_dict(), str(tmp_path / "other.safetensors"))
    argv = _argv(s, str(tmp_path), "--num-workers", "0")
    argv[argv.index("--vq-ckpt") + 1] = str(tmp_path / "other.safetensors")
    with pytest.raises(SystemExit, match=r"records another code extraction \(vq_ckpt: '.*' there, '.*' now\)"):
        extract.main(argv)
    assert {p: os.path.getmtime(p) for p in map(str, train_dir.rglob("*.npy"))} == mtimes


def test_codes_without_manifest_are_not_resumed_but_still_train(setup, runs, tmp_path):
    """A folder of codes with no manifest (an older extraction): extraction will not add to it, since nothing
    says what made them; the latent dataset reads it (the released archives have no manifest)."""
    out = tmp_path / "imagenet-tiny-adm-32_codes"
    shutil.copytree(runs["plain_dir"], out)
    os.remove(out / "manifest.json")
    with pytest.raises(SystemExit, match="exist without a record of what made them.*another --code-path"):
        extract.main(_argv(setup, str(tmp_path), "--num-workers", "0"))
    assert len(INatLatentDataset(str(out), vocab_size=TINY["codebook_size"], block_size=L)) == 8


def test_too_many_bad_images_exit_nonzero_keeping_good_codes(setup, tmp_path):
    argv = _argv(setup, str(tmp_path), "--num-workers", "0")
    i = argv.index("--max-bad-fraction")
    with pytest.raises(SystemExit) as e:
        extract.main(argv[:i] + argv[i + 2:])  # the default --max-bad-fraction
    assert re.match(r"error: 1 of 9 images \(11\.11%\) could not be decoded, more than --max-bad-fraction 0\.001",
                    str(e.value.code)), e.value.code
    assert len(_read_tree(str(tmp_path / "imagenet-tiny-adm-32_codes"))) == 8  # the good ones are written
    extract.main(_argv(setup, str(tmp_path), "--num-workers", "0", "--max-bad-fraction", "0.12"))  # 1/9 allowed


TINY_RANDAR = os.path.join(REPO, "configs", "randar", "randar_tiny.yaml")  # vocab_size 64, 4x4 tokens


def test_training_refuses_codes_of_another_tokenizer_or_split(setup, tmp_path):
    """Codes of a 32-entry tokenizer have ids < 32, all valid ids of the tiny RandAR's 64-entry vocabulary:
    only the manifest can tell. Training stops before it makes any folder; the val split is refused too."""
    torch.manual_seed(1)
    other = dict(TINY, codebook_size=32)
    save_file(VQModel(**other).state_dict(), str(tmp_path / "vq32.safetensors"))
    cfg32 = _config(tmp_path / "vq32.yaml", other)
    base = ["--data-path", setup["data"], "--code-path", str(tmp_path), "--image-size", "8", "--num-workers", "0",
            "--max-bad-fraction", "0.2"]
    extract.main(base + ["--vq-ckpt", str(tmp_path / "vq32.safetensors"), "--config", cfg32])
    extract.main(base + ["--vq-ckpt", setup["ckpt"], "--config", setup["cfg"], "--debug"])
    train = load_script("train_c2i.py")

    def train_argv(codes):
        return train.parse_args(["--config", TINY_RANDAR, "--exp-name", "t", "--data-path", str(codes),
                                 "--results-dir", str(tmp_path / "results"), "--visualize-every", "0",
                                 "--wandb-offline", "max_iters=1", "accelerator.log_with=none"])

    with pytest.raises(ValueError, match=r"codebook_size 32 \(the model's vocab_size is 64\).*tokenizer 'vq32'"):
        train.main(train_argv(tmp_path / "imagenet-vq32-adm-8_codes"))
    with pytest.raises(ValueError, match=r"split 'val' \(the model's training split is 'train'\)"):
        train.main(train_argv(tmp_path / "imagenet-tiny-adm-8_val_codes"))
    assert not (tmp_path / "results").exists()
    with pytest.raises(ValueError, match="codebook_size 32"):  # the dataset class checks it too
        INatLatentDataset(str(tmp_path / "imagenet-vq32-adm-8_codes"), vocab_size=64, block_size=16)


def test_released_archive_names_stand_for_a_manifest(tmp_path):
    """The released archives have no manifest: MaskGIT's (ids < 1024) would pass a 16384-vocabulary model's id
    check, so their folder names say what made them. LlamaGen's archive trains a LlamaGen model as before."""
    rng = np.random.default_rng(0)
    for name, vocab in [("imagenet-maskgit-adm-256_codes", 1024), ("imagenet-llamagen-adm-256_codes", 16384)]:
        (tmp_path / name / "0").mkdir(parents=True)
        np.save(tmp_path / name / "0" / "0.npy", rng.integers(0, vocab, size=(2, 256)))
    with pytest.raises(ValueError, match=r"imagenet-maskgit-adm-256_codes says codebook_size 1024 \(the model's "
                                         r"vocab_size is 16384\)"):
        INatLatentDataset(str(tmp_path / "imagenet-maskgit-adm-256_codes"), vocab_size=16384, block_size=256)
    assert len(INatLatentDataset(str(tmp_path / "imagenet-llamagen-adm-256_codes") + "/", vocab_size=16384,
                                 block_size=256)) == 1
    assert len(INatLatentDataset(str(tmp_path / "imagenet-maskgit-adm-256_codes"), vocab_size=1024,
                                 block_size=256)) == 1
    llamagen = str(tmp_path / "imagenet-llamagen-adm-256_codes")  # a name records no checkpoint: any passes
    check_codes_fit(llamagen, vocab_size=16384, block_size=256, image_size=256, vq_ckpt=SCRIPT)
    with pytest.raises(ValueError, match=r"imagenet-llamagen-adm-256_codes says image_size 256 \(the image size"):
        check_codes_fit(llamagen, vocab_size=16384, block_size=256, image_size=512)


def test_no_inert_seed_flag(capsys):
    """Extraction draws no random numbers, so it has no --global-seed to suggest otherwise."""
    argv = ["--data-path", "d", "--code-path", "c", "--vq-ckpt", "v", "--config", "x.yaml"]
    assert extract.parse_args(argv).aug_mode == "adm"
    with pytest.raises(SystemExit):
        extract.parse_args(argv + ["--global-seed", "0"])
    assert "unrecognized arguments: --global-seed" in capsys.readouterr().err


def test_training_compares_the_tokenizer_checkpoint_and_image_size(setup, tmp_path):
    """Codes of another checkpoint of the same tokenizer (ids and shapes all valid) or of another image size
    are refused at training start, naming the field, before any folder is made; a manifest of an earlier
    version (partial vq_ckpt fingerprint) still fits its checkpoint."""
    codes = tmp_path / "codes"
    (codes / "0").mkdir(parents=True)
    np.save(codes / "0" / "0.npy", np.zeros((2, 16), dtype=np.int64))
    other = tmp_path / "other.safetensors"
    sd = {k: v.clone() for k, v in setup["model"].state_dict().items()}
    sd["quantize.embedding.weight"][0, 0] += 1.0  # a fine-tuned copy: same name pattern, size and shapes
    save_file(sd, str(other))

    def manifest(**changes):
        json.dump(codes_manifest(split="train", dataset="imagenet", tokenizer="tiny",
                                 tokenizer_target="RandAR.model.tokenizers.llamagen_vq.VQModel", codebook_size=64,
                                 vq_ckpt=file_fingerprint(setup["ckpt"]), image_size=8, aug_mode="adm",
                                 crop_range=None, code_length=16) | changes, open(codes / "manifest.json", "w"))

    train = load_script("train_c2i.py")
    results = tmp_path / "results"

    def train_main(vq_ckpt):
        train.main(train.parse_args(["--config", TINY_RANDAR, "--exp-name", "t", "--data-path", str(codes),
                                     "--results-dir", str(results), "--visualize-every", "0", "--vq-ckpt", vq_ckpt,
                                     "max_iters=0", "accelerator.log_with=none"]))

    manifest()
    with pytest.raises(ValueError, match=r"manifest\.json says vq_ckpt '\d+:sha256:\w+' \(the fingerprint of "
                                         r"vq_ckpt .*other\.safetensors is '\d+:sha256:\w+'\)"):
        train_main(str(other))
    manifest(image_size=16)
    with pytest.raises(ValueError, match=r"says image_size 16 \(the image size of block_size codes of the config's "
                                         r"tokenizer is 8\); they were made"):
        train_main(setup["ckpt"])
    assert not results.exists()
    manifest(vq_ckpt=legacy_fingerprint(setup["ckpt"]))
    check_codes_fit(str(codes), vocab_size=64, block_size=16, image_size=8, vq_ckpt=setup["ckpt"])
    with pytest.raises(ValueError, match=r"vq_ckpt '\d+:\w{32}' \(the fingerprint"):
        check_codes_fit(str(codes), vocab_size=64, block_size=16, image_size=8, vq_ckpt=str(other))
