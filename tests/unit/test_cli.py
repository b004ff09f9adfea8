"""The fwd command line.

Argument handling, config errors and the lookup frame builder run in process (no C core needed).
pcap / lookup / table show run the installed ``fwd`` console script (the C core must be built);
they are skipped with a reason when it is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from fwd.cli import build_frame, main, parse_endpoint

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FWD_TOML = EXAMPLES / "fwd.toml"
GLB_JSON = EXAMPLES / "glb-forwarding-table.json"
EXAMPLE_PCAP = EXAMPLES / "example.pcap"
HK = "12345678901234561234567890123456"
SEED = "34567890123456783456789012345678"

# GLB Director's published example (docs/development/glb-hashing.md)
GLB_LOOKUP_TABLE = {
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


def _fwd_script() -> str | None:
    local = Path(sys.executable).with_name("fwd")
    if local.exists():
        return str(local)
    return shutil.which("fwd")


FWD = _fwd_script()


def _core_built() -> bool:
    try:
        import fwd.dataplane  # noqa: F401
    except ImportError:
        return False
    return True


needs_core = pytest.mark.skipif(
    FWD is None or not _core_built(),
    reason="needs the installed fwd console script and the built C core (make setup)",
)


def run_module(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """python -m fwd ARGS, with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("FWD_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "fwd", *args], capture_output=True, text=True, env=env, cwd=cwd, check=False
    )


def run_fwd(*args: str) -> subprocess.CompletedProcess[str]:
    assert FWD is not None
    env = dict(os.environ)
    env.pop("FWD_DEBUG", None)
    return subprocess.run([FWD, *args], capture_output=True, text=True, env=env, check=False)


def assert_one_error_line(stderr: str, *words: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("fwd: warning: ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fwd: error: "), stderr
    assert "Traceback" not in stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def write_json(tmp_path: Path, data: dict[str, Any], name: str = "glb.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


# ---------------------------------------------------------------------------------------------
# check-config


def test_check_config_toml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(FWD_TOML)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{FWD_TOML}: ok (toml): 2 tables, 3 binds, 5 backends\n"
    assert err == ""


def test_check_config_glb_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(GLB_JSON)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{GLB_JSON}: ok (glb-json): 1 table, 2 binds, 2 backends\n"
    assert err == ""


def test_check_config_glb_missing_healthy_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(GLB_JSON.read_text())
    for b in data["tables"][0]["backends"]:
        del b["healthy"]
    path = write_json(tmp_path, data)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "ok (glb-json)" in out
    (line,) = err.splitlines()
    assert line.startswith("fwd: warning: ") and "192.168.50.10, 192.168.50.11" in line and "false" in line


MIN_TABLE = f"""
[[tables]]
name = "t"
hash_key = "{HK}"
seed = "{SEED}"
binds = [{{ip = "1.1.1.1", proto = "tcp", port = 80}}]
backends = [{{ip = "1.2.3.4"}}]
"""

CONFIG_ERRORS = [
    # (TOML text, key, reason words)
    ("[node]\nmtu = true\n" + MIN_TABLE, "node.mtu", "expected an integer, got boolean true"),
    ("[nodes]\n", "nodes", "unknown key"),
    ("[node]\nmtu = 1500\n", "tables", "missing required key"),
    ("[node\n", "(file)", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "key", "reason"), CONFIG_ERRORS)
def test_check_config_errors_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, reason: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, f"{path}: {key}: ", reason)


def _glb(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(GLB_LOOKUP_TABLE))
    table = data["tables"][0]
    for k, v in changes.items():
        table[k] = v
    return data


SUBPROCESS_ERRORS = [
    (_glb(binds=[{"ip": "1.1.1.1", "proto": "tcp", "port": True}]), "tables[0].binds[0].port", "boolean"),
    (_glb(binds=[{"ip": "1.1.1.1/24", "proto": "tcp", "port": 80}]), "tables[0].binds[0].ip", "host bits"),
    (_glb(hash_key="123"), "tables[0].hash_key", "32 hex digits"),
    (
        _glb(backends=[{"ip": "1.2.3.4", "state": "up", "healthy": True}]),
        "tables[0].backends[0].state",
        "bad state",
    ),
    (
        _glb(binds=[{"ip": "1.1.1.1", "proto": "tcp", "port_start": 9, "port_end": 1}]),
        "tables[0].binds[0].port_end",
        "reversed",
    ),
    (
        _glb(
            backends=[
                {"ip": "1.2.3.4", "state": "active", "healthy": True},
                {"ip": "1.2.3.4", "state": "active", "healthy": True},
            ]
        ),
        "tables[0].backends[1].ip",
        "duplicate",
    ),
    (_glb(weight=3), "tables[0].weight", "unknown key"),
]


@pytest.mark.parametrize(("data", "key", "reason"), SUBPROCESS_ERRORS)
def test_check_config_errors_subprocess(tmp_path: Path, data: dict[str, Any], key: str, reason: str) -> None:
    path = write_json(tmp_path, data)
    p = run_module("check-config", str(path))
    assert p.returncode == 2
    assert p.stdout == ""
    assert_one_error_line(p.stderr, f"{path}: {key}: ", reason)


def test_check_config_missing_file(tmp_path: Path) -> None:
    p = run_module("check-config", str(tmp_path / "nope.toml"))
    assert p.returncode == 2
    assert_one_error_line(p.stderr, "nope.toml: (file): no such file")


def test_check_config_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{\n  "tables": [\n  ,\n]}\n')
    p = run_module("check-config", str(path))
    assert p.returncode == 2
    assert_one_error_line(p.stderr, "invalid JSON", "line 3")


# ---------------------------------------------------------------------------------------------
# usage


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], ["required: COMMAND"]),
        (["frobnicate"], ["invalid choice"]),
        (["check-config"], ["check-config: ", "CFG"]),
        (["pcap", "a.pcap", "b.pcap"], ["pcap: ", "--config"]),
        (["lookup", "--config", "x", "icmp", "1.1.1.1:1", "2.2.2.2:2"], ["lookup: ", "invalid choice"]),
        (["table"], ["table: ", "SUBCOMMAND"]),
        (["table", "show"], ["table show: ", "--config"]),
        (["check-config", "x", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, *words)


def test_usage_error_subprocess_no_traceback() -> None:
    p = run_module("pcap", "--json")
    assert p.returncode == 2
    assert_one_error_line(p.stderr, "fwd: error: pcap: ")


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("check-config", "pcap", "lookup", "table"):
        assert cmd in out
    assert "exit status" in out
    for sub in (["pcap"], ["lookup"], ["table", "show"], ["check-config"]):
        assert main([*sub, "--help"]) == 0
        assert "usage: fwd " + " ".join(sub) in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("fwd ")


def test_python_dash_m(tmp_path: Path) -> None:
    p = run_module("check-config", str(FWD_TOML), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "ok (toml)" in p.stdout


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--tunnel-src", "nope"], ["--tunnel-src", "'nope'"]),
        (["--tunnel-src", "192.0.2.1", "--tunnel-src", "192.0.2.2"], ["two IPv4"]),
        (["--tunnel-src", "0.0.0.0"], ["unicast"]),
        (["--src-mac", "02:00:00:00:00"], ["--src-mac", "bad MAC"]),
        (["--dst-mac", "zz:00:00:00:00:01"], ["--dst-mac", "bad MAC"]),
    ],
)
def test_pcap_option_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    rc = main(["pcap", "--config", str(FWD_TOML), str(EXAMPLE_PCAP), str(tmp_path / "o.pcap"), *argv])
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, *words)
    assert not (tmp_path / "o.pcap").exists()


def test_pcap_needs_tunnel_source_glb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["pcap", "--config", str(GLB_JSON), str(EXAMPLE_PCAP), str(tmp_path / "o.pcap")])
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, "'example1'", "IPv4 backends", "--tunnel-src")
    # an IPv6 source does not help IPv4 backends
    rc = main(
        [
            "pcap",
            "--config",
            str(GLB_JSON),
            str(EXAMPLE_PCAP),
            str(tmp_path / "o.pcap"),
            "--tunnel-src",
            "::1",
        ]
    )
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, "IPv4")


def test_pcap_needs_tunnel_source6_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fwd.toml"
    cfg.write_text(FWD_TOML.read_text().replace('tunnel_source6 = "2001:db8:ffff::10"', ""))
    rc = main(["pcap", "--config", str(cfg), str(EXAMPLE_PCAP), str(tmp_path / "o.pcap")])
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, "'web6'", "IPv6", "tunnel_source6", "--tunnel-src")


def test_pcap_inactive_backends_need_no_tunnel_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fwd.cli import check_tunnel_sources
    from fwd.config import load_config

    cfg = tmp_path / "fwd.toml"
    text = FWD_TOML.read_text().replace('tunnel_source6 = "2001:db8:ffff::10"', "")
    text = text.replace('ip = "2001:db8:100::11"', 'ip = "2001:db8:100::11"\n  state = "inactive"')
    text = text.replace('ip = "2001:db8:100::12"', 'ip = "2001:db8:100::12"\n  state = "inactive"')
    cfg.write_text(text)
    check_tunnel_sources(load_config(cfg), {4: ip_address("192.0.2.10")})


def test_pcap_config_error_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(FWD_TOML.read_text().replace('name = "web6"', "name = 1"))
    assert main(["pcap", "--config", str(bad), str(EXAMPLE_PCAP), str(tmp_path / "o.pcap")]) == 2
    assert_one_error_line(capsys.readouterr().err, "tables[1].name", "expected a string")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["tcp", "10.0.0.1", "1.1.1.1:80"], ["missing :PORT"]),
        (["tcp", "10.0.0.1:99999", "1.1.1.1:80"], ["bad port"]),
        (["tcp", "10.0.0.1:x", "1.1.1.1:80"], ["bad port"]),
        (["tcp", "2001:db8::1:80", "1.1.1.1:80"], ["[ADDRESS]:PORT"]),
        (["tcp", "[2001:db8::1]80", "1.1.1.1:80"], ["[ADDRESS]:PORT"]),
        (["tcp", "host:80", "1.1.1.1:80"], ["not an IPv4 or IPv6"]),
        (["tcp", "[2001:db8::1]:80", "1.1.1.1:80"], ["different IP versions"]),
    ],
)
def test_lookup_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]) -> None:
    assert main(["lookup", "--config", str(FWD_TOML), *argv]) == 2
    assert_one_error_line(capsys.readouterr().err, *words)


def test_lookup_unknown_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["lookup", "--config", str(FWD_TOML), "--table", "nope", "tcp", "1.2.3.4:5", "203.0.113.80:80"])
    assert rc == 2
    assert_one_error_line(capsys.readouterr().err, "no table named 'nope'", "web, web6")


def test_table_show_unknown_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", "show", "--config", str(FWD_TOML), "--table", "nope"]) == 2
    assert_one_error_line(capsys.readouterr().err, "no table named 'nope'")


# ---------------------------------------------------------------------------------------------
# the lookup frame (checked with scapy, independently of the core)


def test_parse_endpoint() -> None:
    assert parse_endpoint("10.11.12.13:45678", "x") == (ip_address("10.11.12.13"), 45678)
    assert parse_endpoint("[2001:db8::1]:0", "x") == (ip_address("2001:db8::1"), 0)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize(
    ("src", "dst"), [("10.11.12.13", "1.1.1.1"), ("2001:db8:c1::1", "2001:db8:80::80")], ids=["v4", "v6"]
)
def test_build_frame(proto: str, src: str, dst: str) -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    frame = build_frame(proto, ip_address(src), 45678, ip_address(dst), 80)
    pkt = Ether(frame)
    ip_cls = IP if ":" not in src else IPv6
    l4_cls = TCP if proto == "tcp" else UDP
    assert pkt.haslayer(ip_cls) and pkt.haslayer(l4_cls)
    ip = pkt[ip_cls]
    assert (ip.src, ip.dst) == (src, dst)
    l4 = pkt[l4_cls]
    assert (l4.sport, l4.dport) == (45678, 80)
    if proto == "tcp":
        assert l4.flags == "S"
    # checksums as scapy would compute them
    rebuilt = Ether(frame)
    if ip_cls is IP:
        del rebuilt[IP].chksum
    del rebuilt[l4_cls].chksum
    if ip_cls is IP:
        del rebuilt[IP].len
    else:
        del rebuilt[IPv6].plen
    assert bytes(rebuilt) == frame


# ---------------------------------------------------------------------------------------------
# through the C core (installed console script)


@pytest.fixture
def glb_lookup_cfg(tmp_path: Path) -> Path:
    return write_json(tmp_path, GLB_LOOKUP_TABLE)


@needs_core
@pytest.mark.parametrize("extra", [["--json"], [], ["--table", "example", "--json"]])
def test_lookup_glb_published_example(glb_lookup_cfg: Path, extra: list[str]) -> None:
    p = run_fwd("lookup", "--config", str(glb_lookup_cfg), *extra, "tcp", "10.11.12.13:45678", "1.1.1.1:80")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    out = json.loads(p.stdout)
    assert out["verdict"] == "forward"
    assert out["table"] == "example"
    assert out["bind"]["index"] == 0 and out["bind"]["prefix"] == "1.1.1.1/32"
    assert out["row"] == 23741 == 0x5CBD
    assert out["flow_hash"] == "0x008972f1657a5cbd"
    assert out["primary"] == "3.4.5.6"
    assert out["secondary"] == "2.3.4.5"
    assert out["gue_sport"] == 61139


@needs_core
def test_lookup_no_match(glb_lookup_cfg: Path) -> None:
    p = run_fwd("lookup", "--config", str(glb_lookup_cfg), "--json", "tcp", "10.11.12.13:45678", "1.1.1.1:81")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["verdict"] == "pass"
    assert out["bind"] is None and out["primary"] is None and out["secondary"] is None
    assert_one_error_line(p.stderr, "no bind matches", "1.1.1.1:81")


@needs_core
def test_lookup_table_restricts(tmp_path: Path) -> None:
    p = run_fwd(
        "lookup", "--config", str(FWD_TOML), "--table", "web6", "tcp", "198.18.0.1:40000", "203.0.113.80:443"
    )
    assert p.returncode == 1
    assert json.loads(p.stdout)["verdict"] == "pass"
    assert_one_error_line(p.stderr, "no bind of table 'web6' matches")


@needs_core
def test_lookup_second_table_and_ipv6() -> None:
    p = run_fwd("lookup", "--config", str(FWD_TOML), "tcp", "[2001:db8:c1::1]:60001", "[2001:db8:80::80]:443")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["verdict"] == "forward"
    assert out["table"] == "web6" and out["table_index"] == 1
    assert out["bind"]["index"] == 2 and out["bind"]["table"] == "web6"
    assert {out["primary"], out["secondary"]} == {"2001:db8:100::11", "2001:db8:100::12"}
    assert 0x8000 <= out["gue_sport"] <= 0xFFFF
    # --table gives the same answer with the global bind index
    p2 = run_fwd(
        "lookup",
        "--config",
        str(FWD_TOML),
        "--table",
        "web6",
        "tcp",
        "[2001:db8:c1::1]:60001",
        "[2001:db8:80::80]:443",
    )
    assert p2.returncode == 0, p2.stderr
    assert json.loads(p2.stdout) == out


@needs_core
def test_lookup_udp_and_all_inactive(tmp_path: Path) -> None:
    data = _glb(
        binds=[{"ip": "1.1.1.0/24", "proto": "udp", "port_start": 5000, "port_end": 5999}],
        backends=[{"ip": "1.2.3.4", "state": "inactive", "healthy": True}],
    )
    cfg = write_json(tmp_path, data)
    p = run_fwd("lookup", "--config", str(cfg), "udp", "10.0.0.1:1234", "1.1.1.9:5555")
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["verdict"] == "drop" and out["reason"] == "no_backend"
    assert out["primary"] is None
    assert out["bind"]["proto"] == "udp"
    assert_one_error_line(p.stderr, "not forwarded", "no_backend")


@needs_core
def test_table_show_json(glb_lookup_cfg: Path) -> None:
    p = run_fwd("table", "show", "--config", str(glb_lookup_cfg), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    (t,) = out["tables"]
    assert t["name"] == "example" and t["glb_compat"] is True
    assert [b["address"] for b in t["backends"]] == ["1.2.3.4", "2.3.4.5", "3.4.5.6"]
    assert sum(b["primary_rows"] for b in t["backends"]) == 65536
    assert sum(b["secondary_rows"] for b in t["backends"]) == 65536
    for b in t["backends"]:
        assert 20000 < b["primary_rows"] < 23700  # about a third each
        assert b["primary_pct"] == round(100 * b["primary_rows"] / 65536, 2)
        assert b["state"] == "active" and b["healthy"] is True
    assert t["rows_without_backend"] == 0


@needs_core
def test_table_show_text() -> None:
    p = run_fwd("table", "show", "--config", str(FWD_TOML))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("table web (fwd rule; binds: tcp 203.0.113.80/32 port 80")
    header = lines[1].split()
    assert header == ["#", "address", "state", "healthy", "primary", "%", "secondary", "%"]
    rows = [line.split() for line in lines[2:5]]
    assert [r[1] for r in rows] == ["198.51.100.11", "198.51.100.12", "198.51.100.13"]
    assert sum(int(r[4]) for r in rows) == 65536
    # aligned: every row as long as the header line
    assert len({len(line) for line in lines[1:5]}) == 1
    assert "table web6" in p.stdout
    p = run_fwd("table", "show", "--config", str(FWD_TOML), "--table", "web6")
    assert p.returncode == 0
    assert "table web6" in p.stdout and "table web " not in p.stdout


def _read_pcap(path: Path) -> tuple[bool, list[tuple[int, int, bytes]]]:
    blob = path.read_bytes()
    (magic,) = struct.unpack("<I", blob[:4])
    assert magic in (0xA1B2C3D4, 0xA1B23C4D)
    recs = []
    pos = 24
    while pos < len(blob):
        sec, frac, incl, _ = struct.unpack_from("<IIII", blob, pos)
        recs.append((sec, frac, blob[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return magic == 0xA1B23C4D, recs


def _example_frames() -> list[tuple[str, str, Any]]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from make_example_pcap import example_frames
    finally:
        sys.path.remove(str(EXAMPLES))
    return example_frames()


def test_example_pcap_is_current(tmp_path: Path) -> None:
    """examples/example.pcap is what examples/make_example_pcap.py writes."""
    out = tmp_path / "regen.pcap"
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_example_pcap.py"), str(out)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == EXAMPLE_PCAP.read_bytes()


@needs_core
def test_pcap_example(tmp_path: Path) -> None:
    out_path = tmp_path / "out.pcap"
    p = run_fwd("pcap", "--config", str(FWD_TOML), str(EXAMPLE_PCAP), str(out_path), "--json")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    intended = _example_frames()
    expected = Counter(v for v, _, _ in intended)
    assert s["frames_in"] == len(intended)
    assert {k: v for k, v in s["verdicts"].items() if v} == dict(expected)
    assert {k: v for k, v in s["drops"].items() if v} == {"too_big": 1, "truncated": 1}
    assert s["icmp_replies"] == expected["reply"]
    assert s["frames_out"] == expected["forward"] + expected["reply"]
    assert sum(b["packets"] for b in s["backends"]) == expected["forward"]
    by_table = Counter()
    for b in s["backends"]:
        by_table[b["table"]] += b["packets"]
    # web6: 4 forwarded IPv6 packets; the rest of the forwarded frames are web's
    assert by_table == {"web6": 4, "web": expected["forward"] - 4}
    assert [(b["index"], b["table"], b["prefix"], b["port_lo"]) for b in s["binds"]] == [
        (0, "web", "203.0.113.80/32", 80),
        (1, "web", "203.0.113.80/32", 443),
        (2, "web6", "2001:db8:80::80/128", 443),
    ]
    assert s["binds"][2]["packets"] == 5  # 4 forwarded + 1 too big

    nano, in_recs = _read_pcap(EXAMPLE_PCAP)
    out_nano, out_recs = _read_pcap(out_path)
    assert out_nano == nano
    assert len(out_recs) == s["frames_out"]
    kept = [(rec, v) for rec, (v, _, _) in zip(in_recs, intended, strict=True) if v in ("forward", "reply")]
    for (sec, frac, frame), ((isec, ifrac, iframe), verdict) in zip(out_recs, kept, strict=True):
        assert (sec, frac) == (isec, ifrac)
        if verdict == "forward":
            # GUE over UDP 19523, the input's IP packet at the end, unchanged
            ethertype = struct.unpack("!H", iframe[12:14])[0]
            ip_start = 18 if ethertype == 0x8100 else 14
            assert frame.endswith(iframe[ip_start:])
            outer_v4 = frame[12:14] == b"\x08\x00"
            udp = 34 if outer_v4 else 54
            assert struct.unpack("!H", frame[udp + 2 : udp + 4])[0] == 19523
            # default MACs: back towards the sender
            assert frame[0:6] == iframe[6:12] and frame[6:12] == iframe[0:6]


@needs_core
def test_pcap_text_summary_and_macs(tmp_path: Path) -> None:
    out_path = tmp_path / "out.pcap"
    p = run_fwd(
        "pcap",
        "--config",
        str(FWD_TOML),
        str(EXAMPLE_PCAP),
        str(out_path),
        "--src-mac",
        "02:aa:bb:cc:dd:01",
        "--dst-mac",
        "02-aa-bb-cc-dd-02",
    )
    assert p.returncode == 0, p.stderr
    text = p.stdout
    assert "verdicts: pass 13, forward 27, drop 2, reply 2" in text
    assert "drops: truncated 1, too_big 1" in text
    assert "icmp replies: 2" in text
    assert "198.51.100.11" in text and "2001:db8:100::12" in text
    _, out_recs = _read_pcap(out_path)
    forwarded = [f for _, _, f in out_recs if f[12:14] in (b"\x08\x00", b"\x86\xdd") and len(f) > 60]
    assert any(
        f[0:6] == bytes.fromhex("02aabbccdd02") and f[6:12] == bytes.fromhex("02aabbccdd01")
        for f in forwarded
    )


@needs_core
def test_pcap_glb_with_tunnel_src_and_nanoseconds(tmp_path: Path) -> None:
    from fwd.pcapfile import PcapRecord, write_pcap

    frame = build_frame("tcp", ip_address("10.11.12.13"), 45678, ip_address("10.10.10.10"), 80)
    other = build_frame("tcp", ip_address("10.11.12.13"), 45678, ip_address("10.10.10.11"), 80)
    inp = tmp_path / "in.pcap"
    write_pcap(str(inp), [PcapRecord(5, 123456789, frame), PcapRecord(6, 1, other)], nanosecond=True)
    out = tmp_path / "out.pcap"
    p = run_fwd(
        "pcap", "--config", str(GLB_JSON), str(inp), str(out), "--tunnel-src", "192.168.50.2", "--json"
    )
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["verdicts"]["forward"] == 1 and s["verdicts"]["pass"] == 1
    nano, recs = _read_pcap(out)
    assert nano is True
    assert [(sec, frac) for sec, frac, _ in recs] == [(5, 123456789)]
    assert recs[0][2][26:30] == ip_address("192.168.50.2").packed  # outer IPv4 source


@needs_core
def test_pcap_bad_input(tmp_path: Path) -> None:
    out = tmp_path / "out.pcap"
    p = run_fwd("pcap", "--config", str(FWD_TOML), str(tmp_path / "missing.pcap"), str(out))
    assert p.returncode == 1
    assert_one_error_line(p.stderr, "missing.pcap")
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all")
    p = run_fwd("pcap", "--config", str(FWD_TOML), str(junk), str(out))
    assert p.returncode == 1
    assert_one_error_line(p.stderr, "junk.pcap")
    p = run_fwd("pcap", "--config", str(FWD_TOML), str(EXAMPLE_PCAP), str(tmp_path / "no" / "dir.pcap"))
    assert p.returncode == 1
    assert_one_error_line(p.stderr, "dir.pcap")
