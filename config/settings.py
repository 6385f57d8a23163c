"""Backend settings, read once from environment variables (Label Studio ML backend habits).

| variable | default | meaning |
|---|---|---|
| SAM2_CHECKPOINT | (unset) | checkpoint file; required for predictions (/health works without it); `scripts/serve.sh` and the Docker image set it (backend/weights.py fetches SAM2_MODEL when it is unset) |
| SAM2_MODEL | (inferred) | config name, e.g. sam2.1_hiera_tiny; inferred from an official file name or the config stored in a custom checkpoint |
| DEVICE | auto | cpu, cuda, cuda:N, or auto (cuda when available) |
| SAM2_DTYPE | auto | float32, bfloat16 or float16 for video tracking; auto: bfloat16 on CUDA, float32 on CPU |
| PORT | 9090 | listening port (gunicorn binds 0.0.0.0:PORT) |
| WORKERS | 1 | gunicorn processes; each loads its own model and keeps its own sessions |
| THREADS | 4 | threads per worker (gthread) |
| LOG_LEVEL | INFO | DEBUG, INFO, WARNING, ERROR or CRITICAL |
| LABEL_STUDIO_URL | (unset) | Label Studio base URL for /data/upload, /data/local-files and presigned cloud media; falls back to /setup's hostname |
| LABEL_STUDIO_API_KEY | (unset) | legacy token or personal access token (JWT); falls back to /setup's access_token |
| BASIC_AUTH_USER, BASIC_AUTH_PASS | (unset) | when both are set, every route but /health needs HTTP basic auth |
| MAX_PROPAGATION_FRAMES | 100000 | frames tracked beyond the start frame in each direction, per video (the default, MAX_VIDEO_FRAMES' default, tracks any accepted video whole) |
| INTERACTIVE_BUDGET_S | 20 | seconds of tracking per interactive /predict (a person waits) |
| PREDICT_BUDGET_S | 75 | seconds of tracking per batch /predict, all tasks together (Label Studio gives up after 100 s) |
| BOX_TOLERANCE_PX | 1.0 | max pixel error of Label Studio's interpolation between computed video keyframes |
| FEATURE_CACHE_MB | 512 | cached frame features per video session (about 12 MiB per frame at 1024 px) |
| SESSION_TTL_S | 1800 | idle seconds after which a video session is released |
| SESSION_BUDGET_MB | 4096 | MiB all sessions of a worker may hold (features and masks; fractions allowed); least recently used go first |
| ANSWER_MEMORY_DB | <tmp>/sam2-backend/answers.sqlite | what the backend answered per task (to recognise its accepted suggestions), shared by the workers of a host and kept across restarts; `none`: in each worker's memory only |
| MEDIA_CACHE_DIR | <tmp>/sam2-backend-media | downloaded media |
| MEDIA_CACHE_MB | 4096 | size of the media cache on disk; least recently used files go first |
| MAX_DOWNLOAD_MB | 2048 | largest media file accepted |
| DOWNLOAD_TIMEOUT_S | 30 | connect/read timeout of each media request |
| MEDIA_ALLOW_PRIVATE_HOSTS | false | let http(s) media come from private, loopback, link-local and other non-public addresses (SSRF guard off); Label Studio's own host is always allowed |
| MEDIA_ALLOWED_HOSTS | (unset) | comma list of `host` or `host:port` always allowed as media hosts, whatever their address |
| MAX_REQUEST_MB | 64 | largest request body (413 above) |
| MAX_VIDEO_FRAMES | 100000 | longest video accepted, in frames (413 above) |
| MAX_VIDEO_PIXELS | 8294400 | largest video frame accepted, width x height (413 above; default 3840 x 2160) |
| PROMPT_SOURCES | annotation | where pre-annotation jobs take prompts, in order of preference: comma list of annotation, draft, prediction (another model version's, e.g. imported detector boxes) |
| PREANNOTATE_STATE_DIR | <tmp>/sam2-preannotate | the pre-annotation journal (SQLite: attempts, errors, progress, HTTP jobs) |
| PREANNOTATE_MAX_ATTEMPTS | 3 | attempts per task and prompts before a job stops retrying it (`--retry-failed` resets) |
| PREANNOTATE_WORKERS | 0 | worker processes of HTTP/webhook jobs; 0: one per GPU, else 1 |
| PREANNOTATE_ENGINE | local | engine of HTTP/webhook jobs: local or ray |
| PREANNOTATE_MAX_JOBS | 1 | pre-annotation jobs running at once (more wait, queued) |
| PREANNOTATE_WEBHOOK | true | ANNOTATION_CREATED / ANNOTATION_UPDATED webhooks queue their task for pre-annotation |
| AUTO_MASKLETS | false | pre-annotation jobs (CLI, POST /preannotate, Retrieve Predictions) also take tasks WITHOUT prompts: objects found by the automatic mask generator (and, for video and image sequences, tracked); interactive /predict is unchanged |
| AUTO_LABEL | (unset) | label of the automatic regions; unset: the first label of the output control (video: of the `<Labels>` on the video); a label the config lacks stops the job at its start |
| AUTO_EVERY | 30 | video / image sequence: discover new objects on the first frame and every AUTO_EVERY frames after it |
| AUTO_MAX_OBJECTS | 20 | most automatic objects per task (tracked at once in a video) |
| AUTO_END_AFTER | 30 | a tracked automatic object absent this many frames in a row ends (0: never) |
| AUTO_POINTS_PER_SIDE | 16 | the generator's point grid (points per side of each discovery frame) |
| AUTO_PRED_IOU_THRESH | 0.8 | the generator keeps masks of at least this predicted IoU |
| AUTO_STABILITY_THRESH | 0.95 | the generator keeps masks of at least this stability score |
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PROMPT_SOURCES = ("annotation", "draft", "prediction")
ENGINES = ("local", "ray")


class SettingsError(ValueError):
    """An environment variable holds an invalid value; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """All settings; build with `Settings.from_env()` or directly (tests)."""

    sam2_checkpoint: str | None = None
    sam2_model: str | None = None
    device: str = "auto"
    sam2_dtype: str = "auto"
    port: int = 9090
    workers: int = 1
    threads: int = 4
    log_level: str = "INFO"
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    max_propagation_frames: int = 100000
    interactive_budget_s: float = 20.0
    predict_budget_s: float = 75.0
    box_tolerance_px: float = 1.0
    feature_cache_mb: int = 512
    session_ttl_s: float = 1800.0
    session_budget_mb: float = 4096
    answer_memory_db: str = os.path.join(tempfile.gettempdir(), "sam2-backend", "answers.sqlite")
    media_cache_dir: str = os.path.join(tempfile.gettempdir(), "sam2-backend-media")
    media_cache_mb: int = 4096
    max_download_mb: int = 2048
    download_timeout_s: float = 30.0
    media_allow_private_hosts: bool = False
    media_allowed_hosts: str | None = None
    max_request_mb: int = 64
    max_video_frames: int = 100000
    max_video_pixels: int = 3840 * 2160
    prompt_sources: str = "annotation"
    preannotate_state_dir: str = os.path.join(tempfile.gettempdir(), "sam2-preannotate")
    preannotate_max_attempts: int = 3
    preannotate_workers: int = 0
    preannotate_engine: str = "local"
    preannotate_max_jobs: int = 1
    preannotate_webhook: bool = True
    auto_masklets: bool = False
    auto_label: str | None = None
    auto_every: int = 30
    auto_max_objects: int = 20
    auto_end_after: int = 30
    auto_points_per_side: int = 16
    auto_pred_iou_thresh: float = 0.8
    auto_stability_thresh: float = 0.95

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field from the variable of the same name in upper case; unset or empty = default."""
        env = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.name.upper(), "").strip()
            if raw:
                values[f.name] = _parse(f.name.upper(), raw, f.type)
        return cls(**values)

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_level", self.log_level.upper())
        checks = [
            ("PORT", 1 <= self.port <= 65535, "must be in 1..65535"),
            ("WORKERS", self.workers >= 1, "must be at least 1"),
            ("THREADS", self.threads >= 1, "must be at least 1"),
            ("MAX_PROPAGATION_FRAMES", self.max_propagation_frames >= 0, "must be >= 0"),
            ("INTERACTIVE_BUDGET_S", self.interactive_budget_s > 0, "must be > 0"),
            ("PREDICT_BUDGET_S", self.predict_budget_s > 0, "must be > 0"),
            ("BOX_TOLERANCE_PX", self.box_tolerance_px >= 0, "must be >= 0"),
            ("FEATURE_CACHE_MB", self.feature_cache_mb >= 1, "must be at least 1"),
            ("SESSION_TTL_S", self.session_ttl_s > 0, "must be > 0"),
            ("SESSION_BUDGET_MB", self.session_budget_mb > 0, "must be > 0"),
            ("MEDIA_CACHE_MB", self.media_cache_mb >= 1, "must be at least 1"),
            ("MAX_DOWNLOAD_MB", self.max_download_mb >= 1, "must be at least 1"),
            ("DOWNLOAD_TIMEOUT_S", self.download_timeout_s > 0, "must be > 0"),
            ("MAX_REQUEST_MB", self.max_request_mb >= 1, "must be at least 1"),
            ("MAX_VIDEO_FRAMES", self.max_video_frames >= 1, "must be at least 1"),
            ("MAX_VIDEO_PIXELS", self.max_video_pixels >= 1, "must be at least 1"),
            ("PROMPT_SOURCES", bool(self.prompt_source_list) and set(self.prompt_source_list) <= set(PROMPT_SOURCES),
             f"must be a comma list of {', '.join(PROMPT_SOURCES)}"),
            ("PREANNOTATE_MAX_ATTEMPTS", self.preannotate_max_attempts >= 1, "must be at least 1"),
            ("PREANNOTATE_WORKERS", self.preannotate_workers >= 0, "must be >= 0"),
            ("PREANNOTATE_ENGINE", self.preannotate_engine in ENGINES, f"must be one of {', '.join(ENGINES)}"),
            ("PREANNOTATE_MAX_JOBS", self.preannotate_max_jobs >= 1, "must be at least 1"),
            ("AUTO_EVERY", self.auto_every >= 1, "must be at least 1"),
            ("AUTO_MAX_OBJECTS", self.auto_max_objects >= 1, "must be at least 1"),
            ("AUTO_END_AFTER", self.auto_end_after >= 0, "must be >= 0"),
            ("AUTO_POINTS_PER_SIDE", self.auto_points_per_side >= 1, "must be at least 1"),
            ("AUTO_PRED_IOU_THRESH", 0 <= self.auto_pred_iou_thresh <= 1, "must lie in [0, 1]"),
            ("AUTO_STABILITY_THRESH", 0 <= self.auto_stability_thresh <= 1, "must lie in [0, 1]"),
            ("LOG_LEVEL", self.log_level in LOG_LEVELS, f"must be one of {', '.join(LOG_LEVELS)}"),
            ("SAM2_DTYPE", self.sam2_dtype in DTYPES, f"must be one of {', '.join(DTYPES)}"),
            ("DEVICE", _valid_device(self.device), "must be auto, cpu, cuda, cuda:N or mps"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise SettingsError(f"{name} {rule}, got {getattr(self, name.lower())!r}")
        if self.label_studio_url:
            url = urlparse(self.label_studio_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise SettingsError(f"LABEL_STUDIO_URL must be an http(s) URL, got {self.label_studio_url!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")

    @property
    def allowed_media_hosts(self) -> frozenset[str]:
        """MEDIA_ALLOWED_HOSTS as lower-case `host` / `host:port` entries."""
        return frozenset(h.strip().lower() for h in (self.media_allowed_hosts or "").split(",") if h.strip())

    @property
    def prompt_source_list(self) -> tuple[str, ...]:
        """PROMPT_SOURCES as a tuple, in order of preference."""
        return tuple(s.strip().lower() for s in self.prompt_sources.split(",") if s.strip())

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        return (self.basic_auth_user, self.basic_auth_pass) if self.basic_auth_user else None


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    kind, _, index = device.partition(":")
    return kind == "cuda" and index.isdigit()


def _parse(name: str, raw: str, type_: str) -> object:
    """Convert `raw` to the field's annotated type ("int", "float", "bool", "str", "str | None")."""
    if type_ == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true or false, got {raw!r}")
    try:
        if type_ == "int":
            return int(raw)
        if type_ == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {'an integer' if type_ == 'int' else 'a number'}, got {raw!r}") from None
    return raw
