"""healthcheck.config: GLB's per-backend healthchecks, generic check/timing mappings with
fwd's error format, and targets from a whole config (inactive backends left out)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from fwd.config import ConfigError, load_config
from healthcheck import CheckSpec, Timing, checks_from_glb, parse_check, parse_timing, targets_from_config

REPO = Path(__file__).resolve().parents[2]


def test_checks_from_glb():
    assert checks_from_glb(None) == ()
    assert checks_from_glb({"http": 80, "gue": 19523}) == (CheckSpec("http", 80), CheckSpec("gue", 19523))
    assert checks_from_glb({"http": 8080, "http_uri": "/ping"}) == (CheckSpec("http", 8080, uri="/ping"),)
    assert checks_from_glb({"fou": 19523}) == (CheckSpec("fou", 19523),)


def test_parse_check_defaults_and_errors():
    assert parse_check({"type": "http"}, "f", "k") == CheckSpec("http", 80)
    assert parse_check({"type": "https", "tls_verify": False}, "f", "k") == CheckSpec(
        "https", 443, tls_verify=False
    )
    assert parse_check({"type": "gue"}, "f", "k") == CheckSpec("gue", 19523)
    spec = parse_check({"type": "gue", "source": "192.0.2.1"}, "f", "k")
    assert spec.source == ipaddress.ip_address("192.0.2.1")
    cases = [
        ({"port": 80}, "f: k.type: missing required key"),
        ({"type": "icmp"}, "f: k.type: bad check type string 'icmp'"),
        ({"type": "tcp"}, "f: k.port: missing required key"),
        ({"type": "tcp", "port": 0}, "f: k.port: port 0 out of range 1..65535"),
        ({"type": "tcp", "port": True}, "f: k.port: expected an integer, got boolean true"),
        ({"type": "tcp", "port": 1, "uri": "/"}, "f: k.uri: only http and https checks take uri"),
        ({"type": "http", "uri": "health"}, "f: k.uri: uri 'health' must start with '/'"),
        ({"type": "http", "status": 99}, "f: k.status: HTTP status 99 out of range 100..599"),
        ({"type": "http", "bogus": 1}, "f: k.bogus: unknown key (allowed here: type, port"),
        ({"type": "gue", "source": "x"}, "f: k.source: 'x' is not an IPv4 or IPv6 address"),
    ]
    for obj, msg in cases:
        with pytest.raises(ConfigError) as e:
            parse_check(obj, "f", "k")
        assert str(e.value).startswith(msg), (obj, str(e.value))


def test_parse_timing():
    base = Timing(interval=5.0)
    t = parse_timing({"timeout": 0.5, "rise": 2}, "f", "k", base)
    assert t == Timing(interval=5.0, timeout=0.5, rise=2)
    for obj, msg in [
        ({"interval": 0}, "f: k.interval: interval must be a positive number"),
        ({"rise": 1.5}, "f: k.rise: expected an integer, got float 1.5"),
        ({"fall": 0}, "f: k.fall: fall must be an integer >= 1"),
        ({"jitter": 1}, "f: k.jitter: jitter must be a fraction"),
        ({"every": 1}, "f: k.every: unknown key"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_timing(obj, "f", "k")
        assert str(e.value).startswith(msg), (obj, str(e.value))


def test_targets_from_glb_example(tmp_path):
    text = (REPO / "examples" / "glb-forwarding-table.json").read_text()
    cfg = load_config(REPO / "examples" / "glb-forwarding-table.json")
    assert '"healthchecks"' in text
    src = ipaddress.ip_address("192.0.2.99")
    targets = targets_from_config(cfg, tunnel_source=src)
    active = [(t.name, b) for t in cfg.tables for b in t.backends if b.state != "inactive"]
    assert [t.key for t in targets] == [(name, b.address) for name, b in active]
    for t in targets:
        assert all(s.source == src for s in t.checks if s.is_tunnel)
        assert all(s.source is None for s in t.checks if not s.is_tunnel)


def test_parse_check_reuse_connection():
    assert parse_check({"type": "http"}, "f", "k").reuse_connection is True
    assert parse_check({"type": "http", "reuse_connection": False}, "f", "k") == CheckSpec(
        "http", 80, reuse_connection=False
    )
    assert parse_check({"type": "https", "reuse_connection": False}, "f", "k").reuse_connection is False
    for obj, err in (
        ({"type": "http", "reuse_connection": 1}, "f: k.reuse_connection: expected a boolean, got integer 1"),
        ({"type": "tcp", "port": 1, "reuse_connection": True}, "f: k.reuse_connection: only http and https"),
        ({"type": "gue", "reuse_connection": False}, "f: k.reuse_connection: only http and https"),
    ):
        with pytest.raises(ConfigError) as e:
            parse_check(obj, "f", "k")
        assert str(e.value).startswith(err), str(e.value)
