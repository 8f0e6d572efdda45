"""The demo page's files and the voice list, served by the server's HTTP hook."""

from __future__ import annotations

import json

from fastvc.web import static_files
from serverkit import http_get, running_server


def test_the_demo_ships_its_page_script_worklet_and_style():
    assert {"demo.html", "demo.js", "demo-worklet.js", "demo.css"} <= set(static_files())


async def test_demo_files_are_served_with_their_types_and_nothing_else():
    async with running_server() as server:
        status, headers, body = await http_get(server.port, "/demo")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'src="/demo/demo.js"' in body
        for name, content_type in (("demo.js", "text/javascript"), ("demo-worklet.js", "text/javascript"),
                                   ("demo.css", "text/css")):
            status, headers, body = await http_get(server.port, f"/demo/{name}")
            assert status == 200 and headers["content-type"].startswith(content_type) and body
        for path in ("/demo/../server.py", "/demo/%2e%2e/web.py", "/demo/nothing.js", "/demo/static"):
            assert (await http_get(server.port, path))[0] == 404


async def test_voices_lists_the_engine_voices_and_the_default():
    async with running_server() as server:
        status, headers, body = await http_get(server.port, "/voices")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"voices": ["default"], "default": "default"}
