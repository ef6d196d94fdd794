"""The results directory as it is written: self-describing, written as the run goes so an
interrupted run still leaves a readable directory whose manifest says it is partial. Its
files and the manifest's fields are lab/manifest.py's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from lab.manifest import LOGS, MANIFEST, Manifest


def strict_json(data: Any, indent: int | None = 2) -> str:
    """JSON that jq, browsers and CI steps parse: no NaN or Infinity (ValueError if any slipped in;
    an unbounded figure is null with a reason beside it)."""
    return json.dumps(data, indent=indent, sort_keys=False, default=str, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    """Atomic: a reader never sees half a file, even if the run is killed mid-write."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(strict_json(data) + "\n")
    os.replace(tmp, path)


class ResultsDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._streams: dict[str, IO[str]] = {}

    @classmethod
    def create(cls, path: Path) -> ResultsDir:
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} exists and is not empty; choose another --out")
        (path / LOGS).mkdir(parents=True, exist_ok=True)
        return cls(path)

    @property
    def log_dir(self) -> Path:
        return self.path / LOGS

    def save(self, manifest: Manifest) -> None:
        write_json(self.path / MANIFEST, manifest.record())

    def append(self, name: str, record: dict[str, Any]) -> None:
        """Line-buffered, so every complete record is on disk if the run dies."""
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = (self.path / name).open("a", buffering=1)
        stream.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")

    def write(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
