"""Every command in the documentation still matches the code: each flag it uses is in that script's --help,
and every repository file it names exists. A renamed flag or moved config breaks this test."""
import functools
import os
import re
import shlex
import subprocess
import sys

import pytest

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


@functools.lru_cache(maxsize=None)
def help_text(*cmd):
    r = subprocess.run(list(cmd) + ["--help"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert r.returncode == 0, f"{' '.join(cmd)} --help failed:\n{r.stderr[-2000:]}"
    return r.stdout


def split_launch(tokens):
    """-> (launcher help command, launcher flags, program help command, program args)."""
    py = sys.executable
    if tokens[0] == "torchrun":
        launcher, rest = (py, "-m", "torch.distributed.run"), tokens[1:]
    elif tokens[:2] == ["accelerate", "launch"]:
        launcher, rest = (os.path.join(os.path.dirname(py), "accelerate"), "launch"), tokens[2:]
    elif tokens[0] == "python":
        launcher, rest = None, tokens[1:]
    else:
        return None
    if rest[0] == "-m":
        return launcher, [], (py, "-m", rest[1]), rest[2:]
    i = next(k for k, t in enumerate(rest) if t.endswith(".py"))
    return launcher, rest[:i], (py, rest[i]), rest[i + 1:]


def flags(args):
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def test_docs_have_the_workflow_commands():
    scripts = {" ".join(split_launch(t)[2][1:]) for _, t in COMMANDS if split_launch(t)}
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
    parsed = split_launch(tokens)
    if parsed is None:
        return  # make, mkdir, ...
    launcher, launcher_args, program, args = parsed
    if launcher:
        text = help_text(*launcher)
        for f in flags(launcher_args):
            assert f in text, f"{doc}: {' '.join(launcher)} has no flag {f}"
    text = help_text(*program)
    for f in flags(args):
        assert re.search(rf"{re.escape(f)}\b", text), f"{doc}: {' '.join(program[1:])} has no flag {f}"
