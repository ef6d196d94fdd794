"""A ticker for long work: a line every few seconds while calls are pending, so a 10-minute
phase on a 100-peer network is visibly alive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType

EVERY_S = 10.0


class Ticker:
    def __init__(self, echo: Callable[[str], None], label: str, total: int, every_s: float = EVERY_S) -> None:
        self.echo = echo
        self.label = label
        self.total = total
        self.every_s = every_s
        self.done = 0
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self.echo(f"  {self.label}: {self.done}/{self.total} done, {time.monotonic() - self._started:.0f}s")

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
