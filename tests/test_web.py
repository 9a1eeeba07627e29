"""The web page's server side, without a browser: the page and its files, /api/personas, /ws pings,
and the package data that ships the page. The page itself is driven in a browser in test_web_browser.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from aimsvoice import personas
from aimsvoice.server import web
from serve_helpers import Heard, config_message, read_to_close, run, running, tiny_config, until, ws_connect

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)

REPO = Path(__file__).resolve().parent.parent
TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def server(tiny_dir: Path):
    with running(tiny_config(idle_timeout=None)) as r:
        yield r


def test_the_page_and_its_files_are_served_with_a_strict_policy(server) -> None:
    status, body = server.get("/?persona=headcoach&connect=1")
    assert status == 200
    page = body.decode()
    referenced = set(re.findall(r'(?:src|href)="static/([^"]+)"', page))
    assert {"app.js", "style.css", "icon.svg"} <= referenced
    modules = {name for name in web.assets() if name.endswith(".js")}
    for name in referenced | modules:  # every file the page or a module names is there, with its type
        request = server.get(f"/static/{name}")
        assert request[0] == 200, name
    for path in web.WEB_DIR.glob("*.js"):  # imports between the modules resolve to files that are served
        for imported in re.findall(r'from "\./([^"]+)"|new URL\("([^"]+)", import\.meta\.url\)', path.read_text()):
            assert "".join(imported) in web.assets(), (path.name, imported)

    import urllib.request

    with urllib.request.urlopen(server.http + "/static/app.js", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/javascript")
        etag = response.headers["ETag"]
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert f"ws://127.0.0.1:{server.port}" in policy  # the page may open its own /ws, nothing else
    assert not re.search(r"https?:", policy)
    assert server.get("/static/app.js", {"If-None-Match": etag})[0] == 304
    assert server.get("/static/nothing.js")[0] == 404
    assert server.get("/static/..%2Fapp.py")[0] == 404
    assert server.get("/static/__init__.py")[0] == 404  # only the page's own kinds of file


def test_personas_are_listed_for_the_picker(server) -> None:
    status, body = server.get("/api/personas")
    assert status == 200
    listed = json.loads(body)
    found, _ = personas.load_all()
    assert listed["default"] == "assistant"
    assert [p["name"] for p in listed["personas"]] == sorted(found)
    coach = next(p for p in listed["personas"] if p["name"] == "headcoach")
    assert coach == {
        "name": "headcoach", "display_name": found["headcoach"].display_name,
        "description": found["headcoach"].description, "voice": found["headcoach"].voice,
    }


def test_a_voice_file_is_named_not_shown_by_its_path(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "aimsvoice" / "personas"
    folder.mkdir(parents=True)
    (folder / "voices").mkdir()
    (folder / "voices" / "me.wav").write_bytes(b"")  # only its name matters here
    (folder / "mine.toml").write_text('voice = "voices/me.wav"\ntext_prompt = "You are me."\n')
    (folder / "broken.toml").write_text("text_prompt = \n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    listed = {p["name"]: p for p in web.persona_list()["personas"]}
    assert listed["mine"]["voice"] == "me" and "broken" not in listed


def test_personas_need_the_token_when_the_server_has_one(tiny_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    with running(tiny_config(token_file=tmp_path / "token", max_sessions=1)) as r:
        status, body = r.get("/api/personas")
        assert status == 401 and "token" in json.loads(body)["error"]
        assert r.get("/api/personas", {"Authorization": "Bearer wrong"})[0] == 401
        assert r.get("/api/personas", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert r.get("/")[0] == 200 and r.get("/static/app.js")[0] == 200  # the page asks for the token itself


def test_a_ping_on_ws_gets_its_pong_in_turn_and_a_bad_one_an_error(server) -> None:
    async def session():
        heard = Heard()
        async with ws_connect(server.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt="Hi."))
            await until(ws, heard, "ready")
            await ws.send(json.dumps({"type": "ping", "id": 7}))
            pong = await until(ws, heard, "pong")
            await ws.send(json.dumps({"type": "ping", "id": "x" * 65}))
            error = await until(ws, heard, "error")
            await ws.send(json.dumps({"type": "ping", "id": "after"}))
            again = await until(ws, heard, "pong")
            await ws.send(json.dumps({"type": "end"}))
            await read_to_close(ws, heard, timeout=10)
            return pong, error, again, heard

    pong, error, again, heard = run(session())
    assert pong == {"type": "pong", "id": 7} and again["id"] == "after"
    assert "ping" in error["message"] and heard.end["reason"] == "client-ended"


def test_the_package_ships_every_file_of_the_page() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["aimsvoice.server.web"]
    files = [p for p in web.WEB_DIR.iterdir() if p.is_file() and p.suffix != ".py"]
    assert files and all(any(p.match(pattern) for pattern in patterns) for p in files), "add the new kind of file to package-data"
    assert {p.name for p in files} == set(web.assets())
    assert all(suffix in web.CONTENT_TYPES for pattern in patterns for suffix in [pattern.removeprefix("*")])
