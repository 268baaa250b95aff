"""`credsync push` against a server that lies. The attacker here is the server: a stand-in `ssh`
first on PATH takes the upload and prints whatever receipt it likes, as a compromised or
malicious host can. What it prints must not repaint the operator's terminal or forge another
server's line, must not crash push, and no SERVER argument may reach ssh as an option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from credsync.errors import ConfigError
from credsync.push import MAX_CONNECT_TIMEOUT_S, connect_timeout_s, parse_server
from tests.helpers import assert_no_canary, claude_credentials, credsync_command, sha12

FAKE_SSH = f"""#!{sys.executable}
# The server's side of `credsync push`: ssh [options] DESTINATION SCRIPT, the upload on stdin.
import json, os, sys
with open(os.environ["FAKE_SSH_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
sys.stdin.buffer.read()
answer = os.path.join(os.environ["FAKE_SSH_ANSWERS"], sys.argv[-2])
if not os.path.isfile(answer):
    sys.stderr.write("ssh: Could not resolve hostname\\n")
    sys.exit(255)
with open(answer, "rb") as receipt:
    sys.stdout.buffer.write(receipt.read())
"""

# Terminal escapes (cursor up, erase line, OSC title, 8-bit CSI, bell), CR, LF, Unicode line
# separator and right-to-left override: each one can hide, move or invent a line on a terminal.
FORGERY = (
    "\x1b[1A\x1b[2K\rb: published, sha 0123456789ab\n"
    "b: published, sha 0123456789ab\u2028\x1b]0;pwned\x07\x9b2K\u202edehsilbup\x00"
)


@dataclass
class Lab:
    credential: Path
    answers: Path
    log: Path
    env: dict[str, str]

    def answer(self, server: str, receipt: bytes | dict[str, object]) -> None:
        data = receipt if isinstance(receipt, bytes) else json.dumps(receipt).encode()
        (self.answers / server).write_bytes(data)

    def push(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            credsync_command("push", f"--file={self.credential}", "--timeout=7", *args),
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
            check=False,
        )
        assert_no_canary(result.stdout + result.stderr, "push's output")
        return result

    def ssh_calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    bin_dir, answers = tmp_path / "bin", tmp_path / "answers"
    bin_dir.mkdir()
    answers.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    credential = tmp_path / ".credentials.json"
    credential.write_bytes(claude_credentials(serial=1))
    log = tmp_path / "ssh.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_SSH_LOG": str(log),
        "FAKE_SSH_ANSWERS": str(answers),
    }
    return Lab(credential, answers, log, env)


def honest(lab: Lab) -> dict[str, object]:
    sha = sha12(lab.credential.read_bytes())
    return {"outcome": "published", "notification": "none", "upload_sha256_prefix": sha}


def assert_one_inert_line_per_server(stdout: str, servers: list[str]) -> list[str]:
    """Exactly one line per server, in order, each naming its server, with nothing a terminal
    would act on."""
    lines = stdout.split("\n")
    assert lines[-1] == "", "the output does not end with a newline"
    lines = lines[:-1]
    assert [line.split(": ", 1)[0] for line in lines] == servers, lines
    for line in lines:
        assert line.isprintable(), f"a control character reached the terminal: {line!r}"
    return lines


@pytest.mark.parametrize(
    ("field", "receipt", "exit_code"),
    [
        ("outcome", {"outcome": FORGERY}, 3),
        ("notification", {"outcome": "published", "notification": FORGERY, "upload_sha256_prefix": "abc"}, 0),
        ("published_sha256_prefix", {"outcome": "published", "published_sha256_prefix": FORGERY}, 0),
        ("upload_sha256_prefix", {"outcome": "unchanged", "notification": "none", "upload_sha256_prefix": FORGERY}, 0),
        ("reason", {"outcome": "rejected", "reason": FORGERY}, 1),
    ],
)
def test_escapes_and_newlines_in_a_receipt_field_cannot_forge_a_line(
    lab: Lab, field: str, receipt: dict[str, object], exit_code: int
) -> None:
    lab.answer("a", receipt)
    lab.answer("b", {"outcome": "rejected", "reason": "upload is too large"})
    result = lab.push("a", "b")
    first, second = assert_one_inert_line_per_server(result.stdout, ["a", "b"])
    assert second == "b: rejected: upload is too large"
    assert "\\x1b[1A\\x1b[2K\\rb: published" in first, f"{field} was not shown, escaped: {first!r}"
    assert result.returncode == max(exit_code, 1)
    lab.answer("b", honest(lab))
    alone = lab.push("a", "b")
    assert_one_inert_line_per_server(alone.stdout, ["a", "b"])
    assert alone.returncode == exit_code, alone.stdout + alone.stderr


def test_a_long_receipt_field_is_cut(lab: Lab) -> None:
    lab.answer("a", {"outcome": "rejected", "reason": "x" * 100_000})
    result = lab.push("a")
    [line] = assert_one_inert_line_per_server(result.stdout, ["a"])
    assert result.returncode == 1 and len(line) < 300 and line.endswith("x…")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"[]", "not a JSON object but an array"),
        (b'["published"]', "not a JSON object but an array"),
        (b'"published"', "not a JSON object but a string"),
        (b"42", "not a JSON object but a number"),
        (b"1e400", "not a JSON object but a number"),
        (b"true", "not a JSON object but true or false"),
        (b"null", "not a JSON object but null"),
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"outcome": "published"} {"outcome": "rejected"}', "not valid JSON"),
        (b"9" * 5000, "not valid JSON"),  # past Python's digit limit for int()
        (b"[" * 200_000, "not valid JSON"),  # deeper than the parser's recursion
    ],
)
def test_a_receipt_that_is_not_a_json_object_is_a_one_line_failure(lab: Lab, answer: bytes, reason: str) -> None:
    lab.answer("a", answer)
    result = lab.push("a")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == f"a: the receipt is {reason}\n"
    assert "Traceback" not in result.stderr and result.stderr == ""


@pytest.mark.parametrize(
    "server",
    [
        "-oProxyCommand=touch {pwned}",
        "-oProxyCommand=touch {pwned}:claude-uploads",
        "-F{pwned}",
        "--",
        ":claude-uploads",
    ],
)
def test_a_server_that_ssh_would_read_as_an_option_is_refused_before_ssh_runs(
    lab: Lab, tmp_path: Path, server: str
) -> None:
    pwned = tmp_path / "pwned"
    lab.answer("a", honest(lab))
    result = lab.push("--", "a", server.format(pwned=pwned))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("credsync: server ") and " refused: " in line
    assert lab.ssh_calls() == [], "ssh ran"
    assert not pwned.exists()


def test_parse_server_refuses_a_leading_dash_with_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="starts with '-'"):
        parse_server("-oProxyCommand=sh")
    assert parse_server("deploy@host-1:-dir").destination == "deploy@host-1"  # a dash further in is a name


def test_ssh_gets_a_connect_timeout_it_understands(lab: Lab) -> None:
    lab.answer("deploy@a", honest(lab))
    result = lab.push("deploy@a")
    assert result.returncode == 0 and result.stdout.startswith("deploy@a: published, sha "), result.stdout
    [argv] = lab.ssh_calls()
    options, destination = argv[:-2], argv[-2]
    assert destination == "deploy@a"
    assert "ConnectTimeout=7" in options and options[options.index("ConnectTimeout=7") - 1] == "-o"
    # The real ssh parses the same options (-G: print the configuration, connect nowhere).
    real = subprocess.run(
        ["/usr/bin/ssh", "-G", *options, destination], capture_output=True, text=True, timeout=30, check=False
    )
    assert real.returncode == 0, real.stderr
    assert "connecttimeout 7" in real.stdout.splitlines()


def test_the_connect_timeout_follows_the_receipt_timeout_within_bounds() -> None:
    assert connect_timeout_s(0.2) == 1
    assert connect_timeout_s(7.5) == 8
    assert connect_timeout_s(3600) == MAX_CONNECT_TIMEOUT_S
