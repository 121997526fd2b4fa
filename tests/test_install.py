"""The package declares its dependencies: the metadata setuptools builds from pyproject.toml lists exactly the
requirements.txt lines, and pip, asked to install the package with no index, asks for them."""
import email.parser
import os
import shutil
import subprocess
import sys

from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def requirements_txt():
    lines = [line.strip() for line in open(os.path.join(ROOT, "requirements.txt"))]
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def project_copy(tmp_path):
    """What building the metadata reads: pyproject.toml, requirements.txt and an (empty) package."""
    src = tmp_path / "src"
    (src / "RandAR").mkdir(parents=True)
    (src / "RandAR" / "__init__.py").write_text("")
    for name in ("pyproject.toml", "requirements.txt", "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    return src


def test_built_metadata_declares_the_requirements(tmp_path):
    src, out = project_copy(tmp_path), tmp_path / "meta"
    out.mkdir()
    code = "import sys, setuptools.build_meta as b; print(b.prepare_metadata_for_build_wheel(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = email.parser.Parser().parse(open(out / run.stdout.strip().splitlines()[-1] / "METADATA"))
    declared = meta.get_all("Requires-Dist")
    runtime = sorted(str(Requirement(d)) for d in declared if "extra ==" not in d)
    assert runtime == sorted(str(r) for r in requirements_txt())
    assert [d for d in declared if "extra ==" in d] == ['pytest; extra == "test"']


def test_pip_asks_for_the_dependencies(tmp_path):
    """`pip install -e .` with an empty index and nothing installed counted: it stops at a declared dependency."""
    src, empty = project_copy(tmp_path), tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # no configured index or wheel folder
    env["PIP_CONFIG_FILE"] = os.devnull
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
                          "--find-links", str(empty), "--no-build-isolation", "--disable-pip-version-check",
                          "-e", str(src)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode != 0
    names = {r.name for r in requirements_txt()}
    wanted = [line for line in run.stderr.splitlines() if "Could not find a version that satisfies" in line]
    assert wanted and any(f"requirement {n}" in wanted[0] for n in names), run.stderr[-2000:]
