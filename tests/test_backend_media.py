"""backend.media: Label Studio media through a fake Label Studio on 127.0.0.1 (tokens, presign, cache, errors)."""
from __future__ import annotations

import base64
import io
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.media import MediaError, MediaFetcher, load_image, validate_image, validate_video
from sam2_model.video.frames import write_h264
from tests.fake_label_studio import LEGACY_TOKEN, PAT, FakeLabelStudio


def _png(w=8, h=6, color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def ls():
    with FakeLabelStudio() as server:
        yield server


def _fetcher(tmp_path: Path, url: str | None, key: str | None, **kw) -> MediaFetcher:
    args = dict(cache_bytes=1 << 30, max_download_bytes=1 << 20, timeout=5.0)
    args.update(kw)
    return MediaFetcher(tmp_path / "cache", credentials=lambda: (url, key), **args)


def test_upload_with_legacy_token_and_cache(ls, tmp_path):
    ls.add("/data/upload/1/a.png", _png())
    f = _fetcher(tmp_path, ls.url, LEGACY_TOKEN)
    path = f.fetch("/data/upload/1/a.png", 1, validate_image)
    assert path.suffix == ".png" and load_image(path).shape == (6, 8, 3)
    assert ls.requests[-1][2] == f"Token {LEGACY_TOKEN}"
    n = len(ls.requests)
    assert f.fetch("/data/upload/1/a.png", 1, validate_image) == path  # cached: no second request
    assert len(ls.requests) == n and f.downloads == 1


def test_personal_access_token_is_exchanged(ls, tmp_path):
    ls.add("/data/upload/1/a.png", _png())
    ls.add("/data/upload/1/b.png", _png())
    f = _fetcher(tmp_path, ls.url, PAT)
    f.fetch("/data/upload/1/a.png", 1)
    f.fetch("/data/upload/1/b.png", 1)
    assert ls.refresh_count == 1  # the access token is reused until it nears expiry
    gets = [r for r in ls.requests if r[0] == "GET"]
    assert all(auth.startswith("Bearer ") and auth != f"Bearer {PAT}" for _, _, auth in gets)


def test_expired_access_token_is_renewed(ls, tmp_path):
    ls.ACCESS_TTL = 10  # within the renewal margin: every use refreshes
    ls.add("/data/upload/1/a.png", _png())
    ls.add("/data/upload/1/b.png", _png())
    f = _fetcher(tmp_path, ls.url, PAT)
    f.fetch("/data/upload/1/a.png", 1)
    f.fetch("/data/upload/1/b.png", 1)
    assert ls.refresh_count == 2


def test_local_files_and_cloud_presign_token_stays_home(ls, tmp_path):
    with FakeLabelStudio(require_auth=False) as bucket:
        bucket.add("/bucket/clip.png", _png(), open_access=True)
        ls.presign_target = lambda uri: bucket.url + "/bucket/clip.png" if uri == "s3://bucket/clip.png" else None
        ls.add("/data/local-files/?d=videos/x.png", _png())
        f = _fetcher(tmp_path, ls.url, LEGACY_TOKEN)
        assert load_image(f.fetch("/data/local-files/?d=videos/x.png", 3)).shape == (6, 8, 3)
        path = f.fetch("s3://bucket/clip.png", 7, validate_image)
        assert load_image(path).shape == (6, 8, 3)
        presign = [r for r in ls.requests if "/presign/" in r[1]][0]
        expected = base64.urlsafe_b64encode(b"s3://bucket/clip.png").decode()
        assert presign[1] == f"/tasks/7/presign/?fileuri={expected}" and presign[2] == f"Token {LEGACY_TOKEN}"
        assert bucket.requests == [("GET", "/bucket/clip.png", None)]  # redirected without the token
        # a plain URL on another host gets no token either
        bucket.add("/other.png", _png(), open_access=True)
        f.fetch(bucket.url + "/other.png")
        assert bucket.requests[-1][2] is None
        # an absolute URL on Label Studio's host does
        ls.add("/data/upload/2/abs.png", _png())
        f.fetch(ls.url + "/data/upload/2/abs.png")
        assert ls.requests[-1][2] == f"Token {LEGACY_TOKEN}"


@pytest.mark.parametrize(
    "ref, key, status, words",
    [
        ("/data/upload/1/missing.mp4", LEGACY_TOKEN, 422, "not found"),
        ("/data/upload/1/a.png", None, 502, "LABEL_STUDIO_API_KEY is not set"),
        ("/data/upload/1/a.png", "wrong", 502, "refused"),
        ("/data/upload/1/a.png", PAT[:-3] + "xyz", 502, "personal access token"),
        ("ftp://host/x.mp4", LEGACY_TOKEN, 422, "unsupported media reference"),
        ("/etc/passwd", LEGACY_TOKEN, 422, "not found"),
    ],
)
def test_errors(ls, tmp_path, ref, key, status, words):
    ls.add("/data/upload/1/a.png", _png())
    with pytest.raises(MediaError) as err:
        _fetcher(tmp_path, ls.url, key).fetch(ref, 1)
    assert err.value.status == status and words in str(err.value)


def test_unreachable_and_unconfigured(tmp_path):
    with socket.socket() as s:  # a closed loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MediaError) as err:
        _fetcher(tmp_path, f"http://127.0.0.1:{port}", LEGACY_TOKEN, timeout=2.0).fetch("/data/upload/1/a.mp4", 1)
    assert err.value.status == 502 and "unreachable" in str(err.value)
    with pytest.raises(MediaError) as err:
        _fetcher(tmp_path, None, None).fetch("/data/upload/1/a.mp4", 1)
    assert err.value.status == 503 and "LABEL_STUDIO_URL" in str(err.value)
    with pytest.raises(MediaError) as err:
        _fetcher(tmp_path, "http://127.0.0.1:1", None).fetch("s3://b/x.mp4", None)
    assert err.value.status == 400


def test_size_limit_and_validation_and_eviction(ls, tmp_path):
    ls.add("/data/upload/1/big.png", b"x" * 5000)
    with pytest.raises(MediaError) as err:
        _fetcher(tmp_path, ls.url, LEGACY_TOKEN, max_download_bytes=4000).fetch("/data/upload/1/big.png", 1)
    assert err.value.status == 413
    ls.add("/data/upload/1/bad.mp4", b"not a video at all" * 50)
    f = _fetcher(tmp_path, ls.url, LEGACY_TOKEN, cache_bytes=2 * len(_png()) + 10)
    with pytest.raises(MediaError) as err:
        f.fetch("/data/upload/1/bad.mp4", 1, validate_video, "video")
    assert err.value.status == 422 and "not decodable" in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []  # nothing invalid is cached
    frames = [np.full((16, 16, 3), i * 20, np.uint8) for i in range(3)]
    write_h264(tmp_path / "ok.mp4", frames, fps=10)
    ls.add("/data/upload/1/ok.mp4", (tmp_path / "ok.mp4").read_bytes())
    assert f.fetch("/data/upload/1/ok.mp4", 1, validate_video).suffix == ".mp4"
    f.cache_bytes = 2 * len(_png()) + 10
    (tmp_path / "cache" / next((tmp_path / "cache").iterdir()).name).unlink()
    paths = []
    for i in range(3):
        ls.add(f"/data/upload/1/{i}.png", _png(color=(i, 0, 0)))
        paths.append(f.fetch(f"/data/upload/1/{i}.png", 1))
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()  # LRU evicted
    assert f.cached_bytes() <= f.cache_bytes
