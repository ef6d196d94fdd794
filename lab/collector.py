"""The collector: per-process memory and CPU, sampled with psutil at a fixed interval.

Samples are taken in a worker thread (psutil reads /proc synchronously; smaps for USS/PSS
costs ~1 ms per process) so the orchestrator's event loop keeps serving peers meanwhile.
The orchestrator samples itself too, to show what the lab costs beside what it measures.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

Sample = dict[str, Any]


def sample_process(process: psutil.Process, role: str, peer: int | None) -> Sample | None:
    """One sample, or None if the process has gone (its loss is reported by the fleet)."""
    try:
        with process.oneshot():
            memory = process.memory_full_info()
            cpu = process.cpu_times()
            return {
                "t_ns": time.monotonic_ns(),
                "role": role,
                "peer": peer,
                "pid": process.pid,
                "rss": memory.rss,
                "uss": memory.uss,
                "pss": getattr(memory, "pss", None),
                "cpu_user": cpu.user + cpu.children_user,
                "cpu_system": cpu.system + cpu.children_system,
                "fds": process.num_fds(),
            }
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


class Collector:
    def __init__(self, interval_s: float, targets: Callable[[], dict[int, int]], sink: Callable[[Sample], None]) -> None:
        """`targets` returns {peer index: pid} of the peers alive now."""
        self.interval_s = interval_s
        self.targets = targets
        self.sink = sink
        self._processes: dict[int, psutil.Process] = {}
        self._self = psutil.Process(os.getpid())
        self.sweeps = 0
        self.sweep_seconds = 0.0

    def sweep(self) -> list[Sample]:
        started = time.monotonic()
        samples = []
        for peer, pid in self.targets().items():
            try:
                process = self._processes.get(pid) or self._processes.setdefault(pid, psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
            sample = sample_process(process, "peer", peer)
            if sample is not None:
                samples.append(sample)
        own = sample_process(self._self, "orchestrator", None)
        if own is not None:
            samples.append(own)
        self.sweeps += 1
        self.sweep_seconds += time.monotonic() - started
        return samples

    async def run(self) -> None:
        """Samples until cancelled."""
        while True:
            await self.sample_once()
            await asyncio.sleep(self.interval_s)

    async def sample_once(self) -> None:
        for sample in await asyncio.to_thread(self.sweep):
            self.sink(sample)
