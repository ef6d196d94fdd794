"""Whether the rate check tells a link given twice its rate from a right one, repeated.

Two groups of two peers in namespaces; group `b`'s link is 30 ms and 2 Mbit/s. Each
repetition measures b's rate as configured, then with the kernel given twice the rate (the
configuration unchanged), as `tests/test_shaping.py` does once. A right link should pass (or
be unverified on a machine too busy to tell); the doubled one should fail, or be unverified
when the sender could not offer more than the band's top; neither should go the other way.
Run it idle and beside other work; under qemu for the netem backend:

    .venv/bin/python bench/rate_check.py --label idle
    .venv/bin/python tests/vm/netem_vm.py --share bench/results -- \\
        .venv/bin/python bench/rate_check.py --backend netem --label beside-host-suite

Writes bench/results/rate-check-<backend>-<label>.{json,md} with the machine and commit.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from typing import Any

from shaped import origin, repeated

from lab.shaping.links import Links
from lab.shaping.verify import Check, measure_rate

TOPOLOGY = """
name: rate
seed: 3
groups:
  - {name: a, count: 2}
  - {name: b, count: 2, link: {delay: 30ms, rate: 2mbit}}
workload: [{phase: bootstrap}]
"""
KINDS = ("right", "doubled")


def figures(check: Check) -> dict[str, Any]:
    assert check.interval is not None and check.offered is not None
    return {"status": check.status, "offered_mbps": check.offered / 1e6, "measured_mbps": check.measured / 1e6,
            "interval_mbps": [bound / 1e6 for bound in check.interval], "reason": check.reason}


def repetition(links: Links) -> dict[str, dict[str, Any]]:
    configured = links.current[2]
    assert configured.rate_bps
    measured = {}
    for kind, applied in zip(KINDS, (configured, replace(configured, rate_bps=2 * configured.rate_bps)), strict=True):
        links.backend.apply([[(links.slots[2], applied)]])
        measured[kind] = figures(measure_rate(configured, links.slots[2], links.slots[0], links.reference_link()))
    return measured


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{origin(result)} · label {result['label']}", ""]
    for kind in KINDS:
        tally = Counter(r[kind]["status"] for r in result["repetitions"])
        lines.append(f"- {kind} link: " + ", ".join(f"{count} {status}" for status, count in sorted(tally.items())))
    lines += ["", "| repetition | link | status | offered | measured | 99% interval |", "|---|---|---|---|---|---|"]
    for number, measured in enumerate(result["repetitions"], 1):
        for kind, figure in measured.items():
            low, high = figure["interval_mbps"]
            lines.append(f"| {number} | {kind} | {figure['status']} | {figure['offered_mbps']:.3f} Mbit/s | "
                         f"{figure['measured_mbps']:.3f} | {low:.3f}..{high:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(repeated(__doc__, TOPOLOGY, "rate-check", repetition, markdown, repetitions=20))
