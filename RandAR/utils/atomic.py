"""Atomic file writes: write beside the target under a hidden temporary name, then rename over it.

A reader, or a run resumed after a crash, sees the old file or the whole new one, never a partial file.
"""
import contextlib
import json
import os


def temporary_path(path: str) -> str:
    """<folder>/.<stem>.tmp.<pid><ext>: hidden, in the same folder (the rename stays on one file system), with the
    target's extension (writers such as PIL and numpy pick the format from it)."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp.{os.getpid()}{ext}")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of temporary_path's (what an interrupted write leaves behind)."""
    return name.startswith(".") and ".tmp." in name


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path to write; on success it is renamed to `path`, on error removed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """open() for writing, atomically: the file is closed, then renamed to `path`."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_json(obj, path: str):
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2)
