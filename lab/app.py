"""The small backend app behind HAProxy on each L7 node (``python -m lab.app --node l7-1``).

HTTP/1.1 with keep-alive (and pipelining) on one asyncio loop. Every request is answered with one
line naming who served it and whom: ``NODE CLIENT_IP:PORT VIP:PORT N`` — NODE is this L7 node,
CLIENT and VIP come from the X-Client and X-VIP headers HAProxy sets (so the client sees that its
own address and port reached the L7 node unchanged), N counts the requests of this HAProxy
connection. The lab's clients (lab/traffic.py) check every answer.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


class Http(asyncio.Protocol):
    def __init__(self, node: bytes) -> None:
        self.node = node
        self.buf = b""
        self.n = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                if len(self.buf) > 65536:
                    self._answer(b"431", b"headers too long\n", close=True)
                return
            self.buf = rest  # requests have no body here (GET)
            client = vip = b"-"
            close = False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"x-client":
                    client = v.strip()
                elif k == b"x-vip":
                    vip = v.strip()
                elif k == b"connection" and v.strip().lower() == b"close":
                    close = True
            self.n += 1
            self._answer(b"200", b"%s %s %s %d\n" % (self.node, client, vip, self.n), close)
            if close:
                return

    def _answer(self, status: bytes, body: bytes, close: bool) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %s X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, len(body), b"Connection: close\r\n" if close else b"", body)
        )
        if close:
            self.transport.close()


async def serve(node: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Http(node.encode()), host, port, reuse_address=True, backlog=4096
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"app {node}: listening on {host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node", required=True)
    ap.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    try:
        import uvloop

        uvloop.run(serve(a.node, host, int(port)))
    except ImportError:
        asyncio.run(serve(a.node, host, int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
