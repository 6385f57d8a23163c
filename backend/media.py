"""Task media -> validated local files, downloaded once into a size-bounded disk cache.

References a task's data may hold:
- paths relative to Label Studio: `/data/upload/...`, `/data/local-files/?d=...`, `/storage-data/...`,
  `/tasks/<id>/presign/?fileuri=...` -> fetched from LABEL_STUDIO_URL with its token;
- cloud URIs `s3://`, `gs://`, `azure-blob://` -> through Label Studio's presign endpoint
  `/tasks/<task id>/presign/?fileuri=<urlsafe base64 of the URI>` (a redirect to the storage, or the bytes);
- plain http(s) URLs -> fetched as they are; the token is added only when the URL is on Label Studio's host.
Redirects are followed by hand so that the token never leaves Label Studio's host.
`/data/local-files/?d=...` is always fetched through Label Studio (which applies its
LOCAL_FILES_DOCUMENT_ROOT checks); the backend never reads task paths from its own disk.

SSRF guard (netguard.py): unless `allow_private_hosts`, every connection, on every redirect hop, must go to a
public address, to Label Studio's host, or to a host in `allowed_hosts`; the name is resolved once and the
connection goes to the checked address.

Media are cached by reference: bytes that change behind an unchanged URL are not seen while the cached file
lives (Label Studio's upload paths are unique per file; use a new URL for new content). A video session
opened on the cached file keeps using it.

Tokens: a legacy API token is sent as `Authorization: Token <key>`. A personal access token (a JWT refresh
token) is exchanged through POST /api/token/refresh/ for a short-lived access token, sent as
`Authorization: Bearer <access>` and renewed before it expires (or after a 401).

Errors are `MediaError`s with the HTTP status the backend should answer: 422 for media the task names but
that cannot be had (not found, not decodable, unsupported reference), 413 for files over MAX_DOWNLOAD_MB,
502 when Label Studio or the media host fails (unreachable, 5xx, refused credentials), 503 when the
backend lacks LABEL_STUDIO_URL.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlparse

import numpy as np
import requests
from PIL import Image, ImageOps

from sam2_model.video.frames import open_frames

from .netguard import HostNotAllowed, HostPolicy, guard

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
MAX_REDIRECTS = 5
CHUNK = 1 << 20
TOKEN_MARGIN_S = 30.0  # renew an access token this long before it expires


class MediaError(Exception):
    """Media that cannot be had; `status` is the HTTP status for the backend's answer."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- Label Studio credentials


def _jwt_payload(token: str) -> dict | None:
    """The payload of a JWT (unverified), or None if `token` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        decode = lambda s: json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))  # noqa: E731
        header, payload = decode(parts[0]), decode(parts[1])
    except ValueError:
        return None
    if not isinstance(header, dict) or "alg" not in header or not isinstance(payload, dict):
        return None
    return payload


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlparse(url)
    port = p.port or {"http": 80, "https": 443}.get(p.scheme)
    return p.scheme, (p.hostname or "").lower(), port


class LabelStudioClient:
    """Authenticated GETs to one Label Studio; thread-safe."""

    def __init__(self, url: str, api_key: str | None, timeout: float, http: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout
        self.http = http or requests.Session()
        self.is_pat = bool(self.api_key) and _jwt_payload(self.api_key) is not None
        self._access: tuple[str, float] | None = None  # (token, expiry epoch s)
        self._lock = threading.Lock()

    def owns(self, url: str) -> bool:
        """True when `url` is on Label Studio's scheme, host and port (the only place the token goes)."""
        return _origin(url) == _origin(self.url)

    def absolute(self, path: str) -> str:
        return self.url + path

    def headers(self, renew: bool = False) -> dict[str, str]:
        if not self.api_key:
            return {}
        if not self.is_pat:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if renew or self._access is None or self._access[1] - TOKEN_MARGIN_S < time.time():
                self._access = self._refresh()
            return {"Authorization": f"Bearer {self._access[0]}"}

    def _refresh(self) -> tuple[str, float]:
        """Exchange the personal access token for an access token."""
        url = self.absolute("/api/token/refresh/")
        try:
            r = self.http.post(url, json={"refresh": self.api_key}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise MediaError(f"Label Studio at {self.url} is unreachable ({type(exc).__name__}: {exc})", 502) from exc
        if r.status_code in (401, 403):
            raise MediaError(f"Label Studio refused LABEL_STUDIO_API_KEY (a personal access token) at {url} "
                             f"(HTTP {r.status_code}): check that the token is valid and not revoked", 502)
        if r.status_code != 200:
            raise MediaError(f"Label Studio answered HTTP {r.status_code} to the token refresh at {url}", 502)
        try:
            access = r.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise MediaError(f"Label Studio's token refresh at {url} returned no access token", 502) from None
        exp = (_jwt_payload(access) or {}).get("exp")
        return access, float(exp) if isinstance(exp, (int, float)) else time.time() + 60.0


# ---------------------------------------------------------------- validation and decoding


def validate_video(path: Path, max_frames: int | None = None, max_pixels: int | None = None) -> None:
    """Raise ValueError unless `path` is a video with at least one decodable frame, and MediaError 413 when it
    has more than `max_frames` frames or more than `max_pixels` pixels a frame (None: no limit)."""
    with open_frames(path) as frames:
        (h, w), n = frames.frame_size, frames.frame_count
    if max_frames is not None and n > max_frames:
        raise MediaError(f"video has {n} frames, more than MAX_VIDEO_FRAMES ({max_frames})", 413)
    if max_pixels is not None and h * w > max_pixels:
        raise MediaError(f"video frames are {w}x{h} = {h * w} pixels, more than MAX_VIDEO_PIXELS "
                         f"({max_pixels})", 413)


def load_image(path: Path) -> np.ndarray:
    """H×W×3 uint8 RGB, oriented as browsers show it (EXIF orientation applied). Raises ValueError."""
    try:
        with Image.open(path) as img:
            return np.array(ImageOps.exif_transpose(img).convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a decodable image ({exc})") from exc


def load_frames(paths) -> list[np.ndarray]:
    """load_image of each path, in order: the frames of an image sequence. MediaError (422) unless they share
    one size (the video engine tracks over frames of one size)."""
    frames = [load_image(p) for p in paths]
    for i, f in enumerate(frames):
        if f.shape != frames[0].shape:
            raise MediaError(f"image sequence frames must share one size: frame 0 is "
                             f"{frames[0].shape[1]}x{frames[0].shape[0]}, frame {i} is {f.shape[1]}x{f.shape[0]}")
    return frames


def validate_image(path: Path) -> None:
    load_image(path)


# ---------------------------------------------------------------- fetching


class MediaFetcher:
    """Resolve and download task media into `cache_dir` (LRU by file mtime, at most `cache_bytes`).

    credentials: returns (Label Studio URL or None, API key or None) at each call, so that values
    learned from /setup can stand in for unset settings. allow_private_hosts / allowed_hosts: the SSRF guard
    (Label Studio's host is always allowed); video_limits: (max frames, max pixels a frame) that
    `self.validate_video` enforces.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        cache_bytes: int,
        max_download_bytes: int,
        timeout: float,
        credentials: Callable[[], tuple[str | None, str | None]],
        http: requests.Session | None = None,
        allow_private_hosts: bool = True,
        allowed_hosts: frozenset[str] = frozenset(),
        video_limits: tuple[int, int] | None = None,
    ):
        self.cache_dir = Path(cache_dir)
        self.cache_bytes = cache_bytes
        self.max_download_bytes = max_download_bytes
        self.timeout = timeout
        self.credentials = credentials
        self.http = guard(http or requests.Session(),
                          HostPolicy(allow_private_hosts, frozenset(allowed_hosts), self._trusted_hosts))
        max_frames, max_pixels = video_limits or (None, None)
        self.validate_video = functools.partial(validate_video, max_frames=max_frames,
                                                max_pixels=max_pixels)
        self._clients: dict[tuple[str, str | None], LabelStudioClient] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.downloads = 0

    def fetch(self, ref: str, task_id: int | None = None,
              validate: Callable[[Path], None] | None = None, what: str = "media") -> Path:
        """Local path of the media `ref` names, downloaded (and validated) on first use."""
        if not isinstance(ref, str) or not ref.strip():
            raise MediaError(f"task {what} reference must be a non-empty string, got {ref!r}")
        ref = ref.strip()
        client = self._client()
        home = client.url if client is not None and _needs_label_studio(ref) else ""  # one cache, several servers
        path = self.cache_dir / (hashlib.sha256(f"{home}|{ref}".encode()).hexdigest()[:40] + _suffix(ref))
        with self._lock:
            key_lock = self._locks.setdefault(str(path), threading.Lock())
        with key_lock:
            if path.is_file():
                os.utime(path)
                return path
            url = self._resolve(ref, task_id, client)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    self._download(url, client, out, ref)
                if validate is not None:
                    try:
                        validate(Path(tmp))
                    except (ValueError, OSError) as exc:
                        raise MediaError(f"task {what} {ref!r} is not decodable: {exc}", 422) from exc
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self.downloads += 1
        self._evict(keep=path)
        return path

    def cached_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._cached_files())

    # -- resolution ---------------------------------------------------------------------------------

    def _trusted_hosts(self) -> tuple[str, ...]:
        url = self.credentials()[0]
        return (urlparse(url).hostname or "",) if url else ()

    def _client(self) -> LabelStudioClient | None:
        url, key = self.credentials()
        if not url:
            return None
        with self._lock:
            return self._clients.setdefault((url, key), LabelStudioClient(url, key, self.timeout, self.http))

    def _resolve(self, ref: str, task_id: int | None, client: LabelStudioClient | None) -> str:
        """The absolute URL to GET first."""
        if _needs_label_studio(ref):
            if client is None:
                raise MediaError(f"task media {ref!r} must be fetched from Label Studio, but LABEL_STUDIO_URL is not "
                                 "set (nor learned from /setup): set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", 503)
            if ref.startswith("/"):
                return client.absolute(ref)
            if task_id is None:
                raise MediaError(f"cloud media {ref!r} needs the task id for Label Studio's presign endpoint", 400)
            fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
            return client.absolute(f"/tasks/{int(task_id)}/presign/?fileuri={fileuri}")
        if ref.split("://", 1)[0].lower() in ("http", "https"):
            return ref
        raise MediaError(f"unsupported media reference {ref!r}: expected an http(s) URL, a Label Studio path "
                         f"(/data/upload/..., /data/local-files/?d=...) or a cloud URI ({', '.join(CLOUD_SCHEMES)})")

    # -- download -----------------------------------------------------------------------------------

    def _download(self, url: str, client: LabelStudioClient | None, out, ref: str) -> None:
        for _ in range(MAX_REDIRECTS + 1):
            r = self._get(url, client)
            try:
                if r.is_redirect:
                    url = urljoin(url, r.headers["Location"])
                    continue
                self._check_status(r, url, client, ref)
                self._stream(r, out, ref)
                return
            finally:
                r.close()
        raise MediaError(f"too many redirects fetching {ref!r}", 502)

    def _get(self, url: str, client: LabelStudioClient | None) -> requests.Response:
        own = client is not None and client.owns(url)
        try:
            headers = client.headers() if own else {}
            r = self.http.get(url, headers=headers, stream=True, allow_redirects=False, timeout=self.timeout)
            if own and r.status_code == 401 and client.is_pat:  # the access token expired early: renew once
                r.close()
                r = self.http.get(url, headers=client.headers(renew=True), stream=True, allow_redirects=False,
                                  timeout=self.timeout)
        except HostNotAllowed as exc:
            raise MediaError(str(exc), 422) from None
        except requests.RequestException as exc:
            where = f"Label Studio at {client.url}" if own else f"media host {urlparse(url).netloc}"
            raise MediaError(f"{where} is unreachable ({type(exc).__name__}: {exc})", 502) from exc
        return r

    def _check_status(self, r: requests.Response, url: str, client: LabelStudioClient | None, ref: str) -> None:
        code = r.status_code
        if code == 200:
            return
        own = client is not None and client.owns(url)
        if code in (401, 403) and own:
            hint = "LABEL_STUDIO_API_KEY is not set" if not client.api_key else "check LABEL_STUDIO_API_KEY"
            raise MediaError(f"Label Studio refused to serve {ref!r} (HTTP {code}): {hint}", 502)
        if code in (404, 410):
            raise MediaError(f"task media {ref!r} not found (HTTP {code} from {urlparse(url).netloc})", 422)
        if code >= 500:
            raise MediaError(f"{urlparse(url).netloc} failed serving {ref!r} (HTTP {code})", 502)
        raise MediaError(f"cannot download task media {ref!r}: HTTP {code} from {urlparse(url).netloc}", 422)

    def _stream(self, r: requests.Response, out, ref: str) -> None:
        limit = self.max_download_bytes
        too_big = MediaError(f"task media {ref!r} is larger than MAX_DOWNLOAD_MB ({limit >> 20} MB)", 413)
        length = r.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise too_big
        size = 0
        try:
            for chunk in r.iter_content(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise too_big
                out.write(chunk)
        except requests.RequestException as exc:
            raise MediaError(f"download of {ref!r} broke off ({type(exc).__name__}: {exc})", 502) from exc
        if size == 0:
            raise MediaError(f"task media {ref!r} is empty (0 bytes)", 422)

    # -- cache --------------------------------------------------------------------------------------

    def _cached_files(self) -> list[Path]:
        if not self.cache_dir.is_dir():
            return []
        return [p for p in self.cache_dir.iterdir() if p.is_file() and not p.name.endswith(".part")]

    def _evict(self, keep: Path) -> None:
        """Delete least recently used files until the cache fits its budget (`keep` stays)."""
        files = []
        for p in self._cached_files():
            try:
                files.append((p.stat().st_mtime, p.stat().st_size, p))
            except FileNotFoundError:
                continue
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= self.cache_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size


def _needs_label_studio(ref: str) -> bool:
    """A path on Label Studio, or a cloud URI that only Label Studio can presign."""
    return ref.startswith("/") or ("://" in ref and ref.split("://", 1)[0].lower() in CLOUD_SCHEMES)


def _suffix(ref: str) -> str:
    """The file extension of the reference's path (".mp4"), if a plain one, for readable cache names."""
    path = urlparse(ref).path
    if "d=" in ref and path.endswith("/local-files/"):
        path = ref.rsplit("d=", 1)[1]
    match = re.search(r"(\.[A-Za-z0-9]{1,8})$", path)
    return match.group(1).lower() if match else ""
