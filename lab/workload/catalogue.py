"""The packages a run publishes: names, descriptions and tags, the same for the same seed."""

from __future__ import annotations

import random
from typing import Any

ADJECTIVES = ["swift", "tiny", "robust", "async", "lazy", "secure", "fast", "pure", "smart", "open"]
NOUNS = ["parser", "router", "cache", "codec", "logger", "crypto", "http", "json", "queue", "graph"]
TAGS = ["cli", "web", "net", "db", "crypto", "text", "math", "io", "test", "ml"]


def make_catalogue(rng: random.Random, count: int) -> list[dict[str, Any]]:
    packages = []
    for number in range(count):
        adjective, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
        packages.append(
            {
                "id": f"pkg-{number:05d}",
                "name": f"{adjective}-{noun}-{number:05d}",
                "version": f"{rng.randint(0, 3)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
                "description": f"A {adjective} {noun} library for the marketplace",
                "tags": sorted(rng.sample(TAGS, 2)),
            }
        )
    return packages


def query_for(package: dict[str, Any]) -> str:
    """A query that matches exactly this package (names carry a unique number)."""
    return str(package["name"])
