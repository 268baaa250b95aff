"""`credsync init` without root: what it makes of the server's records (the settings to paste,
the fixes it names, its exit code), how it treats a server that lies, and its POSIX sh script
run for real by /bin/sh as an unprivileged user in a home of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from credsync.errors import ConfigError
from credsync.init import Verdict, parse, render, script, server_of, verdict
from credsync.push import Server

NOBODY = 65534
HOME = "/home/deploy"
FRESH = "\n".join(
    [
        "user\tdeploy\t1000",
        f"paths\t{HOME}/claude-uploads\t{HOME}/claude-receipts",
        f"created\t{HOME}/claude-uploads",
        f"created\t{HOME}/claude-uploads/aws",
        f"created\t{HOME}/claude-receipts",
        "silent\t50",
        "end",
    ]
)
PASTE = [
    f"UPLOADS_DIR={HOME}/claude-uploads",
    f"RECEIPTS_DIR={HOME}/claude-receipts",
    f"CREDSYNC_SOURCE={HOME}/claude-uploads",
    f"CREDSYNC_RECEIPTS_DIR={HOME}/claude-receipts",
]


def said(answer: str, timeout_s: float = 10) -> tuple[Verdict, list[str]]:
    survey = parse(answer)
    lines = "\n".join(render("server", survey, timeout_s)).split("\n")
    return verdict(survey), lines


def test_a_fresh_server_gets_its_folders_and_the_exact_lines_to_paste() -> None:
    code, lines = said(FRESH)
    assert code is Verdict.OK
    assert [line for line in lines if "=" in line and not line.startswith(" ")] == PASTE, "each alone on its line"
    assert f"  created {HOME}/claude-uploads/aws (0700)" in lines
    assert any("no credsync answered within 10s: expected before the first deploy" in line for line in lines)
    assert not any("nothing changed" in line for line in lines)


def test_a_second_run_says_it_changed_nothing_and_that_credsync_answered() -> None:
    answer = "\n".join(
        [
            "user\tdeploy\t1000",
            f"paths\t{HOME}/claude-uploads\t{HOME}/claude-receipts",
            'answered\t2\t{"route": "credsync-probe-1", "reason": "credsync 0.1.0 watches this upload folder"}',
            "end",
        ]
    )
    code, lines = said(answer)
    assert code is Verdict.OK
    assert any(line.startswith("  nothing changed:") for line in lines)
    assert "  credsync answered within 0.6s: credsync 0.1.0 watches this upload folder" in lines
    assert not any("created" in line for line in lines)


@pytest.mark.parametrize(
    ("record", "what", "fix"),
    [
        (
            f"owner\t{HOME}/claude-receipts\t0",
            "belongs to UID 0, not to you, deploy (UID 1000)",
            f"as root: chown deploy: {HOME}/claude-receipts",
        ),
        (f"mode\t{HOME}/claude-uploads\tdrwxr-xr-x", "has mode drwxr-xr-x", f"chmod 700 {HOME}/claude-uploads"),
        (
            f"mode\t{HOME}/claude-uploads\tdrwx------+",
            "has mode drwx------+",
            f"chmod 700 {HOME}/claude-uploads; setfacl -b {HOME}/claude-uploads",
        ),
        (f"symlink\t{HOME}/claude-uploads", "is a symlink: credsync follows none", f"rm {HOME}/claude-uploads"),
        (f"not-a-folder\t{HOME}/claude-receipts", "is not a folder", f"mv {HOME}/claude-receipts"),
        ("mode\t/home/de ploy/claude-uploads\tdrwxrwxrwx", "has mode", "chmod 700 '/home/de ploy/claude-uploads'"),
    ],
)
def test_a_wrong_folder_is_named_with_the_command_that_fixes_it_and_exits_3(record: str, what: str, fix: str) -> None:
    answer = f"user\tdeploy\t1000\npaths\t{HOME}/claude-uploads\t{HOME}/claude-receipts\n{record}\nend"
    code, lines = said(answer)
    assert code is Verdict.FAILED
    problem = next(index for index, line in enumerate(lines) if line.startswith("  ✗"))
    assert what in lines[problem] and lines[problem + 1].startswith(f"    fix: {fix}"), lines
    assert "  credsync not asked: fix the folders first" in lines


def test_root_is_refused_with_exit_2() -> None:
    code, lines = said("root\nend")
    assert code is Verdict.USAGE
    assert lines == [
        "server: refused: run credsync init as the SSH user that uploads, not as root: it makes that user's own folders"
    ]


def test_a_server_that_lies_cannot_repaint_the_terminal_or_pass_a_cut_answer_for_success() -> None:
    forged = "\x1b[2J\x1b]0;pwned\x07\rUPLOADS_DIR=/evil\u2028"
    answer = "\n".join(
        [
            f"user\t{forged}\t1000",
            f"paths\t{HOME}/{forged}\t{HOME}/claude-receipts",
            f"created\t{forged}",
            f"mode\t{forged}\t{forged}",
            f"answered\t0\t{forged}",
            "created\ttoo\tmany\tfields",  # malformed: skipped
            f"unheard-of\t{forged}",  # unknown: skipped
            "end",
        ]
    )
    code, lines = said(answer)
    assert code is Verdict.FAILED
    assert all(line.isprintable() for line in lines), [line for line in lines if not line.isprintable()]
    assert not any(line.startswith("UPLOADS_DIR=/evil") for line in lines)
    assert "  credsync answered within 0.2s: an answer that is not a receipt" in lines
    cut_code, cut = said(FRESH.removesuffix("\nend"))
    assert cut_code is Verdict.FAILED and "  ✗ the server's answer was cut short" in cut
    empty_code, empty = said("")
    assert empty_code is Verdict.FAILED and empty == ["server: the server's answer was cut short or unreadable"]


def test_a_server_starting_with_a_dash_or_a_folder_with_control_characters_is_refused() -> None:
    with pytest.raises(ConfigError, match="starts with '-'"):
        server_of("-oProxyCommand=touch /tmp/pwned")
    with pytest.raises(ConfigError, match="control characters"):
        server_of("deploy@server:up\tloads")
    assert server_of(None) == ("this machine", Server("", "claude-uploads"))
    assert server_of("deploy@server:/srv/up") == ("deploy@server", Server("deploy@server", "/srv/up"))


@pytest.fixture
def home() -> Iterator[Path]:
    """A home of its own for an unprivileged user: nobody's when these tests run as root."""
    root = Path(tempfile.mkdtemp(prefix="credsync-init-"))
    root.chmod(0o755)
    home = root / "home"
    home.mkdir()
    if os.geteuid() == 0:
        os.chown(home, NOBODY, NOBODY)
    try:
        yield home
    finally:
        shutil.rmtree(root)


def run_script(body: str, home: Path) -> str:
    """The script as the server's /bin/sh runs it, as whoever owns `home` (never root)."""
    argv = ["/bin/sh", "-c", body]
    if os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_script_makes_the_folders_once_then_changes_nothing_then_names_a_wrong_mode(home: Path) -> None:
    body = script(Server("", "claude-uploads"), "credsync-probe-0", timeout_s=0)
    first = parse(run_script(body, home))
    assert verdict(first) is Verdict.OK and first.complete
    assert first.created == [
        str(home / "claude-uploads"),
        str(home / "claude-uploads" / "aws"),
        str(home / "claude-receipts"),
    ]
    for folder in first.created:
        info = os.stat(folder)
        assert (info.st_mode & 0o7777, info.st_uid) == (0o700, home.stat().st_uid)
    second = parse(run_script(body, home))
    assert verdict(second) is Verdict.OK and second.created == [] and second.problems == []
    assert (second.uploads, second.receipts) == (str(home / "claude-uploads"), str(home / "claude-receipts"))
    (home / "claude-receipts").chmod(0o755)
    third = parse(run_script(body, home))
    assert verdict(third) is Verdict.FAILED and [problem.fix for problem in third.problems] == [
        f"chmod 700 {home / 'claude-receipts'}"
    ]
    assert (home / "claude-receipts").stat().st_mode & 0o777 == 0o755, "init changed a folder it found"


def test_the_script_takes_a_hostile_folder_name_literally(home: Path) -> None:
    name = "up'$(touch pwned)\";`touch pwned2` loads"
    body = script(Server("", name), "credsync-probe-0", timeout_s=0)
    survey = parse(run_script(body, home))
    assert verdict(survey) is Verdict.OK
    assert (home / name / "aws").is_dir() and (home / "claude-receipts").is_dir()
    assert not list(home.glob("pwned*")) and not list(Path("/").glob("pwned*")), "a value was run as a command"


def test_the_probe_says_silent_when_no_credsync_answers_and_leaves_nothing_behind(home: Path) -> None:
    body = script(Server("", "claude-uploads"), "credsync-probe-0", timeout_s=0.4)
    survey = parse(run_script(body, home))
    assert survey.waited_rounds == 2 and survey.answer is None
    assert os.listdir(home / "claude-uploads") == ["aws"] and os.listdir(home / "claude-receipts") == []
