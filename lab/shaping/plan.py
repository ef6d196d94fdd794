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

from lab import quantities
from lab.topology import Link, Topology

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

    @classmethod
    def of(cls, link: Link, to_region: dict[str, float] | None = None) -> LinkPlan:
        share = quantities.fraction
        return cls(
            delay_s=quantities.seconds(link.delay),
            jitter_s=quantities.seconds(link.jitter),
            distribution=link.distribution,
            loss=share(link.loss),
            loss_correlation=share(link.loss_correlation),
            duplicate=share(link.duplicate),
            reorder=share(link.reorder),
            corrupt=share(link.corrupt),
            rate_bps=quantities.bits_per_second(link.rate) if link.rate else None,
            limit=link.limit,
            to_region=dict(to_region or {}),
        )

    def with_link(self, link: Link) -> LinkPlan:
        """The same destinations with other link parameters (a live or phase change)."""
        return replace(LinkPlan.of(link), to_region=self.to_region)

    def delay_to(self, region: str | None) -> float:
        return self.delay_s + self.to_region.get(region or "", 0.0)

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


def region_latency(topology: Topology) -> dict[str, dict[str, float]]:
    if topology.regions is None:
        return {}
    return {
        source: {dest: quantities.seconds(value) for dest, value in row.items()}
        for source, row in topology.regions.latency.items()
    }


def group_plans(topology: Topology) -> dict[str, LinkPlan]:
    """Each group's plan, by group name."""
    matrix = region_latency(topology)
    return {group.name: LinkPlan.of(group.link, matrix.get(group.region or "")) for group in topology.groups}


def plans_for(topology: Topology) -> list[LinkPlan]:
    """Each peer's plan, by peer index."""
    by_group = group_plans(topology)
    return [by_group[group.name] for group in topology.peer_groups()]


def regions_of(topology: Topology) -> list[str | None]:
    return [group.region for group in topology.peer_groups()]


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
