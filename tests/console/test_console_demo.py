"""``sealagg-demo --console``: the flag reaches the federation's configuration, and the
console's address is read from what ``sealagg console`` prints (the demo's CLI boundary)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealagg.client_shim.demo import console_link
from sealagg.client_shim.demo.cli import build_parser
from sealagg.client_shim.demo.commands import SealaggCommandError
from sealagg.client_shim.demo.config import DemoConfig
from sealagg.client_shim.demo.provision import demo_settings


def test_the_console_flag_enables_the_console_section() -> None:
    assert build_parser().parse_args(["--console"]).console is True
    assert build_parser().parse_args([]).console is False
    assert demo_settings(DemoConfig(console=True))["console"] == {"enabled": True}
    assert "console" not in demo_settings(DemoConfig())


def test_console_login_waits_for_the_appliance_and_reads_the_url(monkeypatch) -> None:
    answers = [
        SealaggCommandError("cannot reach the appliance"),
        "https://127.0.0.1:4443/login?token=abc\n",
    ]
    calls: list[tuple] = []

    def fake_run(*args, federation, cwd, timeout):
        calls.append(args)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(console_link, "run_sealagg", fake_run)
    monkeypatch.setattr(console_link.time, "sleep", lambda s: None)
    address, url = console_link.console_login(Path("fed"), Path("."), wait=5)
    assert address == "https://127.0.0.1:4443/"
    assert url == "https://127.0.0.1:4443/login?token=abc"
    assert calls[0][:2] == ("console", "--quiet")


def test_console_login_gives_up_with_the_last_error(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise SealaggCommandError("the console is not enabled")

    monkeypatch.setattr(console_link, "run_sealagg", fail)
    monkeypatch.setattr(console_link.time, "sleep", lambda s: None)
    with pytest.raises(SealaggCommandError, match="not enabled"):
        console_link.console_login(Path("fed"), Path("."), wait=0)
