"""asyncio task bookkeeping shared by the daemon and the BGP speaker."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel every task, wait until each has finished (whatever it raised), empty the list."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t
    tasks.clear()
