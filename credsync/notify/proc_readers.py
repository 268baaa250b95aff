"""Two ways to read a container process's /proc files: directly from the host's /proc (host
mode, or a sidecar with the host PID namespace), else by running `cat` inside the target."""

from __future__ import annotations

from pathlib import Path

from docker.models.containers import Container

from credsync.notify.procstatus import ProcReadError

MAX_PROC_ANSWER = 64 * 1024  # a real /proc/<pid>/status is about 1.5 KB


class HostProc:
    """Host PIDs: the container's PID 1 is State.Pid as the host sees it."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid

    def read(self, pid: int, name: str) -> str:
        try:
            return Path(f"/proc/{pid}/{name}").read_text()
        except OSError as error:
            raise ProcReadError(f"cannot read /proc/{pid}/{name}: {error.strerror}") from None


class ExecProc:
    """PIDs inside the container; needs a `cat` there."""

    root_pid = 1

    def __init__(self, container: Container) -> None:
        self.container = container

    def read(self, pid: int, name: str) -> str:
        # Streamed and cut off: the consumer controls the answer and could send gigabytes.
        api = self.container.client.api if self.container.client is not None else None
        if api is None:
            raise ProcReadError("no Docker client to run cat inside the container")
        exec_id = api.exec_create(self.container.id, ["cat", f"/proc/{pid}/{name}"], stdout=True, stderr=False)["Id"]
        chunks: list[bytes] = []
        size = 0
        stream = api.exec_start(exec_id, stream=True)
        try:
            for chunk in stream:
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_PROC_ANSWER:
                    raise ProcReadError(
                        f"cat /proc/{pid}/{name} inside the container answered over {MAX_PROC_ANSWER} bytes"
                    )
        finally:
            stream.close()
        exit_code = api.exec_inspect(exec_id).get("ExitCode")
        if exit_code != 0:
            raise ProcReadError(f"cat /proc/{pid}/{name} inside the container exited {exit_code}")
        return b"".join(chunks).decode(errors="replace")


def host_pid_belongs(container: Container) -> bool:
    """Whether State.Pid, in this /proc, is this container's process: its cgroup names the
    container (a host process, or a sidecar given the host's PID namespace)."""
    host_pid = int(container.attrs["State"]["Pid"])
    try:
        return host_pid > 0 and (container.id or "?") in Path(f"/proc/{host_pid}/cgroup").read_text()
    except OSError:
        return False


def reader_for(container: Container, *, shares_pid_namespace: bool = False) -> HostProc | ExecProc:
    """Our own /proc where it shows the container's process: its PID 1 when credsync runs in the
    container's PID namespace (a sidecar with `pid: service:…`), State.Pid when it sees the
    host's; else `cat` inside the container."""
    if shares_pid_namespace:
        return HostProc(1)
    return HostProc(int(container.attrs["State"]["Pid"])) if host_pid_belongs(container) else ExecProc(container)
