"""`lab doctor` and `lab clean` on one machine, as lines: run here, or by each machine's agent
with `--cluster` (lab/remote/agent.py), so every machine answers with the same code."""

from __future__ import annotations

from lab import cleanup
from lab.errors import LabError
from lab.network import doctor
from lab.shaping.backend import choose_backend


def doctor_lines(cluster: bool = False) -> list[str]:
    """What this machine supports and the mode `lab run` will use; `cluster`: also what a run
    over several machines needs of it (its clock synchronised)."""
    lines = [f"{'yes' if check.ok else 'no ':3}  {check.name:20} {check.detail}" for check in doctor.run_checks(cluster)]
    mode, why = doctor.choose_mode("auto")
    lines.append(f"lab run will use: {mode} ({why})")
    try:
        backend, reason = choose_backend("auto")
        lines.append(f"link impairment backend: {backend} ({reason})")
    except LabError as exc:
        lines.append(f"link impairment backend: none ({exc})")
    return lines


def clean_lines() -> list[str]:
    """Removes what killed runs left on this machine; one line per thing removed."""
    lines: list[str] = []
    cleanup.clean(lines.append)
    return lines
