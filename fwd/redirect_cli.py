"""`fwd redirect attach|detach|stats`: fwd-redirect on an L7 node (fwd/redirect.py).

Kept out of fwd/cli.py, which only registers the group (add_parser); errors are raised as
fwd.cli.CliError so they come out as one `fwd: error:` line like every other command.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from typing import Any

DESCRIPTION = """\
fwd-redirect runs on each L7 node (HAProxy, nginx, Envoy with the VIPs on a local interface). A tc
ingress program on the node's interface takes the GUE packets (UDP port 19523) the L4 nodes send:
from an --allow prefix only, malformed ones dropped and counted. It decapsulates to the local stack
when the inner packet is not TCP, is a SYN, belongs to a local socket (established, request, or a
valid SYN-cookie ACK), or when no second-chance hop is left; otherwise it forwards the packet to the
next hop in the GUE hop list (outer source = this node), where the flow's owner takes it. ICMP
errors quoting a TCP flow follow that flow. See docs/redirect.md for the node's setup (VIP, rp_filter,
ARP/NDP) and why tc.
"""

ATTACH_EPILOG = """\
outer source of forwarded packets, per family: --source when given; else the received packet's outer
destination (this node's address, as the L4 node knows it); when the next hop is of the other
family, the interface's first global address of that family.
Attaching again replaces the program (new allow list and sources; counters start from 0).
State is pinned in /sys/fs/bpf/fwd/redirect/IF/ (bpffs is mounted there if needed); `stats` and
`detach` also find the program through tc when the pins are gone.
Needs CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON (or root); detach needs CAP_NET_ADMIN.
exit status: 0 attached; 1 failed; 2 usage error.
examples:
  fwd redirect attach --interface eth0 --allow 10.0.0.0/24 --allow 2001:db8:4::/64
  fwd redirect attach --interface eth0 --allow 10.0.0.1/32 --source 10.0.1.7 --source 2001:db8::7
"""


def add_parser(sub: Any) -> None:
    """Register `redirect` and its subcommands on the top-level subparsers."""
    rd = sub.add_parser(
        "redirect",
        help="fwd-redirect on an L7 node: GUE decapsulation and second chance (see 'fwd redirect --help')",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = rd.add_subparsers(dest="redirect_command", metavar="SUBCOMMAND", title="subcommands")
    rsub.required = True

    at = rsub.add_parser(
        "attach",
        help="attach fwd-redirect to an interface",
        description="Load fwd-redirect and attach it as the tc ingress filter of IF (a clsact qdisc is "
        "added when there is none). Prints what it attached, one line.",
        epilog=ATTACH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    at.add_argument("--interface", required=True, metavar="IF", help="the interface GUE arrives on")
    at.add_argument(
        "--allow",
        action="append",
        required=True,
        metavar="CIDR",
        help="accept GUE only from this source prefix (the L4 nodes); repeat for several, IPv4 and IPv6",
    )
    at.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="IP",
        help="outer source address of forwarded packets, at most one per family (default: see below)",
    )
    at.add_argument("--json", action="store_true", help="print the result as one JSON object")
    at.set_defaults(func=cmd_attach)

    dt = rsub.add_parser(
        "detach",
        help="remove fwd-redirect from an interface",
        description="Remove fwd-redirect's tc filter from IF, its pins, and the clsact qdisc when attach "
        "added it and no other filter uses it. Exit status 1 when fwd-redirect is not attached.",
    )
    dt.add_argument("--interface", required=True, metavar="IF")
    dt.set_defaults(func=cmd_detach)

    st = rsub.add_parser(
        "stats",
        help="counters of fwd-redirect on an interface",
        description="Print the counters of the fwd-redirect program attached to IF (summed over CPUs): "
        "GUE packets seen, decapsulated by reason (non_tcp, syn, socket, syncookie, last_hop, self), "
        "forwarded to the next hop, dropped by reason; and its allow list and outer sources.",
    )
    st.add_argument("--interface", required=True, metavar="IF")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_stats)


def _cli_error(message: str, usage: bool = False) -> Exception:
    from fwd.cli import EXIT_RUNTIME, EXIT_USAGE, CliError

    return CliError(message, EXIT_USAGE if usage else EXIT_RUNTIME)


def _parse_allow(values: list[str]) -> list[Any]:
    nets = []
    for text in values:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            raise _cli_error(f"redirect attach: --allow {text!r}: {e}", usage=True) from None
        if net.version == 6 and net.network_address.ipv4_mapped is not None:
            raise _cli_error(
                f"redirect attach: --allow {text!r}: write IPv4 prefixes as IPv4 (a.b.c.d/len)", usage=True
            )
        nets.append(net)
    return nets


def _parse_sources(values: list[str]) -> list[Any]:
    out: dict[int, Any] = {}
    for text in values:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise _cli_error(
                f"redirect attach: --source {text!r} is not an IPv4 or IPv6 address", usage=True
            ) from None
        if addr.is_unspecified or addr.is_multicast:
            raise _cli_error(f"redirect attach: --source {addr} is not a unicast address", usage=True)
        if addr.version in out:
            raise _cli_error(
                f"redirect attach: --source: two IPv{addr.version} addresses ({out[addr.version]}, {addr}); "
                "give at most one per family",
                usage=True,
            )
        out[addr.version] = addr
    return list(out.values())


def _describe_sources(sources: dict[str, dict[str, Any]]) -> str:
    parts = []
    for fam, s in sources.items():
        label = "IPv4" if fam == "ipv4" else "IPv6"
        if s["mode"] == "explicit":
            parts.append(f"{label} {s['address']}")
        elif s["mode"] == "fallback":
            parts.append(f"{label} packet destination, else {s['address']}")
        else:
            parts.append(f"{label} packet destination")
    return "; ".join(parts)


def cmd_attach(args: argparse.Namespace) -> int:
    from fwd import redirect

    allow = _parse_allow(args.allow)
    sources = _parse_sources(args.source)
    try:
        res = redirect.attach(args.interface, allow, sources)
    except redirect.RedirectError as e:
        raise _cli_error(f"redirect attach: {e}") from None
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return 0
    replaced = f", replacing program {res['replaced_prog_id']}" if res["replaced_prog_id"] else ""
    print(
        f"fwd-redirect attached to {res['interface']} (tc ingress, program {res['prog_id']}{replaced}); "
        f"allow {', '.join(res['allow'])}; outer source {_describe_sources(res['sources'])}; "
        f"pinned in {res['pin_dir']}"
    )
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    from fwd import redirect

    try:
        res = redirect.detach(args.interface)
    except redirect.RedirectError as e:
        raise _cli_error(f"redirect detach: {e}") from None
    qdisc = "; clsact qdisc removed" if res["removed_qdisc"] else ""
    print(f"fwd-redirect detached from {res['interface']} (program {res['prog_id']}); pins removed{qdisc}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from fwd import redirect

    try:
        res = redirect.stats(args.interface)
    except redirect.RedirectError as e:
        raise _cli_error(f"redirect stats: {e}") from None
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return 0
    c = res["counters"]
    decap = {k[len("decap_") :]: v for k, v in c.items() if k.startswith("decap_")}
    drops = {k[len("drop_") :]: v for k, v in c.items() if k.startswith("drop_")}
    where = f"pinned in {res['pin_dir']}" if res["pinned"] else "found through tc (no pins here)"
    print(f"fwd-redirect on {res['interface']}: program {res['prog_id']}, {where}")
    print(f"  allow: {', '.join(res['allow']) or '(nothing: every GUE packet is dropped)'}")
    print(f"  outer source: {_describe_sources(res['sources'])}")
    print(f"  GUE packets: {c['rx']}")
    print(f"  decapsulated: {sum(decap.values())} (" + ", ".join(f"{k} {v}" for k, v in decap.items()) + ")")
    print(f"  forwarded to the next hop: {c['forwarded']}")
    print(f"  ICMP errors that followed a TCP flow: {c['icmp_tcp_quote']}")
    shown = ", ".join(f"{k} {v}" for k, v in drops.items() if v) or "none"
    print(f"  dropped: {sum(drops.values())} ({shown})")
    return 0
