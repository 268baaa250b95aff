"""Print what installing credsync from source needs, one requirement a line: its build backend
and its dependencies, read from pyproject.toml (for wheelhouses made for another Python)."""

import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
print("\n".join(project["build-system"]["requires"] + project["project"]["dependencies"]))
