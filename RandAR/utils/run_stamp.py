"""What made a run, recorded beside its outputs, so that a resumed run only ever continues the same run.

Sampling, the CFG search and code extraction resume by skipping outputs that already exist. That is only right
when the existing outputs were made from the same inputs: checkpoints are exported under the same file names
(`iters_XXXXXXXX.safetensors`) by every training run, so names prove nothing. A stamp is a JSON dict of what
decides the outputs (content fingerprints of the weights, the resolved config, every setting that changes
them); a run that finds a stamp resumes only when its own stamp is equal, and otherwise stops naming the
fields that differ. `force=True` removes that run's stale outputs and starts it afresh.

Fingerprints hash the whole file, once per (path, size, modification time): see file_fingerprint. A stamp of an
earlier version (which hashed 8 MB spread over the file) still resumes when that partial hash of the file is
unchanged, and is then rewritten with the full fingerprint.
"""
import hashlib
import json
import os
import re
import shutil
from typing import Any, Dict, List, Sequence

from RandAR.utils.atomic import write_json

HASH_BLOCK_BYTES = 8 << 20  # read size when hashing a whole file
CACHE_ENV = "RANDAR_CACHE"  # folder of the fingerprint cache; default ~/.cache/randar (where the Inception graph goes)
DEFAULT_CACHE_DIR = "~/.cache/randar"
CACHE_FILE = "fingerprints.json"
CACHE_ENTRIES = 1000  # the oldest are dropped beyond this
MAX_SHOWN_DIFFERENCES = 6  # keeps a mismatch error to one readable line
# Earlier versions recorded `<size>:<32 hex digits>`, a hash of 8 MB spread over the file (LEGACY_*).
LEGACY_FINGERPRINT = re.compile(r"^\d+:[0-9a-f]{32}$")
LEGACY_CHUNKS, LEGACY_CHUNK_BYTES = 8, 1 << 20

_memo: Dict[tuple, str] = {}  # (real path, size, mtime_ns) -> fingerprint, this process
_paths: Dict[str, str] = {}  # fingerprint -> a path it was computed from, to check an old stamp's legacy value


class StampMismatchError(ValueError):
    """Outputs exist that were made from other inputs (or by a version that recorded none)."""


def sha256_file(path: str) -> str:
    """SHA-256 of every byte of the file (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def cache_path() -> str:
    return os.path.join(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR), CACHE_FILE)


def _read_cache() -> Dict[str, str]:
    try:
        with open(cache_path()) as f:
            cache = json.load(f)
        return cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):  # none yet, unreadable or damaged: hash again
        return {}


def _write_cache(key: str, value: str):
    """Add one entry; atomic (RandAR.utils.atomic), so concurrent processes lose at most an entry, never the
    file; a cache that cannot be written (read-only home) is skipped."""
    cache = _read_cache()
    cache.pop(key, None)
    cache[key] = value
    try:
        write_json(dict(list(cache.items())[-CACHE_ENTRIES:]), cache_path())
    except OSError:
        pass


def file_fingerprint(path: str) -> str:
    """`<size>:sha256:<hex>` of the whole file: any changed byte changes it, whatever the file's name.

    Hashed once per (real path, size, modification time in ns): the result is kept in this process and in
    cache_path() (a small JSON file), so a resume of a multi-GB checkpoint reads it only once."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    fingerprint = _memo.get(key)
    if fingerprint is None:
        cache_key = json.dumps(key)
        fingerprint = _read_cache().get(cache_key)
        if fingerprint is None:
            fingerprint = f"{st.st_size}:sha256:{sha256_file(real)}"
            _write_cache(cache_key, fingerprint)
        _memo[key] = fingerprint
    _paths[fingerprint] = real
    return fingerprint


def legacy_fingerprint(path: str) -> str:
    """The fingerprint earlier versions recorded (8 MB spread over the file): only to check their stamps."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= LEGACY_CHUNKS * LEGACY_CHUNK_BYTES:
            digest.update(f.read())
        else:
            last = size - LEGACY_CHUNK_BYTES
            for k in range(LEGACY_CHUNKS):
                f.seek(k * last // (LEGACY_CHUNKS - 1))
                digest.update(f.read(LEGACY_CHUNK_BYTES))
    return f"{size}:{digest.hexdigest()[:32]}"


def same_fingerprint(recorded: Any, current: Any) -> bool:
    """Whether a recorded value stands for the same file as `current`, a fingerprint file_fingerprint made in
    this process; a recorded earlier-version fingerprint is compared with that file's legacy_fingerprint."""
    if recorded == current:
        return True
    path = _paths.get(current) if isinstance(current, str) else None
    return (path is not None and isinstance(recorded, str) and LEGACY_FINGERPRINT.match(recorded) is not None
            and os.path.isfile(path) and legacy_fingerprint(path) == recorded)


def _describe(recorded: Any, current: Any) -> str:
    if isinstance(recorded, str) and LEGACY_FINGERPRINT.match(recorded) and isinstance(current, str) \
            and current in _paths:
        return f"{recorded!r} there (an earlier version's fingerprint, which {_paths[current]} does not match now)"
    return f"{recorded!r} there"


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
    pairs = {k: (old.get(k, "(absent)"), new.get(k, "(absent)")) for k in sorted(set(old) | set(new))}
    return [f"{k}: {_describe(a, b)}, {b!r} now" for k, (a, b) in pairs.items() if not same_fingerprint(a, b)]


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
            if recorded != json.loads(json.dumps(stamp)):  # an earlier version's fingerprints: record the full ones
                write_json(stamp, stamp_path)
            return True
        raise StampMismatchError(f"{stamp_path} records another {what} ({diff}); {fix}")
    if force:
        remove_outputs([*outputs, stamp_path])
    write_json(stamp, stamp_path)
    return False
