"""The results directory as it is written: self-describing, written as the run goes so an
interrupted run still leaves a readable directory whose manifest says it is partial. Its
files and the manifest's fields are lab/manifest.py's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from lab.errors import ResultsError
from lab.manifest import LOGS, MANIFEST, Manifest


def strict_json(data: Any, indent: int | None = 2) -> str:
    """JSON that jq, browsers and CI steps parse: no NaN or Infinity (ValueError if any slipped in;
    an unbounded figure is null with a reason beside it)."""
    return json.dumps(data, indent=indent, sort_keys=False, default=str, allow_nan=False)


def write_text(path: Path, text: str) -> None:
    """Atomic: a reader never sees half a file, even if the lab is killed mid-write or the disk
    fills (the old file, or none, stays; the half-written one is removed)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ResultsError.of(path, exc) from None
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, strict_json(data) + "\n")


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
        """Line-buffered, so every complete record is on disk if the run dies (a line cut short
        by a full disk is skipped by its readers, as one cut by a kill)."""
        try:
            stream = self._streams.get(name)
            if stream is None:
                stream = self._streams[name] = (self.path / name).open("a", buffering=1)
            stream.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        except OSError as exc:
            raise ResultsError.of(self.path / name, exc) from None

    def write(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)

    def close(self) -> None:
        """Closes every stream, even when one cannot flush (a full disk): the first such error last."""
        streams, self._streams = self._streams, {}
        failed: ResultsError | None = None
        for name, stream in streams.items():
            try:
                stream.close()
            except OSError as exc:
                failed = failed or ResultsError.of(self.path / name, exc)
        if failed is not None:
            raise failed
