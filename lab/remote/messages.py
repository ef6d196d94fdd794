"""What the coordinator and an agent say to each other (frames.py carries them), in a module of
their own: the agent runs as __main__, and a message must unpickle by the same name at both ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab.machine import Paths, Probe, Share
from lab.runid import RunId
from lab.topology import Topology
from nodes.protocol import Dilation


@dataclass(frozen=True)
class Setup:
    """What a machine is built from: the run's names, its topology, time and paths on this machine."""

    run_id: RunId
    topology: Topology
    dilation: Dilation
    probe: Probe
    paths: Paths
    share: Share | None = None  # this machine's part when the run is placed over several


@dataclass(frozen=True)
class Ask:
    """A call of the coordinator: `name` is probe, clock, underlay, open, close or a Machine call."""

    id: int
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Answer:
    id: int
    ok: bool
    value: Any  # the call's result, or the exception it raised


@dataclass(frozen=True)
class Said:
    """What the machine streams: an event, a sample, an echo line, or the live peers."""

    kind: str
    record: Any
