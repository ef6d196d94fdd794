"""What the link benchmarks share: a shaped network for the time of a benchmark, the backend
and output options, and writing results with the machine and commit they came from."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lab.network.fabric import NamespaceNetwork
from lab.output import provenance
from lab.runid import RunId
from lab.shaping import plan as plans
from lab.shaping.backend import choose_backend
from lab.shaping.links import Links, make_backend
from lab.topology import parse_topology
from nodes.protocol import Dilation

RESULTS = Path(__file__).parent / "results"


def arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """--backend and --out beside the benchmark's own options; backend resolved, out defaulted."""
    parser.add_argument("--backend", choices=["auto", "netem", "userspace"], default="auto")
    parser.add_argument("--out", type=Path, help="directory for the results (default bench/results, or LAB_VM_SHARE)")
    args = parser.parse_args()
    args.backend = choose_backend(args.backend)[0]
    args.out = args.out or Path(os.environ.get("LAB_VM_SHARE") or RESULTS)
    return args


@contextmanager
def shaped(topology_yaml: str, backend: str) -> Iterator[Links]:
    """The topology's links, removed afterwards whatever happens."""
    with shaped_network(topology_yaml, backend) as (_, links):
        yield links


@contextmanager
def shaped_network(topology_yaml: str, backend: str,
                   dilation: Dilation | None = None) -> Iterator[tuple[NamespaceNetwork, Links]]:
    """The topology's network and links (its regions' latency included) on the run's clock
    `dilation`, removed afterwards whatever happens."""
    topology = parse_topology(yaml.safe_load(topology_yaml))
    network = NamespaceNetwork(run := RunId.new(), topology.hosts(), dilation)
    try:
        slots = network.build()
        prefixes = plans.prefixes_by_region([s.ip for s in slots], topology.peer_regions())
        links = Links(make_backend(backend, prefixes, run, topology.seed), slots, topology, network.reference, dilation)
        try:
            yield network, links
        finally:
            links.close()
    finally:
        network.teardown()


def write(out: Path, stem: str, result: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    """OUT/STEM.json and OUT/STEM.md, the result with the machine and commit it came from."""
    result = {**result, "machine": provenance.machine().model_dump(mode="json"), "commit": provenance.git_commit().commit}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def repeated(description: str, topology_yaml: str, stem: str, repetition: Callable[[Links], dict[str, Any]],
             markdown: Callable[[dict[str, Any]], str], repetitions: int) -> int:
    """The whole of a benchmark that repeats one measurement on the topology's links, as
    configured: --label and --repetitions beside --backend and --out; writes
    OUT/STEM-<backend>-<label>.{json,md}."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="idle", help="what else the machine did (idle, busy-loop, ...)")
    parser.add_argument("--repetitions", type=int, default=repetitions)
    args = arguments(parser)
    with shaped(topology_yaml, args.backend) as links:
        links.apply_initial()
        results = [repetition(links) for _ in range(args.repetitions)]
    result = {"backend": args.backend, "label": args.label, "repetitions": results}
    write(args.out, f"{stem}-{args.backend}-{args.label}", result, markdown)
    return 0


def origin(result: dict[str, Any]) -> str:
    """The first line of a benchmark's table: where its numbers came from."""
    machine = result["machine"]
    return (f"backend {result['backend']} · kernel {machine['kernel']} · CPU {machine['cpu_model']} "
            f"({machine['cpus']} cores) · commit {result['commit']}")
