"""Parse time of the worst inputs we can build, at growing sizes up to the 1 MiB cap: linear
means 4x the bytes cost about 4x the time (quadratic: 16x). Baselines in the same run: plain
`json.loads` of a benign document of the same size (the floor), and the patterns credsync used
before (quadratic), at sizes small enough to finish.

    .venv/bin/python bench/parse_worst.py      # prints a table; exit 1 if any input is not linear
"""

from __future__ import annotations

import configparser
import contextlib
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

from credsync.errors import Rejection
from credsync.routes import Kind
from credsync.validators import validate

SIZES = (64 << 10, 256 << 10, 1 << 20)
MAX_GROWTH = 6.0  # time(1 MiB) / time(256 KiB): 4 when linear, 16 when quadratic
NOISE_MS = 20.0  # below this, cache effects swamp the ratio


def unterminated_escapes(size: int) -> bytes:
    return b'"' + b'\\"' * (size // 2 - 1)


def deep_arrays(size: int) -> bytes:
    return b'{"a": [' + b",".join([b"[" * 31 + b"]" * 31] * (size // 64)) + b"]}"


def many_objects(size: int) -> bytes:
    return b'{"a": [' + b",".join([b"{}"] * (size // 3)) + b"]}"


def ini_spaces(size: int) -> bytes:
    line = b"a" + b" " * 16_000 + b"b\n"
    return b"[default]\n" + line * max(1, size // len(line))


def ini_sections(size: int) -> bytes:
    count = min(size // 8, 9_999)
    return b"".join(b"[s%d]\n" % i for i in range(count))


WORST: dict[str, tuple[Kind, Callable[[int], bytes]]] = {
    "json: unterminated escapes": ("json", unterminated_escapes),
    "json: 31-deep arrays, repeated": ("json", deep_arrays),
    "json: many empty objects": ("json", many_objects),
    "ini: 16 KB lines of blanks": ("aws-config", ini_spaces),
    "ini: sections up to the line cap": ("aws-config", ini_sections),
}


def median_ms(work: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def judge(kind: Kind, data: bytes) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(Rejection):
            validate(kind, data, max_bytes=2 << 20, now_ms=0)

    return run


def benign_json(size: int) -> str:
    return json.dumps({f"key{i}": "value " * 4 for i in range(size // 40)})


OLD_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def old_configparser(text: str) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(configparser.Error):
            configparser.ConfigParser(interpolation=None).read_string(text)

    return run


def main() -> int:
    print(f"{'input':36} " + " ".join(f"{size >> 10:>7} KiB" for size in SIZES) + "   growth  verdict")
    failed = False
    for name, (kind, build) in WORST.items():
        timings = [median_ms(judge(kind, build(size))) for size in SIZES]
        growth = timings[-1] / max(timings[-2], 0.01)
        linear = growth <= MAX_GROWTH or timings[-1] < NOISE_MS
        failed |= not linear
        cells = " ".join(f"{ms:8.1f} ms" for ms in timings)
        print(f"{name:36} {cells}   {growth:5.1f}x  {'linear' if linear else 'NOT LINEAR'}")
    floor = [median_ms(partial(json.loads, benign_json(size))) for size in SIZES]
    print(f"{'floor: json.loads, benign document':36} " + " ".join(f"{ms:8.1f} ms" for ms in floor))
    print("\nbefore (the patterns credsync used until now), at sizes that finish:")
    for size in (10_000, 20_000, 40_000):
        regex_ms = median_ms(partial(OLD_JSON_STRING.findall, unterminated_escapes(size).decode()), runs=1)
        ini_ms = median_ms(old_configparser("[default]\na" + " " * size + "b\n"), runs=1)
        print(f"  {size // 1000:>3} KB: JSON string regex {regex_ms:8.1f} ms, configparser {ini_ms:8.1f} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
