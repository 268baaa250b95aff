"""The benchmark: `python -m bench` (bench/README.md). Nothing is imported here: `bench.floor` starts lean."""


class BenchError(Exception):
    """A step failed or did not finish in time; the message says which."""
