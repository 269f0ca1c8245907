"""Who holds a TCP port: the process listening on it, found through /proc (Linux), so a
refusal can name it instead of leaving the user to hunt. Elsewhere the answer is "unknown"."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    parent: int = 0
    parent_command: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command})"


def listening_inodes(table: str, port: int) -> set[str]:
    """Socket inodes listening on `port` in the text of /proc/net/tcp or tcp6 (pure)."""
    inodes: set[str] = set()
    for line in table.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10:
            continue
        local, state, inode = cols[1], cols[3], cols[9]
        if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port and inode != "0":
            inodes.add(inode)
    return inodes


def command_line(pid: int, proc: Path = PROC) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part) or "?"


def parent_pid(pid: int, proc: Path = PROC) -> int:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return 0
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
    return int(stat.rsplit(")", 1)[1].split()[1])


def port_holders(port: int, proc: Path = PROC) -> list[Holder]:
    """The processes with a socket listening on `port`; empty when unknown (not Linux, or
    processes of another user that we may not inspect)."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            inodes |= listening_inodes((proc / "net" / name).read_text(), port)
        except OSError:
            continue
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders: list[Holder] = []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(entry / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(entry / "fd" / fd)
            except OSError:
                continue
            if target in wanted:
                pid = int(entry.name)
                ppid = parent_pid(pid, proc)
                holders.append(Holder(pid, command_line(pid, proc), ppid, command_line(ppid, proc)))
                break
    return holders
