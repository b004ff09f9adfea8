"""ExaBGP's API process for fwd: joins ExaBGP's pipes to the fwd daemon's BGP socket.

ExaBGP runs the commands of a ``process`` section as its children and talks to them over their
standard streams: it reads API commands (``announce route ...``) from the child's stdout and writes
its messages (JSON: neighbor state changes, updates it sent; ``done``/``error`` acknowledgements)
to the child's stdin. The fwd daemon is ExaBGP's *parent*, so this small relay, started by
ExaBGP as ``python bgp_relay.py SOCKET``, connects to the Unix socket the daemon listens on and
copies bytes both ways until either side closes. It imports nothing from fwd (only the standard
library) so it starts fast and does not depend on how fwd is installed.

Exit status: 0 when ExaBGP closes its pipe or the daemon closes the socket, 1 when the socket
cannot be reached (ExaBGP then respawns the relay).
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def relay(path: str, fd_in: int = 0, fd_out: int = 1) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        print(f"fwd bgp relay: cannot connect to {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    sel = selectors.DefaultSelector()
    sel.register(fd_in, selectors.EVENT_READ, "exabgp")
    sel.register(sock, selectors.EVENT_READ, "fwd")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "exabgp":
                    data = os.read(fd_in, 65536)
                    if not data:
                        return 0
                    sock.sendall(data)
                else:
                    data = sock.recv(65536)
                    if not data:
                        return 0
                    view = memoryview(data)
                    while view:
                        n = os.write(fd_out, view)
                        view = view[n:]
    except (BrokenPipeError, ConnectionError):
        return 0
    finally:
        sel.close()
        sock.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: bgp_relay.py SOCKET", file=sys.stderr)
        return 2
    return relay(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
