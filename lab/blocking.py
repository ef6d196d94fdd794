"""Blocking kernel work (netlink, iptables, measurements) from asyncio, never abandoned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_thread_to_completion(function: Callable[[], T]) -> T:
    """Runs `function` in a thread; a cancel waits for the thread to finish before it
    propagates, so cleanup never races a half-built network or a measurement in flight."""
    future = asyncio.get_running_loop().run_in_executor(None, function)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
