"""Every command in the documentation still matches the code: its launcher and program arguments parse with
the real argument parsers (a renamed flag, or a prefix that argparse finds ambiguous, fails), every repository
file it names exists and every config it names loads. The same for the commands the SLURM scripts run and for
the commands of the original release's guide (ziqipang/RandAR documentation.md), which must run verbatim."""
import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import sys
import warnings
from unittest import mock

import pytest

from RandAR.utils.config import load_config
from test_slurm import calls, cluster, run  # noqa: F401  (cluster: the stub-cluster fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "GETTING_STARTED.md"]


def doc_commands():
    """(doc, command tokens) for every command line in the docs' bash blocks, continuation lines joined."""
    out = []
    for doc in DOCS:
        text = open(os.path.join(ROOT, doc)).read()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    out.append((doc, shlex.split(line)))
    return out


COMMANDS = doc_commands()


def split_launch(tokens):
    """-> (launcher: "torchrun", "accelerate" or None, launcher flags, program: (script,) or ("-m", module),
    program args), or None for a command that runs no Python program (make, mkdir, ...)."""
    if tokens[0] == "torchrun":
        launcher, rest = "torchrun", tokens[1:]
    elif tokens[:2] == ["accelerate", "launch"]:
        launcher, rest = "accelerate", tokens[2:]
    elif tokens[0] == "python":
        launcher, rest = None, tokens[1:]
    else:
        return None
    if rest[0] == "-m":
        return launcher, [], ("-m", rest[1]), rest[2:]
    i = next(k for k, t in enumerate(rest) if t.endswith(".py"))
    return launcher, rest[:i], (rest[i],), rest[i + 1:]


def test_docs_have_the_workflow_commands():
    scripts = {" ".join(split_launch(t)[2]) for _, t in COMMANDS if split_launch(t)}
    for needed in ["tools/extract_latent_codes.py", "train_c2i.py", "sample_c2i.py", "tools/search_cfg_weights.py",
                   "-m RandAR.eval.fid", "tools/inpaint.py", "tools/outpaint.py", "tools/resolution_extrapolation.py"]:
        assert needed in scripts, needed


@pytest.mark.parametrize("doc,tokens", COMMANDS, ids=[" ".join(t[:3]) for _, t in COMMANDS])
def test_documented_command_matches_the_code(doc, tokens):
    for t in tokens:  # every repository path the command names exists
        if re.match(r"^(configs|tools|slurm_scripts|RandAR)/", t) or t.endswith(".py"):
            assert os.path.exists(os.path.join(ROOT, t)), f"{doc}: {t} does not exist"
    if tokens[0] == "sbatch":
        script = tokens[-1]
        source = open(os.path.join(ROOT, script)).read() + open(os.path.join(ROOT, "slurm_scripts", "common.sh")).read()
        if os.path.basename(script).startswith("train_randar"):
            source += open(os.path.join(ROOT, "slurm_scripts", "train_common.sh")).read()
        exported = [kv.split("=", 1)[0] for a in tokens if a.startswith("--export=")
                    for kv in a[len("--export="):].split(",") if "=" in kv]
        for var in exported:
            assert var in source, f"{doc}: {script} does not use {var}"
        return
    check_command(tokens, doc)


class Parsed(Exception):
    """Raised by the patched parser once a program's arguments parsed: the program itself does not run."""

    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


@contextlib.contextmanager
def stop_after_parsing():
    """Make the outermost ArgumentParser.parse_* call of the program raise Parsed with its result."""
    depth = [0]

    def wrap(original):
        def parse(self, *args, **kwargs):
            depth[0] += 1
            try:
                result = original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise Parsed(result[0] if isinstance(result, tuple) else result)
            return result
        return parse

    names = ["parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args"]
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch.object(argparse.ArgumentParser, name,
                                                  wrap(getattr(argparse.ArgumentParser, name))))
        yield


def parse_program(program, args):
    """Run `program` (("-m", module) or (script,)) as __main__ with `args` until its parser returns; returns the
    namespace, or raises AssertionError with argparse's message."""
    stderr = io.StringIO()
    argv0 = program[-1]
    with stop_after_parsing(), mock.patch.object(sys, "argv", [argv0] + list(args)), \
            contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: `-m RandAR.eval.fid` is already imported
        try:
            if program[0] == "-m":
                runpy.run_module(program[1], run_name="__main__", alter_sys=False)
            else:
                runpy.run_path(os.path.join(ROOT, program[0]), run_name="__main__")
        except Parsed as p:
            return p.namespace
        except SystemExit as e:
            raise AssertionError(f"{' '.join(program)} rejects its arguments ({e.code}): "
                                 f"{stderr.getvalue().strip()[-500:]}") from None
    raise AssertionError(f"{' '.join(program)} finished without parsing arguments")


def parse_launcher(launcher, launcher_args, script):
    """The launcher's own parser on its flags (torchrun, accelerate launch)."""
    stderr = io.StringIO()
    if launcher == "torchrun":
        from torch.distributed.run import get_args_parser
        parser = get_args_parser()
    else:
        from accelerate.commands.launch import launch_command_parser
        parser = launch_command_parser()
    with contextlib.redirect_stderr(stderr):
        try:
            return parser.parse_args(list(launcher_args) + [script])
        except SystemExit:
            raise AssertionError(f"{launcher} rejects {launcher_args}: {stderr.getvalue().strip()[-500:]}") from None


def check_command(tokens, where):
    """A command line (tokens): launcher flags, program arguments and the --config it names all check out."""
    parsed = split_launch(tokens)
    if parsed is None:
        return None
    launcher, launcher_args, program, args = parsed
    if launcher:
        parse_launcher(launcher, launcher_args, program[-1])
    try:
        namespace = parse_program(program, args)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from None
    config = getattr(namespace, "config", None)
    if config and os.path.exists(os.path.join(ROOT, config)):
        load_config(os.path.join(ROOT, config), getattr(namespace, "overrides", None) or ())
    return namespace


def test_parser_check_rejects_prefixes_and_unknown_flags():
    """What a --help text search let through: an abbreviation argparse finds ambiguous, a misspelt flag."""
    base = ["python", "tools/search_cfg_weights.py", "--config", "configs/randar/randar_tiny.yaml",
            "--exp-name", "x", "--gpt-ckpt", "g", "--vq-ckpt", "v", "--ref-path", "r"]
    assert check_command(base + ["--num-fid-samples-search", "10"], "ok").num_fid_samples_search == 10
    with pytest.raises(AssertionError, match="ambiguous"):
        check_command(base + ["--num-fid", "10"], "doc")
    with pytest.raises(AssertionError, match="unrecognized"):
        check_command(base + ["--cfg-scale-interval", "0.2"], "doc")
    with pytest.raises(AssertionError, match="torchrun rejects"):
        check_command(["torchrun", "--nproc-per-nodes", "2"] + base[1:], "doc")


SLURM_SCRIPTS = ["train_randar_l_llamagen.sh", "train_randar_l_maskgit.sh", "train_randar_xl_llamagen.sh",
                 "train_multinode.sh", "extract_latents.sh", "sample.sh", "search_cfg.sh"]


@pytest.mark.parametrize("script", SLURM_SCRIPTS)
def test_slurm_script_commands_parse(script, cluster):
    """The launcher command each SLURM script runs (recorded under test_slurm's stub cluster) parses."""
    tmp_path, env = cluster
    env.update(SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="node-[a-b]", SLURM_NODEID="0")
    r = run(script, env)
    assert r.returncode == 0, r.stderr
    launches = [c for c in calls(tmp_path) if c[0] in ("torchrun", "accelerate")]
    assert launches, f"{script} launched nothing"
    for call in launches:
        check_command(call, f"slurm_scripts/{script}")


# The commands of the original release's guide (ziqipang/RandAR documentation.md), as printed there.
OFFICIAL_GUIDE = [
    """torchrun tools/extract_latent_codes.py \
    --data-path /tmp/ \
    --code-path /tmp/ \
    --vq-ckpt /tmp/vq_ds16_c2i.pt \
    --config configs/tokenization/llamagen.yaml \
    --image-size 256 \
    --aug-mode adm""",
    """accelerate launch --mixed_precision=bf16 --multi_gpu \
    train_c2i.py --exp-name randar_0.7b_llamagen_360k \
    --config configs/randar/randar_xl_0.7b_llamagen.yaml \
    --data-path /tmp/imagenet-llamagen-adm-256_codes \
    --vq-ckpt /tmp/vq_ds16_c2i.pt \
    --results-dir /tmp \
    --disk-location /SLOW_DISK/training_ckpts \
""",
    """torchrun sample_c2i.py \
    --exp-name sample_randar_0.7b_llamagen_360k \
    --gpt-ckpt /tmp/ckpt.safetensors \
    --vq-ckpt /tmp/vq_ds16_c2i.pt \
    --config configs/randar/randar_xl_0.7b.yaml \
    --cfg-scales 1.0,4.0 \
    --sample-dir ./samples \
    --num-inference-steps 88""",
    """torchrun tools/search_cfg_weights.py \
    --config configs/randar/randar_l_0.3b.yaml \
    --exp-name randar_0.3b_360k_llamagen \
    --gpt-ckpt /tmp/randar_0.3b_llamagen_360k.safetensors \
    --vq-ckpt /tmp/vq_ds16_c2i.pt \
    --per-proc-batch-size 128 \
    --num-fid-samples-search 10000 \
    --num-fid-samples-final 50000 \
    --cfg-scales-interval 0.2 \
    --cfg-scales-search 2.0,8.0 \
    --results-path ./results \
    --ref-path /tmp/VIRTUAL_imagenet256_labeled.npz \
    --sample-dir /tmp \
    --num-inference-steps 88""",
    """torchrun tools/search_cfg_weights.py \
    --config configs/randar/randar_xl_0.7b.yaml \
    --exp-name randar_0.7b_360k_llamagen_resolution_extrapolation \
    --gpt-ckpt /tmp/randar_0.7b_llamagen_360k.safetensors \
    --vq-ckpt /tmp/vq_ds16_c2i.pt \
    --per-proc-batch-size 8 \
    --cfg-scales 3.0,3.0 \
    --spatial-cfg-scales 2.5,2.5 \
    --num-inference-steps 1024 \
    --debug""",
]


@pytest.mark.parametrize("text", OFFICIAL_GUIDE, ids=[t.split()[1] for t in OFFICIAL_GUIDE])
def test_official_guide_commands_run_verbatim(text):
    tokens = shlex.split(text.replace("\\\n", " "))
    for t in tokens:
        if t.startswith("configs/"):
            assert os.path.isfile(os.path.join(ROOT, t)), f"{t} does not exist"
    namespace = check_command(tokens, "official guide")
    if "train_c2i.py" in tokens:  # the training script's own config resolution (flags over the YAML)
        import train_c2i
        cfg = train_c2i.resolve_config(namespace)
        assert cfg.dataset.params.root_dir == "/tmp/imagenet-llamagen-adm-256_codes"


@pytest.mark.parametrize("alias,target", [("randar_xl_0.7b.yaml", "randar_xl_0.7b_llamagen.yaml"),
                                          ("randar_l_0.3b.yaml", "randar_l_0.3b_llamagen.yaml")])
def test_guide_config_names_alias_the_llamagen_configs(alias, target):
    path = os.path.join(ROOT, "configs", "randar", alias)
    assert os.path.islink(path) and os.readlink(path) == target  # an alias, not a copy that could drift
    assert load_config(path) == load_config(os.path.join(ROOT, "configs", "randar", target))


def test_docs_state_the_tolerances_the_tests_use():
    # "`NAME` = value" in the docs names a constant of RandAR/eval/tolerances.py, which the tests import.
    from RandAR.eval import tolerances

    names = [n for n in vars(tolerances) if n.isupper()]
    required = {"README.md": {"METRIC_RTOL", "PRECISION_RECALL_ATOL"}, "GETTING_STARTED.md": set(names)}
    for doc in DOCS:
        text = open(os.path.join(ROOT, doc)).read()
        stated = re.findall(r"`([A-Z][A-Z0-9_]*)` = ([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)", text)
        assert required[doc] <= {name for name, _ in stated}, (doc, required[doc])
        for name, value in stated:
            assert name in names, f"{doc}: {name} is not in RandAR/eval/tolerances.py"
            assert float(value) == getattr(tolerances, name), f"{doc} says {name} = {value}"
