"""`agent-infra console`: the URL it prints, from --http, ORCHESTRATOR_HTTP_ADDR or the default."""

from __future__ import annotations

import json
import webbrowser

import pytest
from agent_infra.client.cli import run


def test_prints_the_default_url(capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRATOR_HTTP_ADDR", raising=False)
    assert run(["console"]) == 0
    assert capsys.readouterr().out.strip() == "http://127.0.0.1:9097/console/"


def test_the_address_comes_from_the_environment_or_the_flag(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_HTTP_ADDR", "0.0.0.0:8080")
    assert run(["console", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["url"] == "http://127.0.0.1:8080/console/"
    assert run(["console", "--http", "[::1]:9000"]) == 0
    assert capsys.readouterr().out.strip() == "http://[::1]:9000/console/"
    assert run(["console", "--http", "no-port"]) == 2
    assert "--http 'no-port': expected host:port" in capsys.readouterr().err


def test_open_hands_the_url_to_the_browser(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    def fake_open(url: str) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr(webbrowser, "open", fake_open)
    assert run(["console", "--open", "--http", "127.0.0.1:1234"]) == 0
    assert opened == ["http://127.0.0.1:1234/console/"]
    monkeypatch.setattr(webbrowser, "open", lambda url: False)
    assert run(["console", "--open"]) == 1
    assert "no web browser could be opened" in capsys.readouterr().err
