"""A run's records, typed: the events and resource samples of a results directory, read once
and checked line by line, beside the manifest.

The same reader serves `lab run` (which hands over what it gathered in memory), `lab report`,
`lab compare`, sweeps and the benchmarks, so a figure cannot differ between them. A damaged
line (cut short by a kill, not JSON, a field missing or of the wrong type) is skipped and
named by file and line number, so a partial or damaged directory stays readable; a directory
whose manifest is unreadable, or that has no events file, is unusable: RecordsError names it.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import RecordsError
from lab.events import Sample
from lab.manifest import EVENTS, LOGS, RESOURCES, ROUTING, Manifest, read_manifest, stored
from nodes.protocol import ROUTING_PEERS, BadRecord, Event


@dataclass
class RunRecords:
    """What one run left: its manifest, events, samples, and where its peers' logs are."""

    path: Path
    manifest: Manifest
    events: list[Event]
    samples: list[Sample]
    routing: dict[int, list[str]] = field(default_factory=dict)  # peer index -> its routing table's peer ids at the end
    skipped: list[str] = field(default_factory=list)  # one line per file with damaged lines, naming them

    @property
    def log_dir(self) -> Path:
        return self.path / LOGS


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line's object; a last line cut short by a kill is skipped."""
    return [record for _, record in _lines(path, [])]


def _lines(path: Path, damaged: list[int]) -> list[tuple[int, Any]]:
    """(line number, parsed JSON) of every complete line (of a gzip file too); numbers of the lines
    that are not JSON go to `damaged` (a last line cut short by a kill is not counted: it is how a
    killed run ends)."""
    parsed = []
    opened = gzip.open(path, "rt", errors="replace") if path.suffix == ".gz" else path.open(errors="replace")
    with opened as handle:
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
    manifest = read_manifest(run_dir)
    events_path = stored(run_dir, EVENTS)
    if events_path is None:
        raise RecordsError(f"{run_dir / EVENTS}: missing; is {run_dir} a results directory?")
    skipped: list[str] = []
    events = _typed(events_path, Event.of, skipped)
    samples_path = stored(run_dir, RESOURCES)
    samples = _typed(samples_path, Sample.of, skipped) if samples_path else []
    if samples_path is None:
        skipped.append(f"{run_dir / RESOURCES}: missing (the run ended before its first resource sample): no memory or CPU "
                       "figures")
    routing_path = stored(run_dir, ROUTING)
    routing = dict(_typed(routing_path, _routing_table, skipped)) if routing_path else {}
    return RunRecords(run_dir, manifest, events, samples, routing, skipped)


def _routing_table(record: Any) -> tuple[int, list[str]]:
    """One line of ROUTING: a peer's index and its routing table's peer ids."""
    index, table = record["index"], record[ROUTING_PEERS]
    if not isinstance(index, int) or not isinstance(table, list) or not all(isinstance(p, str) for p in table):
        raise TypeError("index must be an integer and routing_peers a list of peer ids")
    return index, table
