"""What every impairment backend does, and the choice between them by probing the kernel."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from lab.network import doctor
from lab.network.fabric import PeerSlot
from lab.network.netlink import NetlinkError, NetNS
from lab.shaping import tc
from lab.shaping.plan import LinkPlan

Install = Callable[[NetNS, int], None]  # puts a qdisc tree on an interface (namespace, ifindex)

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

    def kernel_state(self, slot: PeerSlot) -> list[str]:
        """What the kernel (and delay line) do to the peer's packets now, read back, not remembered."""
        assert slot.netns is not None
        with NetNS(slot.netns) as ns:
            return tc.describe(ns, ns.link_lookup(ifname="eth0")[0])

    @staticmethod
    def replace_root(slot: PeerSlot, install: Install | None, what: str) -> None:
        """Swaps the qdisc tree on the peer's eth0 for `install`'s (none when None)."""
        assert slot.netns is not None
        try:
            with NetNS(slot.netns) as ns:
                eth0 = ns.link_lookup(ifname="eth0")[0]
                tc.remove_root(ns, eth0)
                if install is not None:
                    install(ns, eth0)
        except NetlinkError as exc:
            raise ShapingError(f"peer {slot.index}: tc refused {what} ({exc})") from exc

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
