"""HTTP pages beside the WebSocket endpoints: the browser demo and the list of target voices.

    GET /demo, /demo/     the demo page (fastvc/static/demo.html)
    GET /demo/<file>      its script, AudioWorklet and style: only files shipped in fastvc/static
    GET /voices           {"voices": [...], "default": "..."}; 503 {"error": ...} while the engine loads

`web_response` answers these paths and returns None for any other, so the server's request hook can ask it
first. No path reaches the file system beyond the names listed in the package's static folder.
"""

from __future__ import annotations

import http
import json
from importlib import resources

from websockets.datastructures import Headers
from websockets.http11 import Response

from fastvc.protocol import InvalidConfig

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
DEMO_PAGE = "demo.html"


def static_files() -> dict[str, str]:
    """name -> content type, for every servable file of fastvc/static."""
    folder = resources.files("fastvc") / "static"
    if not folder.is_dir():
        return {}
    return {entry.name: CONTENT_TYPES[suffix] for entry in folder.iterdir()
            if entry.is_file() and (suffix := "." + entry.name.rsplit(".", 1)[-1]) in CONTENT_TYPES}


def respond(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")])
    return Response(status.value, status.phrase, headers, body)


def json_response(status: http.HTTPStatus, value: dict) -> Response:
    return respond(status, json.dumps(value).encode(), "application/json")


def web_response(path: str, service) -> Response | None:
    """The response for a demo or voices path, or None when the path is not one of them."""
    if path == "/voices":
        return voices_response(service)
    if path in ("/demo", "/demo/"):
        path = "/demo/" + DEMO_PAGE
    if not path.startswith("/demo/"):
        return None
    name = path[len("/demo/"):]
    files = static_files()
    if name not in files:
        return respond(http.HTTPStatus.NOT_FOUND, f"no file {name!r} in the demo\n".encode(),
                       "text/plain; charset=utf-8")
    body = (resources.files("fastvc") / "static" / name).read_bytes()
    return respond(http.HTTPStatus.OK, body, files[name])


def voices_response(service) -> Response:
    if service.engine is None:
        return json_response(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the engine is still loading"})
    voices = list(service.engine.voices())
    try:
        default = service.resolve_voice(None)
    except InvalidConfig:  # a configured default the engine does not have: the session config will say so
        default = voices[0] if voices else None
    return json_response(http.HTTPStatus.OK, {"voices": voices, "default": default})
