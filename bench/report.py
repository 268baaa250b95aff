"""The results of `python -m bench`, and what it makes of them: one table with ratios and target
verdicts, docs/benchmarks.md and a latency CDF plot (matplotlib, the `bench` extra, is imported
only to draw it)."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import NamedTuple

from bench import BenchError

FAST, SIDECAR, DEFAULTS, SHELL, FLOOR = "credsync-0", "sidecar-0", "credsync", "shell", "floor"
LANES = (FAST, SIDECAR, DEFAULTS, SHELL, FLOOR)
LABELS = dict(
    zip(LANES, ("credsync 0/0/0", "sidecar 0/0/0", "credsync defaults", "shell script", "floor"), strict=True)
)
COLOURS = {FAST: "tab:blue", SIDECAR: "tab:purple", DEFAULTS: "tab:cyan", SHELL: "tab:red", FLOOR: "tab:green"}
SHORT = {FAST: "c0", SIDECAR: "sc0", DEFAULTS: "def", SHELL: "shell", FLOOR: "floor"}
RATIO_COLUMNS = ((FAST, SHELL), (FAST, FLOOR), (SIDECAR, SHELL), (DEFAULTS, SHELL), (DEFAULTS, FLOOR))
PLOT_NAME = "benchmarks-latency-cdf.png"
DEFAULTS_GAP_S = 0.35  # after a HUP, the defaults lane's notifier is still in its 1 s grace check
MIB_PER_MB = 1_000_000 / (1024 * 1024)


@dataclass
class Latencies:
    publish: list[float] = field(default_factory=list)  # seconds, close of the last write → published
    signal: list[float] = field(default_factory=list)  # → HUP seen in the container (rounds, in order)

    def published_to_signal(self) -> list[float]:
        """Per signal round; the first len(signal) publish figures belong to those rounds."""
        return [signal - publish for publish, signal in zip(self.publish, self.signal, strict=False)]


@dataclass(frozen=True)
class Burst:
    uploads: int
    write_s: float  # writing all uploads took
    published_s: float | None  # first write → every file holds its final bytes; None: not in time
    last_signal_s: float | None
    publications: int  # files written or renamed into the destination
    signals: int
    lost: int
    note: str = ""


@dataclass(frozen=True)
class Idle:
    seconds: float
    run_s: float  # CPU, from schedstat (ns resolution; clock ticks are 10 ms)
    wakeups_per_s: float
    hwm_mib: float  # summed over the processes: an upper bound of their joint peak

    @property
    def cpu_percent(self) -> float:
        return 100 * self.run_s / self.seconds


@dataclass
class Results:
    latency: dict[str, Latencies] = field(default_factory=dict)
    bursts: dict[tuple[str, str], Burst] = field(default_factory=dict)
    idle: dict[str, Idle] = field(default_factory=dict)
    startup: dict[str, list[float]] = field(default_factory=dict)
    imports: dict[str, list[float]] = field(default_factory=dict)
    health: dict[str, float] = field(default_factory=dict)  # CPU seconds per health check, by lane (+ "cli")
    sections: dict[str, list[str]] = field(default_factory=dict)  # title -> preformatted lines (parse, soak)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the run itself may be off: shown first


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * p / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ms(values: Sequence[float], p: float) -> float:
    return percentile(values, p) * 1000


def ratio(numerator: float, denominator: float) -> str:
    if math.isnan(numerator) or math.isnan(denominator):
        return "-"
    if denominator <= 0:
        return "n/a"
    value = numerator / denominator
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def numeric_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[bool]:
    """Columns (after the first) whose cells are all figures, ratios, `-` or empty: right-aligned."""
    return [
        column > 0 and all(re.fullmatch(r"-|n/a|[\d.,]+x?|", row[column]) for row in rows)
        for column in range(len(header))
    ]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    right = numeric_columns(header, rows)

    def line(cells: Sequence[str]) -> str:
        aligned = (f"{cell:>{w}}" if r else f"{cell:<{w}}" for cell, w, r in zip(cells, widths, right, strict=True))
        return "  ".join(aligned).rstrip()

    return [line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The same as a GitHub table; a cell's leading spaces (a sub-row) become em spaces."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join("&emsp;" * ((len(c) - len(c.lstrip())) // 2) + c.lstrip() for c in cells) + " |"

    rule = "|" + "|".join("---:" if right else ":---" for right in numeric_columns(header, rows)) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


@dataclass(frozen=True)
class Verdict:
    target: str
    passed: bool
    detail: str

    @property
    def word(self) -> str:
        return "PASS" if self.passed else "FAIL"


def judge(results: Results) -> dict[str, Verdict]:
    """The issue's targets, each on the lane it is about: latency with settle and debounce 0
    (at the defaults they are the deliberate waits), bursts at the defaults (a debounce of 0
    notifies at once by design), idle and start-up of the daemon as deployed."""
    publish = {lane: ms(latencies.publish, 50) for lane, latencies in results.latency.items()}
    signal = {lane: ms(latencies.signal, 50) for lane, latencies in results.latency.items()}
    verdicts = {
        "publish": Verdict(
            "publish latency p50 <= 1.5x floor",
            publish[FAST] <= 1.5 * publish[FLOOR],
            f"{publish[FAST]:.2f} ms vs floor {publish[FLOOR]:.2f} ms = {ratio(publish[FAST], publish[FLOOR])}",
        ),
    }
    for lane in (FAST, SIDECAR):
        verdicts[f"signal-{lane}"] = Verdict(
            f"signal latency p50 <= 1/2 shell, {LABELS[lane]}",
            signal[lane] <= 0.5 * signal[SHELL],
            f"{signal[lane]:.2f} ms vs shell {signal[SHELL]:.2f} ms = {ratio(signal[lane], signal[SHELL])}",
        )
    for lane in (DEFAULTS, SIDECAR):
        cpu_ms = results.health[lane] * 1000
        verdicts[f"health-{lane}"] = Verdict(
            f"health check <= 20 ms CPU, {'host' if lane == DEFAULTS else 'in the sidecar'}",
            cpu_ms <= 20,
            f"{cpu_ms:.1f} ms per run (`credsync health`, the whole CLI: {results.health['cli'] * 1000:.0f} ms)",
        )
    for scenario in ("distinct", "rewrites"):
        burst = results.bursts[(DEFAULTS, scenario)]
        seconds = burst.published_s
        verdicts[f"burst-{scenario}"] = Verdict(
            f"burst of {burst.uploads} ({scenario}) <= 3 s, <= 3 notifications, nothing lost",
            seconds is not None and seconds <= 3.0 and burst.signals <= 3 and burst.lost == 0,
            f"{'not all published' if seconds is None else f'{seconds:.2f} s'}, {burst.signals} HUPs,"
            f" {burst.lost} lost",
        )
    idle = results.idle[DEFAULTS]
    cpu = f"{idle.cpu_percent:.4f} % ({idle.run_s:.4f} CPU s over {idle.seconds:.0f} s)"
    verdicts["idle"] = Verdict("idle <= 0.05 % CPU", idle.cpu_percent <= 0.05, cpu)
    hwm_mb = idle.hwm_mib / MIB_PER_MB
    verdicts["rss"] = Verdict(
        "peak RSS <= 45 MB", hwm_mb <= 45, f"{hwm_mb:.1f} MB = {idle.hwm_mib:.1f} MiB (VmHWM, 45 MB = 42.9 MiB)"
    )
    startup = median(results.startup[DEFAULTS])
    spawns = f"median {startup:.3f} s of {len(results.startup[DEFAULTS])} spawns"
    verdicts["startup"] = Verdict("start-up to ready <= 0.6 s", startup <= 0.6, spawns)
    return verdicts


# The target column: a verdict's key and how the table states it.
TARGET_CELLS = {
    "publish": "publish latency p50 <= 1.5x floor",
    f"signal-{FAST}": f"signal latency p50 <= 1/2 shell, {LABELS[FAST]}",
    "burst-distinct": "defaults: <= 3 s, <= 3 HUPs, 0 lost",
    "burst-rewrites": "defaults: <= 3 s, <= 3 HUPs, 0 lost",
    "idle": "defaults <= 0.05 %",
    "rss": "defaults <= 45 MB = 42.9 MiB",
    "startup": "defaults <= 0.6 s",
}


class Row(NamedTuple):
    label: str
    values: dict[str, float]  # by lane; NaN or missing: not applicable
    digits: int = 2
    ratios: bool = True
    target: str = ""  # a key of TARGET_CELLS, or "health"


def rows(results: Results) -> list[Row]:
    lat, idle, out = results.latency, results.idle, []
    for figure, key, target in (
        ("(1) last write -> published", "publish", "publish"),
        ("(2) last write -> HUP in container", "signal", f"signal-{FAST}"),
    ):
        for p in (50, 95, 99):
            values = {lane: ms(getattr(lat[lane], key), p) for lane in LANES}
            out.append(Row(f"{figure}, p{p} ms", values, target=target if p == 50 else ""))
    out.append(Row("    published -> HUP, p50 ms", {lane: ms(lat[lane].published_to_signal(), 50) for lane in LANES}))
    for number, scenario in (("(3a)", "distinct"), ("(3b)", "rewrites")):
        bursts = {lane: burst for (lane, kind), burst in results.bursts.items() if kind == scenario}
        uploads = bursts[DEFAULTS].uploads
        title = f"{uploads} distinct files" if scenario == "distinct" else f"{uploads} rewrites of one file"
        for label, name, digits in (
            (f"{number} {title}: all published, s", "published_s", 2),
            ("    last HUP seen, s", "last_signal_s", 2),
            ("    publications", "publications", 0),
            ("    notifications (HUPs seen)", "signals", 0),
            ("    lost (final bytes not in place)", "lost", 0),
        ):
            values = {lane: math.nan if getattr(b, name) is None else getattr(b, name) for lane, b in bursts.items()}
            out.append(Row(label, values, digits, digits > 0, f"burst-{scenario}" if name == "published_s" else ""))
    python = median(results.imports["python"])
    imports = {name: (median(times) - python) * 1000 for name, times in results.imports.items()}
    full, cli = imports["credsync.cli+notify"], imports["credsync.cli"]
    startup = f"(5) spawn -> ready, median of {len(results.startup[DEFAULTS])}, s"
    return [
        *out,
        Row(f"(4) idle CPU seconds over {idle[DEFAULTS].seconds:.0f} s", {k: v.run_s for k, v in idle.items()}, 4),
        Row("    idle CPU, % of one core", {k: v.cpu_percent for k, v in idle.items()}, 4, target="idle"),
        Row("    wake-ups per second", {k: v.wakeups_per_s for k, v in idle.items()}),
        Row("    peak RSS (VmHWM), MiB", {k: v.hwm_mib for k, v in idle.items()}, 1, target="rss"),
        Row(startup, {k: median(v) for k, v in results.startup.items()}, 3, target="startup"),
        Row("(6) imports over `python -c pass`, ms", {FAST: full, DEFAULTS: full, FLOOR: imports["floor"]}, 0),
        Row("    credsync.cli alone, ms", {FAST: cli, DEFAULTS: cli}, 0),
        Row("(7) health check, CPU ms per run", {k: v * 1000 for k, v in results.health.items()}, 1, False, "health"),
    ]


def table(results: Results, verdicts: dict[str, Verdict]) -> tuple[list[str], list[list[str]]]:
    header = ["figure", *(LABELS[lane] for lane in LANES), *(f"{SHORT[a]}/{SHORT[b]}" for a, b in RATIO_COLUMNS)]
    health = " ".join(verdicts[f"health-{lane}"].word for lane in (DEFAULTS, SIDECAR)) + " (<= 20 ms)"
    body = []
    for row in rows(results):
        values = {lane: row.values.get(lane, math.nan) for lane in LANES}
        cells = [row.label, *("-" if math.isnan(v) else f"{v:,.{row.digits}f}" for v in values.values())]
        cells += [ratio(values[a], values[b]) if row.ratios else "" for a, b in RATIO_COLUMNS]
        target = f"{verdicts[row.target].word} ({TARGET_CELLS[row.target]})" if row.target in TARGET_CELLS else ""
        body.append([*cells, health if row.target == "health" else target])
    return [*header, "target"], body


@dataclass
class Summary:
    results: Results
    args: argparse.Namespace
    elapsed_s: float
    date: datetime

    def notes(self) -> tuple[list[str], list[str]]:
        """(the method of this run, its environment and details)."""
        args, results = self.args, self.results
        method = [
            f"uploads: .credentials.json written in place like scp/cp; {args.rounds} timed per lane, after one"
            " warm-up; credsync 0/0/0, sidecar 0/0/0, shell and floor interleaved upload by upload",
            f"credsync defaults: {args.default_rounds} signal rounds, each started {DEFAULTS_GAP_S:g} s after the"
            f" previous HUP, + {args.rounds - args.default_rounds} publish-only uploads to its 3 Claude routes in"
            " turn (a signal round costs >= 1.1 s: settle 250 + debounce 500 ms, grace 1 s)",
            "last write = the clock read right after close() by a single-threaded SCHED_FIFO writer process"
            " (nothing the close wakes can run before that reading); published = the destination holds the"
            " bytes with owner 1001:1001 and mode 0600, seen by inotify; HUP = the consumer's line seen by"
            " inotify on its bind-mounted folder",
            f"bursts: {args.burst} uploads written back to back by one thread; distinct files = b0000.json..."
            f" (credsync: a CREDSYNC_ROUTES file with {args.burst} json routes, lanes restarted with it);"
            " rewrites = .credentials.json each time; times from the first write",
            "idle: all five lanes over one window after their warm-up, CPU from schedstat; shell = bash +"
            " its loop subshell + inotifywait (RSS summed)",
            "credsync lanes run `credsync watch --log-format=json` with --notify-target (the Docker SDK is loaded)",
            "health check: CPU (user + system) per run of the image's HEALTHCHECK command, counted by a parent"
            " process in the running sidecar (`docker exec`) and on the host (the probe file against the defaults"
            " lane's state); the whole CLI's `credsync health` on the host for comparison",
        ]
        details = list(results.notes)
        for (lane, scenario), burst in results.bursts.items():
            note = f"; {burst.note}" if burst.note else ""
            details.append(f"burst {scenario} {LABELS[lane]}: writing took {burst.write_s:.2f} s{note}")
        ranges = (f"{LABELS[lane]} {min(times):.3f}-{max(times):.3f}" for lane, times in results.startup.items())
        return method, [*details, f"spawn -> ready range, s: {', '.join(ranges)}"]

    def render(self, markdown: bool) -> str:
        """The table, the targets, the extra sections, the method and details: printed, or as the page."""
        verdicts, (method, details) = judge(self.results), self.notes()
        header, body = table(self.results, verdicts)
        when = f"{self.date:%Y-%m-%d %H:%M} UTC"
        if not markdown:
            rule, sections = "=" * 100, {"targets": [f"  {v.word}  {v.target}: {v.detail}" for v in verdicts.values()]}
            sections |= {**self.results.sections, "notes": [f"  - {note}" for note in [*method, *details]]}
            head = [rule, f"credsync vs the shell script vs the floor - {when}, run took {self.elapsed_s:.0f} s", rule]
            head += [*text_table(header, body), *(f"WARNING: {warning}" for warning in self.results.warnings)]
            body_lines = [line for title, lines in sections.items() for line in ("", title.upper(), *lines)]
            return "\n".join([*head, *body_lines, rule])
        sections = {
            "Targets": [f"- **{v.word}** {v.target}: {v.detail}" for v in verdicts.values()],
            "Latency distribution": [f"![latency CDF: credsync vs the shell script vs the floor]({PLOT_NAME})"],
            **{title: ["```text", *lines, "```"] for title, lines in self.results.sections.items()},
            "Method": [f"- {line}" for line in method],
            "Environment and details": [f"- {note}" for note in details],
        }
        head = [
            "# Benchmarks: credsync vs the shell script vs the floor",
            "",
            f"Generated by `{self.args.command}` on {when} in {self.elapsed_s:.0f} s; regenerated on every run, do not"
            " edit by hand. Every figure below comes from that one run. The lanes (credsync 0/0/0 and defaults on the"
            " host, sidecar 0/0/0 in its image, the shell script, the floor) and the figures:"
            " [`bench/README.md`](../bench/README.md). Ratios: c0 = credsync 0/0/0, sc0 = sidecar 0/0/0, def ="
            " credsync defaults, each divided by the shell script or the floor.",
            "",
            *(f"> **Warning**: {warning}\n" for warning in self.results.warnings),
            *markdown_table(header, body),
        ]
        return "\n".join([*head, *(line for t, lines in sections.items() for line in ("", f"## {t}", "", *lines)), ""])

    def write_docs(self, folder: Path) -> list[Path]:
        draw_cdf(self.results, folder / PLOT_NAME)
        (folder / "benchmarks.md").write_text(self.render(markdown=True))
        return [folder / "benchmarks.md", folder / PLOT_NAME]


def require_plotting() -> None:
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]  # optional: the `bench` extra
    except ImportError:
        raise BenchError("matplotlib is needed for docs/ (scripts/venv test,bench); or pass --no-docs") from None
    matplotlib.use("Agg")


def draw_cdf(results: Results, path: Path) -> None:
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    figure, axes = plt.subplots(1, 2, figsize=(12, 5.2), dpi=100, layout="constrained")
    panels = (
        (axes[0], "last write -> destination published", "publish"),
        (axes[1], "last write -> HUP seen in the container", "signal"),
    )
    for axis, title, key in panels:
        for lane in LANES:
            values = sorted(value * 1000 for value in getattr(results.latency[lane], key))
            fractions = [(rank + 1) / len(values) for rank in range(len(values))]
            label = f"{LABELS[lane]} (p50 {percentile(values, 50):.1f} ms, n={len(values)})"
            axis.step(values, fractions, where="post", label=label, color=COLOURS[lane], linewidth=1.6)
        axis.set_xscale("log")
        axis.set_xlabel("milliseconds (log scale)")
        axis.set_ylabel("fraction of uploads")
        axis.set_ylim(0, 1.01)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    figure.suptitle("credsync vs the shell script vs the floor (one run, same machine, same container)")
    figure.savefig(path)
    plt.close(figure)
