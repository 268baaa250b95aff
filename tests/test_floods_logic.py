"""Floods, the pure part: how often a rescan may run, how many lines about ignored names a flood
may cost, and which names are remembered as said. No I/O; a clock the test moves."""

from __future__ import annotations

import time
from pathlib import Path

from loguru import logger

from credsync.ledger import Ledger
from credsync.pipeline import IGNORED_BURST, IGNORED_LINES_PER_S, IGNORED_MEMORY, Pipeline
from credsync.routes import load_routes
from credsync.schedule import Coalesced, LineBudget, RecentNames
from tests.helpers import FakeClock, own_settings


def test_a_rescan_asked_for_after_a_quiet_interval_is_due_at_once() -> None:
    clock = FakeClock()
    rescans = Coalesced(1.0, clock)
    assert rescans.take() is None and rescans.seconds_until_due() is None and not rescans.pending
    rescans.request("the source folder was replaced")
    assert rescans.seconds_until_due() == 0.0
    assert rescans.take() == "the source folder was replaced"
    assert not rescans.pending


def test_rescans_asked_for_within_the_interval_run_once_at_its_end_under_every_reason() -> None:
    clock = FakeClock()
    rescans = Coalesced(1.0, clock)
    rescans.request("first")
    assert rescans.take() == "first"
    clock.now += 0.25
    for reason in ("an upload folder was created, moved or deleted", "overflow", "periodic"):
        rescans.request(reason)
    assert rescans.pending and rescans.take() is None
    assert rescans.seconds_until_due() == 0.75
    clock.now += 0.74
    assert rescans.take() is None
    clock.now += 0.01
    assert rescans.take() == "an upload folder was created, moved or deleted; overflow; periodic"
    assert rescans.take() is None and not rescans.pending
    for _ in range(3):
        rescans.request("overflow")  # asked again: named once
    clock.now += 1.0
    assert rescans.take() == "overflow"


def test_a_storm_of_requests_costs_one_rescan_per_interval() -> None:
    clock = FakeClock()
    rescans = Coalesced(1.0, clock)
    done = 0
    for _ in range(10_000):  # ten seconds of a request every millisecond
        rescans.request("an upload folder was created, moved or deleted")
        done += rescans.take() is not None
        clock.now += 0.001
    assert 10 <= done <= 11


def test_a_line_budget_admits_its_burst_then_holds_lines_back_and_counts_them() -> None:
    clock = FakeClock()
    budget = LineBudget(3, 1.0, clock)
    assert [budget.admit() for _ in range(5)] == [True, True, True, False, False]
    assert budget.held_back() == 0, "no token yet to say so"
    clock.now += 1.0
    assert budget.held_back() == 2
    assert budget.held_back() == 0, "said once, then the count starts again"


def test_once_lines_were_held_back_the_next_token_says_how_many() -> None:
    clock = FakeClock()
    budget = LineBudget(1, 1.0, clock)
    assert budget.admit() and not budget.admit()
    clock.now += 5.0  # the bucket holds one token at most
    assert budget.held_back() == 1
    assert not budget.admit(), "the count spent the token: this line is counted in turn"
    clock.now += 1.0
    assert budget.held_back() == 1
    clock.now += 1.0
    assert budget.held_back() == 0 and budget.admit()


def test_a_flood_costs_at_most_the_burst_and_the_rate_in_lines_and_counts_the_rest() -> None:
    clock = FakeClock()
    budget = LineBudget(20, 1.0, clock)
    admitted = summaries = held = 0
    for _ in range(100_000):  # ten seconds of ten thousand names a second
        if count := budget.held_back():
            summaries += 1
            held += count
        admitted += budget.admit()
        clock.now += 0.0001
    assert admitted + summaries <= 20 + 10 + 1
    clock.now += 60
    held += budget.held_back()
    assert admitted + held == 100_000, "every line is said or counted"


def test_after_the_flood_a_line_is_admitted_again() -> None:
    clock = FakeClock()
    budget = LineBudget(2, 1.0, clock)
    for _ in range(10):
        budget.admit()
    clock.now += 60  # a full bucket again: one token for the count, one for the next line
    assert budget.held_back() == 8
    assert budget.admit()
    assert not budget.admit()


def test_recent_names_forget_the_oldest_first_never_all_at_once() -> None:
    names = RecentNames(3)
    assert [names.add(name) for name in ("a", "b", "c")] == [True, True, True]
    assert not names.add("a")  # seen again: now the newest
    assert names.add("d")  # forgets b, the oldest
    assert len(names) == 3
    assert not names.add("a") and not names.add("c") and not names.add("d")
    assert names.add("b")


def test_a_bounded_memory_remembers_all_but_the_evicted_names() -> None:
    names = RecentNames(IGNORED_MEMORY)
    for serial in range(IGNORED_MEMORY + 1):
        names.add(f"credentials.json.{serial}")
    assert names.add("credentials.json.0"), "the oldest was forgotten"
    assert not any(names.add(f"credentials.json.{serial}") for serial in range(2, IGNORED_MEMORY + 1))


def test_the_pipeline_says_a_flood_of_near_miss_names_in_a_bounded_number_of_lines(tmp_path: Path) -> None:
    """1,100 names (more than the memory holds) seen again and again: before, each round said
    every name once more; now the lines stay within the budget, and the rest is counted."""
    settings = own_settings(tmp_path)
    pipeline = Pipeline(settings, load_routes(settings), Ledger(settings.state_dir))
    said: list[tuple[str, str, object]] = []
    sink = logger.add(
        lambda message: said.append(
            (message.record["level"].name, message.record["message"], message.record["extra"].get("count"))
        ),
        level="DEBUG",
    )
    names = [f"credentials.json.{serial}" for serial in range(1_100)] + ["CREDENTIALS.JSON"]
    started = time.monotonic()
    try:
        for _ in range(5):
            for name in names:
                pipeline.process(name)
    finally:
        logger.remove(sink)
    elapsed = time.monotonic() - started
    ignored = [line for line in said if line[1] == "ignored: no route for this name"]
    summaries = [line for line in said if line[1] == "more ignored names not shown"]
    bound = 2 * (IGNORED_BURST + IGNORED_LINES_PER_S * elapsed + 1)  # per level: DEBUG and INFO
    assert len(ignored) + len(summaries) <= bound, f"{len(ignored)} + {len(summaries)} lines in {elapsed:.1f}s"
    assert ("INFO", "ignored: no route for this name", None) in said, "the near miss is said"
    assert len(ignored) >= IGNORED_BURST, "the burst is said"
