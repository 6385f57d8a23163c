"""backend/openapi.yaml describes exactly the Flask app's routes and methods, and the app serves it."""
from __future__ import annotations

import re

import yaml

from backend.app import create_app
from backend.protocol import OPENAPI
from config.settings import Settings

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _spec() -> dict:
    return yaml.safe_load(OPENAPI.read_text())


def test_spec_matches_routes(tmp_path):
    app = create_app(Settings(media_cache_dir=str(tmp_path), log_level="WARNING"))
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - IGNORED_METHODS}
    spec = _spec()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == documented, {"undocumented": routes - documented, "not served": documented - routes}


def test_spec_errors_and_security():
    spec = _spec()
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]
    assert spec["security"] == [{"basicAuth": []}]
    assert spec["components"]["securitySchemes"]["basicAuth"] == {"type": "http", "scheme": "basic"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert (op.get("security") == []) == (path == "/health"), (path, method)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert response == {"$ref": "#/components/responses/Error"}, (path, method, status)


def test_spec_is_served(tmp_path):
    client = create_app(Settings(media_cache_dir=str(tmp_path), log_level="WARNING")).test_client()
    response = client.get("/openapi.yaml")
    assert response.status_code == 200 and response.mimetype == "application/yaml"
    assert yaml.safe_load(response.get_data(as_text=True)) == _spec()
