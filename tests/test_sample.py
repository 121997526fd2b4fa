"""sample_c2i.py with a tiny random RandAR: the same images on 1 or 2 processes and at any batch size, resume
after a partial run, per-index labels and seeds, the --debug grid, the .npz packing."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from safetensors.torch import load_file, save_file

from RandAR.model.orders import random_permutations
from RandAR.sampling import folder, image_io, inputs
from RandAR.utils import run_stamp
from RandAR.utils.distributed import DistInfo, create_npz_from_sample_folder, default_precision
from helpers import load_script, write_tiny_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
N = 10
# Runs without --precision sample in the CPU's default: bf16 where it has native bfloat16, else float32.
PREC = folder.precision_name(default_precision("cpu"))
RUN = f"tiny-gpt-size-8-8-cfg-1.0-3.0-steps-6-{PREC}-seed-0"  # 4x4 tokens x2 = 8px, the config's 6 steps
DIST = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


sample_c2i = load_script("sample_c2i.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random tiny RandAR and tokenizer weights as files, as a user would pass them."""
    d = tmp_path_factory.mktemp("weights")
    write_tiny_weights(d, CONFIG)
    return d


def flags(weights, sample_dir, *extra, num=N, batch=2):
    return ["--exp-name", "tiny", "--config", CONFIG, "--gpt-ckpt", str(weights / "gpt.safetensors"),
            "--vq-ckpt", str(weights / "vq.safetensors"), "--sample-dir", str(sample_dir), "--cfg-scales", "1.0,3.0",
            "--num-fid-samples", str(num), "--per-proc-batch-size", str(batch), *extra]


def run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def npz(sample_dir):
    with np.load(os.path.join(sample_dir, f"{RUN}.npz")) as data:
        return data["arr_0"]


@pytest.fixture(scope="module")
def plain(weights, tmp_path_factory):
    """The reference run: plain python, one process, batch size 2 (N = 10 is not a multiple of it)."""
    d = tmp_path_factory.mktemp("plain")
    run([sys.executable, "sample_c2i.py", *flags(weights, d)])
    return d, npz(d)


def test_plain_run_layout(plain, weights):
    d, images = plain
    assert sorted(os.listdir(d / RUN)) == [f"{i:06d}.png" for i in range(N)]  # exactly N, no temporaries
    assert sorted(os.listdir(d)) == [RUN, f"{RUN}.npz", f"{RUN}.stamp.json"]
    stamp = json.load(open(d / f"{RUN}.stamp.json"))
    assert stamp["gpt_ckpt"] == run_stamp.file_fingerprint(str(weights / "gpt.safetensors"))
    assert stamp["vq_ckpt"] == run_stamp.file_fingerprint(str(weights / "vq.safetensors"))
    assert stamp["sampling"]["cfg_scales"] == [1.0, 3.0] and stamp["config"]["ar_model"]["params"]["vocab_size"] == 64
    assert images.dtype == np.uint8 and images.shape == (N, 8, 8, 3)
    for i in range(N):
        np.testing.assert_array_equal(np.asarray(Image.open(d / RUN / f"{i:06d}.png")), images[i])
    assert len({im.tobytes() for im in images}) == N  # distinct images


def test_torchrun_two_processes_match_plain(weights, plain, tmp_path):
    _, images = plain
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "sample_c2i.py",
         *flags(weights, tmp_path)])
    np.testing.assert_array_equal(npz(tmp_path), images)


def test_batch_size_does_not_change_images(weights, plain, tmp_path):
    _, images = plain
    # Label, seed and order of an image are functions of its index, whatever batch it lands in.
    idx = list(range(N))
    assert folder.class_labels(idx[4:8], 10, 0) == folder.class_labels(idx, 10, 0)[4:8]
    assert folder.image_seeds(0, idx[4:8]) == folder.image_seeds(0, idx)[4:8]
    torch.testing.assert_close(random_permutations(4, [16], folder.image_seeds(0, idx[4:8]))[0],
                               random_permutations(len(idx), [16], folder.image_seeds(0, idx))[0][4:8])
    sample_c2i.main(flags(weights, tmp_path, batch=4))
    # The tiny model's CPU arithmetic is batch-invariant, so even the pixels agree.
    np.testing.assert_array_equal(npz(tmp_path), images)


def test_resume_makes_only_the_missing_images(weights, plain, tmp_path, monkeypatch):
    src, images = plain
    shutil.copytree(src / RUN, tmp_path / RUN)
    shutil.copy(src / f"{RUN}.stamp.json", tmp_path)
    deleted = [1, 6, 9]
    for i in deleted:
        os.remove(tmp_path / RUN / f"{i:06d}.png")
    kept = {i: os.stat(tmp_path / RUN / f"{i:06d}.png").st_mtime_ns for i in range(N) if i not in deleted}

    made = []
    original = sample_c2i.sample_batch

    def recording(model, tokenizer, indices, *rest):
        made.extend(indices)
        return original(model, tokenizer, indices, *rest)

    monkeypatch.setattr(sample_c2i, "sample_batch", recording)
    sample_c2i.main(flags(weights, tmp_path, batch=4))
    assert sorted(made) == deleted
    assert all(os.stat(tmp_path / RUN / f"{i:06d}.png").st_mtime_ns == t for i, t in kept.items())
    np.testing.assert_array_equal(npz(tmp_path), images)

    made.clear()  # everything present: nothing sampled, the .npz is packed again
    sample_c2i.main(flags(weights, tmp_path))
    assert made == []
    np.testing.assert_array_equal(npz(tmp_path), images)


@pytest.fixture(scope="module")
def other_weights(weights, tmp_path_factory):
    """Another model under the same file names (as every training's iters_XXXXXXXX.safetensors)."""
    d = tmp_path_factory.mktemp("other")
    state = load_file(str(weights / "gpt.safetensors"))
    state["output.weight"] = state["output.weight"].flip(0).contiguous()
    save_file(state, str(d / "gpt.safetensors"))
    shutil.copy(weights / "vq.safetensors", d)
    return d


def test_same_file_name_other_checkpoint_does_not_resume(weights, other_weights, plain, tmp_path, monkeypatch):
    _, images = plain
    sample_c2i.main(flags(weights, tmp_path))  # the first model's run
    made = []
    original = sample_c2i.sample_batch
    monkeypatch.setattr(sample_c2i, "sample_batch",
                        lambda m, t, indices, *rest: made.extend(indices) or original(m, t, indices, *rest))
    before = sorted(os.listdir(tmp_path / RUN))

    with pytest.raises(SystemExit, match=r"^error: .*stamp\.json records another sampling run \(gpt_ckpt: .*--force"):
        sample_c2i.main(flags(other_weights, tmp_path))
    assert made == [] and sorted(os.listdir(tmp_path / RUN)) == before  # stopped before any work
    np.testing.assert_array_equal(npz(tmp_path), images)  # the first model's pack is left alone

    # --force: the run starts afresh with the other model; a fresh run of that model gives the same images.
    sample_c2i.main(flags(other_weights, tmp_path, "--force"))
    assert sorted(made) == list(range(N))
    fresh = tmp_path / "fresh"
    sample_c2i.main(flags(other_weights, fresh))
    np.testing.assert_array_equal(npz(tmp_path), npz(fresh))
    assert not np.array_equal(npz(tmp_path), images)

    made.clear()  # the same inputs again: a resume, nothing sampled
    sample_c2i.main(flags(other_weights, tmp_path))
    assert made == []
    stamp = json.load(open(tmp_path / f"{RUN}.stamp.json"))
    stamp["sampling"]["top_k"] = 3  # any setting that changes the images, whether the run name shows it or not
    with pytest.raises(SystemExit, match=r"\(sampling\.top_k: 0 there, 3 now\); pass --force"):
        folder.claim_run_folder(str(tmp_path / RUN), stamp, DIST)


def test_outputs_without_a_stamp_are_not_resumed(weights, plain, tmp_path):
    src, _ = plain
    shutil.copytree(src / RUN, tmp_path / RUN)  # e.g. made by an older version: nothing says what made them
    with pytest.raises(SystemExit, match="exist without a record of what made them.*--force"):
        sample_c2i.main(flags(weights, tmp_path))
    assert not (tmp_path / f"{RUN}.npz").exists()


@pytest.mark.parametrize("flag", ["--gpt-ckpt", "--vq-ckpt"])
def test_missing_checkpoint_fails_before_building(weights, tmp_path, monkeypatch, capsys, flag):
    built = []
    monkeypatch.setattr(inputs, "build_randar", lambda *a, **k: built.append(a))
    argv = flags(weights, tmp_path / "out")
    argv[argv.index(flag) + 1] = str(tmp_path / "nowhere.safetensors")
    with pytest.raises(SystemExit) as e:
        sample_c2i.main(argv)
    assert str(e.value) == f"error: {flag} {tmp_path / 'nowhere.safetensors'} not found"
    assert built == [] and not (tmp_path / "out").exists()


def _tensors_file(path, tensors):
    save_file(tensors, str(path))
    return str(path)


def test_fingerprint_sees_every_byte(tmp_path):
    """One tensor changed in the middle of a 24 MB checkpoint, same size: the fingerprint changes (the earlier
    version's 8 MB sample does not see it); equal contents under other names share it."""
    tensors = {f"layer{i}": torch.randn(1 << 20) for i in range(6)}  # 4 MB each
    a = _tensors_file(tmp_path / "a.safetensors", tensors)
    b = _tensors_file(tmp_path / "b.safetensors", tensors)
    assert run_stamp.file_fingerprint(a) == run_stamp.file_fingerprint(b)
    tensors["layer2"][100_000] += 1.0  # ~9.6 MB in, between two of the old sample's chunks
    c = _tensors_file(tmp_path / "c.safetensors", tensors)
    assert os.path.getsize(c) == os.path.getsize(a)
    assert run_stamp.legacy_fingerprint(c) == run_stamp.legacy_fingerprint(a)
    assert run_stamp.file_fingerprint(c) != run_stamp.file_fingerprint(a)
    assert run_stamp.file_fingerprint(c).startswith(f"{os.path.getsize(c)}:sha256:")


def test_fingerprint_is_hashed_once_per_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("RANDAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_stamp, "_memo", {})
    reads = []
    real_hash = run_stamp.sha256_file
    monkeypatch.setattr(run_stamp, "sha256_file", lambda p: reads.append(p) or real_hash(p))
    path = _tensors_file(tmp_path / "w.safetensors", {"w": torch.randn(1000)})
    first = run_stamp.file_fingerprint(path)
    assert run_stamp.file_fingerprint(path) == first and len(reads) == 1  # this process's memo
    monkeypatch.setattr(run_stamp, "_memo", {})  # as a new process: the cache file answers
    assert run_stamp.file_fingerprint(path) == first and len(reads) == 1
    assert os.path.isfile(tmp_path / "cache" / run_stamp.CACHE_FILE)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # rewritten in place: hashed again
    assert run_stamp.file_fingerprint(path) == first and len(reads) == 2
    (tmp_path / "cache" / run_stamp.CACHE_FILE).write_text("{not json")  # a damaged cache is rebuilt
    monkeypatch.setattr(run_stamp, "_memo", {})
    assert run_stamp.file_fingerprint(path) == first and len(reads) == 3


def test_stamp_of_an_earlier_version_resumes_or_names_the_change(tmp_path):
    """A stamp holding the earlier partial fingerprint resumes when the file still gives it (and is rewritten
    with the full one); a changed file is named as such."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(bytes(range(256)) * 40000)  # over 8 MB: the earlier version read 8 chunks of it
    path = str(path)
    stamp_path = str(tmp_path / "run.stamp.json")
    stamp = {"gpt_ckpt": run_stamp.file_fingerprint(path), "steps": 6}
    # what the earlier version recorded for this file (its file_fingerprint, run at commit 7bdbc81)
    json.dump({**stamp, "gpt_ckpt": "10240000:0105c8b780f0ddcf0d48b2e3b11cb7f2"}, open(stamp_path, "w"))
    assert run_stamp.claim(stamp_path, stamp) is True
    assert json.load(open(stamp_path)) == stamp
    json.dump({**stamp, "gpt_ckpt": "4176:" + "0" * 32}, open(stamp_path, "w"))
    with pytest.raises(run_stamp.StampMismatchError, match=r"gpt_ckpt: '4176:0+' there \(an earlier version's "
                       r"fingerprint, which .*w\.safetensors does not match now\)"):
        run_stamp.claim(stamp_path, stamp)


def test_class_labels_and_seeds():
    idx = list(range(1000))
    random = folder.class_labels(idx, 10, 0)
    assert set(random) == set(range(10)) and folder.class_labels(idx[:100], 10, 0) == random[:100]
    assert folder.class_labels(idx, 10, 1) != random
    balanced = folder.class_labels(idx, 10, 0, "balanced")
    assert np.bincount(balanced).tolist() == [100] * 10
    blocks = [balanced[b:b + 10] for b in range(0, 1000, 10)]
    assert all(sorted(b) == list(range(10)) for b in blocks)  # any prefix is balanced to within one
    assert len({tuple(b) for b in blocks}) > 50  # shuffled, and not one fixed order
    assert folder.class_labels(idx[:35], 10, 0, "balanced") == balanced[:35]
    assert folder.class_labels(idx, 10, 3, "balanced") != balanced
    seeds = folder.image_seeds(0, range(10000))
    assert len(set(seeds)) == 10000 and all(0 <= s < 2 ** 63 for s in seeds)
    assert not set(seeds) & set(folder.image_seeds(1, range(10000)))


def test_debug_writes_one_grid(weights, tmp_path):
    sample_c2i.main(flags(weights, tmp_path, "--debug", batch=3))
    assert os.listdir(tmp_path) == [f"{RUN}-debug.png"]  # no sample folder, no .npz, no stamp
    grid = np.asarray(Image.open(tmp_path / f"{RUN}-debug.png"))
    assert grid.shape == (2 * 10 + 2, 2 * 10 + 2, 3)  # 3 images of 8px: 2x2 cells with 2px padding


def test_eval_size_and_name(weights, tmp_path):
    sample_c2i.main(flags(weights, tmp_path, "--image-size-eval", "16", "--class-sampling", "balanced",
                          "--top-k", "5", num=3))
    name = f"tiny-gpt-size-8-16-cfg-1.0-3.0-steps-6-{PREC}-topk-5-balanced-seed-0"
    with np.load(tmp_path / f"{name}.npz") as data:
        assert data["arr_0"].shape == (3, 16, 16, 3)


def test_clear_errors(weights, tmp_path, capsys):
    with pytest.raises(SystemExit, match="randar_xl_0.7b_llamagen.yaml"):  # a misspelt config name
        sample_c2i.main(flags(weights, tmp_path)[:2] + ["--config", "configs/randar/randar_xl_0.7b_llamgen.yaml"]
                        + flags(weights, tmp_path)[4:])
    with pytest.raises(SystemExit, match="decodes 4x4 tokens into 8px"):
        sample_c2i.main(flags(weights, tmp_path, "--image-size", "256"))
    with pytest.raises(SystemExit, match="two numbers"):
        sample_c2i.main(flags(weights, tmp_path, "--cfg-scales", "4.0"))
    for steps in ("0", "-2"):  # refused where the flag is parsed, before the model is built
        with pytest.raises(SystemExit) as exit_info:
            sample_c2i.main(flags(weights, tmp_path, "--num-inference-steps", steps))
        assert exit_info.value.code == 2
        assert f"--num-inference-steps: {steps}: a step count is -1" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_npz_packing(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        image_io.save_png(im, str(tmp_path / f"{i:06d}.png"))
    path = create_npz_from_sample_folder(str(tmp_path), 4, str(tmp_path / "out.npz"))
    with np.load(path) as data:
        np.testing.assert_array_equal(data["arr_0"], images[:4])
    os.remove(tmp_path / "000002.png")
    with pytest.raises(FileNotFoundError, match="000002.png is missing"):
        create_npz_from_sample_folder(str(tmp_path), 4, str(tmp_path / "other.npz"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith("other.npz")]  # nor a temporary


def test_run_names_are_stable():
    """Existing sample folders and stamps are found by these names: they must not change."""
    from RandAR.model.generate import DecodeConfig
    from RandAR.sampling.inputs import sampling_settings

    plain = sampling_settings(DecodeConfig((1.0, 4.0), 88), image_size=256, image_size_eval=256, precision="bf16",
                              global_seed=0, class_sampling="random")
    assert folder.run_name("randar", "ckpt", plain) == "randar-ckpt-size-256-256-cfg-1.0-4.0-steps-88-bf16-seed-0"
    other = sampling_settings(DecodeConfig((1.0, 2.5), -1, temperature=0.9, top_k=5, top_p=0.8), image_size=256,
                              image_size_eval=512, precision="none", global_seed=3, class_sampling="balanced")
    assert folder.run_name("e", "c", other, with_cfg=False) == ("e-c-size-256-512-steps--1-fp32-temp-0.9-topk-5-topp-0.8"
                                                                "-balanced-seed-3")
    extra = sampling_settings(DecodeConfig((3.0, 3.0), 1024), image_size=512, image_size_eval=512, precision="none",
                              global_seed=0, class_sampling="random", spatial_cfg_scales=(2.5, 2.5),
                              spatial_masking_ratio=0.5, extrapolation_factor=2, ntk_boundary=2)
    assert folder.run_name("x", "c", extra) == ("x-c-size-512-512-cfg-3.0-3.0-steps-1024-fp32-extrap-2-ntk-2-scfg-2.5-2.5"
                                                "-smask-0.5-seed-0")


# ---------------------------------------------------------------- default precision from the CPU's capabilities

@pytest.mark.parametrize("caps, expected", [
    ({"avx2": True, "avx512_bf16": False, "amx_bf16": False}, "none"),  # AVX2-only x86: bf16 is emulated
    ({"avx2": True, "avx512_bf16": True}, "bf16"),                      # AVX512-BF16
    ({"avx512_bf16": False, "amx_bf16": True}, "bf16"),                 # AMX
    ({"architecture": "aarch64", "bf16": True}, "bf16"),                 # Arm BF16
    ({"architecture": "aarch64", "bf16": False, "sve_bf16": False}, "none"),
])
def test_default_precision_follows_the_cpu_capabilities(monkeypatch, caps, expected):
    """The CPU default is decided by the capabilities torch reports (never by a timing), --precision overrides
    it, and CUDA is bf16 whatever the CPU."""
    from RandAR.sampling.inputs import resolve_precision
    from RandAR.utils import distributed as precision
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(torch, "matmul", None)  # a timing would need a product: there must be none
    assert precision.cpu_has_native_bf16() == (expected == "bf16")
    assert resolve_precision(None, torch.device("cpu")) == expected
    assert resolve_precision("fp16", torch.device("cpu")) == "fp16"
    assert resolve_precision(None, torch.device("cuda")) == "bf16"


@pytest.mark.parametrize("flags, expected", [("fpu sse avx2 fma", False), ("fpu avx2 avx512f avx512_bf16", True),
                                             ("fpu avx2 amx_tile amx_bf16", True)])
def test_cpu_bf16_from_proc_cpuinfo_without_torch_capabilities(monkeypatch, tmp_path, flags, expected):
    """Older torch without torch.cpu.get_capabilities: the flags of /proc/cpuinfo decide."""
    from RandAR.utils import distributed as precision
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(precision, "CPUINFO", str(info))
    assert precision.cpu_has_native_bf16() == expected
    assert precision.default_precision("cpu") == ("bf16" if expected else "none")
