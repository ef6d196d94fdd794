"""A run's records, typed: the events and resource samples of a results directory, read once
and checked line by line, beside the manifest.

The same reader serves `lab run` (which hands over what it gathered in memory), `lab report`,
`lab compare`, sweeps and the benchmarks, so a figure cannot differ between them. A damaged
line (cut short by a kill, not JSON, a field missing or of the wrong type) is skipped and
named by file and line number, so a partial or damaged directory stays readable; a directory
whose manifest is unreadable, or that has no events file, is unusable: RecordsError names it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nodes.protocol import BadRecord, Event

MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
RESOURCES = "resources.jsonl"
LOGS = "logs"
MIB = 1024 * 1024


class RecordsError(ValueError):
    """A results directory that cannot be read; the message names the file and the fix."""


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


@dataclass
class RunRecords:
    """What one run left: its manifest, events, samples, and where its peers' logs are."""

    path: Path
    manifest: dict[str, Any]
    events: list[Event]
    samples: list[Sample]
    skipped: list[str] = field(default_factory=list)  # one line per file with damaged lines, naming them

    @property
    def peers_ready(self) -> int:
        return int(self.manifest.get("peers_ready") or 0)

    @property
    def log_dir(self) -> Path:
        return self.path / LOGS


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line's object; a last line cut short by a kill is skipped."""
    return [record for _, record in _lines(path, [])]


def _lines(path: Path, damaged: list[int]) -> list[tuple[int, Any]]:
    """(line number, parsed JSON) of every complete line; numbers of the lines that are not JSON
    go to `damaged` (a last line cut short by a kill is not counted: it is how a killed run ends)."""
    parsed = []
    with path.open(errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith("\n"):
                continue
            try:
                parsed.append((number, json.loads(line)))
            except ValueError:
                damaged.append(number)
    return parsed


def _typed(path: Path, make: Any, skipped: list[str]) -> list[Any]:
    damaged: list[int] = []
    reasons: list[str] = []
    records = []
    for number, record in _lines(path, damaged):
        try:
            records.append(make(record))
        except (BadRecord, KeyError, TypeError) as exc:
            damaged.append(number)
            reasons.append(str(exc))
    if damaged:
        shown = ", ".join(map(str, sorted(damaged)[:10])) + (" ..." if len(damaged) > 10 else "")
        why = f" (first: {reasons[0]})" if reasons else " (not JSON)"
        skipped.append(f"{path}: skipped {len(damaged)} damaged lines: {shown}{why}")
    return records


def load(run_dir: Path) -> RunRecords:
    """A results directory's records. A missing resources file (a run killed before its first
    sample) is an empty list, said in `skipped`."""
    manifest_path, events_path = run_dir / MANIFEST, run_dir / EVENTS
    try:
        manifest = read_json(manifest_path)
    except OSError as exc:
        raise RecordsError(f"{manifest_path}: cannot read ({exc.strerror}); is {run_dir} a results directory?") from None
    except ValueError as exc:
        raise RecordsError(f"{manifest_path}: not JSON ({exc}); the run's manifest is damaged") from None
    if not isinstance(manifest, dict):
        raise RecordsError(f"{manifest_path}: not a JSON object; the run's manifest is damaged")
    if not events_path.is_file():
        raise RecordsError(f"{events_path}: missing; is {run_dir} a results directory?")
    skipped: list[str] = []
    events = _typed(events_path, Event.of, skipped)
    samples_path = run_dir / RESOURCES
    samples = _typed(samples_path, Sample.of, skipped) if samples_path.is_file() else []
    if not samples_path.is_file():
        skipped.append(f"{samples_path}: missing (the run ended before its first resource sample): no memory or CPU figures")
    return RunRecords(run_dir, manifest, events, samples, skipped)
