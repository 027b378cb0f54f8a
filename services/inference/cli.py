"""`campaign-express model simulate|train|evaluate|export|info`."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from inference.checkpoint import Checkpoint, CheckpointError, default_checkpoint, load_checkpoint
from inference.data import DataError

__all__ = ["add_model_parser", "run_model"]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_model_parser(
    commands: Any, add_settings_flags: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add `model` and its subcommands to the CLI's subparsers."""
    model = commands.add_parser("model", help="train, evaluate and export the CoLaNet model")
    sub = model.add_subparsers(dest="model_command", required=True)

    def source(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--input", help="logged events in a .csv or .parquet file (default: the store)"
        )
        p.add_argument(
            "--table",
            default="impression_log",
            help="analytics-store table to read when no --input is given",
        )

    simulate = sub.add_parser("simulate", help="write synthetic logged impressions")
    simulate.add_argument("--out", help="a .csv or .parquet file to write")
    simulate.add_argument(
        "--to-analytics", action="store_true", help="append to impression_log in the store"
    )
    simulate.add_argument("--rows", type=int, default=20000)
    simulate.add_argument("--offers", type=int, default=40)
    simulate.add_argument("--candidates", type=int, default=8)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--world-seed", type=int, default=0, help="seed of the ground truth")

    train = sub.add_parser("train", help="train on logged impressions and publish if better")
    source(train)
    train.add_argument(
        "--output",
        help="checkpoint to write (default: --inference-checkpoint, else "
        "<data dir>/models/colanet.ckpt)",
    )
    train.add_argument(
        "--current",
        help="checkpoint to beat (default: the --output file if it exists, else the built-in)",
    )
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--learning-rate", type=float, default=3e-3)
    train.add_argument("--validation-fraction", type=float, default=0.2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--warm-start", action="store_true", help="start from --current's weights")
    train.add_argument("--force", action="store_true", help="publish even if worse than current")
    train.add_argument(
        "--off-policy-gate",
        choices=("better", "not-worse", "off"),
        default="better",
        help="on a log that explored: publish only if the new model's greedy policy is "
        "estimated at least as good as the current one's (better, the default), not "
        "significantly worse (not-worse), or skip this gate (off)",
    )
    train.add_argument("--json", action="store_true", help="print the result as JSON")

    evaluate = sub.add_parser("evaluate", help="offline policy evaluation (IPS, SNIPS, DR)")
    source(evaluate)
    evaluate.add_argument("--checkpoint", help="model to evaluate (default: the built-in)")
    evaluate.add_argument("--policy", choices=("greedy", "softmax"), default="greedy")
    evaluate.add_argument("--temperature", type=float, default=0.05)
    evaluate.add_argument("--rank-by", choices=("score", "ctr", "bid"), default="score")
    evaluate.add_argument("--reward-model", choices=("ctr", "score", "none"), default="ctr")
    evaluate.add_argument("--confidence", type=float, default=0.95)
    for role, default in (
        ("context", "features"),
        ("action", "offer_id"),
        ("reward", "clicked"),
        ("propensity", "propensity"),
        ("position", "position"),
        ("candidates", "candidates"),
    ):
        evaluate.add_argument(
            f"--{role}-column", dest=f"{role}_column", default=default, help=f"default {default}"
        )
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")

    export = sub.add_parser("export", help="write StableHLO artifacts per target + manifest")
    export.add_argument("--checkpoint", help="model to export (default: the built-in)")
    export.add_argument("--out", required=True, help="directory to write")
    export.add_argument(
        "--platforms",
        default="cpu,cuda,rocm,tpu,neuron,tt",
        help="comma-separated targets",
    )

    info = sub.add_parser("info", help="show a checkpoint's config and metadata")
    info.add_argument("--checkpoint", help="checkpoint file (default: the built-in)")

    for parser in (simulate, train, evaluate, export, info):
        add_settings_flags(parser)


def _checkpoint(path: str | None) -> Checkpoint:
    return load_checkpoint(path) if path else default_checkpoint()


async def _with_store(settings: Any, needed: bool, work: Callable[[Any], Any]) -> Any:
    if not needed:
        return await work(None)
    from services.backends.analytics import open_analytics_store

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await open_analytics_store(settings.clickhouse_url or None, settings.data_dir)
    try:
        return await work(store)
    finally:
        await store.close()


async def _read(args: argparse.Namespace, settings: Any) -> dict[str, list[Any]]:
    from services.inference.logs import read_columns

    location = args.input or args.table
    _say(f"reading logged events from {location}")
    columns = await _with_store(
        settings, not args.input, lambda store: read_columns(location, store)
    )
    _say(f"read {len(next(iter(columns.values()), []))} rows")
    return dict(columns)


def _simulate(args: argparse.Namespace, settings: Any) -> int:
    from inference.simulate import make_world, simulate
    from services.inference.logs import insert_events, write_columns

    if not args.out and not args.to_analytics:
        _say("model simulate: give --out FILE and/or --to-analytics")
        return 2
    world = make_world(args.offers, seed=args.world_seed)
    _say(f"simulating {args.rows} impressions over {args.offers} offers")
    columns = simulate(world, args.rows, candidates=args.candidates, seed=args.seed)

    async def write(store: Any) -> None:
        if args.out:
            path = await write_columns(args.out, columns, store)
            _say(f"wrote {args.rows} rows to {path}")
        if store is not None:
            await insert_events(store, columns)
            _say(f"appended {args.rows} rows to impression_log")

    asyncio.run(_with_store(settings, args.to_analytics, write))
    return 0


def _train(args: argparse.Namespace, settings: Any) -> int:
    from inference.data import LoggedEvents
    from inference.evaluate import off_policy_gate
    from inference.train import TrainConfig, train

    output = pathlib.Path(
        args.output
        or settings.inference_checkpoint
        or (settings.data_dir / "models" / "colanet.ckpt")
    )
    current_path = args.current or (str(output) if output.exists() else None)
    current = _checkpoint(current_path)
    _say(f"current model: {current_path or 'built-in default'} ({current.digest[:12]})")
    columns = asyncio.run(_read(args, settings))
    events = LoggedEvents.from_columns(columns)
    result = train(
        events,
        current=current,
        config=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            warm_start=args.warm_start,
        ),
        progress=_say,
        source=args.input or f"analytics:{args.table}",
    )
    new, old = result.validation, result.current
    ope = off_policy_gate(
        columns, args.validation_fraction, result.checkpoint, current, args.off_policy_gate
    )
    publishable = result.publishable and (ope is None or ope["better"])
    report = {
        "validation": new.to_dict(),
        "current": old.to_dict() if old else None,
        "offPolicy": ope,
        "publishable": publishable,
        "published": False,
        "output": str(output),
        "checkpoint_sha256": result.checkpoint.digest,
        "seconds": round(result.seconds, 2),
    }
    lines = [
        f"held-out events: {new.rows} ({new.clicks} clicks), from the latest "
        f"{args.validation_fraction:.0%} by time",
        f"{'':10} {'AUC':>8} {'log loss':>10} {'ECE':>8}",
        f"{'new':10} {new.auc:8.4f} {new.log_loss:10.4f} {new.ece:8.4f}",
    ]
    if old is not None:
        lines.append(f"{'current':10} {old.auc:8.4f} {old.log_loss:10.4f} {old.ece:8.4f}")
    if ope is not None:
        lines.append(
            f"off-policy (SNIPS on {ope['rows']} held-out logged decisions, greedy by score): "
            f"new {ope['new']:.5f}, current {ope['current']:.5f}, logged {ope['logged']:.5f}; "
            f"difference {ope['difference']:+.5f} "
            f"[{ope['differenceLow']:+.5f}, {ope['differenceHigh']:+.5f}]"
        )
    why = (
        "worse than the current model on held-out log loss"
        if not result.publishable
        else f"worse than the current model off-policy (SNIPS, rule {args.off_policy_gate})"
    )
    if publishable or args.force:
        result.checkpoint.save(output)
        report["published"] = True
        lines.append(f"published {output} ({result.checkpoint.digest[:12]})")
        if not publishable:
            lines.append(f"({why}; forced)")
    else:
        lines.append(f"NOT published: {why} (use --force to publish anyway)")
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0 if report["published"] else 1


def _evaluate(args: argparse.Namespace, settings: Any) -> int:
    from inference.evaluate import BanditLog, ColumnMap, evaluate_policy
    from inference.numpy_model import NumpyColaNet

    checkpoint = _checkpoint(args.checkpoint)
    names = ColumnMap(
        context=args.context_column,
        action=args.action_column,
        reward=args.reward_column,
        propensity=args.propensity_column,
        position=args.position_column,
        candidates=args.candidates_column,
    )
    log = BanditLog.from_columns(asyncio.run(_read(args, settings)), names)
    _say(f"evaluating {checkpoint.digest[:12]} on {len(log)} logged decisions")
    report = evaluate_policy(
        log,
        NumpyColaNet(checkpoint.config, checkpoint.params),
        policy=args.policy,
        temperature=args.temperature,
        rank_by=args.rank_by,
        reward_model=args.reward_model,
        confidence=args.confidence,
    )
    if args.json:
        print(json.dumps({"checkpoint_sha256": checkpoint.digest, **report.to_dict()}, indent=2))
        return 0
    ci = f"{report.confidence:.0%} CI"
    lines = [
        f"policy {report.policy} ranking by {args.rank_by}; {report.rows} decisions; "
        f"effective sample size {report.effective_sample_size:.0f}; "
        f"agrees with the log on {report.match_rate:.1%}",
        f"{'estimator':10} {'value':>9} {ci:>21} {'lift':>9} {'lift ' + ci:>23}",
    ]
    for e in [report.logging, *report.estimates]:
        lift = f"{e.lift:+9.1%} [{e.lift_low:+.1%}, {e.lift_high:+.1%}]"
        if e.name == "logging":
            lift = ""
        lines.append(f"{e.name:10} {e.value:9.5f} [{e.low:9.5f}, {e.high:9.5f}] {lift}")
    print("\n".join(lines))
    return 0


def _export(args: argparse.Namespace, settings: Any) -> int:
    from inference.export import export_model

    checkpoint = _checkpoint(args.checkpoint)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    _say(f"exporting {checkpoint.digest[:12]} for {', '.join(platforms)}")
    manifest = export_model(checkpoint, args.out, platforms, progress=_say)
    print(f"wrote {len(manifest['artifacts'])} artifacts and manifest.json to {args.out}")
    return 0 if manifest["artifacts"] else 1


def _info(args: argparse.Namespace, settings: Any) -> int:
    checkpoint = _checkpoint(args.checkpoint)
    print(
        json.dumps(
            {
                "checkpoint_sha256": checkpoint.digest,
                "feature_layout": checkpoint.feature_layout,
                "config": checkpoint.config.to_dict(),
                "metadata": checkpoint.metadata,
            },
            indent=2,
        )
    )
    return 0


def run_model(args: argparse.Namespace, settings: Any) -> int:
    """Run `campaign-express model <command>`; 1 when the work was refused or
    failed on its input, with the reason on stderr."""
    handlers = {
        "simulate": _simulate,
        "train": _train,
        "evaluate": _evaluate,
        "export": _export,
        "info": _info,
    }
    try:
        return handlers[args.model_command](args, settings)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"campaign-express model {args.model_command}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("jax", "jaxlib", "flatbuffers"):
            print(
                f"campaign-express model {args.model_command} needs JAX: "
                "pip install 'campaign-express[ml]'",
                file=sys.stderr,
            )
            return 1
        raise
