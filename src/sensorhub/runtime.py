"""How a command runs: its coroutine on uvloop, stopped by a signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop


def run_async(main: Callable[[], Coroutine[Any, Any, int]], on_signal: Callable[[], None] | None = None) -> int:
    """Run on uvloop. SIGTERM/SIGINT call `on_signal` for a graceful stop; without one, they cancel
    `main`, so its `finally` blocks still clean up."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop = runner.get_loop()
        task = loop.create_task(main())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal or task.cancel)
        try:
            return runner.run(_await(task))
        except asyncio.CancelledError:
            return 130


async def _await(task: asyncio.Task[int]) -> int:
    return await task
