"""``[console]`` in sealagg.toml: off by default, loopback by default, and no anonymous
viewing on an address others can reach."""

from __future__ import annotations

import pytest

from sealagg.appliance.config import parse_config
from sealagg.appliance.errors import ConfigError


def _console(**values):
    return parse_config({"federation": {"name": "f"}, "console": values}).console


def test_defaults_are_off_loopback_and_a_free_port() -> None:
    section = parse_config({"federation": {"name": "f"}}).console
    assert section.enabled is False and section.host == "127.0.0.1" and section.port == 0
    assert section.anonymous is True  # loopback: only the host's users can reach it
    assert section.session_minutes == 30 and section.token_seconds == 120


def test_anonymous_reading_follows_the_host_unless_set() -> None:
    assert _console(host="0.0.0.0").anonymous is False
    assert _console(host="::1").anonymous is True
    assert _console(host="localhost", anonymous_read=False).anonymous is False


def test_anonymous_reading_on_a_reachable_address_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match=r"anonymous_read = true with host = '10\.1\.2\.3'"):
        _console(host="10.1.2.3", anonymous_read=True)


@pytest.mark.parametrize(
    ("key", "value"),
    [("port", 70000), ("port", -1), ("host", "bad host"), ("token_seconds", 0), ("extra", 1)],
)
def test_bad_values_are_refused_by_key(key, value) -> None:
    with pytest.raises(ConfigError, match=f"console.{key}"):
        _console(**{key: value})
