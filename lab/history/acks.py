"""The acknowledgement file: people settle change points, and the page, the markdown and the exit
code all respect it. It lives in the history's (first) root as `history-acks.yaml`:

    - metric: dht_lookup        # or "*": every metric that changed that night
      night: 42-peers-8c1f3e    # the run id of the change's first night, or
      commit: 8c1f3e2           # the commit (a prefix) that night ran
      status: expected          # ack | expected | false-positive
      note: routing tables of 40, not 20, since the topology change
      by: alice
      at: 2026-12-02
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from lab.errors import BadInput

ACKS = "history-acks.yaml"
Status = Literal["ack", "expected", "false-positive"]


class Ack(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    night: str | None = None
    commit: str | None = None
    status: Status
    note: str
    by: str
    at: date

    @model_validator(mode="after")
    def _names_a_night(self) -> Ack:
        if not (self.night or self.commit):
            raise ValueError("give the change's night (a run id) or commit")
        return self

    def settles(self, metric: str, run_id: str, commit: str | None) -> bool:
        if self.metric not in ("*", metric):
            return False
        if self.night is not None:
            return self.night == run_id
        return commit is not None and self.commit is not None and commit.startswith(self.commit)


def read_acks(root: Path) -> list[Ack]:
    """ROOT's acknowledgements; none if it has no file. BadInput names the entry and field."""
    path = root / ACKS
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BadInput(f"{path}: not readable YAML ({str(exc).splitlines()[0]}); fix or remove it") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise BadInput(f"{path}: expected a list of acknowledgements (- metric: ..., status: ...)")
    acks = []
    for number, entry in enumerate(data, 1):
        try:
            acks.append(Ack.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "entry"
            raise BadInput(f"{path}: entry {number}: {field}: {first['msg']}") from None
    return acks
