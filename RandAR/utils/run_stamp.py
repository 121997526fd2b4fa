"""What made a run, recorded beside its outputs, so that a resumed run only ever continues the same run.

Sampling, the CFG search and code extraction resume by skipping outputs that already exist. That is only right
when the existing outputs were made from the same inputs: checkpoints are exported under the same file names
(`iters_XXXXXXXX.safetensors`) by every training run, so names prove nothing. A stamp is a JSON dict of what
decides the outputs (content fingerprints of the weights, the resolved config, every setting that changes
them); a run that finds a stamp resumes only when its own stamp is equal, and otherwise stops naming the
fields that differ. `force=True` removes that run's stale outputs and starts it afresh.
"""
import hashlib
import json
import os
import shutil
from typing import Any, Dict, List, Sequence

from RandAR.utils.atomic import write_json

FINGERPRINT_CHUNKS = 8  # evenly spread reads, the first and last bytes included
FINGERPRINT_CHUNK_BYTES = 1 << 20  # 8 MB read in all, however large the checkpoint
MAX_SHOWN_DIFFERENCES = 6  # keeps a mismatch error to one readable line


class StampMismatchError(ValueError):
    """Outputs exist that were made from other inputs (or by a version that recorded none)."""


def file_fingerprint(path: str) -> str:
    """`<size>:<sha256 of a few MB spread over the file>`: cheap for multi-GB checkpoints, and two trainings'
    exports (whose weights differ everywhere) do not share it, whatever their file names."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= FINGERPRINT_CHUNKS * FINGERPRINT_CHUNK_BYTES:
            digest.update(f.read())
        else:
            last = size - FINGERPRINT_CHUNK_BYTES
            for k in range(FINGERPRINT_CHUNKS):
                f.seek(k * last // (FINGERPRINT_CHUNKS - 1))
                digest.update(f.read(FINGERPRINT_CHUNK_BYTES))
    return f"{size}:{digest.hexdigest()[:32]}"


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def stamp_differences(recorded: dict, current: dict) -> List[str]:
    """`key: <recorded> there, <current> now` for each differing (dotted, nested) key of two stamps."""
    # Through JSON, so tuples and lists (and int/float keys) compare as they are stored.
    old, new = _flatten(json.loads(json.dumps(recorded))), _flatten(json.loads(json.dumps(current)))
    return [f"{k}: {old.get(k, '(absent)')!r} there, {new.get(k, '(absent)')!r} now"
            for k in sorted(set(old) | set(new)) if old.get(k, "(absent)") != new.get(k, "(absent)")]


def differences_text(recorded: dict, current: dict) -> str:
    """The differing fields of two stamps on one line ('' when equal)."""
    diff = stamp_differences(recorded, current)
    more = len(diff) - MAX_SHOWN_DIFFERENCES
    return "; ".join(diff[:MAX_SHOWN_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")


def remove_outputs(paths: Sequence[str]):
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def claim(stamp_path: str, stamp: dict, outputs: Sequence[str] = (), force: bool = False, what: str = "run",
          fix: str = "pass --force to start it afresh (removes its outputs), or change --exp-name / the output path"
          ) -> bool:
    """Make `stamp_path` record `stamp` before any output of the run is written.

    outputs: the run's files and folders (besides the stamp). Returns True when an equal stamp was there (a
    resume). When the recorded stamp differs, or outputs exist with no stamp: with `force`, the outputs and the
    stamp are removed and the run starts afresh; otherwise StampMismatchError names the differing fields and
    ends with `fix`.
    """
    recorded = None
    if os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            recorded = json.load(f)
    elif not force and any(os.path.lexists(p) for p in outputs):
        raise StampMismatchError(f"{what} outputs {[p for p in outputs if os.path.lexists(p)][0]} exist without a "
                                 f"record of what made them ({stamp_path}); {fix}")
    if recorded is not None and not force:
        diff = differences_text(recorded, stamp)
        if not diff:
            return True
        raise StampMismatchError(f"{stamp_path} records another {what} ({diff}); {fix}")
    if force:
        remove_outputs([*outputs, stamp_path])
    write_json(stamp, stamp_path)
    return False
