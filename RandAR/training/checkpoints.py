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

Retention (as the original release): the newest `keep_last_k` full states are kept (1 by default: enough to
resume); an older checkpoint loses its folder and, unless its step is one of `export_milestones` (or the
final step), its exports too. So a run ends with one full state plus the model-only exports of the milestones.
"""
import os
import re
import shutil
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from RandAR.utils.atomic import atomic_path
from RandAR.utils.checkpoint import atomic_save_safetensors

PREFIX = "iters_"
TMP = ".tmp_"
_COMPLETE = re.compile(r"^iters_(\d{8})$")


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


def save_checkpoint(ckpt_dir: str, step: int, write_state: Callable[[str], None],
                    exports: Mapping[str, Tuple[Mapping[str, torch.Tensor], Dict[str, str]]], is_main: bool = True,
                    barrier: Callable[[], None] = lambda: None) -> str:
    """Checkpoint `step`: write_state(folder) writes the full training state (train_c2i: accelerator.save_state,
    called on every process), then the main process writes the model-only exports and commits the folder.

    exports: file suffix (".safetensors", ".ema.safetensors") -> (state dict, safetensors metadata).
    barrier: waits for every process (accelerator.wait_for_everyone). Returns the final folder.
    """
    name = checkpoint_name(step)
    final, tmp = os.path.join(ckpt_dir, name), os.path.join(ckpt_dir, TMP + name)
    if is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    write_state(tmp)
    barrier()
    if is_main:
        for suffix, (state_dict, metadata) in exports.items():
            atomic_save_safetensors(state_dict, os.path.join(ckpt_dir, name + suffix), metadata)
        _commit(tmp, final)
    barrier()
    return final


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
    prune_checkpoints(mirror_dir, keep_last_k, export_milestones)
    return final
