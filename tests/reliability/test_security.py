"""Security: basic auth, the Label Studio token's reach, the SSRF guard, local-files paths, size limits and
secrets in logs. Through Flask's test client (a small random-weight model) and fake media hosts on
127.0.0.1 / 127.0.0.2; resolver answers for private addresses are patched, never connected to."""
from __future__ import annotations

import logging
import socket

import pytest

from backend import netguard, protocol
from backend.netguard import HostPolicy, is_public
from bench.load import AUTH, AUTH_HEADERS as HEADERS, request_body, task_video
from tests.fake_label_studio import LEGACY_TOKEN, FakeLabelStudio

PRIVATE = ["10.1.2.3", "169.254.169.254", "192.168.1.1", "172.16.0.9", "100.64.0.1", "127.0.0.1", "0.0.0.0",
           "::1", "fe80::1", "fc00::5", "::ffff:10.0.0.1", "224.0.0.1"]


@pytest.fixture
def make_secure_client(make_client):
    return lambda **changes: make_client(**{"basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1],
                                            "log_level": "DEBUG", **changes})


@pytest.fixture
def other_host():
    """A plain media host on 127.0.0.2 (a second 'machine'), no auth, serving task 1's clip at /clip.mp4."""
    with FakeLabelStudio(require_auth=False, host="127.0.0.2") as server:
        yield server


def _json_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    message = response.get_json()["error"]
    assert all(w in message for w in words), message
    return message


def _body_for(media: str, task: int = 1, kind: str = "click") -> dict:
    body = request_body(kind, task)
    body["tasks"][0]["data"]["video"] = media
    return body


# ---------------------------------------------------------------- basic auth


def test_basic_auth_on_every_route_but_health(make_secure_client):
    client = make_secure_client()
    app = client.application
    for rule in app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            call = getattr(client, method.lower())
            if rule.rule in protocol.OPEN_ROUTES:
                assert call(rule.rule).status_code == 200
                continue
            for headers in ({}, {"Authorization": "Basic " + "dXNlcjp3cm9uZw=="}, {"Authorization": "Bearer x"}):
                response = call(rule.rule, json={"action": "x"}, headers=headers)
                _json_error(response, 401, "authentication required")
                assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/versions", headers=HEADERS).status_code == 200


def test_credentials_compared_in_constant_time(make_secure_client, monkeypatch):
    client = make_secure_client()
    compared = []
    real = protocol.hmac.compare_digest
    monkeypatch.setattr(protocol.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    assert client.get("/metrics", headers=HEADERS).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Basic dXNlcjp3cm9uZw=="}).status_code == 401
    # both user and password go through compare_digest, also when the user is already wrong
    assert compared == [(AUTH[0].encode(), AUTH[0].encode()), (AUTH[1].encode(), AUTH[1].encode()),
                        (b"user", AUTH[0].encode()), (b"wrong", AUTH[1].encode())]


# ---------------------------------------------------------------- the token and the SSRF guard


def test_token_not_sent_after_redirect_to_another_host(make_secure_client, ls, other_host):
    other_host.add("/bucket/clip.mp4", ls.files[task_video(1)])
    ls.presign_target = lambda uri: f"{other_host.url}/bucket/clip.mp4"
    try:
        client = make_secure_client(media_allowed_hosts="127.0.0.2")
        response = client.post("/predict", json=_body_for("s3://bucket/clip.mp4"), headers=HEADERS)
    finally:
        ls.presign_target = lambda uri: None
    assert response.status_code == 200, response.get_json()
    assert other_host.requests == [("GET", "/bucket/clip.mp4", None)]
    assert any(p.startswith("/tasks/1/presign/") and auth == f"Token {LEGACY_TOKEN}" for _, p, auth in ls.requests)


def test_loopback_media_host_refused_unless_allowed(make_secure_client, ls, other_host):
    other_host.add("/clip.mp4", ls.files[task_video(1)])
    url = f"{other_host.url}/clip.mp4"
    _json_error(make_secure_client().post("/predict", json=_body_for(url), headers=HEADERS), 422,
                "non-public", "127.0.0.2", "MEDIA_ALLOWED_HOSTS")
    assert other_host.requests == []
    # a redirect hop from Label Studio to a refused host is refused too
    ls.presign_target = lambda uri: url
    try:
        _json_error(make_secure_client().post("/predict", json=_body_for("s3://b/clip.mp4"), headers=HEADERS), 422,
                    "non-public")
    finally:
        ls.presign_target = lambda uri: None
    assert other_host.requests == []
    for changes in ({"media_allowed_hosts": f"127.0.0.2:{other_host.url.rsplit(':', 1)[1]}"},
                    {"media_allow_private_hosts": True}):
        assert make_secure_client(**changes).post("/predict", json=_body_for(url), headers=HEADERS).status_code == 200
    assert make_secure_client(media_allowed_hosts="127.0.0.2:1").post(
        "/predict", json=_body_for(url), headers=HEADERS).status_code == 422  # another port


@pytest.mark.parametrize("address", PRIVATE)
def test_names_resolving_to_private_addresses_are_refused(make_secure_client, monkeypatch, address):
    calls = []

    def resolver(host, port, *args, **kwargs):
        calls.append(host)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    connects = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, sa: connects.append(sa))
    response = make_secure_client().post("/predict", json=_body_for("https://media.example/clip.mp4"), headers=HEADERS)
    _json_error(response, 422, "non-public", address)
    assert calls == ["media.example"] and connects == []


def test_resolved_once_and_connected_to_the_checked_address(make_secure_client, ls, other_host, monkeypatch):
    """DNS rebinding: the name is resolved once per connection, and the connection goes to that address."""
    other_host.add("/clip.mp4", ls.files[task_video(1)])
    port = int(other_host.url.rsplit(":", 1)[1])
    real = socket.getaddrinfo
    answers = {"media.example": ["127.0.0.2", "203.0.113.7"]}  # a second lookup would give another address
    calls = []

    def resolver(host, *args, **kwargs):
        if host in answers:
            calls.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host].pop(0), port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    client = make_secure_client(media_allowed_hosts="media.example")
    response = client.post("/predict", json=_body_for(f"http://media.example:{port}/clip.mp4"), headers=HEADERS)
    assert response.status_code == 200, response.get_json()
    assert calls == ["media.example"] and other_host.requests == [("GET", "/clip.mp4", None)]


def test_is_public_and_policy():
    assert all(not is_public(a) for a in PRIVATE)
    assert is_public("8.8.8.8") and is_public("2606:4700::1111")
    policy = HostPolicy(allowed=frozenset({"a.example", "b.example:8443"}), trusted=lambda: ("ls.example",))
    assert policy.named("A.example.", 80) and policy.named("b.example", 8443) and not policy.named("b.example", 80)
    assert policy.named("ls.example", 1) and not policy.named("c.example", 80)
    assert netguard.HostNotAllowed.__name__ in repr(netguard.HostNotAllowed("x"))


def test_local_files_are_never_read_from_disk(make_secure_client, ls):
    ref = "/data/local-files/?d=../../../../etc/passwd"
    response = make_secure_client().post("/predict", json=_body_for(ref), headers=HEADERS)
    message = _json_error(response, 422, "not found")
    assert "root:" not in response.get_data(as_text=True) and "etc/passwd" in message
    assert ("GET", ref, f"Token {LEGACY_TOKEN}") in ls.requests  # asked Label Studio, which applies its root


# ---------------------------------------------------------------- limits


def test_request_size_limit(make_secure_client):
    client = make_secure_client(max_request_mb=1)
    body = b'{"tasks": [], "pad": "' + b"x" * (1 << 20) + b'"}'
    _json_error(client.post("/predict", data=body, content_type="application/json", headers=HEADERS), 413,
                "Too Large")
    assert client.post("/predict", json=request_body("click", 1), headers=HEADERS).status_code == 200


@pytest.mark.parametrize("changes, words", [
    ({"max_video_frames": 10}, ["14 frames", "MAX_VIDEO_FRAMES (10)"]),
    ({"max_video_pixels": 3000}, ["64x48", "MAX_VIDEO_PIXELS (3000)"]),
])
def test_video_limits(make_secure_client, changes, words):
    client = make_secure_client(**changes)
    _json_error(client.post("/predict", json=request_body("click", 1), headers=HEADERS), 413, *words)
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json=request_body("click", 1), headers=HEADERS).status_code == 413  # not cached


# ---------------------------------------------------------------- logs


def test_no_secrets_in_logs(make_secure_client, ls, caplog, monkeypatch):
    """Tokens and passwords reach Label Studio but never the logs (DEBUG), on success and on every failure."""
    real = socket.getaddrinfo
    looked_up = []

    def resolver(host, port, *args, **kwargs):  # no lookup leaves the machine: media.example is private
        looked_up.append(host)
        if host == "media.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    setup_token = "setup-access-token-5b1e0c"  # Label Studio refuses it
    client = make_secure_client(label_studio_api_key=None)
    url = client.application.extensions["sam2_backend"].settings.label_studio_url
    schema = request_body("click", 1)["label_config"]
    with caplog.at_level(logging.DEBUG):
        for project, token in (("7.1", LEGACY_TOKEN), ("8.1", setup_token)):
            setup = {"project": project, "hostname": url, "access_token": token, "schema": schema}
            assert client.post("/setup", json=setup, headers=HEADERS).status_code == 200
            task = 1 if token == LEGACY_TOKEN else 2  # task 2's clip is not cached yet: it is fetched again
            response = client.post("/predict", json=request_body("click", task), headers=HEADERS)
            if token == LEGACY_TOKEN:  # the latest /setup's token fetched the media
                assert response.status_code == 200, response.get_json()
            else:
                _json_error(response, 502, "refused")
            assert ("GET", task_video(task), f"Token {token}") in ls.requests
        assert client.get("/metrics", headers={"Authorization": "Basic dXNlcjp3cm9uZw=="}).status_code == 401
        _json_error(client.post("/predict", json=_body_for("/data/upload/9/missing.mp4"), headers=HEADERS), 502,
                    "refused")
        _json_error(client.post("/predict", json=_body_for("https://media.example/x.mp4"), headers=HEADERS), 422,
                    "non-public", "10.1.2.3")
    assert "media.example" in looked_up
    assert all(host == "media.example" or host.replace(".", "").isdigit() for host in looked_up), looked_up
    text = caplog.text
    assert "refused" in text and "non-public" in text  # the failures were logged
    for secret in (LEGACY_TOKEN, AUTH[1], setup_token, HEADERS["Authorization"].split()[1]):
        assert secret not in text
