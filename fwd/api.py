"""The control API: JSON lines over a Unix stream socket that only root can use.

Protocol (one connection may carry any number of exchanges, in order)::

    -> {"cmd": "status", "args": {}}\\n
    <- {"ok": true, "result": {...}}\\n
    <- {"ok": false, "error": "one line"}\\n          (a refused or failed request)

Requests are objects with ``cmd`` (a string) and optional ``args`` (an object); a line is at most
:data:`MAX_LINE` bytes. The commands are the daemon's (fwd.daemon: status, backend, reload,
lookup, ping); this module only moves them.

Who may talk: the socket file is created mode 0600 (owner = the daemon's user, root), and every
connection's peer credentials (``SO_PEERCRED``) are checked: a peer whose uid is neither 0 nor the
daemon's own gets ``{"ok": false, "error": "permission denied: ..."}`` and the connection is
closed. The file permission stops other users at connect(); the credential check also covers a
socket whose mode was loosened by hand or a descriptor passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_LINE",
    "ApiError",
    "ControlClient",
    "ControlServer",
    "decode_request",
    "encode",
    "peer_credentials",
]

MAX_LINE = 1 << 20
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ApiError(Exception):
    """A request the daemon refused, or a failure to reach it; the text is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


# ----------------------------------------------------------------------------------------------
# wire format


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(cmd, args) of one request line; ApiError with the reason when it is not a request."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(f"bad request: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ApiError("bad request: expected a JSON object")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ApiError('bad request: "cmd" must be a non-empty string')
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ApiError('bad request: "args" must be an object')
    unknown = set(obj) - {"cmd", "args"}
    if unknown:
        raise ApiError(f"bad request: unknown key {sorted(unknown)[0]!r} (allowed: cmd, args)")
    return cmd, args


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


# ----------------------------------------------------------------------------------------------
# server


class ControlServer:
    """Serves ``handlers[cmd](args)`` on a root-only Unix socket, in the running event loop."""

    def __init__(
        self,
        path: str,
        handlers: dict[str, Handler],
        log: logging.Logger | None = None,
        allowed_uids: frozenset[int] | None = None,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.log = log or logging.getLogger("fwd.api")
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({0, os.geteuid()})
        self._server: asyncio.base_events.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self.refused = 0

    async def start(self) -> None:
        path = Path(self.path)
        made_dir = not path.parent.exists()
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if made_dir:
            self.log.debug("created %s", path.parent)
        self._clear_stale(path)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path), limit=MAX_LINE)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        if os.geteuid() == 0:
            os.chown(path, 0, 0)
        st = path.stat()
        self._inode = (st.st_dev, st.st_ino)

    def _clear_stale(self, path: Path) -> None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ApiError(
                f"control socket {path}: exists and is not a socket; remove it or choose another path"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # nobody listens: left by a process that is gone
            self.log.info("removed the stale control socket %s", path)
            return
        finally:
            probe.close()
        raise ApiError(
            f"control socket {path}: another fwd is running and answering there "
            "(one daemon per control socket; stop it or pass --control-socket)"
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):  # clients still connected (fwd top, ...)
                task.cancel()
            if self._conns:
                await asyncio.gather(*self._conns, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        # remove the file only if it is still ours (not replaced by another daemon since)
        try:
            st = os.lstat(self.path)
            if self._inode == (st.st_dev, st.st_ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, _gid = peer_credentials(sock)
        except OSError:
            pid, uid = -1, -1
        try:
            if uid not in self.allowed_uids:
                self.refused += 1
                self.log.warning("control socket: refused a client (pid %d, uid %d): not root", pid, uid)
                writer.write(
                    encode(
                        {
                            "ok": False,
                            "error": f"permission denied: the fwd control socket {self.path} accepts "
                            f"root only (your uid is {uid})",
                        }
                    )
                )
                await writer.drain()
                return
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(encode({"ok": False, "error": f"bad request: line longer than {MAX_LINE}"}))
                    await writer.drain()
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                writer.write(encode(await self._answer(line, pid)))
                await writer.drain()
        except (ConnectionError, BrokenPipeError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes, pid: int) -> dict[str, Any]:
        try:
            cmd, args = decode_request(line)
            handler = self.handlers.get(cmd)
            if handler is None:
                raise ApiError(f"unknown command {cmd!r} (known: {', '.join(sorted(self.handlers))})")
            return {"ok": True, "result": await handler(args)}
        except ApiError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug: answer, log, keep serving
            self.log.exception("control request from pid %d failed", pid)
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {' '.join(str(e).split())}"}


# ----------------------------------------------------------------------------------------------
# client


class ControlClient:
    """Blocking client (for the CLI): ``call(cmd, **args)`` returns the result or raises ApiError."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self) -> None:
        if self._sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except FileNotFoundError:
            s.close()
            raise ApiError(
                f"no fwd daemon at {self.path}: the control socket does not exist "
                "(is fwd running? see --control-socket)"
            ) from None
        except PermissionError:
            s.close()
            raise ApiError(
                f"permission denied: the fwd control socket {self.path} accepts root only "
                f"(your uid is {os.getuid()})"
            ) from None
        except ConnectionRefusedError:
            s.close()
            raise ApiError(
                f"no fwd daemon answers at {self.path} (a stale socket: fwd is not running)"
            ) from None
        except OSError as e:
            s.close()
            raise ApiError(
                f"cannot connect to the fwd control socket {self.path}: {e.strerror or e}"
            ) from None
        self._sock = s

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def __enter__(self) -> ControlClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, cmd: str, **args: Any) -> Any:
        self.connect()
        assert self._sock is not None
        try:
            try:
                self._sock.sendall(encode({"cmd": cmd, "args": args}))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may have refused us and closed: its reason is still readable
            reply = self._readline()
        except TimeoutError:
            self.close()
            raise ApiError(f"the fwd daemon did not answer {cmd!r} within {self.timeout:g}s") from None
        except OSError as e:
            self.close()
            raise ApiError(f"control socket {self.path}: {e.strerror or e}") from None
        try:
            obj = json.loads(reply)
        except ValueError:
            raise ApiError(f"the fwd daemon sent something that is not JSON: {reply[:80]!r}") from None
        if not isinstance(obj, dict) or "ok" not in obj:
            raise ApiError("the fwd daemon sent an answer without 'ok'")
        if not obj["ok"]:
            raise ApiError(str(obj.get("error", "request failed")))
        return obj.get("result")

    def _readline(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ApiError(f"the fwd daemon closed the control connection ({self.path})")
            self._buf += chunk
            if len(self._buf) > 64 * MAX_LINE:
                raise ApiError("the fwd daemon's answer is too long")
        line, _, self._buf = self._buf.partition(b"\n")
        return line
