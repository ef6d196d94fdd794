"""Names of what one run creates, all under one per-run prefix, so runs never collide and
`lab clean` can find what a killed run left behind."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

PREFIX = "plab"
# Every peer process carries this variable; `lab clean` finds leftovers by it.
ENV_VAR = "P2P_LAB_RUN"


def state_dir() -> Path:
    """Where live runs register themselves (orchestrator pid, results directory)."""
    base = Path("/run") if os.geteuid() == 0 else Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    path = base / "p2p-lab"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class RunId:
    value: str

    @classmethod
    def new(cls) -> RunId:
        return cls(secrets.token_hex(3))

    def part(self, number: int) -> RunId:
        """The run's names on its machine `number` when it is placed over several (0: the run's
        own): distinct, since two machines may be one kernel, and derived, so the same on every ask."""
        if number == 0:
            return self
        return RunId(hashlib.sha256(f"{self.value}/{number}".encode()).hexdigest()[:6])

    @property
    def prefix(self) -> str:
        return f"{PREFIX}-{self.value}"

    @property
    def hub_netns(self) -> str:
        return f"{self.prefix}-hub"

    def host_netns(self, host: int) -> str:
        return f"{self.prefix}-h{host:04d}"

    @property
    def state_file(self) -> Path:
        return state_dir() / f"{self.value}.json"

    def register(self, owner_pid: int, results: Path, control: Path, impairment: Path | None, impairment_reason: str,
                 part: int | None = None) -> None:
        """The state file of a live run: `lab clean` leaves the run alone while `owner_pid` lives
        (the orchestrator, or an agent holding the run's machine), `lab netem` finds its socket.
        `part`: one machine's part of a run over several (`lab netem` asks the run's driver instead)."""
        self.state_file.write_text(json.dumps({
            "orchestrator_pid": owner_pid, "results": str(results.resolve()), "control": str(control.resolve()),
            "impairment": str(impairment.resolve()) if impairment is not None else None,
            "impairment_reason": impairment_reason, "part": part}))


def run_of_name(name: str) -> str | None:
    """The run id in a name made from `RunId.prefix` (namespaces, the delay line's directory), else None."""
    parts = name.split("-")
    if len(parts) >= 3 and parts[0] == PREFIX and len(parts[1]) == 6:
        return parts[1]
    return None
