"""The records a run is made of, for every stage to name without importing another stage:
the kinds of event the lab itself writes beside the peers' operations (nodes/protocol.py
`Event`, `Op`), and the collector's resource `Sample`.

The bottom floor: it imports only nodes/protocol.py, so the network, shaping, peers and
workload stages record their events here and analysis reads them here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from nodes.protocol import BadRecord, Event, Op

RUN_STARTED = "run_started"  # the orchestrator's event at the start of a run
PHASE = "phase"  # the orchestrator's event for each workload phase, from its start to its end
IMPAIRMENT = "impairment"  # the orchestrator's event for each change of the links
RERUN = "rerun"  # the orchestrator's event for each stretch of the 2N check: operations started in it are its
VERIFICATION = "impairment_verification"  # the event of a `lab netem --verify`
FAULT = "fault"  # a fault phase's fault, from when it took effect to when it was undone (docs/faults.md)
ADAPTED = "time_dilation"  # the factor switched within a phase (lab/governor.py, a gossip rest), at the switch's instant
PEER_DOWN = "peer_down"  # a peer a fault took down or froze, from then until it was back (or the phase's end)
MIB = 1024 * 1024


def announced_message(event: Event) -> str | None:
    """The message an event says was sent: a gossip-phase announcement or a publish that announced."""
    if event.ok and event.op in (Op.GOSSIP_PUBLISH, Op.PUBLISH):
        return event.message
    return None


def _number(record: Mapping[str, Any], name: str, optional: bool = False) -> Any:
    value = record.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRecord(f"{name}: expected a number, got {value!r}")
    return value


@dataclass(frozen=True)
class Sample:
    """One collector sample of one process: a host process with its peers, or one of the lab's own."""

    t_ns: int
    sweep: int
    role: str  # "peer" for host processes; "orchestrator", "delay_line" for the lab's own
    peers: tuple[int, ...]  # the peers the process hosted then
    pid: int
    rss: int
    uss: int | None  # read on detailed sweeps only
    pss: int | None
    cpu_user: float
    cpu_system: float
    fds: int

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user + self.cpu_system

    def per_peer(self, value: float) -> float:
        """A host process's figure divided among the peers it hosted at this sample."""
        return value / max(len(self.peers), 1)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "peers": list(self.peers), "peer": self.peers[0] if self.peers else None}

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Sample:
        if not isinstance(record, Mapping):
            raise BadRecord(f"expected an object, got {type(record).__name__}")
        peers = record.get("peers") or ([record["peer"]] if record.get("peer") is not None else [])
        if not isinstance(peers, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in peers):
            raise BadRecord(f"peers: expected a list of peer indexes, got {peers!r}")
        role = record.get("role", "peer")
        if not isinstance(role, str):
            raise BadRecord(f"role: expected a string, got {role!r}")
        return cls(
            t_ns=int(_number(record, "t_ns")), sweep=int(_number(record, "sweep")), role=role, peers=tuple(peers),
            pid=int(_number(record, "pid")), rss=int(_number(record, "rss")),
            uss=_number(record, "uss", optional=True), pss=_number(record, "pss", optional=True),
            cpu_user=float(_number(record, "cpu_user")), cpu_system=float(_number(record, "cpu_system")),
            fds=int(_number(record, "fds", optional=True) or 0),
        )
