"""Loading teacher weights without network: an uncached hub id with a hub that cannot be reached (refused or
hanging) fails within a few seconds in one line, without huggingface_hub's retries; local folders and cached
hub ids load without any probe; ``HF_HUB_OFFLINE`` skips the probe; a hub that answers is asked."""

from __future__ import annotations

import http.server
import shutil
import socket
import sys
import threading
import time
import types

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from tiny_models import save_tiny_clip, save_tiny_dino

from ovseg3d.teachers import hub
from ovseg3d.teachers.clip import build_clip
from ovseg3d.teachers.config import TeacherConfig, TeacherError
from ovseg3d.teachers.dino import TransformersDino

CPU = torch.device("cpu")
MISSING = "ovseg3d-test/not-cached-anywhere"
BOUND = 5.0  # seconds: a behaviour check (huggingface_hub's retries take 25 s or more), not a benchmark


@pytest.fixture(autouse=True)
def isolated_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, online mode, no remembered probe; the endpoint is set per test."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("OVSEG3D_HUB_TIMEOUT", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hub, "_answered", {})


def _use_endpoint(monkeypatch, url: str) -> str:
    """Point huggingface_hub (and so transformers) at ``url``: it reads HF_ENDPOINT once, at import."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    return url


@pytest.fixture
def refused(monkeypatch):
    """An endpoint on a local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _use_endpoint(monkeypatch, f"http://127.0.0.1:{port}")


@pytest.fixture
def hanging(monkeypatch):
    """An endpoint that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield _use_endpoint(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
    server.close()


@pytest.fixture
def answering(monkeypatch):
    """An endpoint that answers every request with 404 (a hub that is there, without our test repos)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield _use_endpoint(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"clip": save_tiny_clip(root / "clip"), "vit": save_tiny_dino(root / "vit", "vit")}


def _no_probe(*args, **kwargs):
    raise AssertionError("the hub was probed")


def _one_line_error(fn, option: str) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(TeacherError) as err:
        fn()
    seconds = time.monotonic() - start
    msg = str(err.value)
    assert "\n" not in msg and option in msg, msg
    return msg, seconds


@pytest.mark.parametrize("endpoint", ["refused", "hanging"])
def test_an_uncached_hub_id_fails_fast_in_one_line_when_the_hub_cannot_be_reached(endpoint, request, capfd):
    url = request.getfixturevalue(endpoint)
    msg, seconds = _one_line_error(lambda: build_clip(TeacherConfig(clip_model=MISSING), CPU), "--clip-model")
    assert seconds < BOUND and MISSING in msg and url in msg and "cannot be reached" in msg
    msg, seconds = _one_line_error(lambda: TransformersDino(MISSING, CPU), "--dino-model")
    assert seconds < BOUND and "DINO model" in msg
    assert capfd.readouterr().err == ""  # no retry lines, no warnings


def test_load_pretrained_does_not_retry_an_unreachable_hub(refused, capfd):
    """Past the pre-check (a model whose config alone is cached, say): the loader's own fallback to the hub
    also asks the probe first."""
    from transformers import CLIPModel

    args = (CLIPModel.from_pretrained, MISSING, "CLIP model", "--clip-model")
    msg, seconds = _one_line_error(lambda: hub.load_pretrained(*args), "--clip-model")
    assert seconds < BOUND and "cannot be reached" in msg
    assert capfd.readouterr().err == ""


def test_a_probe_that_hangs_is_cut_at_its_timeout(hanging, monkeypatch):
    monkeypatch.setenv("OVSEG3D_HUB_TIMEOUT", "0.3")
    start = time.monotonic()
    assert not hub.hub_reachable()
    assert 0.25 < time.monotonic() - start < 2.0


def test_local_folders_load_without_any_probe(tiny, hanging, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", _no_probe)
    clip = build_clip(TeacherConfig(clip_model=str(tiny["clip"])), CPU)
    assert clip.embedding_dim == 16 and clip.mean == (0.5, 0.5, 0.5)
    assert TransformersDino(str(tiny["vit"]), CPU, long_side=32).feature_dim == 24


def test_a_hub_id_in_the_local_cache_loads_without_any_probe(tiny, tmp_path, hanging, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", _no_probe)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-cache" / "models--ovseg3d-test--tiny-clip"
    shutil.copytree(tiny["clip"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    clip = build_clip(TeacherConfig(clip_model="ovseg3d-test/tiny-clip"), CPU)
    assert clip.embedding_dim == 16 and clip.mean == (0.5, 0.5, 0.5)  # preprocessor config from the cache


def test_hf_hub_offline_skips_the_probe(monkeypatch, hanging):
    monkeypatch.setattr(hub, "hub_reachable", _no_probe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg, _ = _one_line_error(lambda: build_clip(TeacherConfig(clip_model=MISSING), CPU), "--clip-model")
    assert "HF_HUB_OFFLINE" in msg


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", _no_probe)
    msg, _ = _one_line_error(lambda: TransformersDino(str(tmp_path / "no-such-dino"), CPU), "--dino-model")
    assert "neither a local folder nor a Hugging Face hub id" in msg


def test_a_hub_that_answers_is_asked_once_probed(answering):
    assert hub.hub_reachable()
    calls = []

    def loader(name, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        if local_files_only:
            raise OSError("not cached")
        return f"model {name}"

    assert hub.load_pretrained(loader, "org/model", "CLIP model", "--clip-model") == "model org/model"
    assert calls == [True, False]


def test_a_hub_that_answers_without_the_model_is_one_line_with_the_reason(answering, capfd):
    msg, seconds = _one_line_error(lambda: build_clip(TeacherConfig(clip_model=MISSING), CPU), "--clip-model")
    assert seconds < BOUND and f"cannot load CLIP model '{MISSING}' from the hub" in msg
    assert capfd.readouterr().err == ""


def test_build_teachers_checks_dino_before_loading_clip(tiny, refused, monkeypatch, tmp_path):
    from ovseg3d.teachers import extract

    loaded = []
    monkeypatch.setattr(extract, "build_clip", lambda cfg, device: loaded.append(cfg.clip_model))
    cfg = TeacherConfig(kind="clip", clip_model=str(tiny["clip"]), dino_model=MISSING)
    msg, seconds = _one_line_error(lambda: extract.build_teachers(None, cfg, CPU), "--dino-model")  # type: ignore[arg-type]
    assert seconds < BOUND and not loaded


def test_open_clip_weights_use_the_cache_only_when_the_hub_cannot_be_reached(refused, monkeypatch, capfd):
    """open_clip downloads through huggingface_hub itself: it runs in offline mode, so a missing file fails
    at once (a fake open_clip here: the real one needs torchvision)."""
    seen = []

    def create_model(name, pretrained=None):
        seen.append(constants.HF_HUB_OFFLINE)
        huggingface_hub.hf_hub_download(MISSING, "open_clip_model.safetensors")

    fake = types.SimpleNamespace(create_model=create_model, list_models=lambda: ["ViT-Tiny"])
    monkeypatch.setitem(sys.modules, "open_clip", fake)
    cfg = TeacherConfig(clip_model="ViT-Tiny", clip_pretrained="laion2b_s34b_b88k")
    msg, seconds = _one_line_error(lambda: build_clip(cfg, CPU), "--clip-pretrained")
    assert seconds < BOUND and "cannot be reached" in msg
    assert seen == [True] and constants.HF_HUB_OFFLINE is False
    assert capfd.readouterr().err == ""
