"""How often `lab history` calls a change where there is none, and how soon it finds one that is.

Synthetic nightly histories of known truth (lognormal night-to-night noise, CV 5%, the noise the
issue's library comparison used): pure noise, a +8% step at night 40 seen with 20, 10, 6, 4 and 2
nights after it, and one +25% newest night. "Found" is a change point within ±2 nights of the
step. Beside them, the best any estimator of one step's place can do at this noise: the maximum
likelihood split of a series known to hold exactly one step. Writes bench/results/change-points.
{json,md} with the machine and commit:

    .venv/bin/python bench/change_points.py      # about a minute
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lab.history.changes import Rules, change_points
from lab.output import provenance

ROOT = Path(__file__).resolve().parent.parent
CV, STEP, AT = 0.05, 0.08, 40


def noise(seed: int, nights: int) -> np.ndarray:
    return 100 * np.exp(np.random.default_rng(seed).normal(0.0, CV, nights))


def stepped(seed: int, nights: int) -> np.ndarray:
    values = noise(seed, nights)
    values[AT:] *= 1 + STEP
    return values


def best_split_within_two(seeds: int) -> float:
    """The maximum likelihood place of the one step, within ±2 nights of the truth."""
    hits = 0
    for seed in range(seeds):
        x = np.log(stepped(seed, 60))
        n = x.size
        split = max(range(2, n - 1), key=lambda k: k * (n - k) / n * (x[:k].mean() - x[k:].mean()) ** 2)
        hits += abs(split - AT) <= 2
    return hits / seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rules = Rules()
    confirmed = tentative = 0
    for seed in range(args.seeds):
        for change in change_points(list(noise(seed, 60)), False, rules):
            confirmed, tentative = confirmed + change.confirmed, tentative + (not change.confirmed)
    speed: dict[str, dict[str, float]] = {}
    for after in (20, 10, 6, 4, 2):
        found = {"confirmed": 0, "tentative": 0}
        for seed in range(args.seeds):
            near = [c for c in change_points(list(stepped(seed, AT + after)), False, rules) if abs(c.index - AT) <= 2]
            if near:
                found["confirmed" if any(c.confirmed for c in near) else "tentative"] += 1
        speed[str(after)] = {k: v / args.seeds for k, v in found.items()}
    outlier = {"tentative only": 0, "confirmed": 0}
    for seed in range(args.seeds):
        values = noise(seed, 60)
        values[-1] *= 1.25
        changes = change_points(list(values), False, rules)
        outlier["confirmed"] += any(c.confirmed for c in changes)
        outlier["tentative only"] += bool(changes) and not any(c.confirmed for c in changes)
    result: dict[str, Any] = {
        "machine": provenance.machine().model_dump(mode="json"), "commit": provenance.git_commit().commit,
        "rules": {"noise": rules.noise, "confirm": rules.confirm, "max_pvalue": rules.max_pvalue}, "seeds": args.seeds,
        "noise_only": {"confirmed_per_series": confirmed / args.seeds, "tentative_per_series": tentative / args.seeds,
                       "confirmed_per_20_metric_history": 20 * confirmed / args.seeds},
        "step": {"nights_after": speed, "maximum_likelihood_within_2": best_split_within_two(args.seeds)},
        "newest_night_plus_25pct": {k: v / args.seeds for k, v in outlier.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "change-points.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "change-points.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    noise_only, step = result["noise_only"], result["step"]
    lines = [f"commit {result['commit']}, {result['seeds']} seeds per row; CV {CV:.0%} lognormal night-to-night noise; "
             f"rules: noise ±{result['rules']['noise']:.0%}, confirm {result['rules']['confirm']}, "
             f"p < {result['rules']['max_pvalue']}", "",
             "| history | confirmed | tentative only |", "|---|---|---|",
             f"| 60 nights of noise (per series) | {noise_only['confirmed_per_series']:.2%} | "
             f"{noise_only['tentative_per_series']:.2%} |",
             f"| 60 nights of noise (per history of 20 metrics) | "
             f"{noise_only['confirmed_per_20_metric_history']:.2f} changes | |"]
    for after, found in step["nights_after"].items():
        lines.append(f"| +{STEP:.0%} at night {AT}, {after} nights after, found within ±2 | {found['confirmed']:.0%} | "
                     f"{found['tentative']:.0%} |")
    outlier = result["newest_night_plus_25pct"]
    lines += [f"| one +25% newest night after 59 of noise | {outlier['confirmed']:.1%} | {outlier['tentative only']:.0%} |", "",
              f"The maximum likelihood place of the one step is within ±2 nights in {step['maximum_likelihood_within_2']:.0%} "
              "of these histories: no detector places this step better."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
