"""The oldest torch and Accelerate the code really runs on, checked at start-up with a one-line error.

Floors (keep requirements.txt in step):
  * torch >= 2.4: training builds fused AdamW on CPU parameters before `accelerator.prepare` moves them (fused
    AdamW accepts CPU tensors from 2.4 on).
  * accelerate >= 0.31.0: the official guide's version; CI runs the training tests under it and the newest.
  * FSDP2 (`fsdp_version: 2`, configs/accelerate/fsdp.yaml) also needs torch >= 2.6 (public `fully_shard`,
    Accelerate's FSDP2 floor) and accelerate >= 1.6.0 (the first release with `fsdp_version`).
"""
import os
import sys
from typing import Optional

from packaging.version import Version

TORCH_MIN = "2.4"
ACCELERATE_MIN = "0.31.0"
FSDP2_TORCH_MIN = "2.6"
FSDP2_ACCELERATE_MIN = "1.6.0"


def installed(package: str) -> str:
    """The installed version of `package` ("0" when it is missing), without a CUDA suffix like +cu124."""
    module = __import__(package)
    return getattr(module, "__version__", "0").split("+")[0]


def version_problem(fsdp2: bool = False, accelerate: bool = True) -> Optional[str]:
    """One line naming the first version that is too old (and the version needed), or None."""
    need = [("torch", TORCH_MIN, "")]
    if accelerate:
        need.append(("accelerate", ACCELERATE_MIN, ""))
    if fsdp2:
        need += [("torch", FSDP2_TORCH_MIN, " for FSDP2 (fsdp_version: 2)"),
                 ("accelerate", FSDP2_ACCELERATE_MIN, " for FSDP2 (fsdp_version: 2)")]
    for package, floor, why in need:
        have = installed(package)
        if Version(have) < Version(floor):
            return (f"{package} {have} is too old: this code needs {package}>={floor}{why}; "
                    f"pip install -U '{package}>={floor}'")
    return None


def fsdp2_requested() -> bool:
    """True when `accelerate launch` was given an FSDP2 config (it passes it to the processes as environment)."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
            and os.environ.get("FSDP_VERSION", "1") == "2")


def require_versions(accelerate: bool = True):
    """Exit with the one-line message when the installed torch / Accelerate are below the floors."""
    problem = version_problem(fsdp2=accelerate and fsdp2_requested(), accelerate=accelerate)
    if problem:
        sys.exit(f"error: {problem}")
