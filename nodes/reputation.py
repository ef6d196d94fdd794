"""Per-peer reputation: who answered, who failed, how fast; it decides whom to ask first."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Standing:
    successes: int = 0
    failures: int = 0
    total_response_s: float = 0.0

    @property
    def success_rate(self) -> float:
        attempts = self.successes + self.failures
        return 1.0 if attempts == 0 else self.successes / attempts

    @property
    def mean_response_s(self) -> float:
        return self.total_response_s / self.successes if self.successes else 0.0


class Reputation:
    def __init__(self, rng: random.Random) -> None:
        self._standings: dict[str, Standing] = {}
        self._rng = rng

    def record(self, peer: str, ok: bool, response_s: float) -> None:
        standing = self._standings.setdefault(peer, Standing())
        if ok:
            standing.successes += 1
            standing.total_response_s += response_s
        else:
            standing.failures += 1

    def best(self, candidates: list[str], count: int) -> list[str]:
        """Highest success rate first, then fastest; ties broken at random (seeded)."""
        shuffled = list(candidates)
        self._rng.shuffle(shuffled)
        ranked = sorted(
            shuffled,
            key=lambda p: (-self.standing(p).success_rate, self.standing(p).mean_response_s),
        )
        return ranked[:count]

    def standing(self, peer: str) -> Standing:
        return self._standings.get(peer, Standing())

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {
            peer: {"successes": s.successes, "failures": s.failures, "mean_response_ms": s.mean_response_s * 1e3}
            for peer, s in self._standings.items()
        }
