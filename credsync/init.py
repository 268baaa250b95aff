"""`credsync init [SERVER]`: the SSH user's side of a server, once. As that user (never root,
no sudo), it creates the upload folder (with `aws/`) and the receipts folder, 0700; says what is
wrong with ones already there and how to fix it; asks a running credsync to answer a probe; and
prints the lines to paste into Dokploy's Environment tab or the host unit's env file.

One POSIX sh script does the work, over ssh (credsync is not installed on a sidecar's server)
or here with /bin/sh, and answers in tab-separated records; everything it says is the server's
word, so it is parsed strictly and printed only through `printable`.

Why a probe: a receipt already there says only that some credsync wrote it once, and on a new
server there is none. A file `credsync-probe-<nonce>` dropped into the upload folder is answered
by a running credsync in `receipt-credsync-probe`, naming that nonce: proof that a live credsync
watches this very upload folder and can write this very receipts folder, which is what
`credsync push` needs. No answer is not a failure: before the first deploy there is none."""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from credsync.errors import ConfigError, printable
from credsync.push import DEFAULT_UPLOAD_DIR, Server, last_line, parse_server, shown, ssh_argv
from credsync.receipts import PROBE_PREFIX, PROBE_RECEIPT

MIN_CONNECT_S = 10  # ssh's ConnectTimeout, whatever the probe's timeout (0 skips the probe)
LOCAL = "this machine"

PROBE_POLL_S = 0.2  # the wait for credsync's answer to the probe: seconds matter, not milliseconds


class Verdict(IntEnum):
    """The exit code, as the other commands have them."""

    OK = 0  # folders right (created now or already), whether or not credsync answered
    USAGE = 2  # run as root, or a SERVER refused
    FAILED = 3  # a folder is wrong and init cannot fix it, or the server's answer is unusable


@dataclass(frozen=True)
class Problem:
    what: str  # one line: what is wrong
    fix: str  # one line: what to run to fix it


@dataclass
class Survey:
    """What the script found and did, from its records."""

    root: bool = False
    user: str = ""
    uid: str = ""
    uploads: str = ""
    receipts: str = ""
    created: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    answer: str | None = None  # the probe's answer (a receipt's reason); None: not asked or silent
    waited_rounds: int | None = None  # None: not asked
    complete: bool = False


def script(server: Server, probe: str, timeout_s: float) -> str:
    """The POSIX sh run as the SSH user. Every value the caller chose is quoted; what the server
    has (its home, owners, modes) is only printed, as records `kind<TAB>field…`."""
    rounds = max(0, int(timeout_s / PROBE_POLL_S))
    return f"""umask 077
up={shlex.quote(server.upload_dir)}; rc={shlex.quote(server.receipts_dir)}; probe={shlex.quote(probe)}
say() {{ printf '%s' "$1"; shift; for f in "$@"; do printf '\\t%s' "$f"; done; printf '\\n'; }}
uid=$(id -u) || exit 3
if [ "$uid" = 0 ]; then say root; say end; exit 0; fi
say user "$(id -un 2>/dev/null || echo "$uid")" "$uid"
cd "${{HOME:?}}" && home=$(pwd -P) || {{ say no-home "${{HOME:-}}"; say end; exit 0; }}
case $up in /*) ;; *) up=$home/$up ;; esac
case $rc in /*) ;; *) rc=$home/$rc ;; esac
say paths "$up" "$rc"
bad=0
folder() {{  # made if missing (0700 by the umask), else checked: a real folder, ours, 0700
  if [ -L "$1" ]; then say symlink "$1"; bad=1; return 1; fi
  if [ ! -e "$1" ]; then
    if err=$(mkdir -p -- "$1" 2>&1); then say created "$1"; else say cannot-create "$1" "$err"; bad=1; return 1; fi
  fi
  if [ ! -d "$1" ]; then say not-a-folder "$1"; bad=1; return 1; fi
  set -f; set -- "$1" $(ls -ldn -- "$1"); set +f
  if [ "${{4:-}}" != "$uid" ]; then say owner "$1" "${{4:-?}}"; bad=1; return 1; fi
  case ${{2:-}} in drwx------|drwx------.) ;; *) say mode "$1" "${{2:-?}}"; bad=1; return 1 ;; esac
}}
folder "$up" && folder "$up/aws"
folder "$rc"
if [ "$bad" = 0 ] && [ {rounds} -gt 0 ]; then
  answer="$rc"/{shlex.quote(PROBE_RECEIPT)}
  rm -f -- "$answer"
  if : > "$up/$probe" 2>/dev/null; then
    n=0
    until [ -f "$answer" ] && grep -qF -e "$probe" "$answer"; do
      [ "$n" -ge {rounds} ] && break
      sleep {PROBE_POLL_S}
      n=$((n + 1))
    done
    if [ -f "$answer" ] && grep -qF -e "$probe" "$answer"; then
      say answered "$n" "$(tr -d '\\t\\n' < "$answer")"
    else
      say silent "$n"
    fi
    rm -f -- "$up/$probe" "$answer"
  else
    say cannot-probe "$up"
  fi
fi
say end
"""


def parse(answer: str) -> Survey:
    """The script's records, read as a hostile server's word: unknown records are skipped, a
    missing end means the session was cut."""
    survey = Survey()
    for line in answer.split("\n"):  # not splitlines: a CR or U+2028 in a field must not make a record
        kind, *fields = line.split("\t")
        if kind == "end":
            survey.complete = True
        elif kind == "root":
            survey.root = True
        elif kind == "user" and len(fields) == 2:
            survey.user, survey.uid = fields
        elif kind == "paths" and len(fields) == 2:
            survey.uploads, survey.receipts = fields
        elif kind == "created" and len(fields) == 1:
            survey.created.append(fields[0])
        elif kind == "answered" and len(fields) == 2 and fields[0].isdigit():
            survey.waited_rounds, survey.answer = int(fields[0]), reason_of(fields[1])
        elif kind == "silent" and len(fields) == 1 and fields[0].isdigit():
            survey.waited_rounds = int(fields[0])
        elif (problem := problem_of(kind, fields, survey)) is not None:
            survey.problems.append(problem)
    return survey


def reason_of(receipt: str) -> str:
    """The probe's answer: its receipt's reason, or what else the server said instead."""
    try:
        said: object = json.loads(receipt)
    except (ValueError, RecursionError):
        return "an answer that is not a receipt"
    reason = said.get("reason") if isinstance(said, dict) else None
    return reason if isinstance(reason, str) else "a receipt without a reason"


def problem_of(kind: str, fields: list[str], survey: Survey) -> Problem | None:
    """A wrong folder, and the command that puts it right (quoted, ready to paste)."""
    if not fields:
        return None
    path, quoted = shown(fields[0]), shown(shlex.quote(fields[0]))
    you = f"{shown(survey.user)} (UID {shown(survey.uid)})"
    if kind == "symlink":
        return Problem(f"{path} is a symlink: credsync follows none", f"rm {quoted}; then run credsync init again")
    if kind == "not-a-folder":
        return Problem(f"{path} is not a folder", f"mv {quoted} {quoted}.old; then run credsync init again")
    if kind == "cannot-create":
        said = f": {shown(fields[1])}" if len(fields) > 1 and fields[1] else ""
        return Problem(f"cannot create {path}{said}", "create it as yourself, or ask root to make its parent yours")
    if kind == "owner" and len(fields) == 2:
        owner = f"as root: chown {shown(shlex.quote(survey.user))}: {quoted}"
        return Problem(f"{path} belongs to UID {shown(fields[1])}, not to you, {you}", owner)
    if kind == "mode" and len(fields) == 2:
        fix = f"chmod 700 {quoted}" + (f"; setfacl -b {quoted}" if fields[1].endswith("+") else "")
        return Problem(f"{path} has mode {shown(fields[1])}, not drwx------ (only you)", fix)
    if kind == "cannot-probe":
        return Problem(f"cannot write a file into {path}", f"chmod 700 {quoted} as its owner")
    if kind == "no-home":
        return Problem(f"cannot enter the home folder {path}", "log in as the SSH user that uploads")
    return None


def verdict(survey: Survey) -> Verdict:
    if survey.root:
        return Verdict.USAGE
    if survey.problems or not survey.complete or not survey.uploads:
        return Verdict.FAILED
    return Verdict.OK


def render(where: str, survey: Survey, timeout_s: float) -> list[str]:
    """What init prints: what it did or found, then the settings to paste (left-aligned, so
    they can be copied as they are)."""
    if survey.root:
        return [
            f"{where}: refused: run credsync init as the SSH user that uploads, not as root:"
            " it makes that user's own folders"
        ]
    if not survey.uploads:
        return [f"{where}: {problem.what}; {problem.fix}" for problem in survey.problems] or [
            f"{where}: the server's answer was cut short or unreadable"
        ]
    uploads, receipts = shown(survey.uploads), shown(survey.receipts)
    lines = [f"{where}: as {shown(survey.user)} (UID {shown(survey.uid)})"]
    lines += [f"  created {shown(path)} (0700)" for path in survey.created]
    lines += [f"  ✗ {problem.what}\n    fix: {problem.fix}" for problem in survey.problems]
    if not survey.created and not survey.problems:
        lines.append(f"  nothing changed: {uploads} (with aws/) and {receipts} were already right (yours, 0700)")
    if not survey.complete:
        lines.append("  ✗ the server's answer was cut short")
    lines.append("  " + said_about_credsync(survey, timeout_s))
    lines += [
        "",
        "Sidecar mode: in Dokploy, the app's Environment tab:",
        f"UPLOADS_DIR={uploads}",
        f"RECEIPTS_DIR={receipts}",
        "",
        "Host mode: in /etc/credsync/<appName>.env, then, as root, `bash scripts/install-host` (it lets",
        "credsync@<appName> write the receipts folder) and `systemctl restart credsync@<appName>`:",
        f"CREDSYNC_SOURCE={uploads}",
        f"CREDSYNC_RECEIPTS_DIR={receipts}",
    ]
    return lines


def said_about_credsync(survey: Survey, timeout_s: float) -> str:
    if survey.answer is not None:
        within = (survey.waited_rounds or 0) * PROBE_POLL_S + PROBE_POLL_S
        return f"credsync answered within {within:.1f}s: {shown(survey.answer)}"
    if survey.waited_rounds is None:
        return "credsync not asked" + (": fix the folders first" if survey.problems else " (--timeout 0)")
    return (
        f"no credsync answered within {timeout_s:g}s: expected before the first deploy; run credsync init again"
        " after it.\n  If it still does not answer, credsync is not running, watches another folder, has no"
        " receipts folder (RECEIPTS_DIR, CREDSYNC_RECEIPTS_DIR), or is older than this one."
    )


def server_of(text: str | None) -> tuple[str, Server]:
    """Where to run, and the folders (as parse_server reads them: a SERVER starting with `-`
    is refused). None: this machine, as whoever runs init."""
    if text is None:
        return LOCAL, Server("", DEFAULT_UPLOAD_DIR)
    server = parse_server(text)
    if not server.upload_dir.isprintable() or "\t" in server.upload_dir:
        raise ConfigError(f"server {printable(text)} refused: the upload folder's name has control characters")
    return printable(server.destination), server


def run(text: str | None, ssh: Sequence[str], timeout_s: float) -> tuple[Verdict, list[str]]:
    where, server = server_of(text)
    probe = PROBE_PREFIX + secrets.token_hex(8)
    body = script(server, probe, timeout_s)
    if text is None:
        command = ["/bin/sh", "-c", body]
    else:
        command = ssh_argv(ssh, server.destination, body, max(timeout_s, MIN_CONNECT_S))
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s + 60)
    except subprocess.TimeoutExpired:
        return Verdict.FAILED, [f"{where}: timed out after {timeout_s + 60:g}s: the server did not answer"]
    if done.returncode != 0:
        return Verdict.FAILED, [f"{where}: failed: exited {done.returncode}: {last_line(done.stderr)}"]
    survey = parse(done.stdout.decode(errors="replace"))
    return verdict(survey), render(where, survey, timeout_s)
