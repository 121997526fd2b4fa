"""FSDP2 training on CPU: train_c2i.py under Accelerate's FSDP mode over a 2-process gloo group.

The processes get the environment `accelerate launch --config_file configs/accelerate/fsdp.yaml` gives its
workers, made by Accelerate's own `prepare_multi_gpu_env` (`fsdp_launch_env`), and run through
tests/fsdp_cpu.py, which lets Accelerate enable FSDP on CPU processes (it does so only on accelerators).
Also: the sum of per-tensor gradient norms (the original's skip measure) across FSDP shards.
"""
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_train import (CONFIG, FOLDER, PY, ROOT, TORCHRUN, _descendants, assert_same_tensors, data,  # noqa: F401
                        env, logged_losses, run_ok, train_cmd, wait_for)
from RandAR.training.checkpoint_folders import checkpoint_name, latest_checkpoint
from RandAR.utils.versions import FSDP2_ACCELERATE_MIN, installed

from packaging.version import Version

pytestmark = pytest.mark.skipif(
    Version(installed("accelerate")) < Version(FSDP2_ACCELERATE_MIN),
    reason=f"FSDP2 needs accelerate>={FSDP2_ACCELERATE_MIN} (these tests run under the newest Accelerate in CI)")

FSDP_CONFIG = "configs/accelerate/fsdp.yaml"
ITERS = 20
# skip_grad_iter=0: the skip rule (sum of clipped per-tensor norms over the shards) is evaluated at every step;
# keep_last_k=-1: the resume tests start from the reference run's step-15 state
FSDP_ARGS = [f"max_iters={ITERS}", "ckpt_every=5", "log_every=1", "optimizer.skip_grad_iter=0", "keep_last_k=-1"]


def fsdp_launch_env(num_processes: int, port: int) -> dict:
    """The environment that `accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes N`
    gives its processes (ACCELERATE_USE_FSDP, FSDP_VERSION, FSDP_STATE_DICT_TYPE, ...), made by Accelerate."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    args = launch_command_parser().parse_args(["--config_file", os.path.join(ROOT, FSDP_CONFIG), "--num_processes",
                                               str(num_processes), "--main_process_port", str(port), "train_c2i.py"])
    launch_env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    assert launch_env["ACCELERATE_USE_FSDP"] == "true" and launch_env["FSDP_VERSION"] == "2"
    return dict(launch_env, **{k: v for k, v in env().items() if k in ("OMP_NUM_THREADS", "WANDB_MODE")})


def port(offset: int) -> int:
    return 29000 + (os.getpid() * 7 + offset) % 900


def fsdp_cmd(data, results, offset, *extra):
    launcher = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port(offset)), "tests/fsdp_cpu.py"]
    return train_cmd(str(data / "codes"), str(results), *FSDP_ARGS, *extra, launcher=launcher)


def run_fsdp(cmd, offset, num_processes=2, shards_dir=None):
    e = fsdp_launch_env(num_processes, port(offset))
    if shards_dir is not None:  # tests/fsdp_cpu.py saves each process's parameter shards there
        e["RANDAR_TEST_SHARDS_DIR"] = str(shards_dir)
    r = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def fsdp_reference(data, tmp_path_factory):
    """An uninterrupted 2-process FSDP2 run, sharded checkpoints every 5 steps; each process's parameter shards
    after `accelerator.prepare` are saved in <results>/shards_<rank>.pt."""
    results = tmp_path_factory.mktemp("fsdp_ref")
    out = run_fsdp(fsdp_cmd(data, results, 1), 1, shards_dir=results)
    return results / FOLDER, out


def test_fsdp_parameters_are_sharded_over_the_two_processes(fsdp_reference):
    """Every parameter of the prepared model is a DTensor sharded on dim 0 over a mesh of the 2 processes; rank
    r holds rows [r * ceil(n / 2), (r + 1) * ceil(n / 2)) of the full parameter (fully_shard's chunks), and those
    rows are the initial weights that one unsharded process builds from the run's config and seed."""
    from RandAR.model.builder import build_randar
    from RandAR.utils.config import load_config
    exp = fsdp_reference[0]
    cfg = load_config(str(exp / "config.yaml"))
    torch.manual_seed(cfg.global_seed)  # as train_c2i.py builds the model
    full = dict(build_randar(cfg).named_parameters())
    shards = [torch.load(exp.parent / f"shards_{rank}.pt") for rank in range(2)]
    for rank, held in enumerate(shards):
        assert sorted(held) == sorted(full), sorted(set(held) ^ set(full))
        for name, p in full.items():
            s = held[name]
            assert s["dtensor"] and s["placements"] == [("Shard", 0)] and s["mesh_size"] == 2, (name, s)
            chunk = -(-p.shape[0] // 2)
            want = p.detach()[rank * chunk:(rank + 1) * chunk]
            assert s["local"].shape == want.shape, (name, rank, s["local"].shape, want.shape)
            assert torch.equal(s["local"], want), (name, rank)
    total = sum(p.numel() for p in full.values())
    assert sum(s["local"].numel() for held in shards for s in held.values()) == total  # each element once


def test_fsdp_training_checkpoints_are_sharded_and_export_is_full(fsdp_reference):
    exp, out = fsdp_reference
    assert "2 process(es), DistributedType.FSDP" in out
    losses = logged_losses(out)
    assert len(losses) == ITERS and losses[-1] < losses[0] - 0.3, losses
    assert f"done: step {ITERS} of {ITERS}, 0 skipped updates" in out
    step, path = latest_checkpoint([str(exp / "checkpoints")])
    assert step == ITERS
    files = set(os.listdir(path))
    assert {"pytorch_model_fsdp_0", "optimizer_0", "random_states_0.pkl", "random_states_1.pkl"} <= files
    assert "model.safetensors" not in files  # the state is sharded, not gathered
    assert sorted(os.listdir(os.path.join(path, "pytorch_model_fsdp_0"))) == [".metadata", "__0_0.distcp",
                                                                              "__1_0.distcp"]
    # the model-only export: one full file with the official keys, loading strictly into a fresh model
    from RandAR.model.builder import build_randar
    from RandAR.utils.config import load_config
    export = exp / "checkpoints" / f"{checkpoint_name(ITERS)}.safetensors"
    weights = load_file(str(export))
    model = build_randar(load_config(os.path.join(ROOT, CONFIG)).ar_model)
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in model.state_dict().items()}
    build_randar(load_config(os.path.join(ROOT, CONFIG)).ar_model, ckpt_path=str(export))  # strict load


def test_fsdp_sigkill_and_relaunch_gives_identical_weights(fsdp_reference, data, tmp_path):
    """SIGKILL the whole 2-process FSDP run (launcher and workers) as soon as its first sharded checkpoint is
    complete, relaunch the same command: it resumes from the shards and ends bit for bit where the
    uninterrupted run ends (same data per step, RNG reseeded per step, optimizer state restored exactly)."""
    ckpts = tmp_path / FOLDER / "checkpoints"
    cmd = fsdp_cmd(data, tmp_path, 2)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=fsdp_launch_env(2, port(2)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: latest_checkpoint([str(ckpts)]) is not None, proc, timeout=300)
        for pid in _descendants(proc.pid) + [proc.pid]:  # the workers run in sessions of their own
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    resumed_from = latest_checkpoint([str(ckpts)])[0]
    assert 0 < resumed_from < ITERS
    out = run_fsdp(cmd, 3)
    assert f"resumed from {ckpts / checkpoint_name(resumed_from)}" in out
    name = f"{checkpoint_name(ITERS)}.safetensors"
    assert_same_tensors(ckpts / name, fsdp_reference[0] / "checkpoints" / name)


def test_fsdp_resume_on_another_number_of_processes(fsdp_reference, data, tmp_path):
    """The 2-process sharded checkpoint of step 15 resumed by 1 process (torch.distributed.checkpoint reshards
    model and optimizer state on load): it ends near the 2-process run's step-20 weights. Not bitwise: the
    per-rank seeds (token orders and dropout masks of each half of the batch) and the reduction order depend on
    the number of processes, so the losses after resuming differ from the 2-process run's by about 0.01 (seed
    dependent); what they must show is the trained weights, not a fresh start."""
    import shutil
    ckpts = tmp_path / FOLDER / "checkpoints"
    ckpts.mkdir(parents=True)
    ref = fsdp_reference[0] / "checkpoints"
    shutil.copytree(ref / checkpoint_name(15), ckpts / checkpoint_name(15))
    cmd = [TORCHRUN, "--nproc_per_node", "1", "--master_port", str(port(6)), "tests/fsdp_cpu.py"]
    out = run_fsdp(train_cmd(str(data / "codes"), str(tmp_path), *FSDP_ARGS, launcher=cmd), 6, num_processes=1)
    assert "1 process(es), DistributedType.FSDP" in out
    assert f"resumed from {ckpts / checkpoint_name(15)} at step 15" in out
    name = f"{checkpoint_name(ITERS)}.safetensors"
    start, want, got = (load_file(str(p)) for p in (ref / f"{checkpoint_name(15)}.safetensors", ref / name,
                                                    ckpts / name))
    moved = torch.cat([(want[k] - start[k]).flatten() for k in want]).norm()
    off = torch.cat([(got[k] - want[k]).flatten() for k in want]).norm()
    assert off < 0.5 * moved, (off, moved)  # 0.24 when written; a restart from scratch is far off
    # the first loss after resuming is computed with the resharded step-15 weights: nearer the reference's
    # step-15 loss than its first (untrained) loss
    ref_losses = logged_losses(fsdp_reference[1])
    assert abs(logged_losses(out)[0] - ref_losses[15]) < abs(logged_losses(out)[0] - ref_losses[0]), ref_losses


def test_fsdp_checkpoint_under_ddp_stops_with_one_line(fsdp_reference, data, tmp_path):
    import shutil
    ckpts = tmp_path / FOLDER / "checkpoints"
    shutil.copytree(fsdp_reference[0] / "checkpoints" / checkpoint_name(15), ckpts / checkpoint_name(15))
    r = subprocess.run([PY, "train_c2i.py", "--config", CONFIG, "--exp-name", "tiny", "--data-path",
                        str(data / "codes"), "--results-dir", str(tmp_path), "optimizer.lr=0.003",
                        "accelerator.log_with=none"], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {ckpts / checkpoint_name(15)} was saved FSDP and this run is without FSDP: relaunch it as it "
        f"was saved, or start a new --exp-name from its export with --gpt-ckpt "
        f"{ckpts / checkpoint_name(15)}.safetensors")


def test_fsdp_loss_matches_ddp(fsdp_reference, data, tmp_path):
    """The same config under 2-process DDP: the same losses for the first steps, to float tolerance (only the
    order of the gradient reductions differs)."""
    launcher = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port(4))]
    out = run_ok(train_cmd(str(data / "codes"), str(tmp_path), "max_iters=6", "ckpt_every=0", "log_every=1",
                           FSDP_ARGS[-1], launcher=launcher))
    assert "2 process(es), DistributedType.MULTI_CPU" in out
    ddp, fsdp = logged_losses(out), logged_losses(fsdp_reference[1])[:6]
    assert len(ddp) == 6
    assert ddp == pytest.approx(fsdp, abs=2e-4), (ddp, fsdp)  # the log prints 4 decimals


def test_fsdp_sum_of_grad_norms_across_shards():
    """step.sum_of_grad_norms on gradients sharded by fully_shard over 2 gloo processes (unevenly: a
    5-row weight, a 1-element tensor) equals the sum of the full gradients' norms computed in float64."""
    r = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(port(5)), __file__],
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("sum of norms ok") == 2, r.stdout[-3000:]


def _check_sum_of_grad_norms_under_fully_shard():
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from RandAR.training import step
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    model[2].bias.data.fill_(0.5)
    fully_shard(model[0])
    fully_shard(model)
    torch.manual_seed(1 + dist.get_rank())  # different data per rank, as in training
    model(torch.randn(4, 3)).pow(2).sum().backward()
    got = step.sum_of_grad_norms(model.parameters())
    assert isinstance(got, torch.Tensor) and not isinstance(got, step.DTensor)
    want = sum(p.grad.full_tensor().double().norm().item() for p in model.parameters())
    assert abs(got.item() - want) < 1e-5 * want, (got.item(), want)
    print("sum of norms ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":  # a worker of test_fsdp_sum_of_grad_norms_across_shards
    sys.path.insert(0, ROOT)
    _check_sum_of_grad_norms_under_fully_shard()
