"""What the benchmark shows: a progress line, tables, the JSON file and the PNG chart."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import psutil  # type: ignore[import-untyped]

PACKAGES = (
    "trio",
    "trio-websocket",
    "wsproto",
    "hypercorn",
    "h11",
    "quart-trio",
    "python-socketio",
    "python-engineio",
    "httpx",
    "httpcore",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "psutil",
    "prometheus-client",
)
LABELS = {
    "ours": "archon-chat serve (trio, hypercorn)",
    "seed": "seed design: python-socketio ASGI on uvicorn (uvloop, httptools), "
    "new httpx client per reply",
    "seed-shared": "seed design with one shared httpx client (20 kept alive), "
    "uvicorn with uvloop and httptools: the headline comparator",
}
#: the comparators, headline first: every ratio column is ours over one of them
BASELINES = ("seed-shared", "seed")
#: scenario 7's ratio columns: two of our processes over one, and over the seed's two
SCALE_NUMERATOR = "ours-2"
SCALE_BASELINES = ("ours-1", "seed-2")


class Progress:
    """One status line rewritten in place on a terminal; plain lines otherwise."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""

    def status(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text[: os.get_terminal_size().columns - 1])
            self.stream.flush()
        elif text.split(":")[0:2] != self._last.split(":")[0:2]:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._last = text

    def line(self, text: str = "") -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": versions,
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(ours: Any, base: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(base, int | float) or not base:
        return "-"
    return f"{ours / base:.2f}x"


Metric = tuple[str, Callable[[dict[str, Any]], Any]]


def table(
    title: str,
    rows: Sequence[dict[str, Any]],
    point_of: Callable[[dict[str, Any]], str],
    metrics: Sequence[Metric],
    gateways: Sequence[str],
    numerator: str = "ours",
    baselines: Sequence[str] = BASELINES,
) -> str:
    """Rows grouped by point, one line per metric, one column per gateway, then the
    ratios ours / seed-shared (the headline comparator) and ours / seed (or
    ``numerator`` over each of ``baselines``)."""
    points: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        points.setdefault(point_of(row), {})[row["gateway"]] = row
    bases = ratio_bases(gateways, numerator, baselines)
    head = ["", ""] + list(gateways) + [f"{numerator}/{b}" for b in bases]
    lines = [head]
    for point, by_gateway in points.items():
        for i, (name, get) in enumerate(metrics):
            values = [get(by_gateway[g]) if g in by_gateway else None for g in gateways]
            cells = [point if i == 0 else "", name] + [fmt(v) for v in values]
            cells += ratios(values, gateways, bases, numerator)
            lines.append(cells)
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    out = [title]
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(widths[c]) if c < 2 else cell.rjust(widths[c])
                for c, cell in enumerate(line)
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def ratio_bases(
    gateways: Sequence[str], numerator: str = "ours", baselines: Sequence[str] = BASELINES
) -> list[str]:
    """The comparators present beside ours, headline first."""
    return [b for b in baselines if b in gateways] if numerator in gateways else []


def ratios(
    values: Sequence[Any],
    gateways: Sequence[str],
    bases: Sequence[str],
    numerator: str = "ours",
) -> list[str]:
    ours = values[list(gateways).index(numerator)] if bases else None
    return [ratio(ours, values[list(gateways).index(b)]) for b in bases]


def max_util(row: dict[str, Any]) -> float | None:
    utils = row.get("generator_cpu_util") or []
    return round(100 * max(utils), 0) if utils else None


THROUGHPUT: list[Metric] = [
    ("chunks/s", lambda r: r["chunks_per_s"]),
    ("latency p50 ms", lambda r: r["latency_p50_ms"]),
    ("latency p99 ms", lambda r: r["latency_p99_ms"]),
    ("first chunk p50 ms", lambda r: r["ttfc_p50_ms"]),
    ("first chunk p99 ms", lambda r: r["ttfc_p99_ms"]),
    ("failures", lambda r: r["failures"]),
    ("gateway CPU us/chunk", lambda r: r["gateway_cpu_per_chunk_us"]),
    ("gateway CPU us/turn", lambda r: r.get("gateway_cpu_per_turn_us")),
    ("gateway CPU %", lambda r: round(100 * r["gateway_cpu_util"])),
    ("generator CPU % (max)", max_util),
    ("mock CPU us/chunk", lambda r: r["mock_cpu_per_chunk_us"]),
]
IDLE: list[Metric] = [
    ("KiB per connected", lambda r: r["per_connected_kib"]),
    ("KiB per joined", lambda r: r["per_joined_kib"]),
    ("RSS joined MiB", lambda r: r["rss_joined_mib"]),
    ("failures", lambda r: r["failures"]),
]
CANCEL: list[Metric] = [
    ("upstream cancelled", lambda r: f"{r['upstream_cancelled']}/{r['stops']}"),
    ("cancel-to-quiet p50 ms", lambda r: r["cancel_to_quiet_p50_ms"]),
    ("cancel-to-quiet p99 ms", lambda r: r["cancel_to_quiet_p99_ms"]),
    ("chunks after the stop", lambda r: r["after_stop"]),
    ("chunks after request", lambda r: r["after_request"]),
    (
        "reply statuses",
        lambda r: ",".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items())) or "-",
    ),
]
RESUME: list[Metric] = [
    ("resumed", lambda r: r.get("resumed", 0)),
    ("gaps (chunks)", lambda r: r["gaps"]),
    ("turns with gaps", lambda r: r["gap_turns"]),
    ("duplicates", lambda r: r["duplicates"]),
    ("resume p50 ms", lambda r: r.get("resume_p50_ms")),
    ("resume p99 ms", lambda r: r.get("resume_p99_ms")),
    ("failures", lambda r: r["failures"]),
]


def _slow(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: (r.get("slow") or {}).get(key)


SLOW: list[Metric] = [
    ("others: latency p50 ms", lambda r: r["latency_p50_ms"]),
    ("others: latency p99 ms", lambda r: r["latency_p99_ms"]),
    ("others: failures", lambda r: r["failures"]),
    ("RSS peak MiB", lambda r: r.get("rss_peak_mib")),
    ("RSS peak growth MiB", lambda r: r["rss_peak_growth_mib"]),
    ("outbox merges", lambda r: r.get("outbox_merges")),
    ("slow-client cuts", lambda r: r.get("slow_cuts")),
    ("watched: clients", _slow("clients")),
    ("watched: reading slowly", _slow("throttled")),
    ("watched: completed", _slow("completed")),
    ("watched: cut", _slow("cut")),
    ("watched: resumed", _slow("resumed")),
    ("watched: text complete", _slow("text_complete")),
    ("watched: cut, text complete", _slow("cut_text_complete")),
    ("watched: chunks received", _slow("chunks")),
]
LONG: list[Metric] = [
    ("chunks/s", lambda r: r["chunks_per_s"]),
    ("latency p50 ms", lambda r: r["latency_p50_ms"]),
    ("latency p99 ms", lambda r: r["latency_p99_ms"]),
    ("failures", lambda r: r["failures"]),
    ("gateway CPU us/chunk", lambda r: r["gateway_cpu_per_chunk_us"]),
    ("RSS peak growth MiB", lambda r: r["rss_peak_growth_mib"]),
]


SCALE: list[Metric] = [
    ("chunks/s", lambda r: r["chunks_per_s"]),
    ("latency p50 ms", lambda r: r["latency_p50_ms"]),
    ("latency p99 ms", lambda r: r["latency_p99_ms"]),
    ("first chunk p99 ms", lambda r: r["ttfc_p99_ms"]),
    ("failures", lambda r: r["failures"]),
    ("gateway CPU us/chunk (all processes)", lambda r: r["gateway_cpu_per_chunk_us"]),
    ("gateway CPU %", lambda r: round(100 * r["gateway_cpu_util"])),
    ("Redis commands/chunk (INFO)", lambda r: r.get("redis_commands_per_chunk")),
    ("Redis commands sent/chunk", lambda r: r.get("redis_sent_per_chunk")),
    ("Redis CPU us/chunk", lambda r: r.get("redis_cpu_per_chunk_us")),
    ("Redis bytes/chunk", lambda r: r.get("redis_bytes_per_chunk")),
    ("store bytes written/turn", lambda r: r.get("store_written_per_turn_bytes")),
]
SCALE_TURNS: list[Metric] = [
    ("first chunk p50 ms", lambda r: r["ttfc_p50_ms"]),
    ("first chunk p99 ms", lambda r: r["ttfc_p99_ms"]),
    ("failures", lambda r: r["failures"]),
    ("gateway CPU us/turn (all processes)", lambda r: r.get("gateway_cpu_per_turn_us")),
    ("Redis commands/turn (INFO)", lambda r: r.get("redis_commands_per_turn")),
    ("Redis commands sent/turn", lambda r: r.get("redis_sent_per_turn")),
    ("Redis CPU us/chunk", lambda r: r.get("redis_cpu_per_chunk_us")),
    ("Redis bytes/chunk", lambda r: r.get("redis_bytes_per_chunk")),
    ("store bytes written/turn", lambda r: r.get("store_written_per_turn_bytes")),
]
SCALE_STOP: list[Metric] = [
    ("upstream cancelled", lambda r: f"{r['upstream_cancelled']}/{r['stops']}"),
    ("cancel-to-quiet p50 ms", lambda r: r["cancel_to_quiet_p50_ms"]),
    ("cancel-to-quiet p99 ms", lambda r: r["cancel_to_quiet_p99_ms"]),
    ("chunks after the stop", lambda r: r["after_stop"]),
    ("failures", lambda r: r["failures"]),
]
SCALE_DROP: list[Metric] = [
    ("resumed", lambda r: r.get("resumed", 0)),
    ("gaps (chunks)", lambda r: r["gaps"]),
    ("duplicates", lambda r: r["duplicates"]),
    ("resume p99 ms", lambda r: r.get("resume_p99_ms")),
    ("failures", lambda r: r["failures"]),
]
FAILOVER: list[Metric] = [
    ("turns in flight", lambda r: r["in_flight"]),
    ("turns failed (owner_lost errors)", lambda r: r["turns_failed_owner_lost"]),
    ("... of which stale (seq seen)", lambda r: r.get("owner_lost_stale")),
    (
        "stored as failed, by code",
        lambda r: ",".join(f"{k}:{v}" for k, v in sorted(r["stored_failed"].items())) or "-",
    ),
    (
        "member 2: how the cut reply ended",
        lambda r: ",".join(f"{k}:{v}" for k, v in sorted(r["member2_statuses"].items())) or "-",
    ),
    ("sessions usable again", lambda r: f"{r['usable']}/{r['usable_of']}"),
    ("kill to usable p50 ms", lambda r: r["usable_p50_ms"]),
    ("kill to usable p99 ms", lambda r: r["usable_p99_ms"]),
    ("kill to usable max ms", lambda r: r["usable_max_ms"]),
    ("lease s", lambda r: r["lease_s"]),
    ("messages acked 'sent'", lambda r: r["messages_sent"]),
    ("messages lost", lambda r: r["messages_lost"]),
    ("failures", lambda r: r["failures"]),
]


def scale_sections(
    rows: Sequence[dict[str, Any]],
) -> list[tuple[str, list[dict[str, Any]], Callable[[dict[str, Any]], str], list[Metric]]]:
    """Scenario 7's tables: title, rows, point label, metrics."""

    def of(kind: str, mode: str | None = None) -> list[dict[str, Any]]:
        return [r for r in rows if r["kind"] == kind and (mode is None or r["mode"] == mode)]

    def sweep_point(r: dict[str, Any]) -> str:
        return f"{r['sessions']} sess, pace {r['pace_s'] * 1000:g} ms, {r['n']} chunks"

    def cross_point(r: dict[str, Any]) -> str:
        return f"{r['sessions']} sess x 2 members, pace {r['pace_s'] * 1000:g} ms, {r['n']} chunks"

    return [
        ("7. Scale: sweep", of("sweep"), sweep_point, SCALE),
        ("7. Scale: turn cost, one-chunk replies", of("turns"), sweep_point, SCALE_TURNS),
        ("7. Scale: cross-node, watched from both", of("cross", "normal"), cross_point, SCALE),
        (
            "7. Scale: cross-node stop (from the non-owner)",
            of("cross", "stop"),
            cross_point,
            SCALE_STOP,
        ),
        (
            "7. Scale: cross-node drop, resume on the other process",
            of("cross", "drop"),
            cross_point,
            SCALE_DROP,
        ),
        (
            "7. Scale: failover (kill -9 of the owner)",
            of("failover"),
            lambda r: f"{r['sessions']} turns, {r['n']} chunks at {r['pace_s'] * 1000:g} ms",
            FAILOVER,
        ),
    ]


def slow_share(every: int) -> str:
    return f"1 in {every}" if every else "none"


def tables(results: dict[str, Any], gateways: Sequence[str]) -> list[str]:
    out = []
    if results.get("throughput"):
        out.append(
            table(
                "[1] Throughput sweep",
                results["throughput"],
                lambda r: f"{r['sessions']} sess, pace {r['pace_s'] * 1000:g} ms, {r['n']} chunks",
                THROUGHPUT,
                gateways,
            )
        )
    if results.get("idle"):
        out.append(
            table(
                "[2] Idle footprint",
                results["idle"],
                lambda r: f"{r['sessions']} sessions",
                IDLE,
                [g for g in gateways if g != "seed-shared"],
            )
        )
    if results.get("cancel"):
        out.append(
            table(
                "[3] Cancel mid-stream",
                results["cancel"],
                lambda r: f"{r['mode']}, {r['sessions']} sess",
                CANCEL,
                gateways,
            )
        )
    if results.get("resume"):
        out.append(
            table(
                "[4] Drop and resume",
                results["resume"],
                lambda r: f"{r['sessions']} sessions",
                RESUME,
                gateways,
            )
        )
    if results.get("slow"):
        out.append(
            table(
                "[5] Slow clients",
                results["slow"],
                lambda r: f"{r['sessions']} sess, {slow_share(r['slow_every'])} slow",
                SLOW,
                gateways,
            )
        )
    if results.get("long"):
        out.append(
            table(
                "[6] Long replies",
                results["long"],
                lambda r: f"{r['sessions']} sess, {r['reply_s']:g} s replies, {r['n']} chunks",
                LONG,
                gateways,
            )
        )
    if results.get("scale"):
        out.append(
            "\n\n".join(
                table(
                    f"[7]{title[2:]}",
                    rows,
                    point,
                    metrics,
                    [g for g in gateways if any(r["gateway"] == g for r in rows)],
                    SCALE_NUMERATOR,
                    SCALE_BASELINES,
                )
                for title, rows, point, metrics in scale_sections(results["scale"])
                if rows
            )
        )
    return out


def _find(rows: Sequence[dict[str, Any]], gateway: str, **match: Any) -> dict[str, Any] | None:
    best = None
    for row in rows:
        if row["gateway"] != gateway or any(row.get(k) != v for k, v in match.items()):
            continue
        # Several repetitions: keep the best throughput (the least disturbed run).
        if best is None or (row.get("chunks_per_s") or 0) > (best.get("chunks_per_s") or 0):
            best = row
    return best


#: the issue's figures for ours against the headline comparator (seed-shared)
SPEED_SESSIONS = (10, 100, 1000)
SPEED_RATIO = 1.5
SPEED_STRETCH = 2.0
CPU_RATIO = 0.7
TTFC_MS = 1000.0
TURN_CPU_US = 1000.0
SLOW_RATIO = 1.2
LONG_RATIO = 1.2
IDLE_RATIO = 0.6
#: idle memory per joined session before this work (33-36 KiB): not to be exceeded
IDLE_TODAY_KIB = 36.0
CANCEL_MS = 50.0
#: scenario 7: two of our processes over one, and over the seed's two Redis workers
SCALE_PROCESS_RATIO = 1.7
SCALE_SEED_RATIO = 1.5
SCALE_SESSIONS = (100, 1000)
#: Redis commands per delivered chunk, amortised, in cluster mode
REDIS_PER_CHUNK = 1.0
#: a failed-over session must take a new message within the lease plus this
FAILOVER_SLACK_S = 1.0


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for ours, each with the measured value and whether it holds.

    Ratios are against seed-shared, the headline comparator; a target whose figures are
    missing from the run is left out."""
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: Any, met: bool | None) -> None:
        out.append({"name": name, "target": target, "value": value, "met": met})

    def over(a: Any, b: Any) -> float | None:
        if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
            return None
        return round(a / b, 2)

    rows = [r for r in results.get("throughput") or [] if r.get("kind", "sweep") == "sweep"]
    for pace in sorted({r["pace_s"] for r in rows}):
        for sessions in sorted({r["sessions"] for r in rows if r["pace_s"] == pace}):
            ours = _find(rows, "ours", sessions=sessions, pace_s=pace)
            base = _find(rows, "seed-shared", sessions=sessions, pace_s=pace)
            if not ours or not base:
                continue
            point = f"{sessions} sessions, pace {pace * 1000:g} ms"
            if pace == 0 and sessions in SPEED_SESSIONS:
                value = over(ours["chunks_per_s"], base["chunks_per_s"])
                add(
                    f"chunks/s vs seed-shared, {point}",
                    f">= {SPEED_RATIO:g}x (stretch {SPEED_STRETCH:g}x)",
                    value,
                    value is not None and value >= SPEED_RATIO,
                )
            if pace == 0 and sessions == 100:
                value = over(ours["gateway_cpu_per_chunk_us"], base["gateway_cpu_per_chunk_us"])
                add(
                    f"gateway CPU per chunk vs seed-shared, {point}",
                    f"<= {CPU_RATIO:g}x",
                    value,
                    value is not None and value <= CPU_RATIO,
                )
            value = over(ours["latency_p99_ms"], base["latency_p99_ms"])
            add(
                f"chunk latency p99 vs seed-shared, {point}",
                "<= 1x",
                value,
                value is not None and value <= 1.0,
            )
            if pace == 0 and sessions == 1000:
                ttfc = ours["ttfc_p99_ms"]
                add(
                    f"first chunk p99 ms, {point}",
                    f"< {TTFC_MS:g}",
                    ttfc,
                    ttfc is not None and ttfc < TTFC_MS,
                )
                add(f"failures, {point}", "0", ours["failures"], ours["failures"] == 0)
    turn_rows = [r for r in results.get("throughput") or [] if r.get("kind") == "turns"]
    ours = _find(turn_rows, "ours")
    if ours:
        value = ours.get("gateway_cpu_per_turn_us")
        add(
            f"gateway CPU per turn us, {ours['sessions']} one-chunk replies",
            f"<= {TURN_CPU_US:g}",
            value,
            value is not None and value <= TURN_CPU_US,
        )
    slow_rows = results.get("slow") or []
    calm = _find(slow_rows, "ours", slow_every=0)
    ours = next((r for r in slow_rows if r["gateway"] == "ours" and r["slow_every"]), None)
    base = next((r for r in slow_rows if r["gateway"] == "seed-shared" and r["slow_every"]), None)
    if ours and calm:
        share = f"1 in {ours['slow_every']} slow"
        value = over(ours["latency_p99_ms"], calm["latency_p99_ms"])
        add(
            f"slow clients ({share}): others' p99 vs none slow",
            f"<= {SLOW_RATIO:g}x",
            value,
            value is not None and value <= SLOW_RATIO,
        )
        if base:
            value = over(ours["latency_p99_ms"], base["latency_p99_ms"])
            add(
                f"slow clients ({share}): others' p99 vs seed-shared's",
                "<= 1x",
                value,
                value is not None and value <= 1.0,
            )
        slow = ours.get("slow") or {}
        cut = int(slow.get("cut", 0))
        whole = int(slow.get("cut_text_complete", 0))
        add(
            f"slow clients ({share}): cut ones resumed with their text complete",
            "all, and at least one cut",
            f"{whole}/{cut}",
            cut > 0 and whole == cut,
        )
    long_rows = results.get("long") or []
    lengths = sorted({r["reply_s"] for r in long_rows})
    if len(lengths) >= 2:
        short = _find(long_rows, "ours", reply_s=lengths[0])
        longest = _find(long_rows, "ours", reply_s=lengths[-1])
        if short and longest:
            value = over(longest["latency_p99_ms"], short["latency_p99_ms"])
            add(
                f"long replies: p99 of {lengths[-1]:g} s vs {lengths[0]:g} s replies",
                f"<= {LONG_RATIO:g}x",
                value,
                value is not None and value <= LONG_RATIO,
            )
    idle_rows = results.get("idle") or []
    for sessions in sorted({r["sessions"] for r in idle_rows}):
        ours = _find(idle_rows, "ours", sessions=sessions)
        seed = _find(idle_rows, "seed", sessions=sessions)
        if ours and seed:
            value = over(ours["per_joined_kib"], seed["per_joined_kib"])
            add(
                f"idle memory per joined session vs seed, {sessions} sessions",
                f"<= {IDLE_RATIO:g}x",
                value,
                value is not None and value <= IDLE_RATIO,
            )
        if ours:
            kib = ours["per_joined_kib"]
            add(
                f"idle KiB per joined session, {sessions} sessions (no regression)",
                f"<= {IDLE_TODAY_KIB:g}",
                kib,
                kib <= IDLE_TODAY_KIB,
            )
    for row in results.get("cancel") or []:
        if row["gateway"] == "ours":
            p99 = row["cancel_to_quiet_p99_ms"]
            all_cancelled = row["upstream_cancelled"] == row["stops"]
            add(
                f"cancel-to-quiet p99 ms ({row['mode']})",
                f"< {CANCEL_MS:g}, every stream cancelled",
                p99,
                p99 is not None and p99 < CANCEL_MS and all_cancelled,
            )
            add(
                f"chunks after the stop ({row['mode']})",
                "0",
                row["after_stop"],
                row["after_stop"] == 0,
            )
    for row in results.get("resume") or []:
        if row["gateway"] == "ours":
            value = row["gaps"] + row["duplicates"]
            add(
                "resume: gaps + duplicates",
                "0",
                value,
                value == 0 and row.get("resumed", 0) == row["turns"],
            )
    out.extend(scale_targets(results.get("scale") or []))
    return out


def scale_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scenario 7's targets (issue's list), for ours-2."""
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: Any, met: bool | None) -> None:
        out.append({"name": name, "target": target, "value": value, "met": met})

    def over(a: Any, b: Any) -> float | None:
        if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
            return None
        return round(a / b, 2)

    sweep = [r for r in rows if r["kind"] == "sweep"]
    for sessions in sorted({r["sessions"] for r in sweep}):
        two = _find(sweep, "ours-2", sessions=sessions, pace_s=0.0)
        if two is None:
            continue
        point = f"{sessions} sessions, pace 0 ms"
        one = _find(sweep, "ours-1", sessions=sessions, pace_s=0.0)
        seed = _find(sweep, "seed-2", sessions=sessions, pace_s=0.0)
        if one is not None:
            value = over(two["chunks_per_s"], one["chunks_per_s"])
            add(
                f"scale: ours-2 chunks/s vs ours-1, {point}",
                f">= {SCALE_PROCESS_RATIO:g}x",
                value,
                value is not None and value >= SCALE_PROCESS_RATIO,
            )
        if seed is not None:
            value = over(two["chunks_per_s"], seed["chunks_per_s"])
            add(
                f"scale: ours-2 chunks/s vs seed-2, {point}",
                f">= {SCALE_SEED_RATIO:g}x",
                value,
                value is not None and value >= SCALE_SEED_RATIO,
            )
            value = over(two["latency_p99_ms"], seed["latency_p99_ms"])
            add(
                f"scale: ours-2 chunk latency p99 vs seed-2, {point}",
                "<= 1x",
                value,
                value is not None and value <= 1.0,
            )
    for row in rows:
        if row["gateway"] != "ours-2" or row["kind"] == "failover":
            continue
        # Commands sent (a script once) where the gateway counts them, else INFO's.
        per_chunk = row.get("redis_sent_per_chunk")
        if per_chunk is None:
            per_chunk = row.get("redis_commands_per_chunk")
        if per_chunk is not None and row["mode"] == "normal" and row["kind"] != "turns":
            where = f"{row['kind']}, {row['sessions']} sessions, pace {row['pace_s'] * 1000:g} ms"
            add(
                f"scale: ours-2 Redis commands per chunk, {where}",
                f"<= {REDIS_PER_CHUNK:g}",
                per_chunk,
                per_chunk <= REDIS_PER_CHUNK,
            )
        if row["kind"] == "cross" and row["mode"] == "stop":
            p99 = row["cancel_to_quiet_p99_ms"]
            every = row["upstream_cancelled"] == row["stops"] and row["stops"] > 0
            add(
                "scale: cross-node cancel-to-quiet p99 ms (stop from the non-owner)",
                f"< {CANCEL_MS:g}, every stream cancelled",
                p99,
                p99 is not None and p99 < CANCEL_MS and every,
            )
        if row["kind"] == "cross" and row["mode"] == "drop":
            value = row["gaps"] + row["duplicates"]
            resumed = row.get("resumed", 0) == row["sessions"]
            add(
                "scale: cross-node resume gaps + duplicates (all resumed)",
                "0",
                value,
                value == 0 and resumed and row["failures"] == 0,
            )
    for row in rows:
        if row["gateway"] == "ours-2" and row["kind"] == "failover":
            add(
                "scale: failover messages lost",
                "0",
                row["messages_lost"],
                row["messages_lost"] == 0 and row["messages_sent"] > 0,
            )
            limit = 1000 * (row["lease_s"] + FAILOVER_SLACK_S)
            worst = row["usable_max_ms"]
            add(
                "scale: failover, every session usable again, max ms",
                f"<= lease + {FAILOVER_SLACK_S:g} s ({limit:g})",
                worst,
                worst is not None and worst <= limit and row["usable"] == row["usable_of"],
            )
    return out


def targets_table(items: Sequence[dict[str, Any]]) -> str:
    lines = ["Targets (ours; ratios against seed-shared unless said)"]
    width = max((len(t["name"]) for t in items), default=10)
    for t in items:
        mark = "met" if t["met"] else "NOT met"
        lines.append(
            f"  {t['name'].ljust(width)}  {fmt(t['value'], 2):>10}  target {t['target']:<30} {mark}"
        )
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def chart(path: Path, results: dict[str, Any], title: str) -> bool:
    """Throughput and p99 latency against sessions, one line per gateway and pace."""
    rows = [r for r in results.get("throughput") or [] if r.get("kind", "sweep") == "sweep"]
    scale_rows = [r for r in results.get("scale") or [] if r["kind"] == "sweep"]
    if not rows and not scale_rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (1 if rows else 0) + (1 if scale_rows else 0)
    figure, axes = plt.subplots(panels, 2, figsize=(12, 4.8 * panels), squeeze=False)
    if rows:
        _sweep_panels(axes[0][0], axes[0][1], rows)
    if scale_rows:
        _scale_panels(axes[-1][0], axes[-1][1], scale_rows)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


SCALE_COLORS = {"ours-1": "tab:cyan", "ours-2": "tab:blue", "seed-2": "tab:orange"}


def _scale_panels(left: Any, right: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Scenario 7: chunks/s and p99 latency per sweep point, one bar per gateway."""
    points = sorted({(r["pace_s"], r["sessions"]) for r in rows})
    gateways = [g for g in SCALE_COLORS if any(r["gateway"] == g for r in rows)]
    width = 0.8 / max(1, len(gateways))
    for i, gateway in enumerate(gateways):
        found = [_find(rows, gateway, sessions=n, pace_s=p) for p, n in points]
        xs = [j + (i - (len(gateways) - 1) / 2) * width for j in range(len(points))]
        color = SCALE_COLORS[gateway]
        left.bar(
            xs,
            [(r or {}).get("chunks_per_s") or 0 for r in found],
            width,
            color=color,
            label=gateway,
        )
        right.bar(
            xs,
            [(r or {}).get("latency_p99_ms") or 0 for r in found],
            width,
            color=color,
            label=gateway,
        )
    labels = [f"{n} sess\npace {p * 1000:g} ms" for p, n in points]
    for axis, name in (
        (left, "7. scale: chunks delivered per second"),
        (right, "7. scale: chunk latency p99 (ms)"),
    ):
        axis.set_xticks(range(len(points)), labels, fontsize=8)
        axis.set_ylabel(name)
        axis.grid(True, axis="y", alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=8)


def combined(latest: Path, document: dict[str, Any]) -> dict[str, Any]:
    """The figures to chart for a run of the scale scenario alone: the other scenarios'
    from ``latest`` (if it exists), the scale scenario's from ``document``."""
    try:
        others: dict[str, Any] = json.loads(latest.read_text())
    except (OSError, ValueError):
        others = {}
    return others | {"scale": document.get("scale") or []}


def _sweep_panels(left: Any, right: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Scenario 1: throughput and p99 latency against sessions, one line per gateway and
    pace."""
    styles = {
        "ours": ("tab:blue", "o"),
        "seed": ("tab:red", "s"),
        "seed-shared": ("tab:orange", "^"),
    }
    for gateway in dict.fromkeys(r["gateway"] for r in rows):
        for pace in sorted({r["pace_s"] for r in rows}):
            points: dict[int, dict[str, Any]] = {}
            for row in rows:
                if row["gateway"] == gateway and row["pace_s"] == pace:
                    best = _find(rows, gateway, sessions=row["sessions"], pace_s=pace)
                    points[row["sessions"]] = best or row
            xs = sorted(points)
            color, marker = styles.get(gateway, ("gray", "x"))
            dash = "-" if pace == 0 else "--"
            label = f"{gateway}, pace {pace * 1000:g} ms"
            left.plot(
                xs,
                [points[x]["chunks_per_s"] or 0 for x in xs],
                dash,
                color=color,
                marker=marker,
                label=label,
            )
            right.plot(
                xs,
                [points[x]["latency_p99_ms"] or 0 for x in xs],
                dash,
                color=color,
                marker=marker,
                label=label,
            )
    for axis, name in ((left, "chunks delivered per second"), (right, "chunk latency p99 (ms)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("concurrent sessions")
        axis.set_ylabel(name)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)


def markdown(document: dict[str, Any]) -> str:
    """The figures of one run as Markdown tables (for bench/README.md)."""
    kinds = list(document.get("gateways", {}))
    out: list[str] = []
    m = document["machine"]
    out.append(
        f"{document['mode']} run of {document['started']}, {document['duration_s']:.0f} s; "
        f"{m['cpu_model']}, {m['logical_cores']} logical cores (load average at start "
        f"{m['load_average'][0]}), Python {m['python']}, "
        f"{document['generator_processes']} load-generator processes."
    )

    def grid(
        title: str,
        rows: Sequence[dict[str, Any]],
        point: Callable[[dict[str, Any]], str],
        metrics: Sequence[Metric],
        gateways: Sequence[str],
        numerator: str = "ours",
        baselines: Sequence[str] = BASELINES,
    ) -> None:
        if not rows:
            return
        bases = ratio_bases(gateways, numerator, baselines)
        head = ["point", "figure", *gateways] + [f"{numerator}/{b}" for b in bases]
        out.append(f"\n**{title}**\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * 2 + "---:|" * (len(head) - 2))
        points: dict[str, dict[str, dict[str, Any]]] = {}
        for row in rows:
            points.setdefault(point(row), {})[row["gateway"]] = row
        for name, by_gateway in points.items():
            for i, (label, get) in enumerate(metrics):
                values = [get(by_gateway[g]) if g in by_gateway else None for g in gateways]
                cells = [name if i == 0 else "", label, *(fmt(v) for v in values)]
                cells += ratios(values, gateways, bases, numerator)
                out.append("| " + " | ".join(cells) + " |")

    brief = THROUGHPUT[:8] + THROUGHPUT[9:10]
    grid(
        "1. Throughput sweep",
        document.get("throughput") or [],
        lambda r: f"{r['sessions']} sessions, pace {r['pace_s'] * 1000:g} ms, {r['n']} chunks",
        brief,
        kinds,
    )
    grid(
        "2. Idle footprint",
        document.get("idle") or [],
        lambda r: f"{r['sessions']} sessions",
        IDLE,
        [k for k in kinds if k != "seed-shared"],
    )
    grid(
        "3. Cancel mid-stream",
        document.get("cancel") or [],
        lambda r: f"{r['mode']}, {r['sessions']} sessions",
        CANCEL,
        kinds,
    )
    grid(
        "4. Drop and resume",
        document.get("resume") or [],
        lambda r: f"{r['sessions']} sessions",
        RESUME,
        kinds,
    )
    grid(
        "5. Slow clients",
        document.get("slow") or [],
        lambda r: f"{r['sessions']} sessions, {slow_share(r['slow_every'])} slow",
        SLOW,
        kinds,
    )
    grid(
        "6. Long replies",
        document.get("long") or [],
        lambda r: f"{r['sessions']} sessions, {r['reply_s']:g} s replies, {r['n']} chunks",
        LONG,
        kinds,
    )
    scale_kinds = [k for k in ("ours-1", "ours-2", "seed-2") if k in kinds]
    for title, rows, point, metrics in scale_sections(document.get("scale") or []):
        present = [k for k in scale_kinds if any(r["gateway"] == k for r in rows)]
        grid(title, rows, point, metrics, present, SCALE_NUMERATOR, SCALE_BASELINES)
    items = document.get("targets") or []
    if items:
        out.append("\n**Targets (ours; ratios against seed-shared unless said)**\n")
        out.append("| target | measured | wanted | |")
        out.append("|---|---:|---|---|")
        for t in items:
            out.append(
                f"| {t['name']} | {fmt(t['value'], 2)} | {t['target']} | "
                f"{'met' if t['met'] else '**not met**'} |"
            )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.report [file.json]``: a run's figures as Markdown tables."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else Path(__file__).resolve().parent / "results" / "latest.json"
    sys.stdout.write(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
