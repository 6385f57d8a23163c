"""Which SAM 2 checkpoint the backend serves: a local file, or an official one fetched into a cache.

`python -m backend.weights` prints the checkpoint's path; `python -m backend.weights --exec CMD ARG...` runs
CMD with SAM2_CHECKPOINT set to it (scripts/serve.sh and the Docker image start gunicorn this way). On failure
both print one paragraph on stderr (the URL, what went wrong, how to fix it) and exit with status 1.

| variable | default | meaning |
|---|---|---|
| SAM2_CHECKPOINT | (unset) | a local checkpoint file; when set it is used as it is and nothing is fetched |
| SAM2_MODEL | sam2.1_hiera_tiny | the official model fetched when SAM2_CHECKPOINT is unset |
| SAM2_CHECKPOINT_URL | Hugging Face's file of SAM2_MODEL | where to fetch the checkpoint from (a mirror) |
| SAM2_CHECKPOINT_SHA256 | (unset) | expected sha256 of the fetched file; else Hugging Face's ETag when it is one |
| SAM2_CACHE_DIR | $XDG_CACHE_HOME/sam2 or ~/.cache/sam2 | where fetched checkpoints are kept |

A fetch is accepted only when the body has the announced Content-Length, its sha256 matches the expected one
(when one is known), and the file loads strictly into the model (`sam2_model.load_model`, weights only). It is
written to a `.part` folder in the cache and renamed into place, so the cache never holds a partial file. A
cached file is trusted on a cheap check: its size and sha256 must match the sidecar `<file>.sha256` written
with it.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests

from sam2_model import CheckpointError, load_model
from sam2_model.configs import CONFIGS

DEFAULT_MODEL = "sam2.1_hiera_tiny"
CHUNK = 1 << 20
TIMEOUT_S = 30  # connect and read timeout (between chunks), not a limit on the whole download
_SHA256 = re.compile(r"[0-9a-f]{64}")


class WeightsError(RuntimeError):
    """The checkpoint cannot be used or fetched; the message is the whole paragraph shown to the user."""


def official_url(model: str) -> str:
    """Hugging Face's file of an official model, e.g. sam2.1_hiera_base_plus ->
    https://huggingface.co/facebook/sam2.1-hiera-base-plus/resolve/main/sam2.1_hiera_base_plus.pt"""
    return f"https://huggingface.co/facebook/{model.replace('_', '-')}/resolve/main/{model}.pt"


def default_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(base) / "sam2"


@dataclass(frozen=True)
class Source:
    """Where the checkpoint comes from and where it is cached (`path`, named like the URL's file)."""

    url: str
    path: Path
    sha256: str | None  # expected, from SAM2_CHECKPOINT_SHA256
    model: str | None  # SAM2_MODEL as given (None: inferred at load time, as the backend does)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Source:
        model = env.get("SAM2_MODEL", "").strip() or None
        if model is not None and model not in CONFIGS:
            raise WeightsError(f"SAM2_MODEL={model!r} is not an official SAM 2 model; use one of "
                               f"{', '.join(CONFIGS)}, or set SAM2_CHECKPOINT to a local checkpoint file.")
        url = env.get("SAM2_CHECKPOINT_URL", "").strip() or official_url(model or DEFAULT_MODEL)
        name = os.path.basename(urlparse(url).path)
        if not name.endswith(".pt"):
            name = f"{model or DEFAULT_MODEL}.pt"
        sha256 = env.get("SAM2_CHECKPOINT_SHA256", "").strip().lower() or None
        if sha256 is not None and not _SHA256.fullmatch(sha256):
            raise WeightsError(f"SAM2_CHECKPOINT_SHA256={sha256!r} is not a sha256 (64 hex digits).")
        cache = Path(env.get("SAM2_CACHE_DIR", "").strip() or default_cache_dir(env))
        return cls(url, cache / name, sha256, model)


def resolve(env: Mapping[str, str] | None = None) -> Path:
    """The checkpoint to serve: SAM2_CHECKPOINT, else the cached or freshly fetched file. Raises WeightsError."""
    env = os.environ if env is None else env
    local = env.get("SAM2_CHECKPOINT", "").strip()
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise WeightsError(f"SAM2_CHECKPOINT={local!r} is not a file. Point it at a SAM 2 checkpoint "
                               "(e.g. sam2.1_hiera_tiny.pt), or unset it to fetch the official one.")
        return path.resolve()
    source = Source.from_env(env)
    if is_cached(source):
        return source.path
    fetch(source)
    return source.path


def is_cached(source: Source) -> bool:
    """The cheap check of a cached file: present, the size and sha256 its sidecar records (and the expected
    sha256, when one is given)."""
    try:
        sha256, size = _sidecar(source.path).read_text().split()[:2]
        present = source.path.stat().st_size
    except (OSError, ValueError):
        return False
    return present == int(size) and sha256 == (source.sha256 or sha256)


def fetch(source: Source) -> None:
    """Download, verify and move into the cache; raises WeightsError with the fix in its message."""
    try:
        source.path.parent.mkdir(parents=True, exist_ok=True)
        part = Path(tempfile.mkdtemp(prefix=f".{source.path.name}.", suffix=".part", dir=source.path.parent))
    except OSError as exc:
        raise _unwritable(source, exc) from None
    try:
        target = part / source.path.name  # the final name, so the model config is inferred as it will be
        print(f"fetching {source.url} into {source.path.parent} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        sha256, size = _download(source, target)
        try:
            load_model(target, source.model)
        except (CheckpointError, ValueError, RuntimeError) as exc:
            raise _failure(source, f"the file is not a loadable SAM 2 checkpoint ({exc})") from None
        _sidecar(source.path).unlink(missing_ok=True)  # the file and its sidecar change together
        os.replace(target, source.path)
        _sidecar(source.path).write_text(f"{sha256} {size}\n")
        print(f"fetched {size / 1e6:.1f} MB in {time.monotonic() - started:.0f} s, sha256 {sha256}", file=sys.stderr)
    except OSError as exc:
        raise _unwritable(source, exc) from None
    finally:
        shutil.rmtree(part, ignore_errors=True)


def _download(source: Source, target: Path) -> tuple[str, int]:
    """Stream the URL into `target`; returns (sha256, size) after the length and sha256 checks."""
    digest, size = hashlib.sha256(), 0
    try:
        with requests.get(source.url, stream=True, timeout=TIMEOUT_S) as response:
            if response.status_code != 200:
                raise _failure(source, f"the server answered HTTP {response.status_code} {response.reason}")
            expected_size = response.headers.get("Content-Length")
            expected_sha = source.sha256 or _announced_sha256(response)
            with open(target, "wb") as out:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
    except requests.RequestException as exc:  # before fetch's OSError: requests' errors are OSErrors
        raise _failure(source, f"the download failed ({type(exc).__name__}: {exc})") from None
    if expected_size is not None and size != int(expected_size):
        raise _failure(source, f"the body has {size} bytes but the server announced {expected_size} "
                               "(the connection was cut)")
    sha256 = digest.hexdigest()
    if expected_sha is not None and sha256 != expected_sha:
        raise _failure(source, f"its sha256 is {sha256}, expected {expected_sha} (a corrupt or different file)")
    return sha256, size


def _announced_sha256(response: requests.Response) -> str | None:
    """Hugging Face's X-Linked-Etag (on the redirect) or ETag of an LFS file is its sha256; other ETags are not
    used."""
    for header in ("X-Linked-Etag", "ETag"):
        for hop in (*response.history, response):
            tag = hop.headers.get(header, "").removeprefix("W/").strip('"').lower()
            if _SHA256.fullmatch(tag):
                return tag
    return None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _unwritable(source: Source, exc: OSError) -> WeightsError:
    return _failure(source, f"cannot write to the cache ({exc}); set SAM2_CACHE_DIR to a writable folder")


def _failure(source: Source, what: str) -> WeightsError:
    return WeightsError(
        f"Cannot fetch the SAM 2 checkpoint from {source.url}: {what}. Nothing was cached in "
        f"{source.path.parent}. To fix it, download the file yourself and set SAM2_CHECKPOINT to its path, "
        "or set SAM2_CHECKPOINT_URL to a reachable mirror of it (SAM2_MODEL picks another official model)."
    )


def main(argv: list[str]) -> int:
    """`python -m backend.weights` prints the path; `... --exec CMD ARG...` execs CMD with SAM2_CHECKPOINT."""
    if argv[:1] not in ([], ["--exec"]) or argv == ["--exec"]:
        print("usage: python -m backend.weights [--exec COMMAND [ARG...]]", file=sys.stderr)
        return 2
    try:
        path = resolve()
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if not argv:
        print(path)
        return 0
    os.environ["SAM2_CHECKPOINT"] = str(path)
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
