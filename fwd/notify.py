"""systemd's notify protocol, spoken directly (no libsystemd): one datagram per state change to the
AF_UNIX socket named by ``$NOTIFY_SOCKET``.

The daemon sends ``READY=1`` once the data plane forwards, ``RELOADING=1`` + ``MONOTONIC_USEC=…``
when a reload starts (followed by ``READY=1`` when it ends, whatever the result), ``STOPPING=1`` on
SIGTERM and ``STATUS=…`` lines in between. A name starting with ``@`` is in the abstract namespace
(the ``@`` becomes a NUL byte). Without ``$NOTIFY_SOCKET`` every call does nothing; a send that
fails is logged once and never stops the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["Notifier", "monotonic_usec"]


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, what systemd expects in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    def __init__(self, address: str | None = None, log: logging.Logger | None = None) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.log = log or logging.getLogger("fwd.notify")
        self.sent: list[str] = []  # what was sent, for the status output and tests
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def _target(self) -> str | bytes:
        assert self.address
        if self.address.startswith("@"):
            return b"\0" + self.address[1:].encode()
        return self.address

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=VALUE`` each) as one datagram; True when it was sent."""
        if not self.enabled:
            return False
        msg = "\n".join(fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(msg.encode(), self._target())
        except OSError as e:
            if not self._warned:
                self._warned = True
                self.log.warning("cannot notify systemd at %s: %s", self.address, e.strerror or e)
            return False
        self.sent.append(msg)
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_line(status)}"] if status else []))

    def reloading(self, status: str | None = None) -> bool:
        fields = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
        if status:
            fields.append(f"STATUS={_line(status)}")
        return self.send(*fields)

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_line(status)}"] if status else []))

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={_line(status)}")


def _line(text: str) -> str:
    return " ".join(text.split())
