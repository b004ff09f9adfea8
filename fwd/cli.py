"""The ``fwd`` command line: check a config, run a capture through the C core, look up a flow,
show a table's row ownership, run the daemon (``fwd run``) and talk to it (``fwd status``,
``fwd backend``, ``fwd reload``, ``fwd top``, ``fwd lookup`` without ``--config``; fwd.ctl).

Every failure is one line on stderr, ``fwd: error: ...``, and a non-zero exit status: 2 for
usage and configuration errors, 1 for runtime errors (unreadable capture, no match, C core not
built). The C core is imported only by the commands that need it, so ``check-config`` works
without a build. Set FWD_DEBUG=1 to get a traceback instead of the one-line internal error.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import os
import struct
import sys
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any, NoReturn

from fwd.config import Config, ConfigError, bind_json, load_config

IPAddress = IPv4Address | IPv6Address
ROWS = 65536
EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2

# Addresses used in the frame `fwd lookup` builds; only the IP/L4 fields matter to the core.
LOOKUP_DST_MAC = bytes.fromhex("020000000001")
LOOKUP_SRC_MAC = bytes.fromhex("020000000002")


class CliError(Exception):
    """A failure reported as one ``fwd: error:`` line with an exit status."""

    def __init__(self, message: str, code: int = EXIT_RUNTIME) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


# ----------------------------------------------------------------------------------------------
# argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors become one line instead of usage text + message."""

    def error(self, message: str) -> NoReturn:
        sub = self.prog.partition(" ")[2]
        where = f"{sub}: " if sub else ""
        hint = f"fwd {sub} --help" if sub else "fwd --help"
        raise CliError(f"{where}{message} (see '{hint}')", EXIT_USAGE)


def _version() -> str:
    try:
        from fwd import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - the package always has it
        return "unknown"


EPILOG = """\
exit status: 0 success; 1 runtime error (unreadable capture, lookup without a match,
C core not built); 2 usage or configuration error. Errors are one line on stderr.

CFG is fwd's TOML or GitHub GLB Director's forwarding-table JSON (detected by content:
a file starting with '{' is GLB JSON). See docs/config.md.

examples:
  fwd check-config examples/fwd.toml
  fwd pcap --config examples/fwd.toml examples/example.pcap /tmp/out.pcap
  fwd lookup --config examples/glb-forwarding-table.json --json tcp 10.11.12.13:45678 10.10.10.10:80
  fwd table show --config examples/fwd.toml --table web
  fwd run --config examples/fwd.toml --interface eth0 --mode auto     (as root)
  fwd status                      fwd backend drain --table web 198.51.100.12
  fwd reload                      fwd top
"""

CONTROL_HELP = "the daemon's control socket (default: $FWD_CONTROL_SOCKET, else /run/fwd/fwd.sock)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fwd",
        description="fwd: userspace L4 load-balancer forwarder, compatible with GitHub GLB Director "
        "(consistent hashing to L7 backends, GUE encapsulation).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"fwd {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    c = sub.add_parser(
        "check-config",
        help="validate a config file and summarise it",
        description="Validate CFG (fwd TOML or GLB forwarding-table JSON). Prints a one-line summary "
        "and exits 0, or prints 'fwd: error: FILE: KEY: REASON' and exits 2.",
    )
    c.add_argument("config", metavar="CFG", help="config file (TOML or GLB JSON)")
    c.set_defaults(func=cmd_check_config)

    pc = sub.add_parser(
        "pcap",
        help="run a capture through the C packet core",
        description="Read IN (classic pcap, Ethernet), run every frame through the C packet core and "
        "write the FORWARD (GUE-encapsulated) and REPLY (ICMP too-big) output frames to OUT, in input "
        "order with the input's timestamps. PASS and DROP frames are not written. Prints counts per "
        "verdict, drops per reason, packets/bytes per bind and per backend, and ICMP replies.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A tunnel source of each family used by a (non-inactive) backend must be known, from the "
        "config\n([node] tunnel_source / tunnel_source6) or from --tunnel-src; otherwise fwd refuses to "
        "start.\nexit status: 0 done; 1 capture unreadable/unwritable; 2 usage or config error.",
    )
    pc.add_argument("--config", required=True, metavar="CFG", help="config file (TOML or GLB JSON)")
    pc.add_argument("input", metavar="IN.pcap", help="input capture (pcap, link type Ethernet)")
    pc.add_argument("output", metavar="OUT.pcap", help="output capture (written or replaced)")
    pc.add_argument(
        "--tunnel-src",
        action="append",
        default=[],
        metavar="IP",
        help="outer source address of GUE packets; give it once per family (IPv4 and/or IPv6); "
        "overrides the config's tunnel_source / tunnel_source6 of that family",
    )
    pc.add_argument(
        "--src-mac", metavar="MAC", help="source MAC of forwarded frames (default: the input's destination)"
    )
    pc.add_argument(
        "--dst-mac", metavar="MAC", help="destination MAC of forwarded frames (default: the input's source)"
    )
    pc.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    pc.set_defaults(func=cmd_pcap)

    lk = sub.add_parser(
        "lookup",
        help="show where one flow goes (row, primary, secondary, GUE source port)",
        description="Build one TCP SYN or UDP packet from SRC to DST, run it through the C packet core "
        "and print the decision as a JSON object: table, bind, row, flow_hash, primary, secondary, "
        "gue_sport, verdict. IPv6 endpoints are written [ADDR]:PORT. Exits 1 (after printing the "
        "JSON) when no bind matches or the packet is not forwarded. With --config the tables are "
        "built from that file; without it (or with --live) the running daemon answers with its live "
        "tables (health verdicts and overrides included).",
    )
    lk.add_argument("--config", metavar="CFG", help="config file (TOML or GLB JSON): an offline lookup")
    lk.add_argument(
        "--live", action="store_true", help="ask the running daemon (the default without --config)"
    )
    lk.add_argument("--control-socket", metavar="PATH", help=CONTROL_HELP)
    lk.add_argument("--table", metavar="NAME", help="only consider the binds of this table")
    lk.add_argument("--json", action="store_true", help="print JSON (the default; accepted for scripts)")
    lk.add_argument("proto", metavar="PROTO", choices=("tcp", "udp"), help="tcp or udp")
    lk.add_argument("src", metavar="SRC_IP:SRC_PORT", help="client address and port")
    lk.add_argument("dst", metavar="DST_IP:DST_PORT", help="VIP address and port")
    lk.set_defaults(func=cmd_lookup)

    tb = sub.add_parser("table", help="forwarding table commands (see 'fwd table show --help')")
    tsub = tb.add_subparsers(dest="table_command", metavar="SUBCOMMAND", title="subcommands")
    tsub.required = True
    ts = tsub.add_parser(
        "show",
        help="rows owned per backend",
        description="Build each table in the C core and print, per backend: index, address, state, "
        "healthy, and the rows it owns as primary and as secondary (count and % of 65,536).",
    )
    ts.add_argument("--config", required=True, metavar="CFG", help="config file (TOML or GLB JSON)")
    ts.add_argument("--table", metavar="NAME", help="only this table")
    ts.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ts.set_defaults(func=cmd_table_show)

    rn = sub.add_parser(
        "run",
        help="forward VIP traffic on real interfaces (foreground, as root)",
        description="Run the data plane in the foreground on the given interfaces: VIP traffic (the "
        "config's binds) is GUE-encapsulated to the backend its table row names and sent towards the "
        "backend's next hop (route, gateway/neighbour MAC, followed from netlink); every other packet is "
        "left to the kernel. One worker thread per rx queue of each interface. Logs what it attached "
        "where, prints counters every --stats-interval seconds, and on SIGINT/SIGTERM stops, removes "
        "everything it installed (XDP program or nftables table, sockets), prints the final counters as "
        "one JSON line and exits 0.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="modes:\n"
        "  xdp   an XDP program steers VIP traffic to one AF_XDP socket per rx queue; the rest is passed\n"
        "        to the kernel untouched. Needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) and\n"
        "        CAP_IPC_LOCK (or RLIMIT_MEMLOCK >= 16 MiB per rx queue) besides raw's two.\n"
        "  raw   AF_PACKET sockets (TPACKET_V3 ring, fanout across the workers) see every frame; an\n"
        "        nftables table 'netdev fwd_raw' drops the VIP traffic fwd handles at ingress so the kernel\n"
        "        does not handle it as well. Slower than xdp; for hosts where XDP cannot be used.\n"
        "  auto  xdp, or raw when xdp cannot start (the log says why). The default.\n"
        "A stale XDP program or fwd_raw table left by a crashed run is replaced (and logged).\n"
        "Tunnel source per family: --tunnel-src, else the config's tunnel_source / tunnel_source6,\n"
        "else the primary address of the interface the route to the backends leaves by.\n"
        "Refuses to start, with one line naming what is missing, without its capabilities (raw and\n"
        "auto: CAP_NET_ADMIN + CAP_NET_RAW; see xdp above), when an interface does not exist, or when\n"
        "the mode cannot be used.\n"
        "exit status: 0 stopped by SIGINT/SIGTERM; 1 refused to start or failed; 2 usage or config error.",
    )
    rn.add_argument("--config", required=True, metavar="CFG", help="config file (TOML or GLB JSON)")
    rn.add_argument(
        "--interface",
        action="append",
        required=True,
        metavar="IF",
        help="receiving interface; repeat for several (one worker per rx queue of each)",
    )
    rn.add_argument("--mode", choices=("xdp", "raw", "auto"), default="auto", help="back end (default: auto)")
    rn.add_argument(
        "--xsk-mode",
        choices=("auto", "copy", "zerocopy"),
        default="auto",
        help="AF_XDP bind mode in xdp mode (default: auto = zero-copy where the driver can, else copy)",
    )
    rn.add_argument(
        "--busy-poll",
        action="store_true",
        help="xdp mode: busy-poll the AF_XDP sockets (SO_PREFER_BUSY_POLL)",
    )
    rn.add_argument(
        "--rx-holdoff-us",
        type=int,
        default=0,
        metavar="US",
        help="xdp mode: after a receive burst smaller than the batch, wait US microseconds so that "
        "frames pile up (less CPU per packet at moderate rates, up to US more latency; 0-10000, "
        "default 0 = off)",
    )
    rn.add_argument(
        "--tunnel-src",
        action="append",
        default=[],
        metavar="IP",
        help="outer source address of GUE packets, at most one per family; overrides the config",
    )
    rn.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="print a counters line every SECONDS (default 10; 0 = only at exit)",
    )
    rn.add_argument(
        "-v", "--verbose", action="store_true", help="also log debug details (next-hop resolution)"
    )
    rn.add_argument(
        "--control-socket",
        metavar="PATH",
        help="control socket (overrides [daemon] control_socket; default /run/fwd/fwd.sock)",
    )
    rn.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="Prometheus metrics address (overrides [daemon] metrics_address; default "
        "127.0.0.1:9641; '' = no metrics endpoint)",
    )
    rn.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text or JSON (overrides [daemon] log_format)",
    )
    rn.add_argument(
        "--drain-wait",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, keep forwarding this long after the withdraw hooks (overrides [daemon] drain_wait)",
    )
    rn.set_defaults(func=cmd_run)

    st = sub.add_parser(
        "status",
        help="the running daemon: tables, VIPs, backends, health, rows, counters and rates",
        description="Ask the running daemon (over its control socket; root only) for its state: per "
        "table its VIPs (packets, bytes, rates) and backends (state, runtime override, health and why, "
        "rows owned as primary and secondary, packets, bytes, rates), the data plane's generation, the "
        "last reload. --json prints the daemon's answer as one JSON object.",
    )
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--control-socket", metavar="PATH", help=CONTROL_HELP)
    st.set_defaults(func=cmd_status)

    be = sub.add_parser(
        "backend",
        help="runtime override of a backend's state: drain, fill, activate, deactivate, clear",
        description="Set the state the running daemon's table uses for one backend, over the config's: "
        "drain (draining: keeps its flows through second chance, takes no new ones), fill (filling), "
        "activate (active), deactivate (inactive: not ranked, not checked), clear (back to the config's "
        "state). The override persists across reloads until cleared, until the config says the same "
        "state, or until the backend leaves the config; a daemon restart forgets it (docs/daemon.md).",
    )
    be.add_argument("action", choices=("drain", "fill", "activate", "deactivate", "clear"), help="what to do")
    be.add_argument("--table", required=True, metavar="NAME", help="the backend's table")
    be.add_argument("address", metavar="IP", help="the backend's address")
    be.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    be.add_argument("--control-socket", metavar="PATH", help=CONTROL_HELP)
    be.set_defaults(func=cmd_backend)

    rl = sub.add_parser(
        "reload",
        help="make the running daemon re-read its config (like SIGHUP) and say what changed",
        description="The daemon re-reads and validates its config file. A valid config is applied "
        "without stopping traffic and the changes are printed; an invalid one is refused with the "
        "reason (exit status 1) and the daemon keeps serving the previous one.",
    )
    rl.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    rl.add_argument("--control-socket", metavar="PATH", help=CONTROL_HELP)
    rl.set_defaults(func=cmd_reload)

    tp = sub.add_parser(
        "top",
        help="live view of packet and bit rates per VIP and backend",
        description="A refreshing terminal view of the running daemon: rates per VIP and per backend, "
        "states, health, rows. Ctrl-C leaves. Without a terminal it prints one view per refresh.",
    )
    tp.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (default 1)"
    )
    tp.add_argument(
        "--iterations", type=int, default=0, metavar="N", help="stop after N refreshes (default: never)"
    )
    tp.add_argument("--control-socket", metavar="PATH", help=CONTROL_HELP)
    tp.set_defaults(func=cmd_top)

    from fwd.redirect_cli import add_parser as add_redirect_parser  # fwd redirect attach|detach|stats

    add_redirect_parser(sub)

    from fwd.bgp_cli import add_parser as add_node_parser  # fwd node drain|undrain (BGP)

    add_node_parser(sub)
    return p


# ----------------------------------------------------------------------------------------------
# helpers


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise CliError(str(e), EXIT_USAGE) from None


def _core() -> tuple[Any, Any]:
    """(Dataplane, ForwardingTable) from the C core, or a one-line error if it is not built."""
    try:
        from fwd.dataplane import Dataplane
        from fwd.table import ForwardingTable
    except ImportError as e:
        raise CliError(
            f"the C core is not available ({e}); build it with 'make build'", EXIT_RUNTIME
        ) from None
    return Dataplane, ForwardingTable


def _find_table(cfg: Config, name: str | None) -> list[int]:
    """Indices of the tables selected by --table (all when None)."""
    if name is None:
        return list(range(len(cfg.tables)))
    for i, t in enumerate(cfg.tables):
        if t.name == name:
            return [i]
    names = ", ".join(t.name for t in cfg.tables)
    raise CliError(f"{cfg.path}: no table named {name!r} (tables: {names})", EXIT_USAGE)


def parse_mac(text: str, option: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) == 6 and all(1 <= len(p) <= 2 for p in parts):
        try:
            return bytes(int(p, 16) for p in parts)
        except ValueError:
            pass
    raise CliError(
        f"{option}: bad MAC address {text!r} (want six hex bytes, e.g. 02:00:00:00:00:01)", EXIT_USAGE
    )


def parse_tunnel_sources(values: Sequence[str]) -> dict[int, IPAddress]:
    """--tunnel-src values by IP version; at most one per family."""
    out: dict[int, IPAddress] = {}
    for text in values:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise CliError(f"--tunnel-src: {text!r} is not an IPv4 or IPv6 address", EXIT_USAGE) from None
        if addr.is_unspecified or addr.is_multicast:
            raise CliError(f"--tunnel-src: {addr} is not a unicast address", EXIT_USAGE)
        if addr.version in out:
            raise CliError(
                f"--tunnel-src: two IPv{addr.version} addresses ({out[addr.version]}, {addr}); "
                "give at most one IPv4 and one IPv6",
                EXIT_USAGE,
            )
        out[addr.version] = addr
    return out


def effective_tunnel_sources(cfg: Config, overrides: dict[int, IPAddress]) -> dict[int, IPAddress]:
    out: dict[int, IPAddress] = {}
    if cfg.node.tunnel_source is not None:
        out[4] = cfg.node.tunnel_source
    if cfg.node.tunnel_source6 is not None:
        out[6] = cfg.node.tunnel_source6
    out.update(overrides)
    return out


def check_tunnel_sources(cfg: Config, sources: dict[int, IPAddress]) -> None:
    """Refuse to run when a table can send to a backend family without a tunnel source.

    Inactive backends are never in a row, so they need none.
    """
    for t in cfg.tables:
        for version, key in ((4, "tunnel_source"), (6, "tunnel_source6")):
            if version in sources:
                continue
            used = [
                str(b.address) for b in t.backends if b.address.version == version and b.state != "inactive"
            ]
            if not used:
                continue
            shown = ", ".join(used[:3]) + (", ..." if len(used) > 3 else "")
            where = f"set {key} in [node] of {cfg.path} or " if cfg.format == "toml" else ""
            raise CliError(
                f"table {t.name!r} has IPv{version} backends ({shown}) but no IPv{version} tunnel source "
                f"is known: {where}pass --tunnel-src IPV{version}_ADDRESS",
                EXIT_USAGE,
            )


def parse_endpoint(text: str, what: str) -> tuple[IPAddress, int]:
    """'1.2.3.4:80' or '[2001:db8::1]:80'."""
    if text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
        if not sep:
            raise CliError(f"{what}: {text!r}: write IPv6 endpoints as [ADDRESS]:PORT", EXIT_USAGE)
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise CliError(f"{what}: {text!r}: missing :PORT", EXIT_USAGE)
        if ":" in host:
            raise CliError(f"{what}: {text!r}: write IPv6 endpoints as [ADDRESS]:PORT", EXIT_USAGE)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise CliError(f"{what}: {host!r} is not an IPv4 or IPv6 address", EXIT_USAGE) from None
    if not (port_s.isascii() and port_s.isdigit()) or int(port_s) > 65535:
        raise CliError(f"{what}: bad port {port_s!r} (want 0..65535)", EXIT_USAGE)
    return addr, int(port_s)


# ----------------------------------------------------------------------------------------------
# a minimal frame for `fwd lookup`


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_frame(proto: str, src: IPAddress, sport: int, dst: IPAddress, dport: int) -> bytes:
    """Ethernet + IPv4/IPv6 + TCP SYN (no options) or UDP (no payload), checksums filled in."""
    ipproto = 6 if proto == "tcp" else 17
    if proto == "tcp":
        l4 = bytearray(struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0))
        csum_off = 16
    else:
        l4 = bytearray(struct.pack("!HHHH", sport, dport, 8, 0))
        csum_off = 6
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, ipproto, len(l4))
    else:
        pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(l4), ipproto)
    csum = _checksum(pseudo + bytes(l4))
    if proto == "udp" and csum == 0:
        csum = 0xFFFF
    struct.pack_into("!H", l4, csum_off, csum)
    if src.version == 4:
        ip = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, ipproto, 0, src.packed, dst.packed
            )
        )
        struct.pack_into("!H", ip, 10, _checksum(bytes(ip)))
        ethertype = 0x0800
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 6 << 28, len(l4), ipproto, 64, src.packed, dst.packed))
        ethertype = 0x86DD
    return LOOKUP_DST_MAC + LOOKUP_SRC_MAC + struct.pack("!H", ethertype) + bytes(ip) + bytes(l4)


# ----------------------------------------------------------------------------------------------
# output helpers


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2))


def _render(rows: Sequence[Sequence[object]], right: set[int] | None = None, indent: str = "") -> list[str]:
    """Aligned text columns; ``right`` holds the column numbers aligned to the right."""
    right = right or set()
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    out = []
    for r in cells:
        parts = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append((indent + "  ".join(parts)).rstrip())
    return out


def _ports(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


# ----------------------------------------------------------------------------------------------
# commands


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    nbinds = sum(len(t.binds) for t in cfg.tables)
    nbackends = sum(len(t.backends) for t in cfg.tables)

    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    print(
        f"{cfg.path}: ok ({cfg.format}): {n(len(cfg.tables), 'table')}, {n(nbinds, 'bind')}, "
        f"{n(nbackends, 'backend')}"
    )
    return EXIT_OK


def cmd_pcap(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    sources = effective_tunnel_sources(cfg, parse_tunnel_sources(args.tunnel_src))
    check_tunnel_sources(cfg, sources)
    src_mac = parse_mac(args.src_mac, "--src-mac") if args.src_mac is not None else None
    dst_mac = parse_mac(args.dst_mac, "--dst-mac") if args.dst_mac is not None else None
    dataplane_cls, _ = _core()
    from fwd.pcapfile import PcapError, PcapRecord, read_pcap_file, write_pcap

    try:
        capture = read_pcap_file(args.input)
    except PcapError as e:
        raise CliError(str(e), EXIT_RUNTIME) from None
    try:
        dp = dataplane_cls(cfg, tunnel_src=list(sources.values()), src_mac=src_mac, dst_mac=dst_mac)
    except (RuntimeError, ValueError) as e:
        raise CliError(f"cannot build the data plane: {e}", EXIT_RUNTIME) from None
    records = capture.records
    results = dp.process_many([r.data for r in records])
    out = [
        PcapRecord(rec.ts_sec, rec.ts_frac, res.frame)
        for rec, res in zip(records, results, strict=True)
        if res.verdict in ("forward", "reply") and res.frame is not None
    ]
    try:
        write_pcap(args.output, out, nanosecond=capture.nanosecond)
    except PcapError as e:
        raise CliError(str(e), EXIT_RUNTIME) from None

    c = dp.counters()
    summary: dict[str, Any] = {
        "config": cfg.path,
        "input": args.input,
        "output": args.output,
        "frames_in": len(records),
        "bytes_in": sum(len(r.data) for r in records),
        "frames_out": len(out),
        "bytes_out": sum(len(r.data) for r in out),
        "verdicts": dict(c.verdicts),
        "drops": dict(c.drops),
        "icmp_replies": c.icmp_replies,
        "binds": [{**bind_json(cfg, i), "packets": pk, "bytes": by} for i, (pk, by) in enumerate(c.binds)],
        "backends": [
            {
                "table": cfg.tables[ti].name,
                "index": bi,
                "address": str(b.address),
                "state": b.state,
                "healthy": b.healthy,
                "packets": c.backends[ti][bi][0],
                "bytes": c.backends[ti][bi][1],
            }
            for ti, t in enumerate(cfg.tables)
            for bi, b in enumerate(t.backends)
        ],
    }
    if args.json:
        _print_json(summary)
    else:
        _print_pcap_summary(summary)
    return EXIT_OK


def _print_pcap_summary(s: dict[str, Any]) -> None:
    print(f"{s['input']} -> {s['output']}")
    print(
        f"frames in: {s['frames_in']} ({s['bytes_in']} bytes), "
        f"frames out: {s['frames_out']} ({s['bytes_out']} bytes)"
    )
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in s["verdicts"].items()))
    drops = [f"{k} {v}" for k, v in s["drops"].items() if v]
    print("drops: " + (", ".join(drops) if drops else "none"))
    print(f"icmp replies: {s['icmp_replies']}")
    print("binds:")
    rows: list[list[object]] = [["#", "table", "proto", "prefix", "ports", "packets", "bytes"]]
    for b in s["binds"]:
        rows.append(
            [
                b["index"],
                b["table"],
                b["proto"],
                b["prefix"],
                _ports(b["port_lo"], b["port_hi"]),
                b["packets"],
                b["bytes"],
            ]
        )
    print("\n".join(_render(rows, {0, 5, 6}, "  ")))
    print("backends (forwarded frames, counted on the primary):")
    rows = [["table", "#", "address", "state", "healthy", "packets", "bytes"]]
    for b in s["backends"]:
        rows.append(
            [
                b["table"],
                b["index"],
                b["address"],
                b["state"],
                "yes" if b["healthy"] else "no",
                b["packets"],
                b["bytes"],
            ]
        )
    print("\n".join(_render(rows, {1, 5, 6}, "  ")))


def cmd_lookup(args: argparse.Namespace) -> int:
    src, sport = parse_endpoint(args.src, "SRC_IP:SRC_PORT")
    dst, dport = parse_endpoint(args.dst, "DST_IP:DST_PORT")
    if src.version != dst.version:
        raise CliError(f"source {src} and destination {dst} are of different IP versions", EXIT_USAGE)
    if args.live and args.config:
        raise CliError(
            "lookup: give --config CFG (offline) or --live (the running daemon), not both", EXIT_USAGE
        )
    if args.config is None:
        return _lookup_live(args, build_frame(args.proto, src, sport, dst, dport))
    cfg = _load(args.config)
    selected = _find_table(cfg, args.table)
    dataplane_cls, _ = _core()

    # The lookup needs no real tunnel source: use a placeholder where the config has none.
    tunnel: list[IPAddress] = [
        cfg.node.tunnel_source or IPv4Address("0.0.0.0"),
        cfg.node.tunnel_source6 or IPv6Address("::"),
    ]
    view = dataclasses.replace(cfg, tables=[cfg.tables[i] for i in selected])
    try:
        dp = dataplane_cls(view, tunnel_src=tunnel)
    except (RuntimeError, ValueError) as e:
        raise CliError(f"cannot build the data plane: {e}", EXIT_RUNTIME) from None
    res = dp.process(build_frame(args.proto, src, sport, dst, dport))
    from fwd.dataplane import lookup_json

    out = lookup_json(cfg, selected, res)
    return _lookup_exit(args, out)


def _lookup_exit(args: argparse.Namespace, out: dict[str, Any]) -> int:
    """Print a lookup's answer; its exit status (1 when the flow is not forwarded)."""
    _print_json(out)
    flow = f"{args.proto} {args.src} -> {args.dst}"
    verdict = out["verdict"]
    if verdict == "pass":
        scope = f"of table {args.table!r} " if args.table is not None else ""
        _err(f"no bind {scope}matches {flow}")
        return EXIT_RUNTIME
    if verdict != "forward":
        _err(f"{flow} is not forwarded: {verdict} {out['reason'] or ''}".rstrip())
        return EXIT_RUNTIME
    return EXIT_OK


def _lookup_live(args: argparse.Namespace, frame: bytes) -> int:
    from fwd import ctl

    return _lookup_exit(args, _ctl(lambda: ctl.lookup_live(args, frame)))


def _ctl(call: Callable[[], Any]) -> Any:
    """Run a control-socket call; its failures become one-line runtime errors."""
    from fwd.api import ApiError

    try:
        return call()
    except ApiError as e:
        raise CliError(str(e), EXIT_RUNTIME) from None


def cmd_status(args: argparse.Namespace) -> int:
    from fwd import ctl

    return int(_ctl(lambda: ctl.cmd_status(args)))


def cmd_backend(args: argparse.Namespace) -> int:
    from fwd import ctl

    return int(_ctl(lambda: ctl.cmd_backend(args)))


def cmd_reload(args: argparse.Namespace) -> int:
    from fwd import ctl

    return int(_ctl(lambda: ctl.cmd_reload(args)))


def cmd_top(args: argparse.Namespace) -> int:
    from fwd import ctl

    if args.interval <= 0:
        raise CliError("top: --interval must be > 0", EXIT_USAGE)
    if args.iterations < 0:
        raise CliError("top: --iterations must be >= 0", EXIT_USAGE)
    return int(_ctl(lambda: ctl.cmd_top(args)))


def cmd_table_show(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    selected = _find_table(cfg, args.table)
    _, table_cls = _core()
    tables = []
    for ti in selected:
        t = cfg.tables[ti]
        try:
            owned = table_cls(t.seed, t.hash_key, t.glb_compat, t.backends).owned()
        except (RuntimeError, ValueError) as e:
            raise CliError(f"cannot build table {t.name!r}: {e}", EXIT_RUNTIME) from None
        first = sum(len(x.binds) for x in cfg.tables[:ti])
        tables.append(
            {
                "name": t.name,
                "index": ti,
                "glb_compat": t.glb_compat,
                "rows": ROWS,
                "rows_without_backend": ROWS - sum(p for p, _ in owned),
                "binds": [bind_json(cfg, first + i) for i in range(len(t.binds))],
                "backends": [
                    {
                        "index": bi,
                        "address": str(b.address),
                        "state": b.state,
                        "healthy": b.healthy,
                        "primary_rows": p,
                        "primary_pct": round(100.0 * p / ROWS, 2),
                        "secondary_rows": s,
                        "secondary_pct": round(100.0 * s / ROWS, 2),
                    }
                    for bi, (b, (p, s)) in enumerate(zip(t.backends, owned, strict=True))
                ],
            }
        )
    if args.json:
        _print_json({"config": cfg.path, "format": cfg.format, "tables": tables})
        return EXIT_OK
    for n, t in enumerate(tables):
        if n:
            print()
        binds = ", ".join(
            f"{b['proto']} {b['prefix']} port {_ports(b['port_lo'], b['port_hi'])}" for b in t["binds"]
        )
        compat = "GLB rule" if t["glb_compat"] else "fwd rule"
        print(f"table {t['name']} ({compat}; binds: {binds})")
        rows: list[list[object]] = [["#", "address", "state", "healthy", "primary", "%", "secondary", "%"]]
        for b in t["backends"]:
            rows.append(
                [
                    b["index"],
                    b["address"],
                    b["state"],
                    "yes" if b["healthy"] else "no",
                    b["primary_rows"],
                    f"{b['primary_pct']:.2f}",
                    b["secondary_rows"],
                    f"{b['secondary_pct']:.2f}",
                ]
            )
        print("\n".join(_render(rows, {0, 4, 5, 6, 7}, "  ")))
        if t["rows_without_backend"]:
            print(f"  rows without a backend: {t['rows_without_backend']} (packets hitting them are dropped)")
    return EXIT_OK


def _run_logging(verbose: bool) -> logging.Logger:
    """`fwd run` logs its progress (info) to stderr, one line per record."""
    logger = logging.getLogger("fwd")
    for h in logger.handlers:
        if isinstance(h, _StderrHandler):
            h.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    return logging.getLogger("fwd.run")


def _stats_line(s: dict[str, Any]) -> str:
    v = s["verdicts"]
    ports = s["ports"]
    drops = ", ".join(f"{k} {n}" for k, n in s["drops"].items() if n) or "none"
    rx = sum(p["rx_packets"] for p in ports)
    tx = sum(p["tx_packets"] for p in ports)
    txd = sum(p["tx_dropped"] for p in ports)
    kd = sum(p["kernel_drops"] for p in ports)
    return (
        f"stats: rx {rx} tx {tx} | forward {v['forward']} reply {v['reply']} pass {v['pass']} "
        f"drop {v['drop']} ({drops}) | tx_dropped {txd} kernel_drops {kd} | generation {s['generation']}"
    )


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon (fwd.daemon) in the foreground: forwards, checks, answers, until SIGTERM/SIGINT."""
    if args.stats_interval < 0:
        raise CliError("run: --stats-interval must be >= 0", EXIT_USAGE)
    if not 0 <= args.rx_holdoff_us <= 10_000:
        raise CliError("run: --rx-holdoff-us must be 0..10000", EXIT_USAGE)
    if args.drain_wait is not None and not 0 <= args.drain_wait <= 3600:
        raise CliError("run: --drain-wait must be 0..3600 seconds", EXIT_USAGE)
    if args.metrics_address:
        from fwd.config import parse_metrics_address

        try:
            parse_metrics_address(args.metrics_address)
        except ValueError as e:
            raise CliError(f"run: --metrics-address: {e}", EXIT_USAGE) from None
    if args.control_socket is not None and not args.control_socket.startswith("/"):
        raise CliError("run: --control-socket must be an absolute path", EXIT_USAGE)
    cfg = _load(args.config)
    tunnel = parse_tunnel_sources(args.tunnel_src)
    log = _run_logging(args.verbose)
    try:
        from fwd.api import ApiError
        from fwd.daemon import DaemonError, DaemonOptions, run_daemon
        from fwd.live import LiveError
    except ImportError as e:
        raise CliError(f"the live data plane is not available ({e}); build it with 'make build'") from None

    opts = DaemonOptions(
        config_path=args.config,
        interfaces=list(args.interface),
        mode=args.mode,
        xsk_mode=args.xsk_mode,
        busy_poll=args.busy_poll,
        rx_holdoff_us=args.rx_holdoff_us,
        tunnel_src=list(tunnel.values()),
        control_socket=args.control_socket,
        metrics_address=args.metrics_address,
        log_format=args.log_format,
        drain_wait=args.drain_wait,
        stats_interval=args.stats_interval,
        verbose=args.verbose,
    )
    started: list[Any] = []
    try:
        run_daemon(
            opts,
            cfg,
            logging.getLogger("fwd.daemon"),
            on_stats=lambda s: print(_stats_line(s), flush=True),
            on_started=started.append,
        )
    except LiveError as e:
        raise CliError(str(e), EXIT_RUNTIME) from None
    except (ApiError, DaemonError) as e:
        raise CliError(str(e), EXIT_RUNTIME) from None
    finally:
        live = started[0].live if started else None
        if live is not None and live.mode_used is not None:
            summary = live.summary()
            print(_stats_line(summary), flush=True)
            print("final counters: " + json.dumps({"counters": summary}, separators=(",", ":")), flush=True)
    log.info("stopped; everything fwd installed was removed")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# entry point


def _err(message: str) -> None:
    print(f"fwd: error: {message}", file=sys.stderr)


class _StderrHandler(logging.Handler):
    """Log records as 'fwd: warning: ...' on the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelname.lower()
            sys.stderr.write(f"fwd: {level}: {' '.join(record.getMessage().split())}\n")
        except Exception:  # pragma: no cover - logging must not fail the command
            self.handleError(record)


def _setup_logging() -> None:
    logger = logging.getLogger("fwd")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(logging.WARNING)
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fwd command line; returns the exit status."""
    _setup_logging()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except CliError as e:
        _err(str(e))
        return e.code
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else EXIT_OK if e.code is None else EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped to head): not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_RUNTIME
    except Exception as e:
        if os.environ.get("FWD_DEBUG"):
            raise
        detail = " ".join(str(e).split())
        _err(f"internal error: {type(e).__name__}: {detail} (set FWD_DEBUG=1 for a traceback)")
        return EXIT_RUNTIME


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
