"""Counting what the peers wrote to stderr: warnings and errors are results too.

Lines look like `2026-11-22 04:58:08,032 peer 7 libp2p.transport.tcp.tcp ERROR Failed to open ...`
(the format nodes/peer.py configures; one log per host process, each line naming its peer; a
committed run keeps them compressed, `host-NNNN.stderr.gz`).
Messages are grouped after masking what varies between occurrences (peer ids, addresses,
numbers), so "the same error at 40 peers" is one row.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from pathlib import Path
from typing import Any

LINE = re.compile(r"^\S+ \S+ peer (?P<peer>\S+) (?P<logger>\S+) (?P<level>WARNING|ERROR|CRITICAL) (?P<message>.*)$")
VARIABLE = [
    (re.compile(r"12D3Koo\w+|Qm\w{44}"), "<peer>"),
    (re.compile(r"\d+\.\d+\.\d+\.\d+(:\d+)?"), "<addr>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]
TOP = 10


def _masked(message: str) -> str:
    for pattern, replacement in VARIABLE:
        message = pattern.sub(replacement, message)
    return message[:200]


def count_levels(log_dir: Path) -> dict[str, Any]:
    levels: Counter[str] = Counter()
    messages: Counter[tuple[str, str, str]] = Counter()
    peers_with_errors = set()
    for path in sorted([*log_dir.glob("host-*.stderr"), *log_dir.glob("host-*.stderr.gz")]):
        data = path.read_bytes()
        for line in (gzip.decompress(data) if path.suffix == ".gz" else data).decode(errors="replace").splitlines():
            match = LINE.match(line)
            if match is None:
                continue
            level = match["level"]
            levels[level] += 1
            messages[(level, match["logger"], _masked(match["message"]))] += 1
            if level != "WARNING":
                peers_with_errors.add(match["peer"])
    return {
        "levels": dict(levels),
        "peers_with_errors": len(peers_with_errors),
        "top": [
            {"level": level, "logger": logger, "message": message, "count": count}
            for (level, logger, message), count in messages.most_common(TOP)
        ],
    }
