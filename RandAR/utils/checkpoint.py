"""Checkpoint I/O: safetensors read/write, torch checkpoints with `weights_only=True`, strict loading.

Every model load in the project goes through `load_model_weights`, so a checkpoint that does not fit the
config fails the same way everywhere: with the missing, unexpected and mis-shaped keys listed and, where
one of the shipped configs would fit, its name.
"""
import difflib
import glob
import hashlib
import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from omegaconf import DictConfig
from safetensors import safe_open
from safetensors.torch import save_file

from RandAR.utils.atomic import atomic_path
from RandAR.utils.config import instantiate_from_config, load_config, read_config, to_plain

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
# Prefixes added by DDP (`module.`) and torch.compile (`_orig_mod.`); never part of the official keys.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointMismatchError(RuntimeError):
    pass


def load_safetensors(path: str) -> Dict[str, torch.Tensor]:
    with safe_open(path, framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None):
    """A crash never leaves a half-written file under `path` (RandAR.utils.atomic)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def export_metadata(config, step: Optional[int] = None, kind: str = "model") -> Dict[str, str]:
    """Safetensors metadata of a model export: its resolved config (what `export_config` reads back), the
    ar_model section on its own, the training step and which weights these are ("model" or "ema")."""
    config = to_plain(config)
    meta = {"format": "randar", "weights": kind, **({} if step is None else {"step": str(step)}),
            "config": json.dumps(config)}
    if "ar_model" in config:
        meta["ar_model"] = json.dumps(config["ar_model"])
    return meta


def save_export(path: str, state_dict: Mapping[str, torch.Tensor], config, step: Optional[int] = None,
                kind: str = "model"):
    """A self-describing model export: weights plus `export_metadata`."""
    atomic_save_safetensors(state_dict, path, export_metadata(config, step, kind))


def export_config(path: str) -> Optional[DictConfig]:
    """The config an export of `save_export` carries (read like a YAML config: canonical, checked, completed), or
    None when the file carries none (an official checkpoint, a torch file)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.endswith(".safetensors"):
        return None
    with safe_open(path, framework="pt", device="cpu") as f:
        text = (f.metadata() or {}).get("config")
    if text is None:
        return None
    return read_config(json.loads(text), f"{path} (the config in its metadata)")


def save_model_safetensors(model: torch.nn.Module, path: str, metadata: Optional[Dict[str, str]] = None):
    atomic_save_safetensors(model.state_dict(), path, metadata)


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def read_state_dict(path: str, entry: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from a torch file (`.pt`/`.pth`/`.bin`) with weights_only.

    Torch files may hold the state dict itself or a dict with it under `entry` (or `model`, `ema`,
    `state_dict`), as LlamaGen's `vq_ds16_c2i.pt` does with `model`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        sd = load_safetensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointMismatchError(
                f"could not read {path} as a torch checkpoint with weights_only=True ({type(e).__name__}: {e}). "
                "Is it a complete download of a weights file?") from e
        sd = obj
        if isinstance(obj, dict):
            for key in ([entry] if entry else []) + ["model", "state_dict"]:
                if key in obj and isinstance(obj[key], dict):
                    sd = obj[key]
                    break
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointMismatchError(f"{path} does not hold a state dict (tensor mapping)")
    return strip_wrapper_prefixes(sd)


def _shape_report(model_sd, sd):
    missing = sorted(set(model_sd) - set(sd))
    unexpected = sorted(set(sd) - set(model_sd))
    mis_shaped = sorted(k for k in set(sd) & set(model_sd) if tuple(sd[k].shape) != tuple(model_sd[k].shape))
    return missing, unexpected, mis_shaped


def _meta_shapes(config) -> Dict[str, tuple]:
    with torch.device("meta"):
        model = instantiate_from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def suggest_config(state_dict: Mapping[str, torch.Tensor], config_root: str = CONFIG_ROOT) -> Optional[str]:
    """Name a shipped YAML config whose model has exactly these keys and shapes, if any."""
    want = {k: tuple(v.shape) for k, v in state_dict.items()}
    for path in sorted(glob.glob(os.path.join(config_root, "*", "*.yaml"))):
        if os.path.islink(path):  # an alias (randar_xl_0.7b.yaml): name the file it points to
            continue
        try:
            cfg = load_config(path)
        except Exception:
            continue
        for section in ("ar_model", "tokenizer", "model"):
            if section in cfg and "target" in cfg[section]:
                try:
                    if _meta_shapes(cfg[section]) == want:
                        return os.path.relpath(path, os.path.dirname(config_root))
                except Exception:
                    pass
    return None


def load_model_weights(model: torch.nn.Module, path_or_state_dict, source: Optional[str] = None, entry: Optional[str] = None):
    """Load strictly; on any key or shape mismatch raise CheckpointMismatchError naming the file and the fix."""
    if isinstance(path_or_state_dict, str):
        source = source or path_or_state_dict
        sd = read_state_dict(path_or_state_dict, entry=entry)
    else:
        sd = strip_wrapper_prefixes(path_or_state_dict)
    source = source or "<state dict>"
    model_sd = model.state_dict()
    missing, unexpected, mis_shaped = _shape_report(model_sd, sd)
    if missing or unexpected or mis_shaped:
        def show(keys, fmt=str, n=8):
            s = ", ".join(fmt(k) for k in keys[:n])
            return s + (f", ... ({len(keys)} in all)" if len(keys) > n else "")
        lines = [f"checkpoint {source} does not fit the {type(model).__name__} built from the config:"]
        if missing:
            lines.append(f"  missing keys: {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {show(unexpected)}")
        if mis_shaped:
            lines.append("  mis-shaped keys: " + show(
                mis_shaped, lambda k: f"{k} checkpoint {list(sd[k].shape)} vs model {list(model_sd[k].shape)}"))
        hint = suggest_config(sd)
        lines.append(f"  a config that fits this checkpoint: {hint}" if hint else
                     "  no shipped config fits it: check that --config matches the checkpoint you passed.")
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(sd, strict=True)
    return model


# ---- released checkpoints by name ------------------------------------------------------------------------
# Released checkpoints by name.
#
# A checkpoint flag or config value (--gpt-ckpt, --vq-ckpt, a config's vq_ckpt) that is not a local file but whose
# file name is one of RELEASES is fetched from its public Hugging Face repository with huggingface_hub into the
# Hugging Face cache (HF_HOME or HF_HUB_CACHE choose where, HF_ENDPOINT a mirror), then checked. A local file always
# wins, so a manual download works as before. A second use reads the cache without a request.
#
# The check: the recorded byte size and sha256 where they are published (none are for the files below, so their
# entries hold None), and the file's own structure: a safetensors header that parses and whose tensors end exactly
# at the end of the file, or a torch file (zip with a readable directory, or the legacy pickle format). A cut or
# foreign file (an HTML error page, a truncated transfer) is refused with one line naming it and the fix.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled torch.save magic number


@dataclass(frozen=True)
class Release:
    repo_id: str
    filename: str
    size: Optional[int] = None  # bytes, where published
    sha256: Optional[str] = None  # hex, where published
    revision: str = "main"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision}/{self.filename}"


RELEASES = {r.filename: r for r in (
    # RandAR (README table of github.com/ziqipang/RandAR)
    Release("ziqipang/RandAR", "randar_0.3b_llamagen_360k_bs_1024_lr_0.0004.safetensors"),
    Release("ziqipang/RandAR", "randar_0.3b_maskgit_360k_bs_1024_lr_0.0004.safetensors"),
    Release("ziqipang/RandAR", "randar_0.7b_llamagen_360k_bs_1024_lr_0.0004.safetensors"),
    # tokenizers (the original's documentation.md, step 3)
    Release("FoundationVision/LlamaGen", "vq_ds16_c2i.pt"),
    Release("fun-research/TiTok", "maskgit-vqgan-imagenet-f16-256.bin"),
)}


class CheckpointDownloadError(FileNotFoundError):
    """A released checkpoint that could not be fetched (no network, repository unreachable)."""


class WrongCheckpointError(ValueError):
    """A fetched file that is not the released checkpoint it should be."""


def resolve_checkpoint(path_or_name: Optional[str], what: str = "checkpoint") -> Optional[str]:
    """A local path to use for `path_or_name`: itself when it is a file (or None, or unknown: the caller reports
    it missing as before), else the fetched and checked released file of that name. `what` names the flag or
    config value in messages."""
    if not path_or_name or os.path.isfile(path_or_name):
        return path_or_name
    name = os.path.basename(path_or_name)
    release = RELEASES.get(name)
    if release is None:
        close = difflib.get_close_matches(name, list(RELEASES), n=3, cutoff=0.6)
        if close:
            raise FileNotFoundError(f"{what} {path_or_name} not found; released checkpoints are fetched by name: "
                                    f"did you mean {' or '.join(close)}?")
        return path_or_name
    local = fetch(release, what, path_or_name)
    check_release(local, release)
    return local


def fetch(release: Release, what: str, asked: str) -> str:
    """The cached copy of `release`, downloading it first when absent."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    cached = try_to_load_from_cache(release.repo_id, release.filename, revision=release.revision)
    if isinstance(cached, str):
        return cached
    print(f"{what} {asked} is not a local file: fetching {release.filename} from the Hugging Face repository "
          f"{release.repo_id}", file=sys.stderr, flush=True)
    try:
        return hf_hub_download(release.repo_id, release.filename, revision=release.revision,
                               endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as e:  # any failure of the transfer (network, HTTP status, size) is the user's to fix here
        reason = type(e).__name__ + (f": {str(e).strip().splitlines()[0]}" if str(e).strip() else "")
        raise CheckpointDownloadError(f"could not fetch {release.filename} from {release.repo_id} ({reason}); "
                                      f"download it by hand from {release.url} and pass its path as {what}") from None


def check_release(path: str, release: Release):
    """Raise WrongCheckpointError unless `path` has the recorded size and sha256 and a readable structure."""
    size = os.path.getsize(path)
    problem = None
    if release.size is not None and size != release.size:
        problem = f"{size} bytes, expected {release.size}"
    elif not well_formed(path):
        problem = "not a readable safetensors or torch file"
    elif release.sha256 is not None and file_sha256(path) != release.sha256:
        problem = "its sha256 differs from the published one"
    if problem:
        raise WrongCheckpointError(f"{path} is not the released {release.filename} ({problem}): delete it and rerun "
                                   f"to fetch it again, or download it by hand from {release.url}")


def well_formed(path: str) -> bool:
    """Whether `path` parses as a complete safetensors file (by its name) or as a torch file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if path.endswith(".safetensors"):
            try:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > size - 8:
                    return False
                header = json.loads(f.read(n))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (struct.error, ValueError, TypeError, KeyError, IndexError):
                return False
            return 8 + n + end == size
        if f.read(len(TORCH_LEGACY_MAGIC)) == TORCH_LEGACY_MAGIC:
            return True
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
