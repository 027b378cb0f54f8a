"""Contextual policies on simulated worlds: how much of the best possible
reward each earns over a few thousand rounds (8 arms x 6 features), ours
(services/decisioning/bandits.py, the code DecisionService runs) against
choosing at random and, when it is installed (`pip install mabwiser`: not a
dependency of the project), MABWiser's LinTS and LinUCB with their
defaults.

Worlds (each seeded, each run with several seeds):
- linear: reward = w_arm . x + N(0, 0.5)
- clicks: reward = Bernoulli(sigmoid(w_arm . x - 2)) (rare clicks)
- shared: every arm's weights are one common vector plus a small arm part
  (arms differ little: hard to tell apart)

    python -m bench.contextual            # bench/reports/contextual.md
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Callable

import numpy as np

from services.decisioning.bandits import ArmState, choose, learn

REPORT = pathlib.Path(__file__).parent / "reports" / "contextual.md"
ARMS, FEATURES = 8, 6
World = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, Callable[[int], float]]]


def _linear(weights: np.ndarray) -> World:
    def draw(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Callable[[int], float]]:
        means = weights @ x
        return means, lambda arm: float(means[arm] + rng.normal(0, 0.5))

    return draw


def _clicks(weights: np.ndarray) -> World:
    def draw(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Callable[[int], float]]:
        means = 1 / (1 + np.exp(-(weights @ x - 2)))
        return means, lambda arm: float(rng.random() < means[arm])

    return draw


def worlds(seed: int) -> dict[str, World]:
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 1, FEATURES)
    return {
        "linear": _linear(rng.normal(0, 1, (ARMS, FEATURES))),
        "clicks": _clicks(rng.normal(0, 1, (ARMS, FEATURES))),
        "shared": _linear(shared + rng.normal(0, 0.3, (ARMS, FEATURES))),
    }


def ours(algorithm: str) -> Callable[[World, int, int], float]:
    def run(world: World, rounds: int, seed: int) -> float:
        rng = np.random.default_rng(seed + 1000)
        arms = [ArmState(str(i)) for i in range(ARMS)]
        # the same start as MABWiser's below: one round per arm, not counted
        xs = rng.normal(0, 1, (ARMS, FEATURES))
        for arm, x in zip(arms, xs, strict=True):
            arm.prepare(FEATURES)
            learn(arm, world(x, rng)[1](int(arm.id)), x.tolist())
            arm.prepare(FEATURES)
        earned = best = 0.0
        for _ in range(rounds):
            x = rng.normal(0, 1, FEATURES)
            means, reward = world(x, rng)
            pick = choose(algorithm, arms, x.tolist(), rng, exploration=0.0, min_share=0.0).arm
            learn(arms[pick], reward(pick), x.tolist())
            arms[pick].prepare(FEATURES)
            earned += means[pick]
            best += means.max()
        return earned / best

    return run


def at_random(world: World, rounds: int, seed: int) -> float:
    rng = np.random.default_rng(seed + 1000)
    earned = best = 0.0
    for _ in range(rounds):
        x = rng.normal(0, 1, FEATURES)
        means, _ = world(x, rng)
        earned += means[int(rng.integers(ARMS))]
        best += means.max()
    return earned / best


def mabwiser(kind: str) -> Callable[[World, int, int], float] | None:
    try:
        from mabwiser.mab import MAB, LearningPolicy  # not a dependency: optional
    except ImportError:
        return None

    def run(world: World, rounds: int, seed: int) -> float:
        rng = np.random.default_rng(seed + 1000)
        policy = LearningPolicy.LinTS() if kind == "LinTS" else LearningPolicy.LinUCB()
        mab = MAB(arms=list(range(ARMS)), learning_policy=policy, seed=seed)
        # MABWiser needs a first fit: one round per arm (ours gets the same)
        xs = rng.normal(0, 1, (ARMS, FEATURES))
        first = [world(x, rng)[1](arm) for arm, x in enumerate(xs)]
        mab.fit(list(range(ARMS)), first, xs)
        earned = best = 0.0
        for _ in range(rounds):
            x = rng.normal(0, 1, FEATURES)
            means, reward = world(x, rng)
            pick = int(mab.predict([x]))
            mab.partial_fit([pick], [reward(pick)], [x])
            earned += means[pick]
            best += means.max()
        return earned / best

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    runners: dict[str, Callable[[World, int, int], float] | None] = {
        "ours: LinTS": ours("lin_ts"),
        "ours: LinUCB": ours("lin_ucb"),
        "MABWiser LinTS": mabwiser("LinTS"),
        "MABWiser LinUCB": mabwiser("LinUCB"),
        "at random": at_random,
    }
    names = ["linear", "clicks", "shared"]
    lines = [
        "# Contextual policies on simulated worlds",
        "",
        f"{ARMS} arms x {FEATURES} features, {args.rounds:,} rounds, {args.seeds} seeds per "
        "world; the share of the best possible expected reward each policy earned (mean over "
        "seeds, and the lowest seed's), after one round per arm that is not counted (MABWiser "
        "needs a first fit; ours gets the same start). Our policies with their defaults "
        "(ridge 1, exploration 1), no minimum share; MABWiser's with its defaults. "
        f"`python -m bench.contextual` ({os.cpu_count()} CPUs; the figures do not depend "
        "on the machine).",
        "",
        "| policy | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, runner in runners.items():
        if runner is None:
            lines.append(f"| {label} | " + " | ".join("not installed" for _ in names) + " |")
            continue
        cells = []
        for name in names:
            shares = [runner(worlds(seed)[name], args.rounds, seed) for seed in range(args.seeds)]
            cells.append(f"{np.mean(shares):.3f} (min {min(shares):.3f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    if not args.no_report:
        REPORT.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
