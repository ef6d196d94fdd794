"""Recording operations: start/end on one clock (monotonic_ns), outcome, and the work the library did.

py-libp2p does not return how many peers a lookup asked; it logs
"Network lookup completed after R rounds (Q queries)". A log handler reads that line and adds
it to the operation that is running in the same trio task (context variables follow tasks).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from nodes.protocol import Event

Emit = Callable[[dict[str, Any]], Awaitable[None]]

_current_work: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("work", default=None)
_LOOKUP_DONE = re.compile(r"Network lookup completed after (\d+) rounds \((\d+) queries\)")


class LookupWorkHandler(logging.Handler):
    """Adds DHT lookup rounds and queries to the operation of the current task."""

    def emit(self, record: logging.LogRecord) -> None:
        work = _current_work.get()
        match = _LOOKUP_DONE.search(record.getMessage())
        if work is None or match is None:
            return
        work["lookups"] = work.get("lookups", 0) + 1
        work["rounds"] = work.get("rounds", 0) + int(match.group(1))
        work["queries"] = work.get("queries", 0) + int(match.group(2))


def install_work_handler() -> None:
    routing_logger = logging.getLogger("libp2p.kad_dht.peer_routing")
    routing_logger.setLevel(logging.INFO)
    routing_logger.propagate = False  # its INFO lines are read here, not printed
    routing_logger.addHandler(LookupWorkHandler())


class OpFailed(Exception):
    """An operation that ran but did not achieve its goal (no record, bad checksum, ...)."""


class Recorder:
    """Turns each operation into one event sent to the orchestrator."""

    def __init__(self, emit: Emit, peer: int) -> None:
        self._emit = emit
        self._peer = peer

    @asynccontextmanager
    async def operation(self, op: str, **fields: Any) -> AsyncIterator[dict[str, Any]]:
        """Times the block; the yielded dict collects fields; exceptions are recorded, then re-raised."""
        details: dict[str, Any] = dict(fields)
        work: dict[str, Any] = {}
        token = _current_work.set(work)
        start = time.monotonic_ns()
        error: str | None = None
        try:
            yield details
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise
        except BaseException:  # cancelled: a deadline passed (a call's timeout_s) or the peer is ending
            error = "cancelled before it ended"
            raise
        finally:
            end = time.monotonic_ns()
            _current_work.reset(token)
            if work:
                details["work"] = work
            with trio.CancelScope(shield=True):  # a cancelled operation is still reported, as failed
                await self.event(op, start, end, error, details)

    async def event(self, op: str, start_ns: int, end_ns: int, error: str | None, details: dict[str, Any]) -> None:
        event = Event(op, self._peer, start_ns, end_ns, error is None, error, details)
        await self._emit({"type": "event", **event.record()})
