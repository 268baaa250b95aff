"""One line of `credsync doctor`: what was checked, whether it passed, and the fix if not. Its
own module so the doctor and the notify package's Docker checks share it without a circle."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    ok: bool
    check: str
    fix: str = ""
