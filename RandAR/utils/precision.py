"""The default precision of training and sampling, from what the machine can do natively (never from a timing,
which changes with the machine's load).

CUDA: bf16. CPU: bf16 where the CPU multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16/SVE-BF16),
about 2x faster than float32 there; float32 elsewhere (e.g. AVX2-only CPUs), where bfloat16 is emulated and about
2x slower.
"""
import os
from typing import Dict

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")  # torch.cpu.get_capabilities() keys
CPUINFO_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo "flags" (x86) / "Features" (Arm)
CPUINFO = "/proc/cpuinfo"


def cpu_capabilities() -> Dict[str, object]:
    """What torch detects on this CPU (torch.cpu.get_capabilities()); without it (older torch), the bf16 flags of
    /proc/cpuinfo, and {} when neither is there."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    if os.path.isfile(CPUINFO):
        words = set()
        for line in open(CPUINFO):
            if line.startswith(("flags", "Features")):
                words.update(line.split(":", 1)[1].split())
        return {flag: flag in words for flag in CPUINFO_BF16_FLAGS}
    return {}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AVX512-BF16, AMX-BF16, Arm BF16)."""
    caps = cpu_capabilities()
    return any(bool(caps.get(flag)) for flag in NATIVE_BF16_FLAGS)


def default_precision(device) -> str:
    """bf16 on CUDA and on CPUs with native bfloat16, else "none" (float32)."""
    if torch.device(device).type == "cuda":
        return "bf16"
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "none"


def describe_cpu() -> str:
    """One line for logs: e.g. 'AMD EPYC, AVX2, no native bfloat16'."""
    caps = cpu_capabilities()
    name = caps.get("cpu_name") or caps.get("architecture") or "CPU"
    native = [flag for flag in NATIVE_BF16_FLAGS if caps.get(flag)]
    return (f"{name}, {torch.backends.cpu.get_cpu_capability()}, "
            + (f"native bfloat16 ({', '.join(native)})" if native else "no native bfloat16"))
