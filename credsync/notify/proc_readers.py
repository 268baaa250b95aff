"""Two ways to read a container process's /proc files: directly from the host's /proc (host
mode, or a sidecar with the host PID namespace), else by running `cat` inside the target."""

from __future__ import annotations

from pathlib import Path

from docker.models.containers import Container

from credsync.notify.procstatus import ProcReadError


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
        exit_code, output = self.container.exec_run(["cat", f"/proc/{pid}/{name}"], stderr=False)
        if exit_code != 0:
            raise ProcReadError(f"cat /proc/{pid}/{name} inside the container exited {exit_code}")
        return output.decode(errors="replace") if isinstance(output, bytes) else ""


def reader_for(container: Container) -> HostProc | ExecProc:
    """The host's /proc when State.Pid there really is this container's process."""
    host_pid = int(container.attrs["State"]["Pid"])
    container_id = container.id or "?"
    try:
        in_container = host_pid > 0 and container_id in Path(f"/proc/{host_pid}/cgroup").read_text()
    except OSError:
        in_container = False
    return HostProc(host_pid) if in_container else ExecProc(container)
