"""Released checkpoints by name (RandAR/utils/checkpoint.py) against a local server speaking the Hugging Face download
routes (HEAD and GET of /{repo_id}/resolve/{revision}/{filename}, byte ranges), with HF_ENDPOINT pointed at it and
the cache in a temporary folder: no network."""
import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest
import torch

from RandAR.model.tokenizers import build_tokenizer
from RandAR.utils import checkpoint as hub

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NAME = "tiny_vq.safetensors"
REPO = "acme/tiny"


class Hub:
    """The files of one repository at COMMIT; `cut` answers that many full GETs with half the body, then closes."""

    def __init__(self, files):
        self.files, self.requests, self.cut = files, [], 0
        hub_state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body):
                hub_state.requests.append((self.command, self.path, self.headers.get("Range")))
                prefix = f"/{REPO}/resolve/"
                inside = self.path[len(prefix):] if self.path.startswith(prefix) else ""
                revision, _, name = inside.partition("/")
                data = hub_state.files.get(name)
                if data is None or revision not in ("main", COMMIT):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                if hub_state.cut and not start:
                    hub_state.cut -= 1
                    self.wfile.write(data[: len(data) // 2])  # then the connection closes mid-file
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def downloads(self):
        return [r for r in self.requests if r[0] == "GET"]


@pytest.fixture
def tiny():
    return open(os.path.join(FIX, "vq_tiny.safetensors"), "rb").read()


@pytest.fixture
def served(tiny, tmp_path, monkeypatch):
    """A running local hub serving NAME, the release table knowing it (size and sha256), the cache in tmp_path."""
    server = Hub({NAME: tiny})
    server.thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("time.sleep", lambda s: None)  # huggingface_hub's waits between retries
    monkeypatch.setitem(hub.RELEASES, NAME, hub.Release(REPO, NAME, len(tiny), hashlib.sha256(tiny).hexdigest()))
    monkeypatch.chdir(tmp_path)  # so that NAME is not a local file
    yield server
    server.server.shutdown()
    server.server.server_close()


def vq_config():
    return {"target": "RandAR.model.tokenizers.llamagen_vq.VQModel",
            "params": json.load(open(os.path.join(FIX, "vq_tiny.json")))["constructor_args"]}


def test_name_downloads_loads_then_comes_from_the_cache(served, tmp_path, tiny):
    model = build_tokenizer(vq_config(), NAME)  # the tokenizer boundary resolves the name
    direct = build_tokenizer(vq_config(), os.path.join(FIX, "vq_tiny.safetensors"))
    for (k, a), (_, b) in zip(model.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), k
    assert len(served.downloads()) == 1
    path = hub.resolve_checkpoint(NAME, "--vq-ckpt")
    assert path.startswith(str(tmp_path / "hf" / "hub")) and open(path, "rb").read() == tiny
    n = len(served.requests)
    assert hub.resolve_checkpoint(f"./checkpoints/{NAME}", "the config's vq_ckpt") == path  # a config's default path
    assert len(served.requests) == n  # no request: the cache answers


def test_interrupted_download_resumes(served, tiny, monkeypatch):
    served.cut = 1
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)  # kept: whole chunks received
    path = hub.resolve_checkpoint(NAME, "--vq-ckpt")
    assert open(path, "rb").read() == tiny
    ranges = [r[2] for r in served.downloads()]
    assert len(ranges) == 2 and ranges[0] is None, ranges
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= len(tiny) // 2  # the second GET asks for the rest


def test_wrong_file_is_refused(served, tiny, monkeypatch):
    monkeypatch.setitem(hub.RELEASES, NAME, hub.Release(REPO, NAME, len(tiny) + 1))
    with pytest.raises(hub.WrongCheckpointError) as e:
        hub.resolve_checkpoint(NAME, "--vq-ckpt")
    msg = str(e.value)
    assert "\n" not in msg and NAME in msg and f"expected {len(tiny) + 1}" in msg and "delete it" in msg
    monkeypatch.setitem(hub.RELEASES, NAME, hub.Release(REPO, NAME, len(tiny), "0" * 64))
    with pytest.raises(hub.WrongCheckpointError, match="sha256 differs"):
        hub.resolve_checkpoint(NAME, "--vq-ckpt")


def test_cut_file_is_refused_by_its_structure(served, tiny, monkeypatch):
    served.files[NAME] = tiny[:-10]  # a server serving a truncated file, consistently
    monkeypatch.setitem(hub.RELEASES, NAME, hub.Release(REPO, NAME))  # no recorded size or sha256
    with pytest.raises(hub.WrongCheckpointError, match="not a readable safetensors or torch file"):
        hub.resolve_checkpoint(NAME, "--vq-ckpt")


def test_local_path_is_used_as_is(served, tmp_path, tiny):
    local = tmp_path / "elsewhere" / NAME
    local.parent.mkdir()
    local.write_bytes(b"not even a checkpoint")  # a local file wins, unchecked
    assert hub.resolve_checkpoint(str(local), "--vq-ckpt") == str(local)
    assert served.requests == []


def test_no_network_says_how_to_download_by_hand(served, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(hub.CheckpointDownloadError) as e:
        hub.resolve_checkpoint(NAME, "--vq-ckpt")
    msg = str(e.value)
    assert "\n" not in msg and msg.endswith(f"download it by hand from https://huggingface.co/{REPO}/resolve/main/"
                                            f"{NAME} and pass its path as --vq-ckpt")


def test_unknown_missing_path_is_left_to_the_caller_with_a_hint_when_close(tmp_path):
    missing = str(tmp_path / "mine.pt")
    assert hub.resolve_checkpoint(missing, "--vq-ckpt") == missing  # the caller's own "not found" error follows
    with pytest.raises(FileNotFoundError, match="did you mean vq_ds16_c2i.pt"):
        hub.resolve_checkpoint(str(tmp_path / "vq_ds16_c2i.pth"), "--vq-ckpt")


def test_released_names_match_the_docs():
    docs = open(os.path.join(os.path.dirname(FIX), "..", "GETTING_STARTED.md")).read()
    for name, release in hub.RELEASES.items():
        assert name in docs and release.repo_id in docs, name
