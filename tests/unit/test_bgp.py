"""fwd.bgp without privileges: the [bgp] settings, the announce/withdraw decision, the ExaBGP
configuration and API commands fwd writes (checked by ExaBGP's own validator), the speaker's
bookkeeping of ExaBGP's messages, the relay, and the BGP parts of fwd status and the metrics.
The real ExaBGP against a real router is tests/netns/test_bgp.py."""

# ruff: noqa: E501  (the table-driven cases read best one per line)
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from fwd import bgp
from fwd.bgp import (
    BgpSettings,
    BgpSpeaker,
    Inputs,
    TableHealth,
    Vip,
    announce_command,
    decide,
    render_exabgp_config,
    table_health,
    update_prefixes,
    vips_of,
    withdraw_command,
)
from fwd.config import ConfigError, parse_config

IN_CI = os.environ.get("CI", "").lower() == "true"
EXABGP = Path(sys.executable).with_name("exabgp")

TABLE = """
[[tables]]
name = "web"
hash_key = "12345678901234561234567890123456"
seed = "34567890123456783456789012345678"
  [[tables.binds]]
  ip = "10.100.0.1"
  proto = "tcp"
  port = 80
  [[tables.binds]]
  ip = "10.100.0.1"
  proto = "tcp"
  port = 443
  [[tables.backends]]
  ip = "10.99.2.10"
"""

BGP = """
[bgp]
local_as = 65001
local_address = "10.99.1.1"
  [[bgp.peers]]
  address = "10.99.1.2"
  peer_as = 65000
"""


def cfg(bgp_text: str = BGP, table: str = TABLE):
    return parse_config(table + bgp_text, "t.toml")


def net(s: str):
    return ipaddress.ip_network(s)


# ------------------------------------------------------------------------------------- settings


def test_defaults():
    s = cfg().bgp
    assert s == BgpSettings(
        local_as=65001,
        router_id=ipaddress.IPv4Address("10.99.1.1"),  # from local_address
        peers=(bgp.BgpPeer(ipaddress.ip_address("10.99.1.2"), 65000),),
        local_address=ipaddress.ip_address("10.99.1.1"),
    )
    assert s.next_hop == s.next_hop6 == "self" and s.med is None and s.communities == ()
    assert s.hold_time == 30 and s.withdraw_timeout == 5.0
    assert cfg("").bgp is None


def test_every_key():
    s = cfg(
        """
[bgp]
local_as = 4200000001
router_id = "192.0.2.1"
local_address = "10.99.1.1"
next_hop = "10.99.1.100"
next_hop6 = "fd99:1::100"
med = 50
communities = ["65001:80", "NO-EXPORT", "0:0"]
hold_time = 9
exabgp = "/usr/bin/exabgp"
withdraw_timeout = 2.5
restart_delay = 0.5
restart_max = 10
  [[bgp.peers]]
  address = "10.99.1.2"
  peer_as = 65000
  password = "s3cret!"
  hold_time = 3
  port = 1179
  [[bgp.peers]]
  address = "fd99:1::2"
  peer_as = 65000
  local_address = "fd99:1::1"
"""
    ).bgp
    assert s.local_as == 4200000001 and str(s.router_id) == "192.0.2.1"
    assert s.next_hop == "10.99.1.100" and s.next_hop6 == "fd99:1::100" and s.med == 50
    assert s.communities == ("65001:80", "no-export", "0:0")
    assert s.hold_time == 9 and s.exabgp == "/usr/bin/exabgp"
    assert (s.withdraw_timeout, s.restart_delay, s.restart_max) == (2.5, 0.5, 10.0)
    p0, p1 = s.peers
    assert (p0.password, p0.hold_time, p0.port, p0.local_address) == ("s3cret!", 3, 1179, None)
    assert str(p1.local_address) == "fd99:1::1" and p1.port == 179
    assert "s3cret" not in repr(p0)


PEER = '  [[bgp.peers]]\n  address = "10.99.1.2"\n  peer_as = 65000\n'


@pytest.mark.parametrize(
    "text, key, reason",
    [
        ("[bgp]\nlocal_as = 1\n", "bgp.peers", "missing required key"),
        ('[bgp]\npeers = []\nlocal_as = 1\nrouter_id = "1.1.1.1"\n', "bgp.peers", "at least one peer"),
        ("[bgp]\nlocal_as = 0\n" + PEER, "bgp.local_as", "AS number 0 out of range 1..4294967295"),
        ("[bgp]\nlocal_as = 4294967296\n" + PEER, "bgp.local_as", "out of range"),
        ("[bgp]\nlocal_as = 1\n" + PEER, "bgp.router_id", "missing required key (needed when local_address"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "::1"\n' + PEER, "bgp.router_id", "is not a router id"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "0.0.0.0"\n' + PEER, "bgp.router_id", "is not a router id"),
        ('[bgp]\nlocal_as = 1\nlocal_address = "::"\n' + PEER, "bgp.local_address", "not a unicast address"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\nnext_hop = "fd::1"\n' + PEER, "bgp.next_hop",
         "is not an IPv4 address"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\nnext_hop = "me"\n' + PEER, "bgp.next_hop",
         "is not an IPv4 or IPv6 address"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\ncommunities = ["65536:1"]\n' + PEER,
         "bgp.communities[0]", "is not a community"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\ncommunities = ["1:1", "1:01"]\n' + PEER,
         "bgp.communities[1]", "community 1:1 given twice"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\nhold_time = 2\n' + PEER, "bgp.hold_time",
         "hold time 2 is not allowed"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\nmed = -1\n' + PEER, "bgp.med", "out of range"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\nexabgp = "a b"\n' + PEER, "bgp.exabgp", "without spaces"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\nrestart_delay = 5\nrestart_max = 1\n' + PEER,
         "bgp.restart_max", "must not be smaller than restart_delay"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\nwithdraw_timeout = 61\n' + PEER, "bgp.withdraw_timeout",
         "out of range"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\nasn = 1\n' + PEER, "bgp.asn", "unknown key"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\n' + PEER + "  port = 0\n", "bgp.peers[0].port", "out of range"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\n' + PEER + PEER, "bgp.peers[1].address",
         "duplicate peer 10.99.1.2 (also peers[0])"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\n' + PEER + '  password = "x"\n', "bgp.peers[0].password",
         "needs a local_address"),
        ('[bgp]\nlocal_as = 1\nlocal_address = "10.99.1.1"\n' + PEER + '  password = "a b"\n',
         "bgp.peers[0].password", "without space"),
        ('[bgp]\nlocal_as = 1\nlocal_address = "10.99.1.1"\n' + PEER + '  local_address = "fd::1"\n',
         "bgp.peers[0].local_address", "of different IP versions"),
        ('[bgp]\nlocal_as = 1\nlocal_address = "fd::1"\nrouter_id = "1.1.1.1"\n' + PEER, "bgp.peers[0].address",
         "of different IP versions"),
        ('[bgp]\nlocal_as = 1\nrouter_id = "1.1.1.1"\n  [[bgp.peers]]\n  address = "fd::2"\n  peer_as = 2\n',
         "bgp.next_hop", '"self" cannot be the next hop of IPv4 VIPs sent over the IPv6 session with fd::2'),
    ],
)  # fmt: skip
def test_errors(text, key, reason):
    with pytest.raises(ConfigError) as e:
        cfg(text)
    assert e.value.key == key, str(e.value)
    assert reason in e.value.reason, str(e.value)


def test_ipv6_vips_over_ipv4_sessions_need_next_hop6():
    v6 = TABLE.replace('  [[tables.backends]]', '  [[tables.binds]]\n  ip = "fd99::1"\n  proto = "tcp"\n'
                       '  port = 80\n  [[tables.backends]]')  # fmt: skip
    with pytest.raises(ConfigError) as e:
        cfg(BGP, v6)
    assert e.value.key == "bgp.next_hop6" and "IPv6 VIPs sent over the IPv4 session" in e.value.reason
    s = cfg(BGP.replace("[bgp]\n", '[bgp]\nnext_hop6 = "fd99:1::1"\n'), v6).bgp
    assert s.next_hop6 == "fd99:1::1"


def test_glb_json_has_no_bgp():
    text = json.dumps(
        {
            "tables": [
                {
                    "hash_key": "12345678901234561234567890123456",
                    "seed": "34567890123456783456789012345678",
                    "binds": [{"ip": "1.1.1.1", "proto": "tcp", "port": 80}],
                    "backends": [{"ip": "1.2.3.4", "state": "active", "healthy": True}],
                }
            ],
            "bgp": {},
        }
    )
    with pytest.raises(ConfigError, match="bgp: unknown key"):
        parse_config(text, "t.json")


# ------------------------------------------------------------------------------------- decision


@dataclass
class B:
    state: str = "active"
    healthy: bool = True


def test_table_health_counts():
    bs = [B(), B(healthy=False), B("inactive"), B("draining"), B("filling"), B()]
    verdicts = {0: True, 1: False, 5: None}
    h = table_health(bs, lambda i: i in verdicts, verdicts.get)
    # 0 checked up; 1 unhealthy; 2 not ranked; 3, 4 unchecked healthy; 5 checked, no result yet
    assert h == TableHealth(serving=3, pending=1, ranked=5, total=6)
    assert table_health([], lambda i: False, lambda i: None) == TableHealth(0, 0, 0, 0)


def test_vips_of_one_route_per_prefix():
    c = cfg("", TABLE + TABLE.replace('name = "web"', 'name = "api"').replace("port = 80", "port = 8080")
            .replace("port = 443", "port = 8443").replace('ip = "10.100.0.1"\n  proto = "tcp"\n  port = 8443',
                                                         'ip = "10.100.1.0/24"\n  proto = "tcp"\n  port = 8443'))  # fmt: skip
    assert vips_of(c) == (
        Vip(net("10.100.0.1/32"), ("web", "api")),
        Vip(net("10.100.1.0/24"), ("api",)),
    )


V1, V2 = net("10.100.0.1/32"), net("fd99::1/128")
VIPS = (Vip(V1, ("web",)), Vip(V2, ("web", "api")))


@pytest.mark.parametrize(
    "tables, running, stopping, drained, expect",
    [
        ({"web": TableHealth(1, 0, 2, 2), "api": TableHealth(0, 0, 1, 1)}, True, False, False,
         [(True, "table web: 1 of 2 ranked backends healthy"),
          (True, "table web: 1 of 2 ranked backends healthy; table api: 0 of 1")]),
        # one healthy table is enough for a shared prefix
        ({"web": TableHealth(0, 0, 2, 2), "api": TableHealth(2, 0, 2, 2)}, True, False, False,
         [(False, "no healthy backend (table web: 0 of 2"), (True, "table api: 2 of 2")]),
        # no verdict yet: no announcement on a guess
        ({"web": TableHealth(0, 2, 2, 2), "api": TableHealth(0, 0, 0, 1)}, True, False, False,
         [(False, "waiting for the first health check results (table web: 0 of 2 ranked backends healthy, 2 not "
                  "checked yet)"), (False, "waiting for the first health check results")]),
        ({"web": TableHealth(1, 1, 2, 2)}, True, False, False, [(True, "1 not checked yet"), (True, "web")]),
        ({"web": TableHealth(0, 0, 0, 3)}, True, False, False, [(False, "0 of 0 ranked"), (False, "no healthy")]),
        ({"web": TableHealth(2, 0, 2, 2)}, False, False, False, [(False, "the data plane is not running")] * 2),
        ({"web": TableHealth(2, 0, 2, 2)}, True, False, True, [(False, "the node is drained (fwd node drain)")] * 2),
        ({"web": TableHealth(2, 0, 2, 2)}, True, True, True, [(False, "the daemon is stopping")] * 2),
        ({}, True, False, False, [(False, "no healthy backend (no table)")] * 2),
    ],
)  # fmt: skip
def test_decide(tables, running, stopping, drained, expect):
    got = decide(Inputs(VIPS, tables, running, stopping, drained))
    assert [d.prefix for d in got] == [V1, V2]
    for d, (announce, words) in zip(got, expect, strict=True):
        assert d.announce is announce, d
        assert words in d.reason, d


# ------------------------------------------------------------------------------------- rendering


def test_commands():
    s = cfg(
        BGP.replace(
            "[bgp]\n", '[bgp]\nmed = 7\ncommunities = ["65001:1", "no-export"]\nnext_hop6 = "fd::9"\n'
        )
    ).bgp
    assert (
        announce_command(s, V1)
        == "announce route 10.100.0.1/32 next-hop self med 7 community [65001:1 no-export]"
    )
    assert (
        announce_command(s, V2)
        == "announce route fd99::1/128 next-hop fd::9 med 7 community [65001:1 no-export]"
    )
    assert withdraw_command(s, V1) == "withdraw route 10.100.0.1/32 next-hop self"
    assert withdraw_command(s, V2) == "withdraw route fd99::1/128 next-hop fd::9"
    plain = cfg().bgp
    assert announce_command(plain, net("10.100.1.0/24")) == "announce route 10.100.1.0/24 next-hop self"


SETTINGS = """
[bgp]
local_as = 65001
router_id = "10.99.1.1"
hold_time = 6
  [[bgp.peers]]
  address = "10.99.1.2"
  peer_as = 65000
  local_address = "10.99.1.1"
  password = "s3cret"
  port = 1179
  [[bgp.peers]]
  address = "10.99.3.2"
  peer_as = 65002
  hold_time = 3
"""


def test_exabgp_config_text():
    text = render_exabgp_config(cfg(SETTINGS).bgp, "/usr/bin/python3 /x/bgp_relay.py /run/s", "fwd.toml")
    assert "process fwd {\n    run /usr/bin/python3 /x/bgp_relay.py /run/s;\n    encoder json;\n}" in text
    first, second = text.split("neighbor ")[1:]
    for line in ("10.99.1.2 {", "router-id 10.99.1.1;", "local-address 10.99.1.1;", "local-as 65001;",
                 "peer-as 65000;", "hold-time 6;", "connect 1179;", "md5-password s3cret;", "ipv4 unicast;",
                 "ipv6 unicast;", "processes [ fwd ];", "neighbor-changes;", "parsed;", "update;"):  # fmt: skip
        assert line in first, (line, first)
    assert "local-address auto;" in second and "hold-time 3;" in second and "peer-as 65002;" in second
    assert "connect" not in second and "md5" not in second


def test_exabgp_accepts_the_config_fwd_writes(tmp_path):
    """ExaBGP's own validator reads what fwd renders (the real program from the venv)."""
    if not os.access(EXABGP, os.X_OK):
        if IN_CI:
            pytest.fail(f"ExaBGP is not installed in the venv ({EXABGP}): make setup")
        pytest.skip(f"ExaBGP is not installed ({EXABGP})")
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render_exabgp_config(cfg(SETTINGS).bgp, f"{sys.executable} {bgp.RELAY} {tmp_path}/s"))
    p = subprocess.run(
        [str(EXABGP), "validate", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        env=bgp.exabgp_environment(),
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_exabgp_environment_keeps_the_user():
    env = bgp.exabgp_environment({"PATH": "/bin"})
    import pwd

    assert env["exabgp_daemon_user"] == pwd.getpwuid(os.getuid()).pw_name
    assert env["exabgp_api_ack"] == "true" and env["exabgp_api_cli"] == "false" and env["PATH"] == "/bin"


def test_find_exabgp(tmp_path):
    s = cfg().bgp
    with pytest.raises(bgp.BgpError, match="is not an executable program"):
        bgp.find_exabgp(BgpSettings(**{**s.__dict__, "exabgp": str(tmp_path / "nope")}))
    assert bgp.find_exabgp(BgpSettings(**{**s.__dict__, "exabgp": "true"})).endswith("/true")


# ------------------------------------------------------------------------------------- ExaBGP's messages


def neighbor_msg(kind: str, **extra) -> dict:
    n = {
        "address": {"local": "10.99.1.1", "peer": "10.99.1.2"},
        "asn": {"local": 65001, "peer": 65000},
        "router-id": "10.99.1.1",
        **extra,
    }
    return {"exabgp": "5.0.0", "type": kind, "neighbor": n}


def sent(message: dict) -> dict:
    return neighbor_msg("update", direction="send", message=message)


ANNOUNCE = {"update": {"attribute": {"med": 7}, "announce": {"ipv4 unicast": {"10.99.1.1": [{"nlri": "10.100.0.1/32"}]},
                                                             "ipv6 unicast": {"fd::9": [{"nlri": "fd99::1/128"}]}}}}  # fmt: skip
WITHDRAW = {"update": {"withdraw": {"ipv4 unicast": [{"nlri": "10.100.0.1/32"}], "ipv6 unicast": [{"nlri": "fd99::1/128"}]}}}  # fmt: skip


def test_update_prefixes():
    assert update_prefixes(ANNOUNCE["update"] and ANNOUNCE) == (["10.100.0.1/32", "fd99::1/128"], [], [])
    assert update_prefixes(WITHDRAW) == ([], ["10.100.0.1/32", "fd99::1/128"], [])
    assert update_prefixes({"eor": {"afi": "ipv6", "safi": "unicast"}}) == ([], [], ["ipv6 unicast"])
    assert update_prefixes({}) == ([], [], [])


class FakeWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.lines += data.decode().splitlines()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class View:
    def __init__(self, healthy: int = 1) -> None:
        self.health = {"web": TableHealth(healthy, 0, 1, 1)}
        self.running = True

    def __call__(self, drained: bool, stopping: bool) -> Inputs:
        return Inputs((Vip(V1, ("web",)), Vip(V2, ("web",))), self.health, self.running, stopping, drained)


def speaker(view: View) -> tuple[BgpSpeaker, FakeWriter]:
    s = cfg(BGP.replace("[bgp]\n", '[bgp]\nexabgp = "true"\nnext_hop6 = "fd::9"\n')).bgp
    sp = BgpSpeaker(s, view)
    w = FakeWriter()
    sp._writer = w  # type: ignore[assignment]  # as if the relay had connected
    return sp, w


def ack(sp: BgpSpeaker, n: int, word: str = "done") -> None:
    for _ in range(n):
        sp._message(word)


def test_speaker_state_machine():
    view = View()
    sp, w = speaker(view)
    sp._message(json.dumps(neighbor_msg("state", state="connected")))
    sp._message(json.dumps(neighbor_msg("state", state="up")))
    sp.handle(sent({"eor": {"afi": "ipv4", "safi": "unicast"}}))
    assert sp.peers["10.99.1.2"].state == "up" and sp.peers["10.99.1.2"].families == {"ipv4 unicast"}

    sp.sync()
    assert w.lines == [
        "announce route 10.100.0.1/32 next-hop self",
        "announce route fd99::1/128 next-hop fd::9",
    ]
    sp.sync()  # nothing changed: nothing sent again
    assert len(w.lines) == 2
    assert not sp._settled()  # not acknowledged yet
    ack(sp, 2)
    assert not sp._settled()  # the IPv4 route was not sent to the peer yet (the IPv6 one needs no EOR check)
    sp.handle(sent(ANNOUNCE))
    assert sp._settled()
    assert [v["advertised_to"] for v in sp.status()["vips"]] == [["10.99.1.2"], ["10.99.1.2"]]

    view.health = {"web": TableHealth(0, 0, 1, 1)}  # the last backend fails
    sp.sync()
    assert w.lines[2:] == [
        "withdraw route 10.100.0.1/32 next-hop self",
        "withdraw route fd99::1/128 next-hop fd::9",
    ]
    ack(sp, 2)
    assert not sp._settled()  # the peer still has them
    sp.handle(sent(WITHDRAW))
    assert sp._settled() and not sp.peers["10.99.1.2"].advertised
    assert all("no healthy backend" in v["reason"] for v in sp.status()["vips"])

    sp.sync()
    assert len(w.lines) == 4  # a withdrawn route is not withdrawn again
    view.health = {"web": TableHealth(1, 0, 1, 1)}
    sp.drained = True
    sp.sync()
    assert len(w.lines) == 4  # drained: stays withdrawn although a backend is back
    sp.drained = False
    sp.sync()
    assert w.lines[4:] == [
        "announce route 10.100.0.1/32 next-hop self",
        "announce route fd99::1/128 next-hop fd::9",
    ]
    ack(sp, 1)
    ack(sp, 1, "error")
    assert sp.commands == {"sent": 6, "done": 5, "error": 1}
    assert sp.last_error == "announce route fd99::1/128 next-hop fd::9"


def test_speaker_peer_down_and_exabgp_lost():
    sp, w = speaker(View())
    sp._message(json.dumps(neighbor_msg("state", state="up")))
    sp.sync()
    sp.handle(sent(ANNOUNCE))
    peer = sp.peers["10.99.1.2"]
    assert peer.ups == 1 and len(peer.advertised) == 2
    sp.handle(neighbor_msg("state", state="down", reason="hold timer expired"))
    assert (peer.state, peer.reason, peer.downs, peer.advertised) == ("down", "hold timer expired", 1, set())
    assert sp._settled()  # no peer up: nothing to wait for
    sp.handle(neighbor_msg("state", state="up"))
    sp._lost_exabgp("ExaBGP exited (killed by SIGKILL)")
    assert peer.state == "down" and peer.downs == 2 and sp._writer is None and w.closed
    assert all(v.told is None for v in sp.vips.values())  # a new ExaBGP is told everything again
    m = sp.metrics()
    assert (
        m["exabgp_up"] == 0 and m["peers"][0]["downs"] == 2 and [v["announce"] for v in m["vips"]] == [1, 1]
    )


def test_speaker_reconnect_repeats_what_it_wants():
    view = View()
    sp, w = speaker(view)
    sp.sync()
    view.health = {"web": TableHealth(0, 0, 1, 1)}
    w.closed = True  # the relay went away: the withdraw cannot be sent
    sp.sync()
    assert [v.told.split()[0] for v in sp.vips.values()] == ["announce", "announce"]
    w2 = FakeWriter()
    sp._writer = w2  # type: ignore[assignment]
    for v in sp.vips.values():
        v.told = "?"  # what _serve does on a new connection
    sp.sync()
    assert w2.lines == [
        "withdraw route 10.100.0.1/32 next-hop self",
        "withdraw route fd99::1/128 next-hop fd::9",
    ]


def test_vip_leaving_the_config_is_withdrawn():
    view = View()
    sp, w = speaker(view)
    sp.sync()
    view_one = lambda d, s: Inputs((Vip(V1, ("web",)),), view.health, True, s, d)  # noqa: E731
    sp.view = view_one
    sp.sync()
    assert w.lines[-1] == "withdraw route fd99::1/128 next-hop fd::9" and list(sp.vips) == [V1]


def test_withdraw_for_stop_and_drain_wait_for_the_peer():
    async def main():
        sp, w = speaker(View())
        sp.handle(neighbor_msg("state", state="up"))
        sp.sync()
        ack(sp, 2)
        sp.handle(sent(ANNOUNCE))
        loop = asyncio.get_running_loop()

        def exabgp_answers():  # ExaBGP acknowledges and sends the withdraw a little later
            ack(sp, 2)
            sp.handle(sent(WITHDRAW))

        loop.call_later(0.2, exabgp_answers)
        r = await sp.set_drained(True, "test")
        assert r["drained"] and r["changed"] and r["settled"] and 0.15 < r["seconds"] < 2, r
        assert [v["advertised_to"] for v in r["vips"]] == [[], []]
        assert w.lines[-2:] == ["withdraw route 10.100.0.1/32 next-hop self",
                                "withdraw route fd99::1/128 next-hop fd::9"]  # fmt: skip
        loop.call_later(0.1, lambda: (ack(sp, 2), sp.handle(sent(ANNOUNCE))))
        r = await sp.set_drained(False)
        assert r["settled"] and not r["drained"]
        # SIGTERM: a peer that never confirms makes the hook give up after withdraw_timeout
        sp.settings = BgpSettings(**{**sp.settings.__dict__, "withdraw_timeout": 0.3})
        t0 = loop.time()
        await sp.withdraw_for_stop()
        assert 0.25 < loop.time() - t0 < 2 and sp.stopping
        assert all(not v.announce for v in sp.vips.values())

    asyncio.run(main())


# ------------------------------------------------------------------------------------- relay


def test_relay_copies_both_ways(tmp_path):
    path = str(tmp_path / "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    to_relay_r, to_relay_w = os.pipe()  # ExaBGP -> relay stdin
    from_relay_r, from_relay_w = os.pipe()  # relay stdout -> ExaBGP
    from fwd.bgp_relay import relay

    box: dict = {}
    t = threading.Thread(target=lambda: box.update(rc=relay(path, to_relay_r, from_relay_w)))
    t.start()
    conn, _ = srv.accept()
    os.write(to_relay_w, b'{"type": "state"}\ndone\n')
    got = b""
    while got.count(b"\n") < 2:
        got += conn.recv(100)
    assert got == b'{"type": "state"}\ndone\n'
    conn.sendall(b"announce route 10.100.0.1/32 next-hop self\n")
    assert os.read(from_relay_r, 100) == b"announce route 10.100.0.1/32 next-hop self\n"
    os.close(to_relay_w)  # ExaBGP closed its end: the relay ends
    t.join(5)
    assert box == {"rc": 0}
    conn.close()
    srv.close()
    for fd in (to_relay_r, from_relay_r, from_relay_w):
        os.close(fd)


def test_relay_without_daemon_exits_1(tmp_path):
    p = subprocess.run(
        [sys.executable, str(bgp.RELAY), str(tmp_path / "none")], capture_output=True, text=True
    )
    assert p.returncode == 1 and "cannot connect" in p.stderr


def test_sweep_runtime_dirs(tmp_path):
    gone = tmp_path / "fwd-bgp-999999999-abc"
    mine = tmp_path / f"fwd-bgp-{os.getpid()}-abc"
    gone.mkdir()
    mine.mkdir()
    assert bgp.sweep_runtime_dirs(str(tmp_path)) == [str(gone)]
    assert mine.exists() and not gone.exists()


# ------------------------------------------------------------------------------------- status, metrics


def test_status_text_and_metrics():
    from fwd.bgp_cli import render_bgp
    from fwd.metrics import MetricsView, render

    sp, _ = speaker(View())
    sp.handle(neighbor_msg("state", state="up"))
    sp.sync()
    sp.handle(sent(ANNOUNCE))
    text = "\n".join(render_bgp(sp.status()))
    assert "bgp: AS 65001, router id 10.99.1.1; node active; ExaBGP NOT RUNNING; restarts 0" in text
    assert "10.99.1.2  65000  up" in text
    assert "10.100.0.1/32  announce  10.99.1.2  table web: 1 of 1 ranked backends healthy" in text
    out = render(lambda: MetricsView(bgp=sp.metrics())).decode()
    for line in (
        'fwd_bgp_peer_up{peer="10.99.1.2"} 1.0',
        'fwd_bgp_peer_established_total{peer="10.99.1.2"} 1.0',
        'fwd_bgp_peer_routes{peer="10.99.1.2"} 2.0',
        'fwd_bgp_vip_announced{vip="10.100.0.1/32"} 1.0',
        'fwd_bgp_vip_peers{vip="fd99::1/128"} 1.0',
        "fwd_bgp_exabgp_up 0.0",
        "fwd_bgp_exabgp_restarts_total 0.0",
        "fwd_bgp_node_drained 0.0",
        'fwd_bgp_commands_total{result="sent"} 2.0',
    ):
        assert line in out, (line, out[-2000:])
    assert "fwd_bgp_" not in render(lambda: MetricsView()).decode()


def test_node_cli_without_daemon_is_one_error_line(tmp_path, capsys):
    from fwd.cli import main

    assert main(["node", "drain", "--control-socket", str(tmp_path / "none.sock")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fwd: error: no fwd daemon at ") and err.count("\n") == 1, err
