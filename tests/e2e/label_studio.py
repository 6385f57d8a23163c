"""A real Label Studio 1.23.2 on loopback for the end-to-end tests, plus thin REST helpers.

Label Studio lives in its own virtualenv (installed by scripts/e2e_setup.sh, never in the backend's env).
The first start on an empty data dir spends 30-90 s in database migrations, so the first run saves the
migrated, empty data dir (admin user, legacy token) as a template in the cache; every later server starts
from a fresh copy of it in a few seconds.

    python -m tests.e2e.label_studio        # start one by hand, print url/user/token, Ctrl-C stops it
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.live_gunicorn import free_port

VERSION = "1.23.2"
CACHE = Path(os.environ.get("SAM2_E2E_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "sam2-ls-e2e")
VENV = CACHE / f"ls-venv-{VERSION}"
EXECUTABLE = VENV / "bin" / "label-studio"
VERSION_STAMP = VENV / ".label-studio-version"  # written by scripts/e2e_setup.sh after a complete install

# Test-only credentials of a server that listens on 127.0.0.1 only.
USERNAME = "admin@example.com"
PASSWORD = "e2e-password-1"
TOKEN = "5a3d2e1f0c9b8a7968574a3b2c1d0e0f1a2b3c4d"  # legacy API token: 40 hex characters

SETUP_HINT = "install it with `bash scripts/e2e_setup.sh` (scripts/test.sh does this)"


class LabelStudioError(RuntimeError):
    """Label Studio is not installed, did not start, or answered a request with an error."""


def check_installed() -> None:
    """Raise LabelStudioError unless the virtualenv holds label-studio VERSION."""
    installed = VERSION_STAMP.read_text().strip() if VERSION_STAMP.exists() else None
    if installed != VERSION or not EXECUTABLE.exists():
        raise LabelStudioError(f"label-studio {VERSION} is not installed in {VENV}: {SETUP_HINT}")


def _environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=USERNAME,
        LABEL_STUDIO_PASSWORD=PASSWORD,
        LABEL_STUDIO_USER_TOKEN=TOKEN,
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_LATEST_VERSION_CHECK="false",
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",  # only takes effect when the organization is created
        LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false",  # the ML backend is on 127.0.0.1 ...
        LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",  # ... and so is the <ml url>/webhook it registers
        COLLECT_ANALYTICS="false",
        PYTHONUNBUFFERED="1",  # the log shows the port it bound at once
        PATH=f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
    )
    return env


@dataclass
class LabelStudioServer:
    """One running `label-studio start` process on 127.0.0.1; `stop()` ends it and its children."""

    url: str
    token: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen

    @classmethod
    def start(cls, data_dir: Path, *, timeout_s: float = 240.0) -> LabelStudioServer:
        """Start on a free port with `data_dir` (a fresh copy of the template), wait for /health."""
        check_installed()
        template = _template(timeout_s)
        if data_dir.exists():
            shutil.rmtree(data_dir)
        shutil.copytree(template, data_dir)
        return cls._launch(data_dir, timeout_s)

    @classmethod
    def _launch(cls, data_dir: Path, timeout_s: float) -> LabelStudioServer:
        for _ in range(3):  # Label Studio silently moves to the next port if ours was taken meanwhile
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            log_path = data_dir.parent / f"{data_dir.name}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [str(EXECUTABLE), "start", "--internal-host", "127.0.0.1", "--port", str(port),
                     "--host", url, "--no-browser"],
                    env=_environment(data_dir), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group, so stop() reaches every child
                )
            server = cls(url, TOKEN, data_dir, log_path, process)
            try:
                server._wait_ready(port, timeout_s)
                return server
            except _PortMoved:
                server.stop()
        raise LabelStudioError("Label Studio kept moving off the chosen port")

    def _wait_ready(self, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabelStudioError(f"Label Studio exited with {self.process.returncode}:\n{self.log_tail()}")
            match = re.search(rb"Starting development server at http://[\d.]+:(\d+)/", self.log_path.read_bytes())
            if match and int(match.group(1)) != port:
                raise _PortMoved()
            try:
                if match and requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        self.stop()
        raise LabelStudioError(f"Label Studio not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_bytes()[-chars:].decode(errors="replace")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout_s`."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def api(self) -> LabelStudioAPI:
        return LabelStudioAPI(self.url, self.token)

    def sdk(self):
        """A label_studio_sdk 2.x client (LabelStudio) for this server."""
        from label_studio_sdk.client import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token)


class _PortMoved(Exception):
    pass


def _template(timeout_s: float) -> Path:
    """The migrated empty data dir for VERSION and these credentials; made once, then reused."""
    key = hashlib.sha256(f"{VERSION} {USERNAME} {PASSWORD} {TOKEN}".encode()).hexdigest()[:12]
    template = CACHE / f"data-template-{VERSION}-{key}"
    if template.exists():
        return template
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="data-template-", dir=CACHE))
    try:
        server = LabelStudioServer._launch(building / "data", timeout_s)
        server.stop()
        shutil.rmtree(building / "data" / "export", ignore_errors=True)
        try:
            os.rename(building / "data", template)  # atomic; a concurrent builder may have won
        except OSError:
            if not template.exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return template


# ---------------------------------------------------------------- REST helpers


class LabelStudioAPI:
    """The few REST calls the tests make (`Authorization: Token <legacy token>`); raw JSON in and out."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def request(self, method: str, path: str, *, expect: Iterable[int] = (200, 201), timeout: float = 120,
                **kwargs) -> requests.Response:
        response = self.session.request(method, self.url + path, timeout=timeout, **kwargs)
        if response.status_code not in tuple(expect):
            raise LabelStudioError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response

    def create_project(self, title: str, label_config: str) -> dict:
        return self.request("POST", "/api/projects", json={"title": title, "label_config": label_config}).json()

    def upload_files(self, project: int, paths: Sequence[Path]) -> list[str]:
        """Upload files WITHOUT creating tasks; their media URLs ("/data/upload/<project>/<uuid>-<name>"),
        in the order of `paths`. Each file needs its own form field: Label Studio keeps one file per field."""
        files = {f"file{i}": (p.name, p.read_bytes()) for i, p in enumerate(paths)}
        ids = self.request("POST", f"/api/projects/{project}/import", params={"commit_to_project": "false"},
                           files=files).json()["file_upload_ids"]
        uploads = self.request("GET", f"/api/projects/{project}/file-uploads", params={"ids": str(ids)}).json()
        by_name = {u["file"].rsplit("/", 1)[1].split("-", 1)[1]: "/data/" + u["file"] for u in uploads}
        return [by_name[p.name] for p in paths]

    def import_file(self, project: int, path: Path) -> list[dict]:
        """Upload one media file as one task (data {<object value>: "/data/upload/..."}); the project's tasks."""
        self.request("POST", f"/api/projects/{project}/import", files={"file": (path.name, path.read_bytes())})
        return self.tasks(project)

    def import_tasks(self, project: int, tasks: list[dict]) -> list[dict]:
        """Import task data dicts (e.g. [{"frames": [url, ...]}]); the project's tasks."""
        self.request("POST", f"/api/projects/{project}/import", json=tasks)
        return self.tasks(project)

    def tasks(self, project: int) -> list[dict]:
        return self.request("GET", "/api/tasks", params={"project": project, "page_size": 1000}).json()["tasks"]

    def task(self, task_id: int) -> dict:
        return self.request("GET", f"/api/tasks/{task_id}").json()

    def connect_ml_backend(self, project: int, url: str, *, title: str = "SAM 2", interactive: bool = True) -> dict:
        """POST /api/ml: Label Studio checks <url>/health and calls <url>/setup before answering."""
        return self.request("POST", "/api/ml", json={"url": url, "project": project, "title": title,
                                                      "is_interactive": interactive}).json()

    def interactive_annotating(self, ml_id: int, task: int, result: list[dict]) -> dict:
        """What the editor's smart tools send: Label Studio relays it to the backend's /predict and returns
        {"data": <backend's results[0]>} (nothing is stored in Label Studio)."""
        return self.request("POST", f"/api/ml/{ml_id}/interactive-annotating",
                            json={"task": task, "context": {"result": result}}).json()

    def retrieve_predictions(self, project: int, task_ids: Sequence[int] | None = None) -> dict:
        """The Data Manager's "Retrieve Predictions" action (all tasks, or `task_ids`): one batch /predict."""
        selected = ({"all": True, "excluded": []} if task_ids is None
                    else {"all": False, "included": list(task_ids)})
        return self.request("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions",
                                                               "project": project},
                            json={"selectedItems": selected}).json()

    def predictions(self, task: int) -> list[dict]:
        return self.request("GET", "/api/predictions", params={"task": task}).json()

    def create_prediction(self, task: int, result: list[dict], *, score: float = 0.5,
                          model_version: str = "manual") -> dict:
        return self.request("POST", "/api/predictions", json={"task": task, "result": result, "score": score,
                                                              "model_version": model_version}).json()


def main() -> None:
    data = Path(tempfile.mkdtemp(prefix="label-studio-")) / "data"
    started = time.monotonic()
    server = LabelStudioServer.start(data)
    print(f"Label Studio {VERSION} at {server.url} in {time.monotonic() - started:.1f} s\n"
          f"  user {USERNAME} / {PASSWORD}, token {TOKEN}\n  data {data}, log {server.log_path}\nCtrl-C stops it.")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
