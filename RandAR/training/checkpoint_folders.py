"""Training checkpoints on disk (train_c2i.py and the tokenizer trainer): atomic saves, finding the newest complete
one, retention, mirroring.

Layout of `<experiment>/checkpoints/` (and of its mirror `<disk-location>/<experiment name>/`):

    iters_00010000/                    the full training state; train_c2i: accelerator.save_state (model,
                                       optimizer, RNG states, train state, LR scheduler, EMA); the tokenizer
                                       trainer: train.pt (optimizer, LR scheduler)
    iters_00010000.safetensors         model-only export (official keys, resolved config in the metadata)
    iters_00010000.ema.safetensors     the EMA weights, when `ema: true`

A checkpoint is complete when its folder exists under its final name: everything is first written to
`.tmp_iters_...` and renamed at the end, after the exports, so a run killed at any moment leaves either the
previous set of complete checkpoints or one more; temporary leftovers are never read and are cleared later.

Every state folder ends with `checksums.json` (RECORD), written last and atomically before the folder is
committed: the size and SHA-256 of each of its files. A resume verifies the newest state against it
(`find_resume_state`): a damaged one (a truncated copy, a non-atomic network file system) is named and set aside
as `iters_X.damaged`, and the run resumes from the newest intact state, or stops naming the damaged folder when
none is left. A state without a record (saved by an earlier version) is checked by loading it.

Retention (as the original release): the newest `keep_last_k` full states are kept (1 by default: enough to
resume); an older checkpoint loses its folder and, unless its step is one of `export_milestones` (or the
final step), its exports too. So a run ends with one full state plus the model-only exports of the milestones.
Pruning waits until the new state has been verified against its record.
"""
import errno
import json
import os
import re
import shutil
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from RandAR.utils.atomic import atomic_path, is_temporary, write_json
from RandAR.utils.checkpoint import atomic_save_safetensors
from RandAR.utils.run_stamp import sha256_file

PREFIX = "iters_"
TMP = ".tmp_"
DAMAGED = ".damaged"  # suffix of a damaged state set aside
RECORD = "checksums.json"
RECORD_FORMAT = "randar-state-1"
UNRECORDED = "no checksum record (saved by an earlier version)"
_COMPLETE = re.compile(r"^iters_(\d{8})$")


class CheckpointError(RuntimeError):
    """A damaged training state or a full disk: the message is the one line the user sees (exit 2)."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def experiment_name(exp_name: str, global_batch_size: int, lr: float) -> str:
    """The original's folder name, kept so that existing scripts and mirrors keep working."""
    return f"{exp_name}_bs_{global_batch_size}_lr_{lr}"


def list_checkpoints(folder: Optional[str]) -> List[Tuple[int, str]]:
    """Complete checkpoints in `folder` as (step, path), oldest first; [] when the folder does not exist."""
    if not folder or not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _COMPLETE.match(name)
        if m and os.path.isdir(os.path.join(folder, name)):
            found.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(found)


def latest_checkpoint(folders: Sequence[Optional[str]]) -> Optional[Tuple[int, str]]:
    """Newest complete checkpoint over several folders (the local one first wins a tie), or None."""
    best = None
    for folder in folders:
        found = list_checkpoints(folder)
        if found and (best is None or found[-1][0] > best[0]):
            best = found[-1]
    return best


def clear_temporaries(folder: str):
    """Remove what an interrupted save or copy left behind (call when no save is running)."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            # TMP: an unfinished checkpoint folder; ".tmp.": atomic_path's temporaries (atomic.is_temporary) and
            # the `<file>.tmp.<pid>` names that runs of earlier versions left
            if name.startswith(TMP) or ".tmp." in name:
                path = os.path.join(folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _siblings(folder: str, name: str) -> List[str]:
    """The export files that belong to checkpoint `name` (iters_X.safetensors, iters_X.ema.safetensors)."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.startswith(name + ".") and f.endswith(".safetensors"))


def _remove_checkpoint(path: str, keep_exports: bool = False):
    """Take the folder out of the complete set with one rename, then delete it and (unless keep_exports) its
    exports: a run killed half-way through never leaves a partly deleted folder under a complete name."""
    folder, name = os.path.split(path)
    doomed = os.path.join(folder, TMP + "deleting_" + name)
    shutil.rmtree(doomed, ignore_errors=True)  # left by an earlier interrupted deletion
    os.rename(path, doomed)
    if not keep_exports:
        for f in _siblings(folder, name):
            os.remove(f)
    shutil.rmtree(doomed)


def _commit(tmp: str, final: str):
    """Rename a finished temporary folder to its final name (replacing an older copy of the same step)."""
    if os.path.isdir(final):
        old = os.path.join(os.path.dirname(final), TMP + "replaced_" + os.path.basename(final))
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)


def _files(folder: str) -> List[str]:
    """Paths relative to `folder` of every file under it, but the record and temporaries."""
    out = []
    for root, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder) for n in names if n != RECORD and not is_temporary(n)]
    return sorted(out)


def write_record(folder: str):
    """`folder/checksums.json`: the size and SHA-256 of every file in it, read back from disk (atomic)."""
    files = {rel: {"size": os.path.getsize(os.path.join(folder, rel)), "sha256": sha256_file(os.path.join(folder, rel))}
             for rel in _files(folder)}
    write_json({"format": RECORD_FORMAT, "files": files}, os.path.join(folder, RECORD))


def state_problem(folder: str) -> Optional[str]:
    """None when every file of the folder's record is there with its size and checksum; UNRECORDED when the folder
    has no record; otherwise what is wrong, in a few words."""
    path = os.path.join(folder, RECORD)
    if not os.path.isfile(path):
        return UNRECORDED
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{RECORD} unreadable ({type(e).__name__})"
    for rel, want in files.items():
        file = os.path.join(folder, rel)
        if not os.path.isfile(file):
            return f"{rel} missing"
        size = os.path.getsize(file)
        if size != want["size"]:
            return f"{rel} is {size} bytes, {want['size']} recorded"
        if sha256_file(file) != want["sha256"]:
            return f"{rel} does not match its recorded checksum"
    return None


def checkpoint_bytes(path: str) -> int:
    """Size on disk of a checkpoint: its folder and exports."""
    folder, name = os.path.split(path)
    files = [os.path.join(path, rel) for rel in _files(path)] + _siblings(folder, name)
    return sum(os.path.getsize(f) for f in files)


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def out_of_space(exc: BaseException, folder: str, needed: int) -> bool:
    """Whether a failed write ran out of space: an ENOSPC/EDQUOT error (safetensors and torch.save wrap or drop
    the errno: their text says so, or the file system has less than `needed` bytes left)."""
    e = exc
    while e is not None:
        text = str(e)
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text \
                or "os error 28" in text or "quota exceeded" in text.lower():
            return True
        e = e.__cause__ or e.__context__
    try:
        return shutil.disk_usage(folder).free < needed
    except OSError:
        return False


def _previous_state(ckpt_dir: str, step: int) -> str:
    """The words of the full-disk error about the state a relaunch resumes from."""
    prev = [c for c in list_checkpoints(ckpt_dir) if c[0] != step]
    if not prev:
        return "there is no earlier state: a relaunch starts from step 0"
    prev_step, path = prev[-1]
    problem = state_problem(path)
    state = "intact" if problem is None else "untouched" if problem == UNRECORDED else f"damaged ({problem})"
    return (f"the previous state {path} is {state}: make room (or move --results-dir) and run the same "
            f"command again to resume from step {prev_step}")


def save_checkpoint(ckpt_dir: str, step: int, write_state: Callable[[str], None],
                    exports: Mapping[str, Tuple[Mapping[str, torch.Tensor], Dict[str, str]]], is_main: bool = True,
                    barrier: Callable[[], None] = lambda: None) -> str:
    """Checkpoint `step`: write_state(folder) writes the full training state (train_c2i: accelerator.save_state,
    called on every process), then the main process writes the model-only exports and the record, and commits
    the folder.

    exports: file suffix (".safetensors", ".ema.safetensors") -> (state dict, safetensors metadata).
    barrier: waits for every process (accelerator.wait_for_everyone). Returns the final folder.
    Raises CheckpointError (one line: the folder, the space needed, the state to resume from) when the disk
    fills up; the partial folder is removed, the previous states are untouched.
    """
    name = checkpoint_name(step)
    final, tmp = os.path.join(ckpt_dir, name), os.path.join(ckpt_dir, TMP + name)
    if is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    try:
        write_state(tmp)
        barrier()
        if is_main:
            for suffix, (state_dict, metadata) in exports.items():
                atomic_save_safetensors(state_dict, os.path.join(ckpt_dir, name + suffix), metadata)
            write_record(tmp)
            _commit(tmp, final)
    except Exception as e:
        prev = [p for s, p in list_checkpoints(ckpt_dir) if s != step]
        needed = checkpoint_bytes(prev[-1]) if prev else sum(
            os.path.getsize(os.path.join(tmp, f)) for f in (_files(tmp) if os.path.isdir(tmp) else []))
        if not out_of_space(e, ckpt_dir, needed):
            raise
        free = shutil.disk_usage(ckpt_dir).free
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.isdir(final):  # exports written before the disk filled up belong to no state
                for f in _siblings(ckpt_dir, name):
                    os.remove(f)
        basis = "the size of the previous state" if prev else "at least what was written before it stopped"
        raise CheckpointError(f"no space left on the device of {ckpt_dir} while saving {final}: it needs about "
                              f"{_mib(needed)} ({basis}), {_mib(free)} was free; "
                              f"{_previous_state(ckpt_dir, step)}") from e
    barrier()
    return final


def set_aside(path: str) -> str:
    """Rename a damaged state to `<path>.damaged` (out of the complete set: never resumed from, never counted
    by retention); returns the new name."""
    target = path + DAMAGED
    shutil.rmtree(target, ignore_errors=True)  # an earlier damaged copy of the same step
    os.rename(path, target)
    return target


def find_resume_state(folders: Sequence[Optional[str]], log: Callable[[str], None]) -> Optional[Tuple[int, str]]:
    """The newest state over `folders` (the first folder wins a tie) that matches its record, or an unrecorded one
    (said once; load_state_or_stop checks it by loading). Each damaged newer state is named in one line and set
    aside. None when there is no state; CheckpointError when states exist but none is intact."""
    candidates = sorted(((s, -i, p) for i, f in enumerate(folders) for s, p in list_checkpoints(f)), reverse=True)
    damaged = []
    for step, _, path in candidates:
        problem = state_problem(path)
        if problem is None or problem == UNRECORDED:
            if problem == UNRECORDED:
                log(f"{path} has no {RECORD} (saved by an earlier version): it is checked by loading it")
            for bad, why in damaged:
                try:
                    log(f"training state {bad} is damaged ({why}): set aside as {set_aside(bad)}; resuming from "
                        f"the intact {path}")
                except OSError as e:
                    log(f"training state {bad} is damaged ({why}) and could not be set aside ({e}); resuming "
                        f"from the intact {path}")
            return step, path
        damaged.append((path, problem))
    if not damaged:
        return None
    path, why = damaged[0]
    export = path + ".safetensors"
    restart = f", or start a new --exp-name from its export with --gpt-ckpt {export}" if os.path.isfile(export) else ""
    raise CheckpointError(f"training state {path} is damaged ({why}) and no intact state is left in "
                          f"{', '.join(f for f in folders if f)}: restore it from an intact copy (e.g. the "
                          f"--disk-location mirror), or remove it (rm -r {path}) to train from step 0{restart}")


def load_state_or_stop(load: Callable[[str], None], path: str):
    """load(path) (accelerator.load_state); a state that cannot be read is named in one line (CheckpointError)."""
    try:
        load(path)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"training state {path} could not be loaded ({type(e).__name__}: {first}): it is "
                              f"damaged or was saved with another model config; move it aside (mv {path} "
                              f"{path}{DAMAGED}) and run again to resume from the previous state (or from step "
                              f"0 when none is left)") from e


def prune_checkpoints(folder: str, keep_last_k: int, export_milestones: Iterable[int] = ()) -> List[str]:
    """Delete all but the newest keep_last_k complete checkpoints (k <= 0 keeps all); the exports of a deleted
    checkpoint stay when its step is in export_milestones. Returns the deleted folders."""
    if keep_last_k is None or keep_last_k <= 0:
        return []
    milestones = {int(s) for s in export_milestones}
    removed = []
    for step, path in list_checkpoints(folder)[:-keep_last_k]:
        _remove_checkpoint(path, keep_exports=step in milestones)
        removed.append(path)
    return removed


def mirror_checkpoint(ckpt_dir: str, step: int, mirror_dir: str, keep_last_k: int,
                      export_milestones: Iterable[int] = ()) -> str:
    """Copy checkpoint `step` and its exports to mirror_dir (temporary names, then rename), then prune there.

    Raises on any I/O error: the caller logs it and trains on (a full or flaky slow disk must not stop training).
    """
    name = checkpoint_name(step)
    os.makedirs(mirror_dir, exist_ok=True)
    clear_temporaries(mirror_dir)
    for src in _siblings(ckpt_dir, name):
        dst = os.path.join(mirror_dir, os.path.basename(src))
        with atomic_path(dst) as tmp_copy:
            shutil.copyfile(src, tmp_copy)
    tmp, final = os.path.join(mirror_dir, TMP + name), os.path.join(mirror_dir, name)
    shutil.copytree(os.path.join(ckpt_dir, name), tmp)
    _commit(tmp, final)
    problem = state_problem(final)
    if problem is not None and problem != UNRECORDED:  # read back from the mirror disk before pruning there
        raise OSError(f"the copy {final} does not match its record ({problem}); older copies are kept")
    prune_checkpoints(mirror_dir, keep_last_k, export_milestones)
    return final
