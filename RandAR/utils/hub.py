"""Released checkpoints by name.

A checkpoint flag or config value (--gpt-ckpt, --vq-ckpt, a config's vq_ckpt) that is not a local file but whose
file name is one of RELEASES is fetched from its public Hugging Face repository with huggingface_hub into the
Hugging Face cache (HF_HOME or HF_HUB_CACHE choose where, HF_ENDPOINT a mirror), then checked. A local file always
wins, so a manual download works as before. A second use reads the cache without a request.

The check: the recorded byte size and sha256 where they are published (none are for the files below, so their
entries hold None), and the file's own structure: a safetensors header that parses and whose tensors end exactly
at the end of the file, or a torch file (zip with a readable directory, or the legacy pickle format). A cut or
foreign file (an HTML error page, a truncated transfer) is refused with one line naming it and the fix.
"""
import difflib
import hashlib
import json
import os
import struct
import sys
import zipfile
from dataclasses import dataclass
from typing import Optional

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
