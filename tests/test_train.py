"""train_c2i.py on the tiny config: overfitting, torchrun on CPU, kill-and-resume equality, checkpoint rotation
and mirroring, wandb offline files, plus unit tests of the helpers that make resumption exact."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import re
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from RandAR.training.checkpoint_folders import (RECORD, UNRECORDED, CheckpointError, checkpoint_name, clear_temporaries,
                                         find_resume_state, latest_checkpoint, list_checkpoints, load_state_or_stop,
                                         mirror_checkpoint, prune_checkpoints, save_checkpoint, state_problem)
from RandAR.training.state import EMA, SeededItems, StepBatchSampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
TORCHRUN = os.path.join(os.path.dirname(PY), "torchrun")
CONFIG = "configs/randar/randar_tiny.yaml"
EXP = "tiny"
FOLDER = f"{EXP}_bs_8_lr_0.003"  # <exp-name>_bs_<global_batch_size>_lr_<lr>
# Overfit 4 code sequences; dropout on so that the RNG matters for the resume test.
BASE = ["optimizer.lr=0.003", "log_every=10", "ckpt_every=10", "accelerator.log_with=none", "visualize_every=0",
        "ar_model.params.resid_dropout_p=0.1", "ar_model.params.token_dropout_p=0.1"]
MAX_ITERS = 80
TIMEOUT = 120


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    e.pop("WANDB_API_KEY", None)
    return e


def train_cmd(data, results, *extra, launcher=None):
    return (launcher or [PY]) + ["train_c2i.py", "--config", CONFIG, "--exp-name", EXP, "--data-path", data,
                                 "--results-dir", results, *BASE, *extra]


def run_ok(cmd, timeout=TIMEOUT):
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


def logged_losses(text):
    return [float(line.split("| loss ")[1].split()[0]) for line in text.splitlines() if "| loss " in line]


def wait_for(cond, proc, timeout=TIMEOUT):
    """Poll the filesystem until cond() is true; fail if the process ends first or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        assert proc.poll() is None, "training ended before the expected checkpoint appeared"
        time.sleep(0.002)
    raise AssertionError("timed out waiting for a checkpoint")


def assert_same_tensors(a, b):
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs between {a} and {b}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """32 code files of 4 classes (one prototype sequence each), two augmentations per file, and a tiny VQ."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 64, (4, 16))
    for i in range(32):
        label = i % 4
        codes = np.stack([protos[label], protos[label]])
        codes[1, rng.integers(0, 16)] = rng.integers(0, 64)
        os.makedirs(root / "codes" / str(label), exist_ok=True)
        np.save(root / "codes" / str(label) / f"{i}.npy", codes)
    from RandAR.model.tokenizers import build_tokenizer
    from RandAR.utils.config import load_config
    torch.manual_seed(0)
    tok = build_tokenizer(load_config(os.path.join(ROOT, CONFIG)).tokenizer)
    save_file({k: v.contiguous() for k, v in tok.state_dict().items()}, str(root / "vq.safetensors"))
    return root


@pytest.fixture(scope="module")
def reference(data):
    """An uninterrupted run with everything on: EMA, wandb offline, visualisations, keep-last-2, a mirror."""
    results, disk = data / "ref_results", data / "ref_disk"
    out = run_ok(train_cmd(str(data / "codes"), str(results), f"max_iters={MAX_ITERS}", "ema=true",
                           "visualize_every=40", "accelerator.log_with=wandb", "--wandb-offline",
                           "--vq-ckpt", str(data / "vq.safetensors"), "--keep-last-k", "2",
                           "--disk-location", str(disk)))
    return results / FOLDER, disk / FOLDER, out


# ---- whole runs -----------------------------------------------------------------------------------------

def test_loss_falls_when_overfitting(reference):
    losses = logged_losses(reference[2])
    assert len(losses) == MAX_ITERS // 10
    assert losses[0] > 3.5 and losses[-1] < losses[0] - 1.5, losses


def test_outputs_exports_visualisations_and_wandb(reference):
    exp, _, out = reference
    final = exp / "checkpoints" / f"{checkpoint_name(MAX_ITERS)}.safetensors"
    with safe_open(str(final), "pt") as f:
        meta = f.metadata()
    assert meta["weights"] == "model" and meta["step"] == str(MAX_ITERS)
    assert json.loads(meta["config"])["max_iters"] == MAX_ITERS
    from RandAR.model.builder import build_randar
    model = build_randar(json.loads(meta["ar_model"]), ckpt_path=str(final))  # strict: the official keys
    assert model.vocab_size == 64
    assert (exp / "checkpoints" / f"{checkpoint_name(MAX_ITERS)}.ema.safetensors").is_file()
    assert sorted(os.listdir(exp / "visualizations")) == ["iters_00000040.png", "iters_00000080.png"]
    assert (exp / "log.txt").read_text().count("| loss ") == MAX_ITERS // 10
    assert (exp / "config.yaml").is_file()
    runs = list((exp / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs and runs[0].stat().st_size > 0
    for name in ("loss", "grad norm", "lr", "skipped", "step time", "tokens/s", "peak mem"):
        assert name in out


def test_training_state_names_no_module_path(reference):
    """accelerator.save_state pickles the registered TrainState, scheduler and EMA as their state_dicts (plain
    values and tensors), so a state saved before a module moved (RandAR/utils/train_state.py ->
    RandAR/training/state.py) still loads: no file of the folder refers to a RandAR module."""
    exp, _, _ = reference
    folder = exp / "checkpoints" / checkpoint_name(MAX_ITERS)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name.startswith("custom_checkpoint_") for p in files)  # TrainState, scheduler, EMA
    for p in files:
        assert b"RandAR" not in p.read_bytes(), p


def test_keep_last_k_and_disk_mirror(reference):
    exp, mirror, _ = reference
    want = [checkpoint_name(s) for s in (MAX_ITERS - 10, MAX_ITERS)]
    for folder in (exp / "checkpoints", mirror):
        assert [os.path.basename(p) for _, p in list_checkpoints(str(folder))] == want
        assert sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) == sorted(
            [w + ".ema.safetensors" for w in want] + [w + ".safetensors" for w in want])
        assert not [f for f in os.listdir(folder) if f.startswith(".tmp_")]
    assert_same_tensors(exp / "checkpoints" / f"{want[-1]}.safetensors", mirror / f"{want[-1]}.safetensors")


def test_sigkill_and_relaunch_gives_identical_weights(reference, data, tmp_path):
    """Kill the run twice (SIGKILL, once as soon as a checkpoint is complete, once as soon as the next save
    starts), relaunch the same command, compare the final exports with the uninterrupted run bit for bit.
    The relaunches also load data with a worker process, and without visualisations or wandb."""
    ckpts = tmp_path / FOLDER / "checkpoints"
    cmd = train_cmd(str(data / "codes"), str(tmp_path), f"max_iters={MAX_ITERS}", "ema=true")

    def newest():
        found = latest_checkpoint([str(ckpts)])
        return found[0] if found else -1

    def save_started(after):
        return any(n.startswith(".tmp_iters_") and int(n[-8:]) > after for n in os.listdir(ckpts))

    resumed_from = []
    for kill_when in ("first checkpoint", "next save starts"):
        start = newest()
        proc = subprocess.Popen(cmd + (["--num-workers", "1"] if resumed_from else []), cwd=ROOT, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if kill_when == "first checkpoint":
                wait_for(lambda: newest() > start, proc)
            else:
                wait_for(lambda: newest() > start or save_started(start), proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        resumed_from.append(newest())
    out = run_ok(cmd + ["--num-workers", "1"])
    assert f"resumed from {ckpts / checkpoint_name(resumed_from[-1])}" in out
    assert 0 < resumed_from[-1] < MAX_ITERS
    ref = reference[0] / "checkpoints"
    for suffix in (".safetensors", ".ema.safetensors"):
        name = checkpoint_name(MAX_ITERS) + suffix
        assert_same_tensors(ckpts / name, ref / name)


def test_resume_from_mirror_when_local_checkpoints_are_gone(reference, data, tmp_path):
    disk = tmp_path / "disk"
    shutil.copytree(reference[1], disk / FOLDER)
    out = run_ok(train_cmd(str(data / "codes"), str(tmp_path / "fresh"), f"max_iters={MAX_ITERS + 4}", "ema=true",
                           "--disk-location", str(disk)))
    assert f"resumed from {disk / FOLDER / checkpoint_name(MAX_ITERS)}" in out
    assert (tmp_path / "fresh" / FOLDER / "checkpoints" / f"{checkpoint_name(MAX_ITERS + 4)}.safetensors").is_file()
    assert (disk / FOLDER / checkpoint_name(MAX_ITERS + 4)).is_dir()


def test_failing_disk_location_initial_weights_and_accumulation(reference, data, tmp_path):
    """A mirror that cannot be written is logged and training goes on; --gpt-ckpt starts from trained weights;
    gradient accumulation splits the global batch into micro-batches."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    trained = reference[0] / "checkpoints" / f"{checkpoint_name(MAX_ITERS)}.safetensors"
    out = run_ok(train_cmd(str(data / "codes"), str(tmp_path), "max_iters=4", "ckpt_every=2", "log_every=2",
                           "accelerator.gradient_accumulation_steps=2", "--disk-location", str(not_a_dir),
                           "--gpt-ckpt", str(trained)))
    assert out.count("could not mirror checkpoint") == 2
    assert (tmp_path / FOLDER / "checkpoints" / checkpoint_name(4)).is_dir()
    assert f"initial weights {trained}" in out and "global batch 8 = 1 x 2 x 4" in out
    assert logged_losses(out)[0] < 2.5  # starts where the reference run ended, not from scratch


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return size


def test_damaged_newest_state_resumes_from_the_previous_one(reference, data, tmp_path):
    """A truncated optimizer.bin in the newest state (as a copy between clusters leaves it): the relaunch names it,
    sets it aside and resumes from the previous state, here one saved without a checksum record (an earlier
    version), checked by loading it; the final weights equal the uninterrupted run's."""
    ckpts = tmp_path / FOLDER / "checkpoints"
    shutil.copytree(reference[0], tmp_path / FOLDER)
    newest, previous = ckpts / checkpoint_name(MAX_ITERS), ckpts / checkpoint_name(MAX_ITERS - 10)
    size = _truncate(newest / "optimizer.bin")
    os.remove(previous / RECORD)
    out = run_ok(train_cmd(str(data / "codes"), str(tmp_path), f"max_iters={MAX_ITERS}", "ema=true"))
    assert (f"training state {newest} is damaged (optimizer.bin is {size // 2} bytes, {size} recorded): set aside "
            f"as {newest}.damaged; resuming from the intact {previous}") in out
    assert f"{previous} has no {RECORD} (saved by an earlier version): it is checked by loading it" in out
    assert f"resumed from {previous} at step {MAX_ITERS - 10}" in out and "Traceback" not in out
    name = checkpoint_name(MAX_ITERS) + ".safetensors"
    assert_same_tensors(ckpts / name, reference[0] / "checkpoints" / name)
    assert state_problem(str(newest)) is None and (ckpts / (newest.name + ".damaged")).is_dir()


def test_only_state_damaged_stops_with_one_line(reference, data, tmp_path):
    ckpts = tmp_path / FOLDER / "checkpoints"
    shutil.copytree(reference[0], tmp_path / FOLDER)
    shutil.rmtree(ckpts / checkpoint_name(MAX_ITERS - 10))
    newest = ckpts / checkpoint_name(MAX_ITERS)
    size = _truncate(newest / "optimizer.bin")
    r = subprocess.run(train_cmd(str(data / "codes"), str(tmp_path), f"max_iters={MAX_ITERS + 10}"), cwd=ROOT,
                       env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: training state {newest} is damaged (optimizer.bin is {size // 2} bytes, {size} recorded) and no "
        f"intact state is left in {ckpts}: restore it from an intact copy (e.g. the --disk-location mirror), or remove "
        f"it (rm -r {newest}) to train from step 0, or start a new --exp-name from its export with --gpt-ckpt "
        f"{newest}.safetensors")
    assert newest.is_dir()  # left where it is for the user


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 3.5 MB tmpfs (root only): room for one tiny checkpoint (2.2 MB with its export), not two."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3500k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mount -t tmpfs is not allowed here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_during_a_save_stops_with_one_line_and_resumes(data, tiny_tmpfs):
    """The disk fills up while step 4 is saved (a real ENOSPC on a tmpfs): one line names the folder, the space
    needed and the intact previous state (exit 2); with room made, the same command resumes from it."""
    cmd = train_cmd(str(data / "codes"), str(tiny_tmpfs), "max_iters=6", "ckpt_every=2", "log_every=2")
    ckpts = tiny_tmpfs / FOLDER / "checkpoints"
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"error: no space left on the device of {ckpts} while saving {ckpts / checkpoint_name(4)}: it needs about "
        rf"2\.\d MiB \(the size of the previous state\), \d\.\d MiB was free; the previous state "
        rf"{ckpts / checkpoint_name(2)} is intact: make room \(or move --results-dir\) and run the same command "
        rf"again to resume from step 2", line), line
    assert [s for s, _ in list_checkpoints(str(ckpts))] == [2]
    assert state_problem(str(ckpts / checkpoint_name(2))) is None
    assert not [n for n in os.listdir(ckpts) if n.startswith(".") or n.startswith(checkpoint_name(4))]
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_tmpfs)], check=True)
    out = run_ok(cmd)
    assert f"resumed from {ckpts / checkpoint_name(2)} at step 2" in out
    assert [s for s, _ in list_checkpoints(str(ckpts))] == [6]


def test_torchrun_two_processes_and_sigusr1_stop(data, tmp_path):
    """Two gloo processes; SIGUSR1 to rank 1 alone makes both ranks checkpoint at the same step and exit."""
    ckpts = tmp_path / FOLDER / "checkpoints"
    cmd = train_cmd(str(data / "codes"), str(tmp_path), "max_iters=100000", "ckpt_every=4", "log_every=2",
                    launcher=[TORCHRUN, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000)])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: latest_checkpoint([str(ckpts)]) is not None, proc)
        rank1 = [pid for pid in _descendants(proc.pid) if _env_of(pid).get("RANK") == "1"]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGUSR1)
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert "2 process(es)" in out and "stop requested (SIGUSR1)" in out
    step, path = latest_checkpoint([str(ckpts)])
    assert 4 <= step < 100000
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= set(os.listdir(path))
    assert logged_losses(out)


def _descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except FileNotFoundError:
            kids = []
        out += kids
        todo += kids
    return out


def _env_of(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return dict(kv.split("=", 1) for kv in f.read().decode(errors="replace").split("\0") if "=" in kv)
    except OSError:
        return {}


def test_global_batch_must_divide(data, tmp_path):
    import train_c2i
    args = train_c2i.parse_args(["--config", os.path.join(ROOT, CONFIG), "--exp-name", "x", "--data-path",
                                 str(data / "codes"), "--results-dir", str(tmp_path), "global_batch_size=9",
                                 "accelerator.gradient_accumulation_steps=2", "accelerator.log_with=none"])
    with pytest.raises(ValueError, match="not divisible"):
        train_c2i.main(args)


# ---- helpers --------------------------------------------------------------------------------------------

def _global_batches(n, step_count, world, accum, batch, seed=0):
    """Index lists of global batches 0..step_count-1 as assembled from every rank's micro-batches."""
    per_rank = [iter(StepBatchSampler(n, batch, world, r, accum, seed)) for r in range(world)]
    out = []
    for _ in range(step_count):
        chunks = {}
        for r, it in enumerate(per_rank):
            for a in range(accum):
                chunks[a * world + r] = [i for i, _ in next(it)]
        out.append([i for c in sorted(chunks) for i in chunks[c]])
    return out


def test_step_sampler_epochs_resume_and_world_size_independence():
    one = _global_batches(20, 6, world=1, accum=1, batch=8)
    assert sorted(one[0] + one[1]) == sorted(set(one[0] + one[1]))  # no repeats within an epoch
    assert one[0] != one[2]                                          # new permutation each epoch
    assert _global_batches(20, 6, world=2, accum=2, batch=2) == one  # the same data per step
    resumed = iter(StepBatchSampler(20, 8, seed=0, start_step=5))
    assert [i for i, _ in next(resumed)] == one[5]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(7, 8)


def test_seeded_items_are_deterministic_and_leave_the_rng_alone():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3)

    ds = SeededItems(Noisy(), seed=0)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = ds[(2, 5)]  # (index, epoch)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, ds[(2, 5)])
    assert not torch.equal(a, ds[(2, 6)]) and not torch.equal(a, ds[(3, 5)])
    assert not torch.equal(a, SeededItems(Noisy(), seed=1)[(2, 5)])


def test_ema_update():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.state_dict()["weight"].clone()
    ema.update(model, decay=0.75)
    assert torch.allclose(ema.state_dict()["weight"], 0.75 * before + 0.25 * model.weight)
    assert set(ema.state_dict()) == set(model.state_dict())


def _fake_checkpoint(folder, step):
    path = os.path.join(folder, checkpoint_name(step))
    os.makedirs(path)
    open(os.path.join(path, "model.safetensors"), "w").close()
    open(path + ".safetensors", "w").close()


def test_rotation_latest_prune_and_mirror(tmp_path):
    local, mirror = str(tmp_path / "local"), str(tmp_path / "mirror")
    os.makedirs(local)
    for s in (10, 20, 30):
        _fake_checkpoint(local, s)
    os.makedirs(os.path.join(local, ".tmp_" + checkpoint_name(40)))      # an interrupted save
    open(os.path.join(local, "iters_00000040.safetensors.tmp.123"), "w").close()
    assert latest_checkpoint([local, mirror]) == (30, os.path.join(local, checkpoint_name(30)))
    clear_temporaries(local)
    names = [checkpoint_name(s) + e for s in (10, 20, 30) for e in ("", ".safetensors")]
    assert sorted(os.listdir(local)) == sorted(names)
    assert prune_checkpoints(local, 0) == []
    prune_checkpoints(local, 2)
    assert [s for s, _ in list_checkpoints(local)] == [20, 30]
    assert not os.path.exists(os.path.join(local, checkpoint_name(10) + ".safetensors"))
    for s in (20, 30):
        mirror_checkpoint(local, s, mirror, keep_last_k=1)
    assert sorted(os.listdir(mirror)) == [checkpoint_name(30), checkpoint_name(30) + ".safetensors"]
    _fake_checkpoint(mirror, 50)
    assert latest_checkpoint([local, mirror]) == (50, os.path.join(mirror, checkpoint_name(50)))


def test_clip_and_check_skips_bad_updates():
    from accelerate import Accelerator
    from omegaconf import OmegaConf

    from RandAR.training.step import clip_and_check
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 1, bias=False)
    opt_cfg = OmegaConf.create({"max_grad_norm": 1.0, "skip_grad_iter": 5, "skip_grad_norm": 10.0,
                                "skip_grad_rule": "global_norm"})  # the rules: tests/test_train_step.py

    def check(grad, step, loss=1.0, stop=False):
        model.weight.grad = torch.full_like(model.weight, grad)
        return clip_and_check(acc, model, torch.tensor(loss), opt_cfg, step, stop)

    norm, skip, stop = check(20.0, step=6)
    assert skip and not stop and norm.item() == pytest.approx(20.0 * 3 ** 0.5)
    assert model.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-5)  # clipped
    assert not check(20.0, step=4)[1]            # before skip_grad_iter: clipped, not skipped
    assert not check(0.1, step=6)[1]
    assert check(float("nan"), step=0)[1]        # non-finite gradient: always skipped
    assert check(0.1, step=0, loss=float("inf"))[1]
    assert check(0.1, step=0, stop=True)[2]


def _write_state(files):
    def write(folder):
        for name, data in files.items():
            os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
    return write


def test_state_record_damage_and_fallback(tmp_path):
    """The record lists every file's size and checksum; a changed byte, a truncated or a missing file is named;
    the resume takes the newest intact state over both folders and sets the damaged ones aside."""
    local, mirror, said = str(tmp_path / "local"), str(tmp_path / "mirror"), []
    for step in (10, 20):
        save_checkpoint(local, step, _write_state({"optimizer.bin": b"x" * 100, "sub/model.safetensors": b"m" * 9}),
                        {})
    path10, path20 = (os.path.join(local, checkpoint_name(s)) for s in (10, 20))
    record = json.load(open(os.path.join(path20, RECORD)))["files"]
    assert sorted(record) == ["optimizer.bin", "sub/model.safetensors"] and record["optimizer.bin"]["size"] == 100
    assert state_problem(path20) is None
    with open(os.path.join(path20, "optimizer.bin"), "r+b") as f:
        f.write(b"y")  # same size, one byte changed
    assert state_problem(path20) == "optimizer.bin does not match its recorded checksum"
    mirror_checkpoint(local, 10, mirror, keep_last_k=1)
    os.remove(os.path.join(path10, "sub", "model.safetensors"))
    assert state_problem(path10) == "sub/model.safetensors missing"
    assert find_resume_state([local, mirror], said.append) == (10, os.path.join(mirror, checkpoint_name(10)))
    assert said == [f"training state {path20} is damaged (optimizer.bin does not match its recorded checksum): set "
                    f"aside as {path20}.damaged; resuming from the intact {mirror}/{checkpoint_name(10)}",
                    f"training state {path10} is damaged (sub/model.safetensors missing): set aside as "
                    f"{path10}.damaged; resuming from the intact {mirror}/{checkpoint_name(10)}"]
    assert list_checkpoints(local) == [] and find_resume_state([local], said.append) is None
    os.remove(os.path.join(mirror, checkpoint_name(10), RECORD))
    assert state_problem(os.path.join(mirror, checkpoint_name(10))) == UNRECORDED


def test_full_disk_from_the_writer_and_unreadable_states(tmp_path):
    """The writer raising ENOSPC (as a full disk makes it: the tmpfs test above does it for real, as root): one
    line, the partial folder and the step's exports removed, the previous state kept. A state that cannot be
    loaded is named with the way forward."""
    ckpts = str(tmp_path)
    save_checkpoint(ckpts, 2, _write_state({"optimizer.bin": b"x" * 3000}), {})

    def full(folder):
        _write_state({"optimizer.bin": b"x" * 10})(folder)
        raise OSError(errno.ENOSPC, "No space left on device")

    exports = {".safetensors": ({"w": torch.zeros(4)}, {})}
    with pytest.raises(CheckpointError, match=rf"^no space left on the device of {ckpts} while saving "
                                              rf"{ckpts}/{checkpoint_name(4)}: it needs about 0\.0 MiB .*; the "
                                              rf"previous state {ckpts}/{checkpoint_name(2)} is intact: "):
        save_checkpoint(ckpts, 4, full, exports)
    assert sorted(os.listdir(ckpts)) == [checkpoint_name(2)]
    with pytest.raises(OSError, match="Permission denied"):  # any other failure is not a full disk
        save_checkpoint(ckpts, 4, lambda folder: (_ for _ in ()).throw(PermissionError(errno.EACCES,
                                                                                         "Permission denied")), {})
    bad = tmp_path / "bad.bin"
    torch.save({"w": torch.zeros(100)}, bad)
    _truncate(bad)
    with pytest.raises(CheckpointError, match=r"^training state x could not be loaded \(RuntimeError: "
                                              r"PytorchStreamReader failed .*\): it is damaged or was saved with "
                                              r"another model config; move it aside \(mv x x\.damaged\)"):
        load_state_or_stop(lambda path: torch.load(bad, weights_only=True), "x")
