"""What every impairment backend does, and the choice between them by probing the kernel."""

from __future__ import annotations

from abc import ABC, abstractmethod

from lab import doctor
from lab.network import PeerSlot
from lab.shaping.plan import LinkPlan

NETEM_NEEDS = ("sch_netem", "htb")
USERSPACE_NEEDS = ("iptables statistic", "nfqueue", "tbf")


class ShapingError(RuntimeError):
    """Impairment cannot be had as asked (missing kernel feature, unsupported parameter,
    links measured not doing what was configured); one line saying what and the fix."""


class Backend(ABC):
    name: str

    def __init__(self, prefixes: dict[str, list[str]]) -> None:
        self.prefixes = prefixes  # destination prefixes of each region, for per-destination shaping

    @staticmethod
    @abstractmethod
    def unsupported(plan: LinkPlan) -> str | None:
        """Why this backend cannot apply `plan` (naming the field), or None."""

    @abstractmethod
    def apply(self, changes: list[tuple[PeerSlot, LinkPlan]]) -> None:
        """Puts each plan in force on its peer's link; returns once the kernel has it."""

    @abstractmethod
    def kernel_state(self, slot: PeerSlot) -> list[str]:
        """What the kernel (and delay line) do to the peer's packets now, read back, not remembered."""

    def helper_pids(self) -> dict[str, int]:
        """{role: pid} of helper processes, for the collector (only the userspace backend has one)."""
        return {}

    def close(self) -> None:  # noqa: B027 (optional hook: only the userspace backend has helpers)
        """Stops helpers; links go with their namespaces."""


def _missing(probes: tuple[str, ...]) -> str | None:
    problems = [f"{name}: {why}" for name in probes if (why := doctor.problem(name))]
    return "; ".join(problems) or None


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend, why), by trying each feature in a throwaway namespace."""
    netem = _missing(NETEM_NEEDS)
    if requested == "netem":
        if netem:
            raise ShapingError(f"impairment.backend is netem but {netem}; set impairment.backend: userspace or auto")
        return "netem", "requested by the topology"
    userspace = _missing(USERSPACE_NEEDS)
    if requested == "userspace":
        if userspace:
            raise ShapingError(f"impairment.backend is userspace but {userspace}")
        return "userspace", "requested by the topology"
    if netem is None:
        return "netem", "kernel has sch_netem and htb"
    if userspace is None:
        return "userspace", f"kernel lacks netem ({netem}); iptables statistic, NFQUEUE and TBF work"
    raise ShapingError(f"no impairment backend works here: netem ({netem}); userspace ({userspace})")
