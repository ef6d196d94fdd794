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

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lab.network.fabric import NamespaceNetwork
from lab.output import provenance
from lab.runid import RunId
from lab.shaping.backend import choose_backend
from lab.shaping.links import Links, make_backend
from lab.shaping.verify import PROBE, PROBE_INTERVAL_S, REFERENCE_PLAN, Probe, send_and_collect
from lab.topology import parse_topology

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
        f"backend {result['backend']} · label {result['label']} · kernel {result['machine']['kernel']} · "
        f"CPU {result['machine']['cpu_model']} ({result['machine']['cpus']} cores) · commit {result['commit']}",
        "",
        "| repetition | path | excess p50 | p90 | sd |",
        "|---|---|---|---|---|",
    ]
    for number, paths in enumerate(result["repetitions"], 1):
        for path, figures in paths.items():
            cells = " | ".join(f"{figures[key]:.3f} ms" for key in ("p50_ms", "p90_ms", "sd_ms"))
            lines.append(f"| {number} | {path} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["auto", "netem", "userspace"], default="auto")
    parser.add_argument("--label", default="idle", help="what else the machine did (idle, busy-loop, ...)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", type=Path, help="directory for the results (default bench/results, or LAB_VM_SHARE)")
    args = parser.parse_args()
    backend = choose_backend(args.backend)[0]
    out = args.out or Path(os.environ.get("LAB_VM_SHARE") or Path(__file__).parent / "results")
    topology = parse_topology(yaml.safe_load(TOPOLOGY))
    run = RunId.new()
    network = NamespaceNetwork(run, topology.hosts())
    links = Links(make_backend(backend, {}, run, topology.seed), network.build(), topology, network.reference)
    try:
        links.apply_initial()
        repetitions = [repetition(links) for _ in range(args.repetitions)]
    finally:
        links.close()
        network.teardown()
    result = {"backend": backend, "label": args.label, "machine": provenance.machine(),
              "commit": provenance.git_commit().get("commit"), "repetitions": repetitions}
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"verification-noise-{backend}-{args.label}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
