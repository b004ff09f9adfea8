"""The lab's clients: long-lived TCP connections to the VIPs, one HTTP request every 100 ms each.

Runs inside the client node (``ip netns exec NS python -m lab.traffic``) on one asyncio loop and
takes commands as JSON lines on stdin, answering each with one JSON line on stdout
(lab/netns.py's ``Traffic`` drives it):

* ``{"cmd": "open", "batch": B, "count": N, "vip": IP, "port": P}`` — open N connections, each
  from a random client address (10.1.0.0/24, all local on the client node) and port, and start
  them; answers once every connection had its first answer (or failed), with who served them;
* ``{"cmd": "report", "batch": B}`` — per connection: requests, longest stall, who served it,
  whether it broke and why;
* ``{"cmd": "close", "batch": B}``; ``{"cmd": "counters"}`` (answers per L7 node since start,
  errors: for the live view's rates); ``{"cmd": "probe", "count": N, "vip": IP, "port": P}`` — N
  new short connections with one request each: where do *new* connections go now?

A connection is **broken** when it is reset or closed, when an answer comes from another L7 node
than its first answer did, when an answer does not name the connection's own client address and
port (what HAProxy saw), or when an answer does not arrive within ``LIVENESS`` seconds (a
liveness bound, far above any stall TCP retransmission recovers from). Its **stall** is the
time a request waited for its answer; the report gives the longest.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import sys
import time
from dataclasses import dataclass, field

CLIENTS = ipaddress.ip_network("10.1.0.0/24")
PERIOD = 0.1
LIVENESS = 30.0
REQ = b"GET / HTTP/1.1\r\nHost: lab\r\nUser-Agent: fwd-lab\r\n\r\n"


@dataclass
class Conn:
    id: int
    src: str
    vip: str
    port: int
    sport: int = 0
    served_by: str | None = None
    requests: int = 0
    error: str | None = None
    max_stall: float = 0.0
    max_stall_at: float = 0.0  # wall clock of the longest stall's end
    sent_at: float | None = None  # loop time of the outstanding request
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "src": f"{self.src}:{self.sport}",
            "vip": f"{self.vip}:{self.port}",
            "served_by": self.served_by,
            "requests": self.requests,
            "max_stall": round(self.max_stall, 3),
            "error": self.error,
        }


class Clients:
    def __init__(self) -> None:
        self.batches: dict[str, list[Conn]] = {}
        self.answers: dict[str, int] = {}  # per L7 node, since start
        self.errors = 0
        self.next_id = 0
        self.loop = asyncio.get_running_loop()

    # -- one connection

    async def connect(self, c: Conn) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(c.vip, c.port, local_addr=(c.src, 0)), 10
        )
        c.writer = writer
        c.sport = writer.get_extra_info("sockname")[1]
        return reader, writer

    async def exchange(self, c: Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c.sent_at = self.loop.time()
        writer.write(REQ)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = (await reader.readexactly(length)).decode()
        now = self.loop.time()
        stall = now - c.sent_at
        c.sent_at = None
        if not head.startswith(b"HTTP/1.1 200"):
            status = head.split(b"\r\n")[0]
            raise ConnectionError(f"answer {status!r}")
        parts = body.split()
        if len(parts) < 3 or parts[1] != f"{c.src}:{c.sport}" or parts[2] != f"{c.vip}:{c.port}":
            raise ConnectionError(f"answer for someone else: {body.strip()!r}")
        node = parts[0]
        if c.served_by is None:
            c.served_by = node
        elif node != c.served_by:
            raise ConnectionError(f"answered by {node}, first by {c.served_by}")
        c.requests += 1
        self.answers[node] = self.answers.get(node, 0) + 1
        if stall > c.max_stall:
            c.max_stall, c.max_stall_at = stall, time.time()

    async def run(self, c: Conn, first: asyncio.Future) -> None:
        try:
            reader, writer = await self.connect(c)
            await self.exchange(c, reader, writer)
            first.set_result(True)
            t_next = self.loop.time() + PERIOD
            while True:
                await asyncio.sleep(max(0.0, t_next - self.loop.time()))
                t_next += PERIOD
                if t_next < self.loop.time():
                    t_next = self.loop.time() + PERIOD  # fell behind (a stall): no burst afterwards
                await self.exchange(c, reader, writer)
        except asyncio.CancelledError:
            pass
        except (
            OSError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ) as e:
            if c.error is None:
                c.error = f"{type(e).__name__}: {e}"
                self.errors += 1
        finally:
            if not first.done():
                first.set_result(False)
            if c.writer is not None:
                c.writer.close()

    async def watchdog(self) -> None:
        """Mark connections whose request waited longer than LIVENESS as broken."""
        while True:
            await asyncio.sleep(0.5)
            now = self.loop.time()
            for conns in self.batches.values():
                for c in conns:
                    if c.error is None and c.sent_at is not None and now - c.sent_at > LIVENESS:
                        c.error = f"no answer for {LIVENESS:g} s"
                        self.errors += 1
                        if c.task is not None:
                            c.task.cancel()

    # -- commands

    async def open(self, batch: str, count: int, vip: str, port: int) -> dict:
        conns = self.batches.setdefault(batch, [])
        firsts = []
        for _ in range(count):
            src = str(CLIENTS.network_address + random.randint(1, CLIENTS.num_addresses - 2))
            c = Conn(self.next_id, src, vip, port)
            self.next_id += 1
            conns.append(c)
            f = self.loop.create_future()
            c.task = self.loop.create_task(self.run(c, f))
            firsts.append(f)
            await asyncio.sleep(0.002)  # no SYN burst
        await asyncio.gather(*firsts)
        mine = conns[-count:]
        return {
            "opened": sum(1 for c in mine if c.error is None),
            "failed": [c.as_dict() for c in mine if c.error],
            "served_by": _count(c.served_by for c in mine if c.error is None),
        }

    def report(self, batch: str) -> dict:
        conns = self.batches.get(batch, [])
        worst = max(conns, key=lambda c: c.max_stall, default=None)
        return {
            "batch": batch,
            "conns": len(conns),
            "broken": [c.as_dict() for c in conns if c.error],
            "requests": sum(c.requests for c in conns),
            "max_stall": round(worst.max_stall, 3) if worst else 0.0,
            "max_stall_conn": worst.as_dict() if worst else None,
            "served_by": _count(c.served_by for c in conns),
            "connections": [c.as_dict() for c in conns],
        }

    async def close(self, batch: str) -> dict:
        conns = self.batches.pop(batch, [])
        for c in conns:
            if c.task is not None:
                c.task.cancel()
        await asyncio.gather(*(c.task for c in conns if c.task is not None), return_exceptions=True)
        return {"closed": len(conns)}

    async def probe(self, count: int, vip: str, port: int) -> dict:
        async def one() -> str:
            src = str(CLIENTS.network_address + random.randint(1, CLIENTS.num_addresses - 2))
            c = Conn(-1, src, vip, port)
            try:
                reader, writer = await self.connect(c)
                await asyncio.wait_for(self.exchange(c, reader, writer), 5)
                return c.served_by or "?"
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
                return f"error: {type(e).__name__}"
            finally:
                if c.writer is not None:
                    c.writer.close()

        got = await asyncio.gather(*(one() for _ in range(count)))
        return {"served_by": _count(got)}

    def counters(self) -> dict:
        open_ = sum(1 for conns in self.batches.values() for c in conns if c.error is None)
        return {"at": time.time(), "answers": dict(self.answers), "errors": self.errors, "open": open_}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[str(i)] = out.get(str(i), 0) + 1
    return dict(sorted(out.items()))


async def serve() -> None:
    clients = Clients()
    dog = asyncio.get_running_loop().create_task(clients.watchdog())
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        try:
            req = json.loads(line)
            cmd = req.pop("cmd")
            if cmd == "open":
                out = await clients.open(req["batch"], int(req["count"]), req["vip"], int(req["port"]))
            elif cmd == "report":
                out = clients.report(req["batch"])
            elif cmd == "close":
                out = await clients.close(req["batch"])
            elif cmd == "probe":
                out = await clients.probe(int(req["count"]), req["vip"], int(req["port"]))
            elif cmd == "counters":
                out = clients.counters()
            elif cmd == "quit":
                break
            else:
                raise ValueError(f"unknown command {cmd!r}")
            print(json.dumps({"ok": True, "result": out}), flush=True)
        except Exception as e:  # reported to the driver, which fails with it
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
    dog.cancel()
    for b in list(clients.batches):
        await clients.close(b)


def main() -> int:
    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
