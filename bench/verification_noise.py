"""Which path tracks the noise a link verification sees: the evidence for the reference link.

Six peers in namespaces: group `a` with a 12 ms link, group `c` unimpaired, and the network's
reference host with its known 10 ms (lab/shaping/verify.py). Each repetition sends 400 probes
from `a` to `c` with reference probes beside them, and 400 over an unimpaired `c` -> `c` path,
and reports each path's excess over its configured delay: median, p90 and standard deviation.
Run it idle and with a busy loop beside it; under qemu for the netem backend:

    .venv/bin/python bench/verification_noise.py --label idle
    .venv/bin/python tests/vm/netem_vm.py --share bench/results -- \\
        .venv/bin/python bench/verification_noise.py --backend netem --label idle

Writes bench/results/verification-noise-<backend>-<label>.{json,md} with the machine and commit.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import numpy as np
from shaped import origin, repeated

from lab.shaping.links import Links
from lab.shaping.verify import PROBE, PROBE_INTERVAL_S, REFERENCE_PLAN, Probe, send_and_collect

TOPOLOGY = """
name: noise
seed: 3
groups:
  - {name: a, count: 2, link: {delay: 12ms}}
  - {name: c, count: 4}
workload: [{phase: bootstrap}]
"""
LINK_DELAY_S = 0.012
PROBES = 400


def excess(probes: list[Probe], configured_s: float) -> dict[str, float]:
    values = np.array([(p.received_ns - p.sent_ns) / 1e9 - configured_s for p in probes]) * 1e3
    return {"p50_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90)),
            "sd_ms": float(statistics.pstdev(values)), "n": len(values)}


def repetition(links: Links) -> dict[str, dict[str, float]]:
    slots, reference = links.slots, links.reference_link()
    assert reference is not None
    drain = 1.0 + 2 * LINK_DELAY_S
    delayed = send_and_collect(slots[0], slots[5], PROBES, PROBE_INTERVAL_S, PROBE.size, drain, reference)
    plain = send_and_collect(slots[2], slots[4], PROBES, PROBE_INTERVAL_S, PROBE.size, drain)
    return {
        "12 ms link": excess(delayed.link, LINK_DELAY_S),
        "reference, 10 ms": excess(delayed.reference, REFERENCE_PLAN.delay_s),
        "unimpaired path": excess(plain.link, 0.0),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{origin(result)} · label {result['label']}",
        "",
        "| repetition | path | excess p50 | p90 | sd |",
        "|---|---|---|---|---|",
    ]
    for number, paths in enumerate(result["repetitions"], 1):
        for path, figures in paths.items():
            cells = " | ".join(f"{figures[key]:.3f} ms" for key in ("p50_ms", "p90_ms", "sd_ms"))
            lines.append(f"| {number} | {path} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(repeated(__doc__, TOPOLOGY, "verification-noise", repetition, markdown, repetitions=3))
