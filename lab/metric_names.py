"""Every metric the lab produces, by name, with its unit and the direction that is better.

The bottom floor beside lab/events.py: the topology schema checks an SLA's metric and unit
here, and analysis, compare and the exports read the same names, without one stage importing
another to learn them. What each metric measures is said in lab/analysis/metrics.py, which
derives them.
"""

from __future__ import annotations

from nodes.protocol import CONCURRENT_SEARCH, Op

MEMORY_FIELDS = {"memory_rss_mib": "rss", "memory_uss_mib": "uss", "memory_pss_mib": "pss"}
# The deployed peer's (network.deployed_peer): one peer alone in a fresh process, after the same workload.
DEPLOYED_FIELDS = {"memory_deployed_rss_mib": "rss", "memory_deployed_uss_mib": "uss", "memory_deployed_pss_mib": "pss"}
DEPLOYED_OF = dict(zip(MEMORY_FIELDS, DEPLOYED_FIELDS, strict=True))  # a per-peer figure -> its deployed estimate
# What each further peer adds to a shared host's resident memory, against the deployed peer's (RSS only: a
# forked host's USS and PSS leave out the pages it shares with its fork server, a fresh process's do not).
MARGINAL_RSS = "memory_marginal_rss_mib"
RUN_PSS = "memory_run_pss_mib"
TIME_TO_READY = "time_to_ready"
DELIVERY_RATIO = "gossip_delivery_ratio"
CPU_SECONDS = "cpu_seconds"
# The run against its CPU bound (lab/analysis/bound.py): the least wall time its CPU-seconds allow, and how far above it ran.
CPU_BOUND = "cpu_bound_s"
BOUND_RATIO = "wall_over_cpu_bound"
LAB_SHARE = "lab_cpu_share"  # the lab's own processes' share of the run's CPU-seconds: what measuring cost
# Metrics a warm start (bootstrap.mode: warm) does not measure, and why: an SLA on one is not judged.
NOT_MEASURED_WARM = {TIME_TO_READY: "a warm start gave most peers their routing tables, so the network's time to ready "
                                    "was not measured, only the sample's joins (bootstrap.mode: cold measures it)"}
# The 2N check: a latency metric -> the kind of workload phase whose operations measure it again.
RERUN_PHASE: dict[str, str] = {Op.BOOTSTRAP: "bootstrap", Op.CONNECT: "bootstrap", Op.GET: "lookup", Op.DHT_LOOKUP: "lookup",
               Op.DHT_FIND_PROVIDERS: "lookup", Op.FETCH: "lookup", Op.SEARCH_REMOTE: "search",
               Op.GOSSIP_DELIVERY: "gossip", Op.GOSSIP_PUBLISH: "gossip"}
OPERATIONS = tuple(Op)  # what the peers time (nodes/protocol.py), each a latency metric
# Latencies stamped on two peers' clocks (sent by one, received by another; the network's first start to its last
# ready): over several machines, only as good as their clocks' agreement (docs/cluster.md, Clocks).
TWO_CLOCKS = (Op.GOSSIP_DELIVERY, TIME_TO_READY)
# Operations by family, for figures that would be unreadable with all of them in one chart.
FAMILIES: dict[str, tuple[str, ...]] = {
    "joining": (Op.BOOTSTRAP, Op.REJOIN, Op.WARM, Op.CONNECT),
    "DHT": (Op.PUBLISH, Op.GET, Op.DHT_LOOKUP, Op.DHT_LOOKUP_LOCAL, Op.DHT_FIND_PROVIDERS, Op.FETCH),
    "search": (Op.SEARCH_CACHE_HIT, Op.SEARCH_LOCAL, Op.SEARCH_REMOTE),
    "gossip": (Op.GOSSIP_PUBLISH, Op.GOSSIP_DELIVERY, Op.GOSSIP_DUPLICATE),
}
# phase -> (metric, the operation it divides by)
CPU_PER_OPERATION = {"bootstrap": ("cpu_s_per_join", Op.BOOTSTRAP), "lookup": ("cpu_s_per_lookup", Op.GET),
                     "publish": ("cpu_s_per_publish", Op.PUBLISH), "gossip": ("cpu_s_per_delivery", Op.GOSSIP_DELIVERY)}


def unit_of(metric: str) -> str | None:
    """The unit a metric is summarised in, or None for a name the lab never produces."""
    if metric in OPERATIONS or (metric.startswith(CONCURRENT_SEARCH) and metric[len(CONCURRENT_SEARCH):].isdigit()):
        return "millisecond"
    if metric in MEMORY_FIELDS or metric in DEPLOYED_FIELDS or metric in (MARGINAL_RSS, RUN_PSS):
        return "mebibyte"
    if metric in (CPU_SECONDS, TIME_TO_READY, CPU_BOUND) or metric in {name for name, _ in CPU_PER_OPERATION.values()}:
        return "second"
    if metric in (DELIVERY_RATIO, BOUND_RATIO, LAB_SHARE):
        return "dimensionless"
    return None


def family_of(metric: str) -> str:
    """The family a latency metric is drawn with; concurrent searches are searches."""
    if metric.startswith(CONCURRENT_SEARCH):
        return "search"
    return next((name for name, members in FAMILIES.items() if metric in members), "other")


def higher_is_better(metric: str) -> bool:
    """Only delivery ratios improve upwards; latency, memory, CPU, time over the bound and the lab's share improve
    downwards."""
    return metric == DELIVERY_RATIO
