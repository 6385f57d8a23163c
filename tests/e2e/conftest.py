"""Session fixtures of the end-to-end tests: a real Label Studio, our backend under gunicorn, the test media.

Everything here is started once per pytest session and stopped at its end. Label Studio must be installed
first (`bash scripts/e2e_setup.sh`, which scripts/test.sh runs); deselect these tests with `-m "not e2e"`.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from sam2_model import build_model, custom_config, save_checkpoint
from tests.e2e.label_studio import LabelStudioAPI, LabelStudioServer
from tests.e2e.projects import FPS, FRAME_SIZE, SEQUENCE_LENGTH, VIDEO_FRAMES, E2EMedia, make_media
from tests.e2e.standin_backend import Media, ServerThread, StandInBackend
from tests.live_gunicorn import free_port, gunicorn_server

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"

# A small random-weight model of the SAM 2.1 architecture: fast on 2 CPU cores, same code paths.
E2E_MODEL = custom_config("e2e_random", image_size=128, d_model=64, memory_dim=16, decoder_mlp_dim=128,
                          memory_attention_ff_dim=128, memory_attention_layers=2)


@dataclass
class LabelStudioHandle:
    """The running Label Studio: base url, legacy token, REST helpers and a label_studio_sdk client."""

    url: str
    token: str
    api: LabelStudioAPI
    sdk: object  # label_studio_sdk.client.LabelStudio
    server: LabelStudioServer


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[LabelStudioHandle]:
    server = LabelStudioServer.start(tmp_path_factory.mktemp("label-studio") / "data")
    try:
        yield LabelStudioHandle(server.url, server.token, server.api(), server.sdk(), server)
    finally:
        server.stop()
        shutil.copyfile(server.log_path, artifacts / "label-studio.log")


@pytest.fixture(scope="session")
def e2e_media(tmp_path_factory: pytest.TempPathFactory) -> E2EMedia:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """artifacts/e2e/ (git-ignored): screenshots and logs a person can look at after the run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def e2e_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight checkpoint of E2E_MODEL (seed 0)."""
    checkpoint = tmp_path_factory.mktemp("checkpoint") / "e2e_random.pt"
    torch.manual_seed(0)
    save_checkpoint(build_model(E2E_MODEL), checkpoint)
    return checkpoint


@pytest.fixture(scope="session")
def backend_server(label_studio: LabelStudioHandle, tmp_path_factory: pytest.TempPathFactory,
                   artifacts: Path, e2e_checkpoint: Path) -> Iterator[str]:
    """`gunicorn --config config/gunicorn.conf.py backend.wsgi:app` on 127.0.0.1:<free port> with a
    random-weight checkpoint; yields its base URL."""
    folder = tmp_path_factory.mktemp("backend")
    checkpoint = e2e_checkpoint
    port = free_port()
    env = {
        "SAM2_CHECKPOINT": str(checkpoint), "DEVICE": "cpu", "PORT": str(port), "WORKERS": "1", "THREADS": "4",
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "MEDIA_CACHE_DIR": str(folder / "media"), "LOG_LEVEL": "INFO", "ANSWER_MEMORY_DB": str(folder / "answers.db"),
        # these tests store annotations and check the predictions Retrieve Predictions stores: no webhook jobs
        "PREANNOTATE_STATE_DIR": str(folder / "state"), "PREANNOTATE_WEBHOOK": "false",
    }
    with gunicorn_server(port, env, artifacts / "backend.log", timeout_s=60):
        yield f"http://127.0.0.1:{port}"


@dataclass
class StandIn:
    """The harness's stand-in ML backend (tests/e2e/standin_backend.py), serving in a thread."""

    backend: StandInBackend
    url: str


@pytest.fixture(scope="session")
def standin() -> Iterator[StandIn]:
    backend = StandInBackend(Media(VIDEO_FRAMES, FPS, FRAME_SIZE, SEQUENCE_LENGTH))
    server = ServerThread(backend.app())
    try:
        yield StandIn(backend, server.url)
    finally:
        server.stop()
