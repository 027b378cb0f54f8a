"""Dynamic creative optimisation's figures: what choosing a variant costs a
bid (dco.choose on a template's in-memory counts: the exploration draw,
two Beta draws per variant, the score and the variant's markup), timed
one call after another in this process, for templates of 18, 120 and
1,000 variants (the most FR-DCO-005 allows), with and without a person's
segments to weigh.

    python -m bench.dco                 # bench/reports/dco.md
    python -m bench.dco --quick --no-report
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from bench.platform_calls import _cpu_model
from services.decisioning.dco import Counts, Slot, SlotOption, TemplateSpec, Variants, choose

REPORT = pathlib.Path(__file__).parent / "reports" / "dco.md"


def _template(options: list[int]) -> TemplateSpec:
    slots = tuple(
        Slot(f"s{i}", tuple(SlotOption(f"o{j}", f"value {i}.{j}", (f"seg{j % 3}",))
                            for j in range(n)))
        for i, n in enumerate(options)
    )  # fmt: skip
    markup = "<div>" + "".join(f"<p>{{{{s{i}}}}}</p>" for i in range(len(options))) + "</div>"
    return TemplateSpec("bench", markup, slots)


def _time(options: list[int], segments: list[str], calls: int) -> tuple[int, float, float, float]:
    rng = np.random.default_rng(1)
    variants = Variants(_template(options))
    counts = Counts(len(variants))
    counts.impressions[:] = rng.integers(100, 10_000, len(variants))
    counts.clicks[:] = np.floor(counts.impressions * rng.uniform(0.005, 0.05, len(variants)))
    counts.conversions[:] = np.floor(counts.clicks * rng.uniform(0.0, 0.2, len(variants)))
    took = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        choose(variants, counts, segments, rng)
        took[i] = time.perf_counter() - started
    ms = np.percentile(took, [50, 99, 99.9]) * 1e3
    return len(variants), float(ms[0]), float(ms[1]), float(ms[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    calls = 2_000 if args.quick else 20_000
    rows = []
    for options in ([3, 3, 2], [5, 4, 3, 2], [10, 10, 10]):
        for segments in ([], ["seg1", "other"]):
            n, p50, p99, p999 = _time(options, segments, calls)
            who = "with 2 segments" if segments else "no segments"
            rows.append(f"| {n:,} | {who} | {calls:,} | {p50:.3f} ms | {p99:.3f} ms "
                        f"| {p999:.3f} ms |")  # fmt: skip
            print(rows[-1], flush=True)
    report = "\n".join([
        "# Dynamic creative optimisation", "",
        f"Machine: {_cpu_model()}. `python -m bench.dco`.", "",
        "Choosing one variant (`dco.choose`: the exploration draw, two Beta draws per "
        "variant, the score, the variant's markup) on a template's in-memory counts, one "
        "call after another; this is what a DCO offer adds to its bid.", "",
        "| variants | person | choices | p50 | p99 | p99.9 |", "|---|---|---|---|---|---|",
        *rows, "",
    ])  # fmt: skip
    if not args.no_report:
        REPORT.write_text(report)
        print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
