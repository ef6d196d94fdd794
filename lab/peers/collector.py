"""The collector: per-process memory and CPU, sampled with psutil at a fixed interval.

Samples are taken in a worker thread (psutil reads /proc synchronously; smaps for USS/PSS
costs ~1 ms per process) so the orchestrator's event loop keeps serving peers meanwhile.
The orchestrator samples itself too, to show what the lab costs beside what it measures.

RSS and CPU are cheap (/proc/pid/stat); USS and PSS need /proc/pid/smaps_rollup, ~1.3 ms per
peer when idle and far more when the CPUs are saturated, so they are read every
`detail_every`-th sweep and at the end of the run.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from lab.events import Sample
from nodes.protocol import Dilation


def busy_between(before: Any, after: Any) -> float:
    """The machine's busy share (not idle, not waiting on I/O) between two psutil.cpu_times()."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return 1 - idle / total if total > 0 else 0.0


def sample_process(process: psutil.Process, role: str, peers: list[int], detailed: bool, sweep: int,
                   clock: Callable[[], int] = time.monotonic_ns) -> Sample | None:
    """One sample, or None if the process has gone (its loss is reported by the fleet).
    `peers`: the peers the process hosts (none for the lab's own processes); `clock`: the
    run's (virtual) monotonic nanoseconds, which samples are stamped with."""
    try:
        with process.oneshot():
            memory = process.memory_full_info() if detailed else process.memory_info()
            cpu = process.cpu_times()
            return Sample(
                t_ns=clock(), sweep=sweep, role=role, peers=tuple(peers), pid=process.pid, rss=memory.rss,
                uss=getattr(memory, "uss", None), pss=getattr(memory, "pss", None),
                # Its own time only: children's is added when they are reaped, which for the
                # orchestrator would charge it with a sweep's earlier fork servers and their hosts.
                cpu_user=cpu.user, cpu_system=cpu.system, fds=process.num_fds(),
            )
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


class Collector:
    def __init__(
        self,
        interval_s: float,
        detail_every: int,
        targets: Callable[[], dict[int, list[int]]],
        sink: Callable[[Sample], None],
        helpers: Callable[[], dict[str, int]] = dict,
        dilation: Dilation | None = None,
    ) -> None:
        """`targets` returns {pid: [peer index, ...]} of the host processes alive now; `helpers` {role: pid} of
        the lab's own helper processes (the delay line), sampled so the lab's cost is known; `dilation` the
        run's virtual time, which stamps the samples and in which `interval_s` is counted (so the
        interval follows a phase's change of factor)."""
        self.dilation = dilation or Dilation()
        self.interval_s = interval_s
        self.detail_every = detail_every
        self.targets = targets
        self.helpers = helpers
        self.sink = sink
        self._processes: dict[int, psutil.Process] = {}
        self._self = psutil.Process(os.getpid())
        self.sweeps = 0
        self.sweep_seconds = 0.0

    def sweep(self, detailed: bool) -> list[Sample]:
        started = time.monotonic()
        samples = []
        targets: list[tuple[str, list[int], int]] = [("peer", peers, pid) for pid, peers in self.targets().items()]
        targets += [(role, [], pid) for role, pid in self.helpers().items()]
        for role, peers, pid in targets:
            try:
                process = self._processes.get(pid) or self._processes.setdefault(pid, psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
            sample = sample_process(process, role, peers, detailed, self.sweeps, self.dilation.now_ns)
            if sample is not None:
                samples.append(sample)
        own = sample_process(self._self, "orchestrator", [], detailed, self.sweeps, self.dilation.now_ns)
        if own is not None:
            samples.append(own)
        self.sweeps += 1
        self.sweep_seconds += time.monotonic() - started
        return samples

    async def run(self) -> None:
        """Samples until cancelled."""
        while True:
            await self.sample_once(detailed=self.sweeps % self.detail_every == 0)
            await asyncio.sleep(self.dilation.real_s(self.interval_s))

    async def sample_once(self, detailed: bool = True) -> None:
        for sample in await asyncio.to_thread(self.sweep, detailed):
            self.sink(sample)
