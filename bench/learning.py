"""Benchmark of the bid model's learning loop on a simulated exchange
population: does real traffic make the served model better, and does the
off-policy estimate say by how much before it is served?

A platform runs in this process (embedded backends). A world of offers and
people (`inference.simulate.make_world`: each offer's base appeal, what it
appeals to in a person's 64 interests, and its appeal to loyal people)
decides who clicks: P(click) is known for every bid. People get profiles
with their interests in the bid path's profile store; one campaign carries
the world's offers.

1. Phase 1: bids from the population with the untrained built-in model,
   through the real bid path and decision log; every bid is shown and
   clicked with the world's probability. The win and click are the
   analytics events settlement writes for their notices, emitted directly:
   the notices' spend-ledger transactions (SQLite) would take most of the
   bench's time and play no part in learning.
2. The scheduled retraining's step (`Retrainer.run_once`: `model train` on
   `bid_impressions` in a child process) trains on phase 1's log. It gates
   on held-out log loss and off-policy SNIPS; its report gives the SNIPS
   estimates of the new and the untrained greedy policies.
3. Serving reloads the published model; phase 2 bids again with it.

Reported: CTR per phase (clicks drawn, and the expected CTR, the mean of the
world's P(click) over shown bids, which has far less noise), the greedy
bids' CTR in each phase against the off-policy estimate for that policy
made from phase 1's log alone.

    python -m bench.learning --bids 8000 --exploration 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import platform
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import orjson

REPORT = pathlib.Path(__file__).parent / "reports" / "learning.md"


@dataclasses.dataclass
class Phase:
    label: str
    bids: int = 0
    clicks: int = 0
    expected: float = 0.0  # sum of P(click) over shown bids
    greedy_bids: int = 0
    greedy_clicks: int = 0
    greedy_expected: float = 0.0
    oracle: float = 0.0  # sum over bids of the person's best offer's P(click)
    seconds: float = 0.0

    def row(self) -> str:
        return (
            f"| {self.label} | {self.bids:,} | {self.clicks / self.bids:.4f} | "
            f"{self.expected / self.bids:.4f} | {self.greedy_bids:,} | "
            f"{self.greedy_clicks / max(self.greedy_bids, 1):.4f} | "
            f"{self.greedy_expected / max(self.greedy_bids, 1):.4f} |"
        )


async def run(args: argparse.Namespace) -> list[str]:
    from inference.simulate import make_world
    from services.analytics.events import EventType
    from services.bidding.openrtb_json import decode_bid_request
    from services.bidding.profiles import UserProfile
    from services.bidding.settlement import notice_event
    from services.host.serve import start
    from services.inference.retrain import Retrainer
    from tests.conftest import make_settings, seed_tenants
    from tests.test_bidding_e2e import OFFER, SYSTEM, bid_request, spec

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-learning-"))
    settings = make_settings(
        workdir,
        bid_exploration=args.exploration,
        bid_exploration_top=args.top,
        inference_reload_seconds=0.2,
        rate_limit_per_second=0,
    )
    running = await start(settings)
    try:
        platform_ = running.platform
        await seed_tenants(running)
        # one campaign with the world's offers
        offers = [
            dataclasses.replace(OFFER, display_name=f"offer {i}", markup_template=f"<a>{i}</a>")
            for i in range(args.offers)
        ]
        created = await platform_.api("campaigns").campaigns.create(
            None,
            "tenants/acme",
            spec(),
            offers_to_add=offers,
        )
        await platform_.api("campaigns").workflow.act(SYSTEM, created.name, "SUBMIT")
        await platform_.api("campaigns").workflow.act(SYSTEM, created.name, "GO_LIVE")
        index = platform_.api("bidding").index
        await index.wait_for(lambda i: i.get(created.name) is not None, timeout=5.0)
        live = index.get(created.name).offers
        model_ids = {o.id: o.name for o in live}
        world = dataclasses.replace(
            make_world(len(live), seed=args.seed), offers=tuple(model_ids.values())
        )
        # the population: interests in the profile store
        rng = np.random.default_rng(args.seed + 1)
        interests = rng.normal(0.0, args.interest_scale, (args.people, 64))
        profiles = platform_.kernel.interface("profile_store")
        for n in range(args.people):
            await profiles.put(UserProfile(f"p{n}", interests=interests[n].round(4).tolist()))
        user_rows = np.zeros((args.people, 140))
        user_rows[:, :64] = np.clip(interests.round(4), -4, 4)
        user_rows[:, 139] = 1.0  # the first slot
        processor = platform_.api("bidding").processor
        signer = platform_.api("bidding").settlement._signer
        events = platform_.api("bidding").pipeline

        def notice(kind: EventType, token: Any) -> None:
            """The analytics event settlement writes for a notice (without
            its spend-ledger transaction: on SQLite that costs ~12 ms of
            this process's CPU a notice, most of the bench's time)."""
            events.emit(notice_event(kind, token, 1.0 if kind == EventType.WIN else 0.0))

        clicks_rng = np.random.default_rng(args.seed + 2)
        every = list(model_ids.values())
        best = [
            float(world.click_probability(np.repeat(row[None], len(every), 0), every).max())
            for row in user_rows
        ]

        async def phase(label: str, prefix: str) -> Phase:
            result = Phase(label)
            began = time.perf_counter()
            for i in range(args.bids):
                person = int(rng.integers(args.people))
                body = orjson.dumps(bid_request(f"{prefix}-{i}", user=f"p{person}"))
                request = decode_bid_request(body, max_bytes=1 << 20)
                outcome = await processor.process("acme", request)
                if outcome.response is None:
                    continue
                bid = outcome.response.seatbid[0].bid[0]
                token = signer.verify(bid.nurl.split("t=", 1)[1].split("&", 1)[0])
                notice(EventType.WIN, token)
                p = float(
                    world.click_probability(user_rows[person][None], [model_ids[bid.adid]])[0]
                )
                clicked = bool(clicks_rng.random() < p)
                if clicked:
                    notice(EventType.CLICK, token)
                result.bids += 1
                result.clicks += clicked
                result.expected += p
                result.oracle += best[person]
                if (i + 1) % 2000 == 0:
                    print(f"  {label}: {i + 1:,} bids", flush=True)
            await platform_.api("bidding").pipeline.flush()
            await platform_.api("bidding").decisions.flush()
            # which bids were greedy: the decision log says
            store = platform_.backends.analytics
            greedy = {
                row[0]
                for row in await store.query(
                    "SELECT request_id FROM bid_decisions FINAL "
                    f"WHERE request_id LIKE '{prefix}-%' AND explored = 0"
                )
            }
            clicked_ids = {
                row[0]
                for row in await store.query(
                    "SELECT request_id FROM bid_events FINAL "
                    f"WHERE event_type = 'click' AND request_id LIKE '{prefix}-%'"
                )
            }
            shown = await store.query(
                "SELECT request_id, offer_id, user_id FROM bid_decisions FINAL "
                f"WHERE request_id LIKE '{prefix}-%'"
            )
            for request_id, offer_id, user in shown:
                if request_id in greedy:
                    person = int(user[1:])
                    result.greedy_bids += 1
                    result.greedy_clicks += request_id in clicked_ids
                    result.greedy_expected += float(
                        world.click_probability(user_rows[person][None], [offer_id])[0]
                    )
            result.seconds = time.perf_counter() - began
            return result

        engine = platform_.api("inference")
        untrained = engine.model().checkpoint_sha256
        print(f"phase 1: {args.bids:,} bids with the untrained model {untrained[:12]}", flush=True)
        first = await phase("untrained (built-in)", "one")
        print(first.row(), flush=True)
        retrainer = Retrainer(
            platform_.backends.analytics,
            settings.data_dir,
            pathlib.Path(engine.watched_path),
            every_seconds=0,
            min_rows=1000,
            epochs=args.epochs,
        )
        began = time.perf_counter()
        outcome = await retrainer.run_once(batch_size=args.batch_size)
        trained_in = time.perf_counter() - began
        if not outcome.published:
            raise SystemExit(f"not published: {outcome.why or outcome.report}")
        report = outcome.report
        ope = report["offPolicy"]
        print(f"trained in {trained_in:.1f} s: {orjson.dumps(ope).decode()}", flush=True)
        deadline = time.monotonic() + 10
        while engine.model().checkpoint_sha256 != report["checkpoint_sha256"]:
            if time.monotonic() > deadline:
                raise SystemExit("the published model was not reloaded")
            await asyncio.sleep(0.05)
        print(f"phase 2: {args.bids:,} bids with the trained model", flush=True)
        second = await phase("trained from phase 1's log", "two")
        print(second.row(), flush=True)
        lift = second.expected / second.bids / (first.expected / first.bids) - 1
        greedy_lift = (second.greedy_expected / second.greedy_bids) / (
            first.greedy_expected / first.greedy_bids
        ) - 1
        validation, current = report["validation"], report["current"]
        return [
            f"Machine: {platform.processor() or platform.machine()}, "
            f"{_cpu_model()}, {os_cpus()} vCPU; Python {platform.python_version()}.",
            "",
            f"World: {len(live)} offers (`make_world(seed={args.seed})`), {args.people:,} people "
            f"with interests ~ N(0, {args.interest_scale}) in 64 dimensions; exploration "
            f"{args.exploration:.0%} among the best {args.top}; {args.bids:,} bids per phase, "
            "each shown (a win event) and clicked with the world's P(click) (a click event).",
            "",
            "| model | shown bids | CTR (clicks) | CTR (expected) | greedy bids | greedy CTR "
            "(clicks) | greedy CTR (expected) |",
            "|---|---|---|---|---|---|---|",
            first.row(),
            second.row(),
            "",
            f"Expected CTR lift of the trained model: {lift:+.1%} over all bids, "
            f"{greedy_lift:+.1%} on greedy bids. For scale: showing each person the offer "
            f"the world rates best for them would give {second.oracle / second.bids:.4f}, "
            "the most any model could reach.",
            "",
            f"Training (`model train` on `bid_impressions`, {args.epochs} epochs, child "
            f"process): {trained_in:.0f} s wall including JAX start-up; held-out log loss "
            f"{validation['log_loss']:.4f} against {current['log_loss']:.4f} for the untrained "
            f"model, AUC {validation['auc']:.3f} against {current['auc']:.3f}.",
            "",
            "Off-policy (SNIPS on the latest 20% of phase 1's log, "
            f"{ope['rows']:,} decisions, greedy policies):",
            "",
            "| policy | estimated from phase 1's log | measured (greedy bids, expected CTR) |",
            "|---|---|---|",
            f"| untrained (served in phase 1) | {ope['current']:.4f} | "
            f"{first.greedy_expected / first.greedy_bids:.4f} (phase 1) |",
            f"| trained | {ope['new']:.4f} | "
            f"{second.greedy_expected / second.greedy_bids:.4f} (phase 2) |",
            f"| difference | {ope['difference']:+.4f} [{ope['differenceLow']:+.4f}, "
            f"{ope['differenceHigh']:+.4f}] | "
            f"{second.greedy_expected / second.greedy_bids - first.greedy_expected / first.greedy_bids:+.4f} |",  # noqa: E501
            "",
            f"Phase timings: {first.seconds:.0f} s and {second.seconds:.0f} s for "
            f"{args.bids:,} bids each with their win and click notices, in process.",
        ]
    finally:
        await running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _cpu_model() -> str:
    from bench.platform_calls import _cpu_model as model

    return model()


def os_cpus() -> int:
    import os

    return os.cpu_count() or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=int, default=8000, help="bids per phase")
    parser.add_argument("--people", type=int, default=2000)
    parser.add_argument("--offers", type=int, default=8)
    parser.add_argument("--exploration", type=float, default=0.1)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--interest-scale", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--report", action="store_true", help=f"write {REPORT.name}")
    args = parser.parse_args()
    lines = asyncio.run(run(args))
    text = "\n".join(lines)
    print(text)
    if args.report:
        REPORT.write_text(
            "# Learning loop: trained vs untrained bid model\n\n"
            "`python -m bench.learning --report` (bench/learning.py: method in its "
            "docstring).\n\n" + text + "\n"
        )


if __name__ == "__main__":
    main()
