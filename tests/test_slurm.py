"""SLURM scripts under a stub cluster: the commands they would run, their checks, and requeue on SIGUSR1."""
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM = os.path.join(ROOT, "slurm_scripts")

STUB = """#!/usr/bin/env bash
# Record the call (one shell-quoted line), then behave as asked.
printf '%s' "$(basename "$0")" >> "$STUB_LOG"
for a in "$@"; do printf ' %q' "$a" >> "$STUB_LOG"; done
echo >> "$STUB_LOG"
case "$(basename "$0")" in
  scontrol) if [ "${1:-}" = show ]; then printf 'node-a\\nnode-b\\n'; fi ;;
  srun) while [[ "${1:-}" == --* ]]; do shift; done; exec "$@" ;;
  accelerate|torchrun)
    if [ -n "${STUB_WAIT_FOR_USR1:-}" ]; then
      # Like a real launcher: run a worker whose command line holds the script's arguments, and wait for it.
      rc=0
      python3 "$(dirname "$0")/worker.py" "$@" || rc=$?
      echo "launcher: worker exited $rc" >> "$STUB_LOG"
      exit $rc
    fi ;;
esac
"""

# The training worker's stand-in: Python, like train_c2i.py, with its USR1 handler (checkpoint, exit 0).
WORKER = """import os, signal, sys, time
def stop(*_):
    open(os.environ["STUB_LOG"], "a").write("got USR1\\n")
    sys.exit(0)
signal.signal(signal.SIGUSR1, stop)
open(os.environ["STUB_WAIT_FOR_USR1"], "w").close()
time.sleep(60)
sys.exit(3)
"""


@pytest.fixture
def cluster(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("accelerate", "torchrun", "srun", "scontrol"):
        p = bin_dir / name
        p.write_text(STUB)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "worker.py").write_text(WORKER)
    data = tmp_path / "data"
    (data / "imagenet-llamagen-adm-256_codes" / "0").mkdir(parents=True)
    subprocess.run(["tar", "-cf", str(data / "imagenet-llamagen-adm-256_codes.tar"), "-C", str(data),
                    "imagenet-llamagen-adm-256_codes"], check=True)
    (data / "train.tar").write_bytes(b"")
    (data / "vq_ds16_c2i.pt").write_bytes(b"weights")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", STUB_LOG=str(tmp_path / "calls.log"), SLURM_JOB_ID="4242",
               SLURM_SUBMIT_DIR=ROOT, RANDAR_ACTIVATE="true", LOCAL_DIR=str(tmp_path / "local"), GPUS_PER_NODE="4",
               CODES_TAR=str(data / "imagenet-llamagen-adm-256_codes.tar"), VQ_CKPT=str(data / "vq_ds16_c2i.pt"),
               RESULTS_DIR=str(tmp_path / "results"), DISK_LOCATION=str(tmp_path / "permanent"),
               IMAGENET_DIR=str(data), CODE_PATH=str(tmp_path / "codes"), CONFIG="configs/randar/randar_tiny.yaml",
               GPT_CKPT=str(data / "model.safetensors"), SAMPLE_DIR=str(tmp_path / "samples"),
               REF_NPZ=str(data / "ref.npz"), RESULTS_PATH=str(tmp_path / "search.json"), EXP_NAME="exp-stub")
    return tmp_path, env


def calls(tmp_path):
    log = tmp_path / "calls.log"
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def python_args(call, script):
    """The arguments a recorded launcher call passes to `script`."""
    return call[call.index(script) + 1:]


def flag(args, name):
    return args[args.index(name) + 1]


def run(script, env, **kw):
    return subprocess.run(["bash", os.path.join(SLURM, script)], env=env, capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.mark.parametrize("script,config", [
    ("train_randar_l_llamagen.sh", "configs/randar/randar_l_0.3b_llamagen.yaml"),
    ("train_randar_l_maskgit.sh", "configs/randar/randar_l_0.3b_maskgit.yaml"),
    ("train_randar_xl_llamagen.sh", "configs/randar/randar_xl_0.7b_llamagen.yaml"),
])
def test_training_scripts_stage_data_and_launch(cluster, script, config):
    tmp_path, env = cluster
    r = run(script, env)
    assert r.returncode == 0, r.stderr
    (call,) = calls(tmp_path)
    assert call[:2] == ["accelerate", "launch"] and flag(call, "--num_processes") == "4"
    args = python_args(call, "train_c2i.py")
    local = str(tmp_path / "local")
    assert flag(args, "--config") == config
    assert flag(args, "--exp-name") == "exp-stub"
    assert flag(args, "--data-path") == f"{local}/imagenet-llamagen-adm-256_codes"
    assert os.path.isdir(f"{local}/imagenet-llamagen-adm-256_codes/0")  # staged and unpacked on local disk
    assert flag(args, "--vq-ckpt") == f"{local}/vq_ds16_c2i.pt"
    assert flag(args, "--disk-location") == env["DISK_LOCATION"]
    assert os.path.isfile(os.path.join(ROOT, config))


def test_missing_variable_fails_loudly_before_any_launch(cluster):
    tmp_path, env = cluster
    del env["DISK_LOCATION"]
    r = run("train_randar_xl_llamagen.sh", env)
    assert r.returncode == 2 and "DISK_LOCATION" in r.stderr
    assert calls(tmp_path) == []


def test_multinode_launches_one_accelerate_per_node(cluster):
    tmp_path, env = cluster
    env.update(SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="node-[a-b]", SLURM_NODEID="0")
    r = run("train_multinode.sh", env)
    assert r.returncode == 0, r.stderr
    launches = [c for c in calls(tmp_path) if c[0] == "accelerate"]
    assert len(launches) == 1  # the stub srun runs the per-node command once, here
    call = launches[0]
    assert flag(call, "--num_machines") == "2" and flag(call, "--machine_rank") == "0"
    assert flag(call, "--main_process_ip") == "node-a" and flag(call, "--num_processes") == "8"
    assert flag(python_args(call, "train_c2i.py"), "--config") == "configs/randar/randar_tiny.yaml"


def test_extract_sample_and_search_commands(cluster):
    tmp_path, env = cluster
    for script in ("extract_latents.sh", "sample.sh", "search_cfg.sh"):
        r = run(script, env)
        assert r.returncode == 0, (script, r.stderr)
    extract, sample, search = calls(tmp_path)
    a = python_args(extract, "tools/extract_latent_codes.py")
    assert flag(a, "--data-path") == str(tmp_path / "local") and os.path.isfile(tmp_path / "local" / "train.tar")
    assert flag(a, "--aug-mode") == "adm" and flag(a, "--config") == "configs/tokenization/llamagen.yaml"
    a = python_args(sample, "sample_c2i.py")
    assert flag(a, "--num-inference-steps") == "88" and flag(a, "--num-fid-samples") == "50000"
    a = python_args(search, "tools/search_cfg_weights.py")
    assert flag(a, "--cfg-scales-search") == "2.0,8.0" and flag(a, "--num-fid-samples-final") == "50000"
    assert flag(a, "--results-path") == env["RESULTS_PATH"]


def test_usr1_checkpoints_then_requeues(cluster):
    tmp_path, env = cluster
    started = tmp_path / "started"
    env["STUB_WAIT_FOR_USR1"] = str(started)
    proc = subprocess.Popen(["bash", os.path.join(SLURM, "train_randar_l_llamagen.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists()
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (out, err, (tmp_path / "calls.log").read_text())
    log = (tmp_path / "calls.log").read_text()
    assert "got USR1" in log  # the training process was told to checkpoint
    assert "launcher: worker exited 0" in log  # the launcher outlived the signal and saw the worker finish
    assert calls(tmp_path)[-1] == ["scontrol", "requeue", "4242"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (.ci/run installs it)")
def test_shellcheck_clean():
    r = subprocess.run(["shellcheck", "-x"] + sorted(
        os.path.join("slurm_scripts", f) for f in os.listdir(SLURM) if f.endswith(".sh")),
        cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def script_variables(name):
    """(required, optional) variables of a script: those of its `need` lines that it does not set itself, and the
    others it reads as `${VAR:-...}` / `${VAR:+...}`; with train_common.sh's when it sources it, without SLURM's
    own and common.sh's (listed apart)."""
    text = open(os.path.join(SLURM, name)).read()
    if "train_common.sh" in text:
        text += open(os.path.join(SLURM, "train_common.sh")).read()
    common = {"RANDAR_ROOT", "RANDAR_ACTIVATE", "LOCAL_DIR", "GPUS_PER_NODE"}
    assigned = set(re.findall(r"^([A-Z_]+)=", text, re.M))
    need = {v for line in re.findall(r"^need (.*)$", text, re.M) for v in line.split()} - assigned
    read = set(re.findall(r"\$\{([A-Z_]+):[-+]", text))
    return ({v for v in need if not v.startswith("SLURM_")},
            {v for v in read - need - common if not v.startswith("SLURM_")})


def test_readme_lists_the_variables_of_every_script():
    """slurm_scripts/README.md (where a missing variable's error points) names each job script and exactly the
    variables it requires and reads."""
    rows = [line for line in open(os.path.join(SLURM, "README.md")).read().splitlines()
            if line.startswith("| `")]
    listed = {}
    for row in rows:
        scripts, required, optional = [c.strip() for c in row.strip("|").split("|")]
        for script in re.findall(r"`([\w.]+\.sh)`", scripts):
            listed[script] = (set(re.findall(r"`(\w+)`", required)), set(re.findall(r"`(\w+)`", optional)))
    jobs = sorted(f for f in os.listdir(SLURM) if f.endswith(".sh") and f not in ("common.sh", "train_common.sh"))
    assert sorted(listed) == jobs
    for script in jobs:
        assert listed[script] == script_variables(script), script
