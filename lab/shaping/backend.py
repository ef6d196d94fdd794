"""What every impairment backend does, and the choice between them by probing the kernel."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

from lab.errors import ShapingError
from lab.network import doctor
from lab.network.fabric import PeerSlot
from lab.network.netlink import NetlinkError, in_namespace
from lab.shaping import tc
from lab.shaping.plan import LinkPlan

Host = list[tuple[PeerSlot, LinkPlan]]  # every peer of one host with the plan it should have

NETEM_NEEDS = ("sch_netem", "htb")
USERSPACE_NEEDS = ("iptables statistic", "nfqueue", "htb")



@dataclass(frozen=True)
class Counters:
    """What a backend counted: packets dropped by cause since it started (a counter the kernel
    restarts when its rules or qdiscs are replaced restarts here too), and the delay line's
    lateness over the packets it released since it was last asked."""

    drops: Counter[str] = field(default_factory=Counter)
    released: int = 0
    late_s: tuple[float | None, float | None, float | None] = (None, None, None)  # p50, p99, max


class Backend(ABC):
    name: str

    def __init__(self, prefixes: dict[str, list[str]]) -> None:
        self.prefixes = prefixes  # destination prefixes of each region, for per-destination shaping
        self.trees: dict[str, list[tuple[str, LinkPlan]] | None] = {}  # host namespace -> what its tree shapes (None: unknown)

    @staticmethod
    @abstractmethod
    def unsupported(plan: LinkPlan) -> str | None:
        """Why this backend cannot apply `plan` (naming the field), or None."""

    @abstractmethod
    def apply(self, hosts: list[Host]) -> None:
        """Puts the plans of every peer of each host in force (a host's peers share its eth0,
        so each host is given whole); returns once the kernel has them."""

    def kernel_state(self, slot: PeerSlot) -> list[str]:
        """What the kernel (and delay line) do to the peer's packets now, read back, not remembered."""
        assert slot.netns is not None
        with in_namespace(slot.netns) as ns:
            return tc.describe(ns, ns.link_lookup(ifname="eth0")[0])

    def replace_tree(self, host: Host, netem: bool) -> None:
        """Swaps the qdisc tree on the host's eth0 for one shaping each of its peers by source
        address (lab/shaping/tc.py), or none when no peer's plan needs one. A host whose tree
        would stay the same is left alone: a switch of dilation changes no tree of links without
        a rate under the userspace backend, and a rebuilt tree drops the packets it queued."""
        slot = host[0][0]
        shaped = [(s.ip, plan) for s, plan in host if (plan.is_impaired if netem else plan.rate_bps)]
        assert slot.netns is not None
        if self.trees.get(slot.netns, []) == shaped:
            return
        self.trees[slot.netns] = None  # until the new tree is whole
        try:
            with in_namespace(slot.netns) as ns:
                eth0 = ns.link_lookup(ifname="eth0")[0]
                tc.remove_root(ns, eth0)
                if shaped:
                    tc.install_host_tree(ns, eth0, shaped, self.prefixes, netem)
            self.trees[slot.netns] = shaped
        except NetlinkError as exc:
            what = "; ".join(f"peer {s.index}: {plan.describe()}" for s, plan in host)
            raise ShapingError(f"host of peer {slot.index}: tc refused {what} ({exc})") from exc

    def retime(self, ratio: float) -> int:
        """Stretches what held packets have left to wait by `ratio` (the run's dilation changed by
        it); returns how many were held. Kernel netem's queued packets are dropped once instead,
        when the change rebuilds its trees."""
        return 0

    def counters(self) -> Counters:
        """Drops by cause, and the delay line's lateness (only the userspace backend has one)."""
        return Counters()

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
        return "userspace", f"kernel lacks netem ({netem}); iptables statistic, NFQUEUE and HTB work"
    raise ShapingError(f"no impairment backend works here: netem ({netem}); userspace ({userspace})")
