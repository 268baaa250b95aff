"""The results of `bench/run.py`, and what it makes of them: one table with ratios and target
verdicts, docs/benchmarks.md and a latency CDF plot. matplotlib is needed only for the plot
(the `bench` extra); it is imported when the plot is drawn."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common import BenchError, IdleResult, markdown_table, percentile, ratio, text_table

FAST, SIDECAR, DEFAULTS, SHELL, FLOOR = "credsync-0", "sidecar-0", "credsync", "shell", "floor"
LANES = (FAST, SIDECAR, DEFAULTS, SHELL, FLOOR)
LABELS = {
    FAST: "credsync 0/0/0",
    SIDECAR: "sidecar 0/0/0",
    DEFAULTS: "credsync defaults",
    SHELL: "shell script",
    FLOOR: "floor",
}
COLOURS = {FAST: "tab:blue", SIDECAR: "tab:purple", DEFAULTS: "tab:cyan", SHELL: "tab:red", FLOOR: "tab:green"}
PLOT_NAME = "benchmarks-latency-cdf.png"
DEFAULTS_GAP_S = 0.35  # after a HUP, the defaults lane's notifier is still in its 1 s grace check
MB = 1_000_000
MIB = 1024 * 1024


@dataclass
class Latencies:
    publish: list[float] = field(default_factory=list)  # seconds, close of the last write → published
    signal: list[float] = field(default_factory=list)  # → HUP seen in the container (rounds, in order)
    log: list[float] = field(default_factory=list)  # credsync: → its `published` log line

    def published_to_signal(self) -> list[float]:
        """Per signal round; the first len(signal) publish figures belong to those rounds."""
        return [signal - publish for publish, signal in zip(self.publish, self.signal, strict=False)]


@dataclass(frozen=True)
class Burst:
    uploads: int
    files: int
    write_s: float  # writing all uploads took
    published_s: float | None  # first write → every file holds its final bytes; None: not in time
    last_signal_s: float | None
    publications: int  # files written or renamed into the destination
    signals: int
    lost: int
    log: dict[str, int]  # credsync: log lines by message
    note: str = ""


@dataclass
class Results:
    latency: dict[str, Latencies] = field(default_factory=dict)
    bursts: dict[tuple[str, str], Burst] = field(default_factory=dict)
    idle: dict[str, IdleResult] = field(default_factory=dict)
    startup: dict[str, list[float]] = field(default_factory=dict)
    imports: dict[str, list[float]] = field(default_factory=dict)
    importtime: list[tuple[str, float]] = field(default_factory=list)
    health: dict[str, float] = field(default_factory=dict)  # CPU seconds per health check, by lane (+ "cli")
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # the run itself may be off: shown first


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Verdict:
    target: str
    passed: bool
    detail: str

    @property
    def word(self) -> str:
        return "PASS" if self.passed else "FAIL"


def ms(values: Sequence[float], p: float) -> float:
    return percentile(values, p) * 1000


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def judge(results: Results) -> dict[str, Verdict]:
    """The issue's targets, each on the lane it is about: latency with settle and debounce 0
    (at the defaults they are the deliberate waits), bursts at the defaults (a debounce of 0
    notifies at once by design), idle and start-up of the daemon as deployed."""
    lat = results.latency
    publish = {lane: ms(lat[lane].publish, 50) for lane in lat}
    signal = {lane: ms(lat[lane].signal, 50) for lane in lat}
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
        ok = seconds is not None and seconds <= 3.0 and burst.signals <= 3 and burst.lost == 0
        shown = "not all published" if seconds is None else f"{seconds:.2f} s"
        verdicts[f"burst-{scenario}"] = Verdict(
            f"burst of {burst.uploads} ({scenario}) <= 3 s, <= 3 notifications, nothing lost",
            ok,
            f"{shown}, {burst.signals} HUPs, {burst.lost} lost",
        )
    idle = results.idle[DEFAULTS]
    verdicts["idle"] = Verdict(
        "idle <= 0.05 % CPU",
        idle.cpu_percent <= 0.05,
        f"{idle.cpu_percent:.4f} % ({idle.run_s:.4f} CPU s over {idle.seconds:.0f} s)",
    )
    hwm_mb = idle.hwm_mib * MIB / MB
    verdicts["rss"] = Verdict(
        "peak RSS <= 45 MB", hwm_mb <= 45, f"{hwm_mb:.1f} MB = {idle.hwm_mib:.1f} MiB (VmHWM, 45 MB = 42.9 MiB)"
    )
    startup = median(results.startup[DEFAULTS])
    verdicts["startup"] = Verdict(
        "start-up to ready <= 0.6 s",
        startup <= 0.6,
        f"median {startup:.3f} s of {len(results.startup[DEFAULTS])} spawns",
    )
    return verdicts


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    label: str
    values: dict[str, float]  # by lane; NaN: not applicable
    digits: int = 2
    ratios: bool = True
    target: str = ""


def latency_rows(results: Results, verdicts: dict[str, Verdict]) -> list[Row]:
    lat = results.latency
    rows = []
    for figure, key in (("(1) last write -> published", "publish"), ("(2) last write -> HUP in container", "signal")):
        for p in (50, 95, 99):
            verdict = verdicts[key if key == "publish" else f"signal-{FAST}"]
            target = f"{verdict.word} ({verdict.target})" if p == 50 else ""
            values = {lane: ms(getattr(lat[lane], key), p) for lane in LANES}
            rows.append(Row(f"{figure}, p{p} ms", values, target=target))
    rows.append(Row("    published -> HUP, p50 ms", {lane: ms(lat[lane].published_to_signal(), 50) for lane in LANES}))
    return rows


def burst_rows(results: Results, verdicts: dict[str, Verdict]) -> list[Row]:
    rows = []
    for number, scenario in (("(3a)", "distinct"), ("(3b)", "rewrites")):
        bursts = {lane: results.bursts.get((lane, scenario)) for lane in LANES}
        uploads = results.bursts[(FAST, scenario)].uploads
        title = f"{uploads} distinct files" if scenario == "distinct" else f"{uploads} rewrites of one file"
        verdict = verdicts[f"burst-{scenario}"]
        rows += [
            Row(
                f"{number} {title}: all published, s",
                burst_figure(bursts, "published_s"),
                target=f"{verdict.word} (defaults: <= 3 s, <= 3 HUPs, 0 lost)",
            ),
            Row("    last HUP seen, s", burst_figure(bursts, "last_signal_s")),
            Row("    publications", burst_figure(bursts, "publications"), digits=0, ratios=False),
            Row("    notifications (HUPs seen)", burst_figure(bursts, "signals"), digits=0, ratios=False),
            Row("    lost (final bytes not in place)", burst_figure(bursts, "lost"), digits=0, ratios=False),
        ]
    return rows


def burst_figure(bursts: dict[str, Burst | None], name: str) -> dict[str, float]:
    """One field of each lane's burst; NaN where it has none (no burst, or not all published in time)."""
    values: dict[str, float] = {}
    for lane, burst in bursts.items():
        value = None if burst is None else getattr(burst, name)
        values[lane] = math.nan if value is None else float(value)
    return values


def resource_rows(results: Results, verdicts: dict[str, Verdict]) -> list[Row]:
    idle = results.idle
    seconds = idle[DEFAULTS].seconds
    imports = {name: median(times) for name, times in results.imports.items()}
    floor_import = (imports["floor"] - imports["python"]) * 1000
    full = (imports["credsync.cli+notify"] - imports["python"]) * 1000
    cli = (imports["credsync.cli"] - imports["python"]) * 1000
    return [
        Row(f"(4) idle CPU seconds over {seconds:.0f} s", {lane: idle[lane].run_s for lane in LANES}, digits=4),
        Row(
            "    idle CPU, % of one core",
            {lane: idle[lane].cpu_percent for lane in LANES},
            digits=4,
            target=f"{verdicts['idle'].word} (defaults <= 0.05 %)",
        ),
        Row("    wake-ups per second", {lane: idle[lane].wakeups_per_s for lane in LANES}),
        Row(
            "    peak RSS (VmHWM), MiB",
            {lane: idle[lane].hwm_mib for lane in LANES},
            digits=1,
            target=f"{verdicts['rss'].word} (defaults <= 45 MB = 42.9 MiB)",
        ),
        Row(
            f"(5) spawn -> ready, median of {len(results.startup[DEFAULTS])}, s",
            {lane: median(results.startup[lane]) for lane in LANES},
            digits=3,
            target=f"{verdicts['startup'].word} (defaults <= 0.6 s)",
        ),
        Row(
            "(6) imports over `python -c pass`, ms",
            {FAST: full, SIDECAR: math.nan, DEFAULTS: full, SHELL: math.nan, FLOOR: floor_import},
            digits=0,
        ),
        Row(
            "    credsync.cli alone, ms",
            {FAST: cli, SIDECAR: math.nan, DEFAULTS: cli, SHELL: math.nan, FLOOR: math.nan},
            digits=0,
        ),
        Row(
            "(7) health check, CPU ms per run",
            {lane: results.health.get(lane, math.nan) * 1000 for lane in LANES},
            digits=1,
            ratios=False,
            target=" ".join(f"{verdicts[f'health-{lane}'].word}" for lane in (DEFAULTS, SIDECAR)) + " (<= 20 ms)",
        ),
    ]


RATIO_COLUMNS = ((FAST, SHELL), (FAST, FLOOR), (SIDECAR, SHELL), (DEFAULTS, SHELL), (DEFAULTS, FLOOR))
SHORT = {FAST: "c0", SIDECAR: "sc0", DEFAULTS: "def", SHELL: "shell", FLOOR: "floor"}


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    header = [
        "figure",
        *(LABELS[lane] for lane in LANES),
        *(f"{SHORT[a]}/{SHORT[b]}" for a, b in RATIO_COLUMNS),
        "target",
    ]
    body = []
    for row in rows:
        cells = [row.label, *(number(row.values[lane], row.digits) for lane in LANES)]
        cells += [ratio(row.values[a], row.values[b]) if row.ratios else "" for a, b in RATIO_COLUMNS]
        body.append([*cells, row.target])
    return header, body


def number(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


# --------------------------------------------------------------------------- the summary


@dataclass
class Summary:
    results: Results
    args: argparse.Namespace
    elapsed_s: float
    date: datetime
    verdicts: dict[str, Verdict]
    rows: list[Row]

    @classmethod
    def of(cls, results: Results, args: argparse.Namespace, elapsed_s: float, date: datetime) -> Summary:
        verdicts = judge(results)
        rows = latency_rows(results, verdicts) + burst_rows(results, verdicts) + resource_rows(results, verdicts)
        return cls(results, args, elapsed_s, date, verdicts, rows)

    def method(self) -> list[str]:
        args = self.args
        extra = args.rounds - args.default_rounds
        return [
            f"uploads: .credentials.json written in place like scp/cp; {args.rounds} timed per lane, after one"
            " warm-up; credsync 0/0/0, sidecar 0/0/0, shell and floor interleaved upload by upload",
            f"credsync defaults: {args.default_rounds} signal rounds, each started {DEFAULTS_GAP_S:g} s after the"
            f" previous HUP, + {extra} publish-only uploads to its 3 Claude routes in turn (a signal round costs"
            " >= 1.1 s: settle 250 + debounce 500 ms, grace 1 s)",
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

    def lines(self, render: Callable[[Sequence[str], Sequence[Sequence[str]]], list[str]]) -> list[str]:
        header, body = table(self.rows)
        return render(header, body)

    def text(self) -> str:
        rule = "=" * 100
        out = [
            rule,
            f"credsync vs the shell script vs the floor - {self.date:%Y-%m-%d %H:%M} UTC,"
            f" run took {self.elapsed_s:.0f} s",
            rule,
            *self.lines(text_table),
            *(f"WARNING: {warning}" for warning in self.results.warnings),
            "",
            "TARGETS",
            *(f"  {v.word}  {v.target}: {v.detail}" for v in self.verdicts.values()),
            "",
            "NOTES",
            *(f"  - {note}" for note in [*self.method(), *self.details()]),
            rule,
        ]
        return "\n".join(out)

    def details(self) -> list[str]:
        results = self.results
        notes = list(results.notes)
        for lane in (FAST, DEFAULTS):
            logged = results.latency[lane].log
            if logged:
                notes.append(
                    f"{LABELS[lane]}: last write -> its 'published' log line (logged after the destination and the"
                    " previous-generation copy)"
                    f" p50 {ms(logged, 50):.2f} ms, p99 {ms(logged, 99):.2f} ms"
                )
        for (lane, scenario), burst in results.bursts.items():
            log = ", ".join(f"{count} {message}" for message, count in sorted(burst.log.items()) if count)
            note = f"; {burst.note}" if burst.note else ""
            notes.append(
                f"burst {scenario} {LABELS[lane]}: writing took {burst.write_s:.2f} s"
                + (f"; log lines: {log}" if log else "")
                + note
            )
        top = ", ".join(f"{name} {cumulative:.0f}" for name, cumulative in results.importtime[:8])
        notes.append(f"-X importtime, cumulative ms of top-level packages for credsync.cli + credsync.notify: {top}")
        startup = ", ".join(
            f"{LABELS[lane]} {min(times):.3f}-{max(times):.3f}" for lane, times in results.startup.items()
        )
        notes.append(f"spawn -> ready range, s: {startup}")
        return notes

    def markdown(self, plot: str) -> str:
        command = self.args.command
        out = [
            "# Benchmarks: credsync vs the shell script vs the floor",
            "",
            f"Generated by `{command}` on {self.date:%Y-%m-%d %H:%M} UTC in {self.elapsed_s:.0f} s;"
            " regenerated on every run, do not edit by hand. Every figure below comes from that one run.",
            "",
            "- **credsync 0/0/0**: `credsync watch --settle-ms=0 --debounce-ms=0 --notify-grace-ms=0`",
            "- **sidecar 0/0/0**: the same flags in the credsync image, run with the compose file's options"
            " (capabilities, read-only root, mounts, the notify layer's socket and the consumer's PID namespace),"
            " by `docker run`",
            "- **credsync defaults**: `credsync watch` (settle 250 ms, debounce 500 ms, notify grace 1000 ms)",
            "- **shell script**: [`bench/shell_baseline.sh`](../bench/shell_baseline.sh), the ten lines a user would"
            " write: `inotifywait -m -e close_write,moved_to | while read; install -o -g -m 600; docker kill -s HUP`",
            "- **floor**: [`bench/floor.py`](../bench/floor.py): inotify + read + temp file + fchown + fsync + rename"
            " + one Docker API kill on a client made once",
            "",
            "Ratios: c0 = credsync 0/0/0, sc0 = sidecar 0/0/0, def = credsync defaults, each divided by the shell"
            " script or the floor.",
            "",
            *(f"> **Warning**: {warning}\n" for warning in self.results.warnings),
            *self.lines(markdown_table),
            "",
            "## Targets",
            "",
            *(f"- **{v.word}** {v.target}: {v.detail}" for v in self.verdicts.values()),
            "",
            "## Latency distribution",
            "",
            f"![latency CDF: credsync vs the shell script vs the floor]({plot})",
            "",
            "## Method",
            "",
            *(f"- {line}" for line in self.method()),
            "",
            "## Environment and details",
            "",
            *(f"- {note}" for note in self.details()),
            "",
        ]
        return "\n".join(out)

    def write_docs(self, folder: Path) -> list[Path]:
        folder.mkdir(exist_ok=True)
        plot = folder / PLOT_NAME
        draw_cdf(self.results, plot)
        page = folder / "benchmarks.md"
        page.write_text(self.markdown(PLOT_NAME))
        return [page, plot]


# --------------------------------------------------------------------------- the plot


def require_plotting() -> None:
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]  # optional: the `bench` extra
    except ImportError:
        raise BenchError(
            "matplotlib is needed for docs/ (pip install -e '.[bench]'); or pass --no-docs to print only"
        ) from None
    del matplotlib


def draw_cdf(results: Results, path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
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
