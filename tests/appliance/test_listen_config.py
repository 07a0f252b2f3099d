"""[server].listen and metrics_listen: a host and a port in 1-65535, or a clear refusal.

Before, ``listen = "127.0.0.1:99999"`` was accepted and gRPC listened on a random port.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sealagg.appliance.cli import app
from sealagg.appliance.config import parse_config
from sealagg.appliance.errors import ConfigError


def _server(**values: str):
    return parse_config({"federation": {"name": "f"}, "server": values})


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("127.0.0.1:99999", "from 1 to 65535"),
        ("127.0.0.1:0", "from 1 to 65535"),
        ("127.0.0.1:-1", "from 1 to 65535"),
        ("127.0.0.1:\uff15\uff10", "from 1 to 65535"),  # fullwidth digits are not a port
        ("127.0.0.1", "not HOST:PORT"),
        (":50051", "not HOST:PORT"),
        ("::1:50051", "in brackets"),
        ("local host:50051", "not a host name"),
    ],
)
@pytest.mark.parametrize("key", ["listen", "metrics_listen"])
def test_bad_listen_addresses_are_refused_naming_the_key(key, value, why):
    with pytest.raises(ConfigError, match=f"server.{key}") as refused:
        _server(**{key: value})
    assert why in str(refused.value)


@pytest.mark.parametrize("value", ["127.0.0.1:1", "0.0.0.0:65535", "[::1]:50051", "host:9464"])
def test_good_listen_addresses_are_kept(value):
    config = _server(listen=value, metrics_listen=value)
    assert config.server.listen == value and config.server.metrics_listen == value


def test_metrics_can_stay_off():
    assert _server(metrics_listen="").server.metrics_listen == ""


def test_serve_refuses_an_out_of_range_port_in_one_json_line(deployment):
    dep = deployment(clients=3)
    dep.configure(server={"listen": "127.0.0.1:99999"})
    result = CliRunner().invoke(app, ["serve", "-f", str(dep.folder)])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 1 and lines[0]["level"] == "ERROR"
    assert "server.listen = '127.0.0.1:99999'" in lines[0]["message"]
    assert not (dep.folder / ".sealagg.lock.pid").exists()  # the failed start holds nothing
