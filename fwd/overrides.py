"""Runtime overrides of backend states, and what a reload changes.

``fwd backend drain|fill|activate|deactivate --table T IP`` sets the state the tables use for one
backend, over the config's ``state``; ``fwd backend clear`` removes the override. An override
lives in the daemon's memory (a restart starts from the config) and is keyed by (table name,
backend address), so it follows the backend when the config reorders backends. Rules:

* an override equal to the config's state is not kept (``activate`` on a backend the config
  says is active simply clears any override);
* across a reload an override persists, except that it is cleared — and the reload's log says
  so — when the backend leaves the config (its table or its address is gone), or when the new
  config says the same state (the config caught up with the operator);
* health is not overridden: a drained backend is still checked, an inactive one is not.
"""

from __future__ import annotations

from collections.abc import Hashable
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from fwd.config import Backend, Config, Table, describe_bind

__all__ = ["ACTIONS", "Overrides", "describe_changes"]

IPAddress = IPv4Address | IPv6Address
Key = tuple[str, IPAddress]

# action -> state (None: remove the override, back to the config's state)
ACTIONS: dict[str, str | None] = {
    "drain": "draining",
    "fill": "filling",
    "activate": "active",
    "deactivate": "inactive",
    "clear": None,
}


class Overrides:
    def __init__(self, states: dict[Key, str] | None = None) -> None:
        self._states: dict[Key, str] = dict(states or {})

    def copy(self) -> Overrides:
        return Overrides(self._states)

    def get(self, key: Hashable) -> str | None:
        return self._states.get(key)  # type: ignore[call-overload]

    def state(self, key: Hashable, config_state: str) -> str:
        return self._states.get(key, config_state)  # type: ignore[call-overload]

    def __len__(self) -> int:
        return len(self._states)

    def apply(self, key: Key, action: str, config_state: str) -> str:
        """Set (or clear) the override of ``key``; a one-line note on what it means now."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r} (expected one of: {', '.join(ACTIONS)})")
        state = ACTIONS[action]
        had = self._states.pop(key, None)
        if state is None:
            return (
                f"override {had} cleared, back to the config's {config_state}"
                if had
                else f"no override to clear; the config says {config_state}"
            )
        if state == config_state:
            return f"the config says {config_state} too: no override kept" + (
                f" (override {had} cleared)" if had else ""
            )
        self._states[key] = state
        return f"runtime override; the config says {config_state}"

    def prune(self, cfg: Config) -> list[str]:
        """Drop the overrides a new config makes pointless; what was dropped and why."""
        by_key = {(t.name, b.address): b for t in cfg.tables for b in t.backends}
        notes = []
        for key, state in list(self._states.items()):
            b = by_key.get(key)
            if b is None:
                del self._states[key]
                notes.append(
                    f"override {state} of {key[1]} (table {key[0]}) cleared: the backend left the config"
                )
            elif b.state == state:
                del self._states[key]
                notes.append(
                    f"override {state} of {key[1]} (table {key[0]}) cleared: the config now says {state} too"
                )
        return notes

    def as_list(self) -> list[dict[str, Any]]:
        return [
            {"table": k[0], "address": str(k[1]), "state": s}
            for k, s in sorted(self._states.items(), key=str)
        ]


# ----------------------------------------------------------------------------------------------
# what a reload changes


def _identity(t: Table) -> tuple[object, ...]:
    return (bytes(t.seed), bytes(t.hash_key), t.glb_compat)


def _backend_diff(name: str, old: Backend, new: Backend) -> list[str]:
    out = []
    if old.state != new.state:
        out.append(f"table {name}: backend {new.address} state {old.state} -> {new.state}")
    if old.healthy != new.healthy:
        a, b = str(old.healthy).lower(), str(new.healthy).lower()
        out.append(f"table {name}: backend {new.address} healthy {a} -> {b}")
    if old.checks != new.checks or old.timing != new.timing:
        out.append(f"table {name}: backend {new.address} health checks changed")
    return out


def describe_changes(old: Config, new: Config) -> list[str]:
    """What differs between two configs, one short phrase per change (["no changes"] if none)."""
    out: list[str] = []
    old_t = {t.name: t for t in old.tables}
    new_t = {t.name: t for t in new.tables}
    for name in new_t:
        if name not in old_t:
            t = new_t[name]
            out.append(f"table {name} added ({len(t.binds)} binds, {len(t.backends)} backends)")
    for name in old_t:
        if name not in new_t:
            out.append(f"table {name} removed")
    if [t.name for t in old.tables if t.name in new_t] != [t.name for t in new.tables if t.name in old_t]:
        out.append("tables reordered")
    for name, n in new_t.items():
        o = old_t.get(name)
        if o is None:
            continue
        if _identity(o) != _identity(n):
            what = [
                k
                for k, a, b in (
                    ("seed", o.seed, n.seed),
                    ("hash_key", o.hash_key, n.hash_key),
                    ("glb_compat", o.glb_compat, n.glb_compat),
                )
                if a != b
            ]
            out.append(f"table {name}: {', '.join(what)} changed (table rebuilt)")
        ob = {describe_bind(b) + f" {b.hash_fields}": b for b in o.binds}
        nb = {describe_bind(b) + f" {b.hash_fields}": b for b in n.binds}
        for k, b in nb.items():
            if k not in ob:
                out.append(f"table {name}: bind {describe_bind(b)} added")
        for k, b in ob.items():
            if k not in nb:
                out.append(f"table {name}: bind {describe_bind(b)} removed")
        oks = {b.address: (i, b) for i, b in enumerate(o.backends)}
        nks = {b.address: (i, b) for i, b in enumerate(n.backends)}
        for addr, (_, b) in nks.items():
            if addr not in oks:
                out.append(f"table {name}: backend {addr} added ({b.state})")
        for addr in oks:
            if addr not in nks:
                out.append(f"table {name}: backend {addr} removed")
        for addr, (_, b) in nks.items():
            if addr in oks:
                out += _backend_diff(name, oks[addr][1], b)
        common_old = [b.address for b in o.backends if b.address in nks]
        common_new = [b.address for b in n.backends if b.address in oks]
        if common_old != common_new:
            out.append(f"table {name}: backends reordered (indices changed)")
    for key in ("tunnel_source", "tunnel_source6", "mtu", "forward_icmp_echo"):
        a, b = getattr(old.node, key), getattr(new.node, key)
        if a != b:
            out.append(f"node.{key} {a} -> {b}")
    for key in ("control_socket", "metrics_address", "drain_wait", "log_format", "healthcheck"):
        a, b = getattr(old.daemon, key), getattr(new.daemon, key)
        if a != b:
            out.append(f"daemon.{key} changed" if key == "healthcheck" else f"daemon.{key} {a!r} -> {b!r}")
    return out or ["no changes"]
