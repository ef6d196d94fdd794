"""What one peer's outgoing link should do, in plain numbers, resolved from the topology.

Every impairment is one-way and applies to what a peer sends, as in netem: a peer with
delay 20 ms adds 20 ms to each of its packets, so a round trip between two such peers gains
40 ms. Region latency is added per destination region on top of the group's own delay.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

UNLIMITED_BPS = 10e9  # HTB needs a rate; 10 Gbit/s is beyond what a veth pair here carries


@dataclass(frozen=True)
class LinkPlan:
    delay_s: float = 0.0
    jitter_s: float = 0.0
    distribution: str = "uniform"
    loss: float = 0.0
    loss_correlation: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    rate_bps: float | None = None
    limit: int = 1000
    to_region: dict[str, float] = field(default_factory=dict)  # extra one-way delay by destination region

    def with_link(self, link: LinkPlan) -> LinkPlan:
        """The same destinations with another link's parameters (a live or phase change)."""
        return replace(link, to_region=self.to_region)

    def dilated(self, factor: float) -> LinkPlan:
        """The plan in the machine's time for a run whose clocks run `factor` times slower:
        delays and jitter `factor` times longer, the rate `factor` times lower."""
        if factor == 1:
            return self
        return replace(self, delay_s=self.delay_s * factor, jitter_s=self.jitter_s * factor,
                       rate_bps=self.rate_bps / factor if self.rate_bps else None,
                       to_region={region: extra * factor for region, extra in self.to_region.items()})

    def delay_to(self, region: str | None) -> float:
        return self.delay_s + self.to_region.get(region or "", 0.0)

    def delays(self) -> list[float]:
        """The delay to every destination: its regions, and any other."""
        return [self.delay_to(region) for region in (None, *self.to_region)]

    @property
    def lost(self) -> float:
        """The share of packets that do not arrive: lost, or corrupted (the receiver's checksum
        drops those)."""
        return 1 - (1 - self.loss) * (1 - self.corrupt)

    @property
    def is_impaired(self) -> bool:
        shares = (self.loss, self.duplicate, self.reorder, self.corrupt)
        return bool(self.delay_s or self.jitter_s or any(shares) or self.rate_bps or any(self.to_region.values()))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if not self.is_impaired:
            return "unimpaired"
        parts = []
        if self.delay_s or self.jitter_s:
            jitter = f" ±{self.jitter_s * 1e3:g}ms {self.distribution}" if self.jitter_s else ""
            parts.append(f"delay {self.delay_s * 1e3:g}ms{jitter}")
        shares = {"loss": self.loss, "duplicate": self.duplicate, "reorder": self.reorder, "corrupt": self.corrupt}
        parts.extend(f"{name} {value * 100:g}%" for name, value in shares.items() if value)
        if self.loss_correlation:
            parts.append(f"loss correlation {self.loss_correlation * 100:g}%")
        if self.rate_bps:
            parts.append(f"rate {self.rate_bps / 1e6:g}Mbit/s")
        parts.extend(f"+{extra * 1e3:g}ms to {region}" for region, extra in sorted(self.to_region.items()) if extra)
        return ", ".join(parts)


def delay_tolerance(expected_s: float) -> float:
    """How far a link's delay may be off before the delay check minds: max(1 ms, 5%)."""
    return max(0.001, 0.05 * expected_s)


def shortest_delay(plans: Iterable[LinkPlan]) -> float | None:
    """The shortest delay any of these links adds to a packet (to any region), if one adds any."""
    return min((delay for plan in plans for delay in plan.delays() if delay > 0), default=None)


def earliest_release(plans: Iterable[LinkPlan]) -> float:
    """The shortest time any of these links may hold a packet: its shortest delay to any
    region, less its jitter (a gaussian's has no bound), or none where it reorders."""
    def least(plan: LinkPlan) -> float:
        if plan.reorder or (plan.jitter_s and plan.distribution != "uniform"):
            return 0.0
        return max(0.0, min(plan.delays()) - plan.jitter_s)
    return min((least(plan) for plan in plans), default=0.0)


def prefixes_by_region(ips: Iterable[str], regions: Iterable[str | None]) -> dict[str, list[str]]:
    """The fewest CIDR prefixes covering each region's peer addresses (peers of one group
    have consecutive addresses, so a region is a handful of prefixes, not one filter per peer)."""
    by_region: dict[str, list[ipaddress.IPv4Address]] = {}
    for ip, region in zip(ips, regions, strict=True):
        if region is not None:
            by_region.setdefault(region, []).append(ipaddress.IPv4Address(ip))
    prefixes: dict[str, list[str]] = {}
    for region, addresses in by_region.items():
        networks = [ipaddress.IPv4Network(a) for a in sorted(addresses)]
        prefixes[region] = [str(n) for n in ipaddress.collapse_addresses(networks)]
    return prefixes
