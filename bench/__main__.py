"""``python -m bench --quick | --full``: the load benchmark, ours against the seed's design.

Starts the mock agents service, the load-generator processes and the gateways (ours:
``archon-chat serve``; the seed baseline and its shared-client variant: ``bench.seed_baseline``),
runs the scenarios, prints a table per scenario and the targets, and writes
``bench/results/<mode>-<time>.json``, ``bench/results/latest.json`` and
``bench/results/latest.png``; ``--profile`` adds our gateway's py-spy hot spots to the
JSON. If our gateway does not start, the baselines still run and
the JSON says why ours is missing. Scenario 7 (scale: one process against two, and the
seed scaled out on Redis) writes ``bench/results/latest-scale.json`` instead of
``latest.json`` when it runs alone, and adds its panels to ``latest.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from bench import cluster, profile, report, scale, scenarios
from bench.runner import (
    BenchError,
    Server,
    gateway_command,
    open_worker_pool,
    python,
    remove_db,
    start_server,
    temp_db,
)

ALL_GATEWAYS = ("ours", "seed", "seed-shared")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few minutes (the default)")
    size.add_argument("--full", action="store_true", help="the whole sweep")
    size.add_argument("--smoke", action="store_true", help="seconds: does the harness work")
    parser.add_argument(
        "--scenarios", default="1,2,3,4,5,6,7", help="which scenarios, e.g. 1,3 (default all)"
    )
    parser.add_argument(
        "--gateways",
        default=",".join(ALL_GATEWAYS + cluster.SCALE_KINDS),
        help="ours,seed,seed-shared; for scenario 7 ours-1,ours-2,seed-2 (default all)",
    )
    parser.add_argument(
        "--ours-form",
        choices=("one-port", "ports"),
        default="one-port",
        help="scenario 7's ours-2 in its sweep: serve --workers 2 on one port, or two serve "
        "processes on two ports (the load generator spreads clients over them); the "
        "cross-node and failover points always use two ports",
    )
    parser.add_argument(
        "--redis",
        choices=("private", "machine"),
        default="private",
        help="scenario 7's Redis: a redis-server of the run's own (its INFO counts only the "
        "gateways; the machine's 127.0.0.1:6379 without the binary) or the machine's",
    )
    parser.add_argument(
        "--sessions", default="", help="override the sweep's session counts, e.g. 100,1000"
    )
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for JSON and PNG")
    parser.add_argument("--no-latest", action="store_true", help="do not update latest.*")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record our gateway with py-spy during the throughput sweep",
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = scenarios.FULL if args.full else scenarios.SMOKE if args.smoke else scenarios.QUICK
    if args.sessions:
        sweep = tuple(int(x) for x in args.sessions.split(","))
        plan = dataclasses.replace(plan, sweep_sessions=sweep)
    wanted = {int(s) for s in args.scenarios.split(",") if s.strip()}
    kinds = [g for g in ALL_GATEWAYS if g in args.gateways.split(",")]
    scale_kinds = [g for g in cluster.SCALE_KINDS if g in args.gateways.split(",")]
    progress = report.Progress()
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document: dict[str, Any] = {
        "mode": plan.mode,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "plan": scenarios.plan_json(plan),
        "generator_processes": args.workers,
        "gateways": {k: report.LABELS[k] for k in kinds if wanted - {7}}
        | {k: cluster.LABELS[k] for k in scale_kinds if 7 in wanted},
        #: what each gateway said it runs on (the seed's event loop and HTTP parser)
        "implementations": {},
        "unavailable": {},
    }
    out_json = args.out / f"{plan.mode}-{stamp}.json"
    # A run of the scale scenario alone leaves the other scenarios' latest figures alone.
    latest = "latest-scale.json" if wanted == {7} else "latest.json"

    def save() -> None:
        document["duration_s"] = round(time.monotonic() - started, 1)
        document["targets"] = report.targets(document)
        report.write_json(out_json, document)
        if not args.no_latest:
            report.write_json(args.out / latest, document)

    async with AsyncExitStack() as stack:
        progress.status("starting the mock agents service")
        mock = await stack.enter_async_context(
            start_server("mock-agent", [python(), "-m", "bench.mock_agent", "--port", "0"])
        )
        pool = await stack.enter_async_context(open_worker_pool(args.workers))
        bench = scenarios.Bench(pool, mock, plan, progress.status)
        available = list(kinds)

        if wanted & {1, 3, 4, 6}:
            async with AsyncExitStack() as gateways_stack:
                running: list[Server] = []
                for kind in kinds:
                    db = temp_db()
                    gateways_stack.callback(remove_db, db)
                    argv, env = gateway_command(kind, mock.url, db)
                    progress.status(f"starting gateway {kind}")
                    try:
                        gateway = await gateways_stack.enter_async_context(
                            start_server(kind, argv, env)
                        )
                        running.append(gateway)
                        document["implementations"][kind] = gateway.implementation
                        if gateway.implementation:
                            progress.line(f"{kind} runs on {gateway.implementation}")
                    except BenchError as exc:
                        progress.line(f"gateway {kind} unavailable: {exc}")
                        document["unavailable"][kind] = str(exc)
                        available.remove(kind)
                labels = [g.label for g in running]
                steps = (
                    (1, "throughput", scenarios.throughput),
                    (3, "cancel", scenarios.cancel),
                    (4, "resume", scenarios.resume),
                    (6, "long", scenarios.long_replies),
                )
                for number, key, scenario in steps:
                    if number not in wanted:
                        continue
                    ours = next((g for g in running if g.label == "ours"), None)
                    if number == 1 and args.profile and ours is not None:
                        raw = Path(tempfile.gettempdir()) / f"archon-bench-profile-{stamp}.txt"
                        async with profile.open_profile(ours.process.pid, raw):
                            document[key] = await scenario(bench, running)
                        document["profile"] = {"raw": raw.name, **profile.hot_spots(raw)}
                        progress.line(profile.hot_spots_text(document["profile"]))
                    else:
                        document[key] = await scenario(bench, running)
                    save()
                    progress.line(report.tables({key: document[key]}, labels)[0])
                    progress.line()
        if 5 in wanted:
            # Fresh gateways per run (its own peak memory, our scenario's outbox bound).
            document["slow"] = await scenarios.slow(bench, available, mock.url)
            save()
            progress.line(report.tables({"slow": document["slow"]}, available)[0])
            progress.line()
        if 2 in wanted:
            idle_kinds = [k for k in available if k != "seed-shared"]
            document["idle"] = await scenarios.idle(bench, idle_kinds, mock.url)
            save()
            progress.line(report.tables({"idle": document["idle"]}, idle_kinds)[0])
            progress.line()
        if 7 in wanted and scale_kinds:
            progress.status("[7 scale] starting Redis")
            async with cluster.open_redis(prefer_private=args.redis == "private") as target:
                document["scale_setup"] = {
                    "redis": target.describe(),
                    "ours_form": args.ours_form,
                    "seed_form": "one-port",
                    "lease_s": plan.scale_lease_s,
                }
                progress.line(f"[7 scale] Redis {target.url} (private: {target.private})")
                document["scale"] = await scale.scale(
                    bench, scale_kinds, mock.url, target, ours_form=args.ours_form
                )
            save()
            progress.line(report.tables({"scale": document["scale"]}, scale_kinds)[0])
            progress.line()
    save()
    progress.line(report.targets_table(document["targets"]))
    title = (
        f"archon-chat load benchmark ({plan.mode}), {document['machine']['cpu_model']}, "
        f"{document['machine']['logical_cores']} cores, Python {document['machine']['python']}"
    )
    # Only latest.png is kept in the tree; a run that leaves latest alone names its own.
    chart_path = args.out / (f"{plan.mode}-{stamp}.png" if args.no_latest else "latest.png")
    charted = document
    if not args.no_latest and latest != "latest.json":
        # latest.png shows the latest figures of every scenario: the others' from latest.json.
        charted = report.combined(args.out / "latest.json", document)
    drawn = report.chart(chart_path, charted, title)
    progress.line(f"wrote {out_json}{' and ' + str(chart_path) if drawn else ''}")
    return document


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        trio.run(run, args)
    except KeyboardInterrupt:
        sys.exit(130)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
