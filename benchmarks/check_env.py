"""First step of gpu_check.sh: print the machine and versions, and pip-install what requirements.txt asks for
that this Python lacks (or has in a version outside the requirement).

torch is never installed or changed (a CUDA machine brings its own build), nor the TensorFlow evaluator (FID
only, and far more than the check's minute). RANDAR_WHEELS=DIR installs from a folder of wheels instead of the
package index, for a machine without network: fill it elsewhere with
`pip download -d DIR --python-version 3.12 --only-binary=:all: omegaconf` (the check's scripts need omegaconf,
numpy, safetensors and pillow; the other requirements only warn when missing).
--dry-run lists what it would install and installs nothing.
"""
import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import torch
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEVER_INSTALL = {"torch", "tensorflow", "tensorflow-cpu"}
CHECK_IMPORTS = ["numpy", "safetensors", "omegaconf", "PIL"]  # what the check's own scripts import


def missing_requirements(path):
    """Requirement lines of `path` (markers applied) that are not satisfied, as pip arguments."""
    missing = []
    for line in open(path):
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.name.lower() in NEVER_INSTALL or (req.marker and not req.marker.evaluate()):
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(str(req))
    return missing


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="list what would be installed; install nothing")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, device: {torch.cuda.get_device_name() if cuda else 'no GPU'}")
    missing = missing_requirements(os.path.join(ROOT, "requirements.txt"))
    print(f"requirements missing here: {' '.join(missing) or 'none'}")
    if not missing or args.dry_run:
        return
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--timeout", "15", "--retries", "1"]
    if os.environ.get("RANDAR_WHEELS"):
        # Offline: a source distribution there (antlr4-python3-runtime has no wheel) builds with local setuptools.
        cmd += ["--no-index", "--find-links", os.environ["RANDAR_WHEELS"], "--no-build-isolation"]
    installed = True
    for req in missing:  # one at a time: a package that cannot be had must not block the others
        print(" ".join(cmd + [req]), flush=True)
        installed &= subprocess.run(cmd + [req]).returncode == 0
    still = missing_requirements(os.path.join(ROOT, "requirements.txt"))
    if still:
        print(f"still missing after pip install: {' '.join(still)}")
    lacking = [m for m in CHECK_IMPORTS if importlib.util.find_spec(m) is None]
    if lacking:
        sys.exit(f"error: the check needs {' '.join(lacking)}; pip {'failed' if not installed else 'did not help'}. "
                 f"Without network, carry wheels (pip download -d DIR ...) and set RANDAR_WHEELS=DIR")


if __name__ == "__main__":
    main()
