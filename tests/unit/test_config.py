"""fwd.config: both formats, defaults, and every validation error (one line: file, key, reason)."""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from fwd.config import Backend, Bind, Config, ConfigError, Node, load_config, parse_config

HK = "12345678901234561234567890123456"
SEED = "34567890123456783456789012345678"
DELETE = object()

# GLB Director's documented forwarding table (docs/setup/forwarding-table-config.md), unchanged.
GLB_DOC_EXAMPLE = """{
  "tables": [
    {
      "name": "example1",
      "hash_key": "12345678901234561234567890123456",
      "seed": "34567890123456783456789012345678",
      "binds": [
        { "ip": "10.10.10.10", "proto": "tcp", "port": 80 },
        { "ip": "fdb4:98ce:52d4::42", "proto": "tcp", "port": 80 }
      ],
      "backends": [
        { "ip": "192.168.50.10", "state": "active", "healthchecks": {"http": 80, "gue": 19523} },
        { "ip": "192.168.50.11", "state": "active", "healthchecks": {"http": 80, "gue": 19523} }
      ]
    }
  ]
}
"""


# ---------------------------------------------------------------------------------------------
# helpers


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_val(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _emit(d: dict[str, Any], prefix: str, lines: list[str]) -> None:
    subs = []
    for k, v in d.items():
        if isinstance(v, dict):
            subs.append(("table", k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            subs.append(("array", k, v))
        else:
            lines.append(f"{k} = {_val(v)}")
    for kind, k, v in subs:
        name = f"{prefix}.{k}" if prefix else k
        if kind == "table":
            lines.append(f"[{name}]")
            _emit(v, name, lines)
        else:
            for item in v:
                lines.append(f"[[{name}]]")
                _emit(item, name, lines)


def to_toml(d: dict[str, Any]) -> str:
    lines: list[str] = []
    _emit(d, "", lines)
    return "\n".join(lines) + "\n"


def set_path(d: dict[str, Any], path: str, value: Any) -> None:
    """set_path(d, "tables[0].binds[1].port", 80); value DELETE removes the key."""
    parts: list[str | int] = []
    for dotted in path.split("."):
        name, *idx = dotted.replace("]", "").split("[")
        parts.append(name)
        parts.extend(int(i) for i in idx)
    cur: Any = d
    for p in parts[:-1]:
        cur = cur[p]
    if value is DELETE:
        del cur[parts[-1]]
    else:
        cur[parts[-1]] = value


def toml_base() -> dict[str, Any]:
    return {
        "node": {
            "tunnel_source": "192.0.2.10",
            "tunnel_source6": "2001:db8::10",
            "mtu": 1500,
            "forward_icmp_echo": False,
        },
        "tables": [
            {
                "name": "web",
                "hash_key": HK,
                "seed": SEED,
                "glb_compat": False,
                "hash_fields": ["src_addr"],
                "binds": [
                    {"ip": "1.1.1.1", "proto": "tcp", "port": 80},
                    {"ip": "1.1.1.1", "proto": "tcp", "port_start": 443, "port_end": 443},
                ],
                "backends": [
                    {"ip": "1.2.3.4", "state": "active", "healthy": True},
                    {"ip": "2.3.4.5"},
                    {"ip": "3.4.5.6"},
                ],
            }
        ],
    }


def json_base() -> dict[str, Any]:
    return {
        "tables": [
            {
                "name": "example",
                "hash_key": HK,
                "seed": SEED,
                "binds": [{"ip": "1.1.1.1", "proto": "tcp", "port": 80}],
                "backends": [
                    {"ip": "1.2.3.4", "state": "active", "healthy": True},
                    {"ip": "2.3.4.5", "state": "active", "healthy": True},
                    {"ip": "3.4.5.6", "state": "active", "healthy": True},
                ],
            }
        ]
    }


def write(tmp_path: Path, data: dict[str, Any] | str, fmt: str = "toml", name: str | None = None) -> Path:
    if isinstance(data, str):
        text = data
    else:
        text = to_toml(data) if fmt == "toml" else json.dumps(data, indent=2)
    path = tmp_path / (name or ("fwd.toml" if fmt == "toml" else "table.json"))
    path.write_text(text)
    return path


def expect_error(path: Path, key: str, reason: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    e = info.value
    assert e.file == str(path)
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    assert str(e) == f"{path}: {e.key}: {e.reason}"
    assert "\n" not in str(e)
    return e


# ---------------------------------------------------------------------------------------------
# accepted configs and defaults


def test_toml_full(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, toml_base()))
    assert isinstance(cfg, Config)
    assert cfg.format == "toml"
    assert cfg.path == str(tmp_path / "fwd.toml")
    assert cfg.node == Node(IPv4Address("192.0.2.10"), IPv6Address("2001:db8::10"), 1500, False)
    (t,) = cfg.tables
    assert t.name == "web"
    assert t.hash_key == bytes.fromhex(HK)
    assert t.seed == bytes.fromhex(SEED)
    assert t.glb_compat is False
    assert t.binds == [
        Bind(IPv4Network("1.1.1.1/32"), "tcp", 80, 80, ("src_addr",)),
        Bind(IPv4Network("1.1.1.1/32"), "tcp", 443, 443, ("src_addr",)),
    ]
    assert t.backends == [
        Backend(IPv4Address("1.2.3.4"), "active", True),
        Backend(IPv4Address("2.3.4.5")),
        Backend(IPv4Address("3.4.5.6")),
    ]


def test_toml_defaults(tmp_path: Path) -> None:
    text = f"""
[[tables]]
name = "t"
hash_key = "{HK}"
seed = "{SEED}"
  [[tables.binds]]
  ip = "10.0.0.0/24"
  proto = "udp"
  port_start = 1000
  port_end = 2000
  [[tables.backends]]
  ip = "2001:db8::1"
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.node == Node()
    assert cfg.node.tunnel_source is None and cfg.node.tunnel_source6 is None
    assert cfg.node.mtu == 1500 and cfg.node.forward_icmp_echo is False
    t = cfg.tables[0]
    assert t.glb_compat is False
    assert t.binds == [Bind(IPv4Network("10.0.0.0/24"), "udp", 1000, 2000, ("src_addr",))]
    assert t.backends == [Backend(IPv6Address("2001:db8::1"), "active", True)]
    assert t.backends[0].healthchecks is None


def test_toml_hash_fields_inherit_and_override(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"][0]["hash_fields"] = ["dst_port", "src_addr"]
    d["tables"][0]["binds"][1]["hash_fields"] = ["src_port", "dst_addr", "src_addr", "dst_port"]
    t = load_config(write(tmp_path, d)).tables[0]
    # stored in the order the core hashes them
    assert t.binds[0].hash_fields == ("src_addr", "dst_port")
    assert t.binds[1].hash_fields == ("src_addr", "dst_addr", "src_port", "dst_port")


def test_toml_glb_compat_and_states(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"][0]["glb_compat"] = True
    d["tables"][0]["backends"] = [
        {"ip": "1.2.3.4", "state": s, "healthy": h}
        for s, h in [("active", True), ("filling", False), ("draining", True), ("inactive", False)]
    ]
    d["tables"][0]["backends"][0]["ip"] = "1.2.3.4"
    for i, b in enumerate(d["tables"][0]["backends"]):
        b["ip"] = f"10.0.0.{i + 1}"
    t = load_config(write(tmp_path, d)).tables[0]
    assert t.glb_compat is True
    assert [(b.state, b.healthy) for b in t.backends] == [
        ("active", True),
        ("filling", False),
        ("draining", True),
        ("inactive", False),
    ]


def test_toml_ipv6_and_prefixes(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"].append(
        {
            "name": "v6",
            "hash_key": HK,
            "seed": SEED,
            "binds": [
                {"ip": "2001:db8:80::/48", "proto": "tcp", "port": 80},
                {"ip": "2001:db8:443::1", "proto": "tcp", "port": 443},
                {"ip": "0.0.0.0/0", "proto": "udp", "port": 53},
            ],
            "backends": [{"ip": "2001:db8:1::1"}, {"ip": "192.0.2.55"}],
        }
    )
    t = load_config(write(tmp_path, d)).tables[1]
    assert t.binds[0].prefix == IPv6Network("2001:db8:80::/48")
    assert t.binds[1].prefix == IPv6Network("2001:db8:443::1/128")
    assert t.binds[2].prefix == IPv4Network("0.0.0.0/0")
    assert [b.address.version for b in t.backends] == [6, 4]


def test_port_edges(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"][0]["binds"] = [
        {"ip": "1.1.1.1", "proto": "tcp", "port": 0},
        {"ip": "1.1.1.1", "proto": "tcp", "port_start": 1, "port_end": 65535},
    ]
    t = load_config(write(tmp_path, d)).tables[0]
    assert [(b.port_lo, b.port_hi) for b in t.binds] == [(0, 0), (1, 65535)]


def test_backend_hashable_and_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GLB_DOC_EXAMPLE, "json"))
    b = cfg.tables[0].backends[0]
    assert len({b, cfg.tables[0].backends[1]}) == 2
    assert hash(b) == hash(Backend(b.address, b.state, b.healthy))
    with pytest.raises(AttributeError):
        b.state = "draining"  # type: ignore[misc]


def test_glb_documented_example_unchanged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, GLB_DOC_EXAMPLE, "json")
    with caplog.at_level(logging.WARNING, logger="fwd.config"):
        cfg = load_config(path)
    assert cfg.format == "glb-json"
    assert cfg.node == Node()
    (t,) = cfg.tables
    assert t.name == "example1"
    assert t.glb_compat is True
    assert t.binds == [
        Bind(IPv4Network("10.10.10.10/32"), "tcp", 80, 80),
        Bind(IPv6Network("fdb4:98ce:52d4::42/128"), "tcp", 80, 80),
    ]
    # GLB's build-config reads a missing "healthy" as false
    assert [(str(b.address), b.state, b.healthy) for b in t.backends] == [
        ("192.168.50.10", "active", False),
        ("192.168.50.11", "active", False),
    ]
    assert dict(t.backends[0].healthchecks or {}) == {"http": 80, "gue": 19523}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "192.168.50.10" in warnings[0] and "192.168.50.11" in warnings[0]
    assert "healthy" in warnings[0] and str(path) in warnings[0]


def test_glb_json_with_healthy_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fwd.config"):
        cfg = load_config(write(tmp_path, json_base(), "json"))
    assert not caplog.records
    assert all(b.healthy for b in cfg.tables[0].backends)


def test_glb_json_names_default_and_healthcheck_output(tmp_path: Path) -> None:
    # glb-healthcheck's checked output has no "name" and writes "healthchecks": null when absent
    d = json_base()
    del d["tables"][0]["name"]
    d["tables"][0]["backends"][0]["healthchecks"] = None
    d["tables"][0]["backends"][1]["healthchecks"] = {"http": 8080, "http_uri": "/status", "gue": 19523}
    d["tables"][0]["backends"][2]["healthchecks"] = {"fou": 5555}
    second = copy.deepcopy(d["tables"][0])
    second["binds"] = [{"ip": "1.1.1.2", "proto": "tcp", "port_start": 1, "port_end": 100}]
    d["tables"].append(second)
    cfg = load_config(write(tmp_path, d, "json"))
    assert [t.name for t in cfg.tables] == ["table0", "table1"]
    b = cfg.tables[0].backends
    assert b[0].healthchecks is None
    assert dict(b[1].healthchecks or {}) == {"http": 8080, "http_uri": "/status", "gue": 19523}
    assert cfg.tables[1].binds[0].port_lo == 1 and cfg.tables[1].binds[0].port_hi == 100


def test_json_detected_by_content(tmp_path: Path) -> None:
    path = write(tmp_path, "\n   \n" + json.dumps(json_base()), "json", name="forwarding.conf")
    assert load_config(path).format == "glb-json"
    path = write(tmp_path, to_toml(toml_base()), name="config.json")
    assert load_config(path).format == "toml"


def test_parse_config_string() -> None:
    cfg = parse_config(json.dumps(json_base()), "inline")
    assert cfg.path == "inline" and cfg.format == "glb-json"


def test_limits_at_maximum(tmp_path: Path) -> None:
    d = json_base()
    d["tables"][0]["backends"] = [
        {"ip": f"10.{i // 256}.{i % 256}.1", "state": "active", "healthy": True} for i in range(2048)
    ]
    d["tables"][0]["binds"] = [{"ip": "1.1.1.1", "proto": "tcp", "port": p} for p in range(1, 65)]
    for i in range(1, 16):
        t = copy.deepcopy(json_base()["tables"][0])
        t["name"] = f"t{i}"
        t["binds"] = [{"ip": f"2.2.{i}.{j}", "proto": "udp", "port": 53} for j in range(64)]
        d["tables"].append(t)
    cfg = load_config(write(tmp_path, d, "json"))
    assert len(cfg.tables) == 16
    assert sum(len(t.binds) for t in cfg.tables) == 1024
    assert len(cfg.tables[0].backends) == 2048


# ---------------------------------------------------------------------------------------------
# errors: (mutations of the base document, expected key, expected words in the reason)

TOML_ERRORS: list[tuple[str, list[tuple[str, Any]], str, str]] = [
    # unknown keys, everywhere
    ("unknown-top", [("foo", 1)], "foo", "unknown key"),
    ("unknown-node", [("node.tunnel_src", "1.2.3.4")], "node.tunnel_src", "unknown key"),
    ("unknown-table", [("tables[0].hashkey", HK)], "tables[0].hashkey", "unknown key"),
    ("unknown-bind", [("tables[0].binds[1].prot", "tcp")], "tables[0].binds[1].prot", "unknown key"),
    ("unknown-backend", [("tables[0].backends[2].weight", 1)], "tables[0].backends[2].weight", "unknown key"),
    (
        "healthchecks-not-in-toml",
        [("tables[0].backends[0].healthchecks", {"http": 80})],
        "tables[0].backends[0].healthchecks",
        "unknown key",
    ),
    # missing required keys
    ("missing-tables", [("tables", DELETE)], "tables", "missing required key"),
    ("missing-name", [("tables[0].name", DELETE)], "tables[0].name", "missing required key"),
    ("missing-hash-key", [("tables[0].hash_key", DELETE)], "tables[0].hash_key", "missing required key"),
    ("missing-seed", [("tables[0].seed", DELETE)], "tables[0].seed", "missing required key"),
    ("missing-binds", [("tables[0].binds", DELETE)], "tables[0].binds", "missing required key"),
    ("missing-backends", [("tables[0].backends", DELETE)], "tables[0].backends", "missing required key"),
    ("missing-bind-ip", [("tables[0].binds[0].ip", DELETE)], "tables[0].binds[0].ip", "missing required key"),
    (
        "missing-bind-proto",
        [("tables[0].binds[0].proto", DELETE)],
        "tables[0].binds[0].proto",
        "missing required key",
    ),
    ("missing-bind-port", [("tables[0].binds[0].port", DELETE)], "tables[0].binds[0].port", "missing"),
    (
        "missing-port-end",
        [("tables[0].binds[1].port_end", DELETE)],
        "tables[0].binds[1].port_end",
        "missing required key",
    ),
    (
        "missing-port-start",
        [("tables[0].binds[1].port_start", DELETE)],
        "tables[0].binds[1].port_start",
        "missing required key",
    ),
    (
        "missing-backend-ip",
        [("tables[0].backends[1].ip", DELETE)],
        "tables[0].backends[1].ip",
        "missing required key",
    ),
    # wrong types (a boolean is not an integer)
    ("port-bool", [("tables[0].binds[0].port", True)], "tables[0].binds[0].port", "got boolean true"),
    ("port-string", [("tables[0].binds[0].port", "80")], "tables[0].binds[0].port", "expected an integer"),
    ("port-float", [("tables[0].binds[0].port", 80.0)], "tables[0].binds[0].port", "expected an integer"),
    (
        "port-start-bool",
        [("tables[0].binds[1].port_start", False)],
        "tables[0].binds[1].port_start",
        "boolean",
    ),
    ("mtu-float", [("node.mtu", 1500.5)], "node.mtu", "expected an integer"),
    ("mtu-bool", [("node.mtu", True)], "node.mtu", "expected an integer"),
    ("echo-int", [("node.forward_icmp_echo", 1)], "node.forward_icmp_echo", "expected a boolean"),
    (
        "healthy-string",
        [("tables[0].backends[0].healthy", "yes")],
        "tables[0].backends[0].healthy",
        "boolean",
    ),
    ("glb-compat-string", [("tables[0].glb_compat", "false")], "tables[0].glb_compat", "expected a boolean"),
    ("name-int", [("tables[0].name", 5)], "tables[0].name", "expected a string"),
    ("hash-key-int", [("tables[0].hash_key", 1234)], "tables[0].hash_key", "expected a string"),
    ("ip-int", [("tables[0].backends[0].ip", 16909060)], "tables[0].backends[0].ip", "expected a string"),
    (
        "hash-fields-string",
        [("tables[0].hash_fields", "src_addr")],
        "tables[0].hash_fields",
        "expected an array",
    ),
    ("binds-table", [("tables[0].binds", {"ip": "1.1.1.1"})], "tables[0].binds", "expected an array"),
    ("node-int", [("node", 5)], "node", "expected a table"),
    ("tables-int", [("tables", 5)], "tables", "expected an array"),
    ("state-int", [("tables[0].backends[0].state", 1)], "tables[0].backends[0].state", "expected a string"),
    # addresses
    (
        "bad-backend-ip",
        [("tables[0].backends[1].ip", "1.2.3.256")],
        "tables[0].backends[1].ip",
        "not an IPv4",
    ),
    ("backend-cidr", [("tables[0].backends[1].ip", "1.2.3.0/24")], "tables[0].backends[1].ip", "not an IPv4"),
    ("backend-unspec", [("tables[0].backends[1].ip", "0.0.0.0")], "tables[0].backends[1].ip", "unicast"),
    ("backend-scoped", [("tables[0].backends[1].ip", "fe80::1%eth0")], "tables[0].backends[1].ip", "scoped"),
    ("bad-bind-ip", [("tables[0].binds[0].ip", "1.1.1")], "tables[0].binds[0].ip", "not an IPv4"),
    ("bad-bind-name", [("tables[0].binds[0].ip", "vip.example")], "tables[0].binds[0].ip", "not an IPv4"),
    ("bad-tunnel", [("node.tunnel_source", "nope")], "node.tunnel_source", "not an IPv4 or IPv6 address"),
    ("tunnel-v6-in-v4", [("node.tunnel_source", "2001:db8::1")], "node.tunnel_source", "not an IPv4 address"),
    ("tunnel-v4-in-v6", [("node.tunnel_source6", "192.0.2.1")], "node.tunnel_source6", "not an IPv6 address"),
    ("tunnel-unspec", [("node.tunnel_source", "0.0.0.0")], "node.tunnel_source", "unicast"),
    # CIDR
    ("host-bits", [("tables[0].binds[0].ip", "10.0.0.1/24")], "tables[0].binds[0].ip", "host bits set"),
    ("host-bits-v6", [("tables[0].binds[0].ip", "2001:db8::1/64")], "tables[0].binds[0].ip", "host bits set"),
    ("prefix-too-long", [("tables[0].binds[0].ip", "10.0.0.0/33")], "tables[0].binds[0].ip", "out of range"),
    (
        "prefix-not-number",
        [("tables[0].binds[0].ip", "10.0.0.0/x")],
        "tables[0].binds[0].ip",
        "prefix length",
    ),
    (
        "prefix-netmask",
        [("tables[0].binds[0].ip", "10.0.0.0/255.0.0.0")],
        "tables[0].binds[0].ip",
        "prefix length",
    ),
    # ports
    ("port-high", [("tables[0].binds[0].port", 65536)], "tables[0].binds[0].port", "out of range 0..65535"),
    ("port-negative", [("tables[0].binds[0].port", -1)], "tables[0].binds[0].port", "out of range"),
    (
        "port-end-high",
        [("tables[0].binds[1].port_end", 70000)],
        "tables[0].binds[1].port_end",
        "out of range",
    ),
    (
        "port-reversed",
        [("tables[0].binds[1].port_start", 90), ("tables[0].binds[1].port_end", 80)],
        "tables[0].binds[1].port_end",
        "reversed",
    ),
    (
        "port-and-range",
        [("tables[0].binds[0].port_start", 80), ("tables[0].binds[0].port_end", 81)],
        "tables[0].binds[0].port_start",
        "not both",
    ),
    ("port-and-end", [("tables[0].binds[0].port_end", 81)], "tables[0].binds[0].port_end", "not both"),
    # duplicates
    (
        "dup-backend",
        [("tables[0].backends[2].ip", "1.2.3.4")],
        "tables[0].backends[2].ip",
        "duplicate backend address 1.2.3.4 (also tables[0].backends[0])",
    ),
    # keys
    ("hash-key-short", [("tables[0].hash_key", HK[:-1])], "tables[0].hash_key", "exactly 32 hex digits"),
    ("hash-key-long", [("tables[0].hash_key", HK + "0")], "tables[0].hash_key", "exactly 32 hex digits"),
    ("hash-key-nonhex", [("tables[0].hash_key", "zz" + HK[2:])], "tables[0].hash_key", "non-hex"),
    ("seed-short", [("tables[0].seed", "abcd")], "tables[0].seed", "got 4 characters"),
    ("seed-nonhex", [("tables[0].seed", "g" * 32)], "tables[0].seed", "non-hex"),
    # enumerations
    ("bad-state", [("tables[0].backends[0].state", "up")], "tables[0].backends[0].state", 'bad state "up"'),
    ("bad-proto", [("tables[0].binds[0].proto", "icmp")], "tables[0].binds[0].proto", 'bad protocol "icmp"'),
    ("proto-upper", [("tables[0].binds[0].proto", "TCP")], "tables[0].binds[0].proto", "bad protocol"),
    (
        "bad-hash-field",
        [("tables[0].hash_fields", ["src_mac"])],
        "tables[0].hash_fields[0]",
        "bad hash field",
    ),
    (
        "bad-bind-hash-field",
        [("tables[0].binds[1].hash_fields", ["src_addr", "proto"])],
        "tables[0].binds[1].hash_fields[1]",
        "bad hash field",
    ),
    ("empty-hash-fields", [("tables[0].hash_fields", [])], "tables[0].hash_fields", "at least one"),
    (
        "dup-hash-fields",
        [("tables[0].binds[0].hash_fields", ["src_addr", "dst_port", "src_addr"])],
        "tables[0].binds[0].hash_fields[2]",
        "listed twice",
    ),
    ("hash-field-int", [("tables[0].hash_fields", [1])], "tables[0].hash_fields[0]", "expected a string"),
    # empty lists
    ("no-binds", [("tables[0].binds", [])], "tables[0].binds", "at least one bind"),
    ("no-backends", [("tables[0].backends", [])], "tables[0].backends", "at least one backend"),
    ("no-tables", [("tables", [])], "tables", "at least one table"),
    ("empty-name", [("tables[0].name", " ")], "tables[0].name", "empty"),
    ("name-control", [("tables[0].name", "a\nb")], "tables[0].name", "control"),
    # node values
    ("mtu-low", [("node.mtu", 67)], "node.mtu", "MTU 67 out of range 68..65535"),
    ("mtu-high", [("node.mtu", 65536)], "node.mtu", "out of range"),
    # overlapping binds in one table
    (
        "overlap-same",
        [("tables[0].binds[1].port_start", 80), ("tables[0].binds[1].port_end", 80)],
        "tables[0].binds[1]",
        "tables[0].binds[0]",
    ),
    (
        "overlap-prefix",
        [
            ("tables[0].binds[1].ip", "1.1.1.0/24"),
            ("tables[0].binds[1].port_start", 1),
            ("tables[0].binds[1].port_end", 100),
        ],
        "tables[0].binds[1]",
        "ambiguous: tcp 1.1.1.0/24 ports 1-100 overlaps tables[0].binds[0] (tcp 1.1.1.1/32 port 80)",
    ),
]


@pytest.mark.parametrize(
    ("changes", "key", "reason"),
    [pytest.param(c, k, r, id=i) for i, c, k, r in TOML_ERRORS],
)
def test_toml_errors(tmp_path: Path, changes: list[tuple[str, Any]], key: str, reason: str) -> None:
    d = toml_base()
    for path, value in changes:
        set_path(d, path, value)
    expect_error(write(tmp_path, d), key, reason)


def _second_table(**over: Any) -> dict[str, Any]:
    t = {
        "name": "api",
        "hash_key": HK,
        "seed": SEED,
        "binds": [{"ip": "1.1.1.2", "proto": "tcp", "port": 80}],
        "backends": [{"ip": "9.9.9.9"}],
    }
    t.update(over)
    return t


def test_duplicate_table_name(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"].append(_second_table(name="web"))
    expect_error(write(tmp_path, d), "tables[1].name", 'duplicate table name "web" (also tables[0])')


def test_overlap_across_tables(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"].append(
        _second_table(binds=[{"ip": "1.1.0.0/16", "proto": "tcp", "port_start": 400, "port_end": 500}])
    )
    e = expect_error(write(tmp_path, d), "tables[1].binds[0]", "ambiguous")
    assert "tables[0].binds[1]" in e.reason and "1.1.0.0/16" in e.reason and "1.1.1.1/32" in e.reason


def test_no_overlap_other_proto_family_or_ports(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"].append(
        _second_table(
            binds=[
                {"ip": "1.1.1.1", "proto": "udp", "port": 80},  # other proto
                {"ip": "1.1.1.0/24", "proto": "tcp", "port_start": 81, "port_end": 442},  # ports between
                {"ip": "::/0", "proto": "tcp", "port": 80},  # other family
                {"ip": "1.1.1.2", "proto": "tcp", "port": 80},  # other address
            ]
        )
    )
    cfg = load_config(write(tmp_path, d))
    assert len(cfg.tables[1].binds) == 4


def test_duplicate_backend_ipv6_spellings(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"][0]["backends"] = [{"ip": "2001:db8::1"}, {"ip": "2001:DB8:0:0::1"}]
    expect_error(write(tmp_path, d), "tables[0].backends[1].ip", "duplicate backend address 2001:db8::1")


def test_too_many_backends(tmp_path: Path) -> None:
    d = json_base()
    d["tables"][0]["backends"] = [
        {"ip": f"10.{i // 256}.{i % 256}.1", "state": "active", "healthy": True} for i in range(2049)
    ]
    expect_error(write(tmp_path, d, "json"), "tables[0].backends", "2049 backends, at most 2048")


def test_too_many_tables(tmp_path: Path) -> None:
    d = json_base()
    for i in range(16):
        t = copy.deepcopy(d["tables"][0])
        t["name"] = f"t{i}"
        t["binds"] = [{"ip": f"2.2.2.{i}", "proto": "tcp", "port": 80}]
        d["tables"].append(t)
    expect_error(write(tmp_path, d, "json"), "tables", "17 tables, at most 16")


def test_too_many_binds(tmp_path: Path) -> None:
    d = toml_base()
    d["tables"][0]["binds"] = [{"ip": "1.1.1.1", "proto": "udp", "port": p} for p in range(1, 601)]
    d["tables"].append(
        _second_table(binds=[{"ip": "1.1.1.2", "proto": "udp", "port": p} for p in range(425)])
    )
    expect_error(write(tmp_path, d), "tables", "1025 binds in all tables, at most 1024")


# --- GLB JSON specific --------------------------------------------------------------------

JSON_ERRORS: list[tuple[str, list[tuple[str, Any]], str, str]] = [
    ("node-not-glb", [("node", {"mtu": 1500})], "node", "unknown key"),
    ("glb-compat-not-glb", [("tables[0].glb_compat", False)], "tables[0].glb_compat", "unknown key"),
    (
        "hash-fields-not-glb",
        [("tables[0].hash_fields", ["src_addr"])],
        "tables[0].hash_fields",
        "unknown key",
    ),
    (
        "bind-hash-fields-not-glb",
        [("tables[0].binds[0].hash_fields", ["src_addr"])],
        "tables[0].binds[0].hash_fields",
        "unknown key",
    ),
    ("missing-state", [("tables[0].backends[0].state", DELETE)], "tables[0].backends[0].state", "missing"),
    ("name-optional-but-string", [("tables[0].name", None)], "tables[0].name", "got null"),
    ("port-true", [("tables[0].binds[0].port", True)], "tables[0].binds[0].port", "got boolean true"),
    ("port-float", [("tables[0].binds[0].port", 80.0)], "tables[0].binds[0].port", "got number 80.0"),
    ("healthy-int", [("tables[0].backends[0].healthy", 1)], "tables[0].backends[0].healthy", "got number 1"),
    ("healthy-null", [("tables[0].backends[0].healthy", None)], "tables[0].backends[0].healthy", "got null"),
    (
        "healthchecks-unknown",
        [("tables[0].backends[0].healthchecks", {"tcp": 80})],
        "tables[0].backends[0].healthchecks.tcp",
        "unknown key",
    ),
    (
        "healthchecks-type",
        [("tables[0].backends[0].healthchecks", {"http": "80"})],
        "tables[0].backends[0].healthchecks.http",
        "expected an integer",
    ),
    (
        "healthchecks-list",
        [("tables[0].backends[0].healthchecks", [80])],
        "tables[0].backends[0].healthchecks",
        "expected an object",
    ),
    ("unknown-backend", [("tables[0].backends[1].weight", 2)], "tables[0].backends[1].weight", "unknown key"),
    ("tables-object", [("tables", {})], "tables", "expected an array"),
    ("table-array", [("tables[0]", [])], "tables[0]", "expected an object"),
    ("empty-tables", [("tables", [])], "tables", "at least one table"),
]


@pytest.mark.parametrize(
    ("changes", "key", "reason"),
    [pytest.param(c, k, r, id=i) for i, c, k, r in JSON_ERRORS],
)
def test_json_errors(tmp_path: Path, changes: list[tuple[str, Any]], key: str, reason: str) -> None:
    d = json_base()
    for path, value in changes:
        set_path(d, path, value)
    expect_error(write(tmp_path, d, "json"), key, reason)


def test_json_same_rules_as_toml(tmp_path: Path) -> None:
    # a sample of the shared checks, through the JSON reader
    cases = [
        ("tables[0].binds[0].ip", "10.0.0.1/8", "tables[0].binds[0].ip", "host bits"),
        ("tables[0].backends[1].ip", "1.2.3.4", "tables[0].backends[1].ip", "duplicate"),
        ("tables[0].hash_key", "x" * 32, "tables[0].hash_key", "non-hex"),
        ("tables[0].backends[0].state", "down", "tables[0].backends[0].state", "bad state"),
        ("tables[0].binds[0].port", 65536, "tables[0].binds[0].port", "out of range"),
    ]
    for path, value, key, reason in cases:
        d = json_base()
        set_path(d, path, value)
        expect_error(write(tmp_path, d, "json"), key, reason)


def test_json_duplicate_table_names_and_default_names(tmp_path: Path) -> None:
    d = json_base()
    t = copy.deepcopy(d["tables"][0])
    t["binds"] = [{"ip": "1.1.1.2", "proto": "tcp", "port": 80}]
    d["tables"].append(t)
    expect_error(write(tmp_path, d, "json"), "tables[1].name", "duplicate table name")
    # a default name may collide with an explicit one
    d["tables"][0]["name"] = "table1"
    del d["tables"][1]["name"]
    expect_error(write(tmp_path, d, "json"), "tables[1]", 'duplicate table name "table1"')


def test_json_duplicate_key(tmp_path: Path) -> None:
    text = json.dumps(json_base()).replace('"port": 80', '"port": 80, "port": 81')
    expect_error(write(tmp_path, text, "json"), "tables[0].binds[0].port", "more than once")


def test_json_top_level_unknown(tmp_path: Path) -> None:
    d = json_base()
    d["version"] = 2
    expect_error(write(tmp_path, d, "json"), "version", "unknown key")


# --- files that cannot be parsed or read ----------------------------------------------------


def test_invalid_toml_has_line(tmp_path: Path) -> None:
    text = to_toml(toml_base()).replace('name = "web"', 'name = "web')
    e = expect_error(write(tmp_path, text), "(file)", "invalid TOML")
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.startswith('name = "web'))
    assert f"line {line}" in e.reason


def test_invalid_json_has_line(tmp_path: Path) -> None:
    text = '{\n  "tables": [\n    {"name": "x",}\n  ]\n}\n'
    e = expect_error(write(tmp_path, text, "json"), "(file)", "invalid JSON")
    assert "line 3" in e.reason and "GLB" in e.reason


def test_json_array_is_not_toml(tmp_path: Path) -> None:
    e = expect_error(write(tmp_path, "[1, 2]\n", "json"), "(file)", "neither TOML nor a GLB forwarding table")
    assert "JSON list" in e.reason


def test_json_nan_rejected(tmp_path: Path) -> None:
    text = json.dumps(json_base()).replace('"port": 80', '"port": NaN')
    expect_error(write(tmp_path, text, "json"), "(file)", "NaN")


def test_toml_not_a_table_document(tmp_path: Path) -> None:
    expect_error(write(tmp_path, ""), "tables", "missing required key")


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.toml", "(file)", "no such file")


def test_directory(tmp_path: Path) -> None:
    expect_error(tmp_path, "(file)", "directory")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe[node]\n")
    expect_error(path, "(file)", "not UTF-8")


def test_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, toml_base())
    path.chmod(0)
    try:
        if os.geteuid() != 0:
            expect_error(path, "(file)", "cannot read")
            return
        # Root reads any file: check as an unprivileged user instead (the CLI's one-line error).
        tmp_path.chmod(0o755)
        fwd = Path(sys.executable).parent / "fwd"
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        proc = subprocess.run(
            [*nobody, str(fwd), "check-config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"{path}: (file): cannot read" in proc.stderr.strip(), proc.stderr
    finally:
        path.chmod(0o644)


def test_error_attributes() -> None:
    e = ConfigError("a.toml", "tables[0].name", "bad\nthing")
    assert (e.file, e.key, e.reason) == ("a.toml", "tables[0].name", "bad thing")
    assert str(e) == "a.toml: tables[0].name: bad thing"
