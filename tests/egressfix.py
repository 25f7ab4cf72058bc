"""Run commands in a network namespace that has only loopback, under strace, and find in
the trace every connection attempt that would have left the machine.

A namespace with only `lo` up makes anything outbound fail at once instead of reaching
the network, and strace records the attempt all the same, with the address asked for:
the trace shows what a program tried, not only what succeeded. Run as a script, this
module is the namespace's first process: it brings `lo` up and becomes strace.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Every call that names a peer address, and those that say which program a pid runs.
TRACED_CALLS = "connect,sendto,sendmsg,sendmmsg,bind,execve,clone,clone3,fork,vfork"
OUTBOUND_CALLS = frozenset({"connect", "sendto", "sendmsg", "sendmmsg"})
DNS_PORT = 53

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_LINE = re.compile(r"^(?P<pid>\d+) +(?P<rest>.*)$")
_UNFINISHED = re.compile(r"^(?P<call>\w+)\((?P<args>.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (?P<call>\w+) resumed>(?P<args>.*)$")
_CALL = re.compile(r"^(?P<call>\w+)\((?P<args>.*)$")
_RESULT = re.compile(r"\) += (?P<ret>-?\d+|\?)")
_INET = re.compile(
    r"sa_family=AF_INET, sin_port=htons\((?P<port>\d+)\), "
    r'sin_addr=inet_addr\("(?P<addr>[^"]+)"\)'
)
_INET6 = re.compile(
    r"sa_family=AF_INET6, sin6_port=htons\((?P<port>\d+)\),.*?"
    r'inet_pton\(AF_INET6, "(?P<addr>[^"]+)"'
)
_ARGV = re.compile(r'^"[^"]*", \[(?P<argv>.*?)\]')


@dataclass(frozen=True)
class Attempt:
    """One system call that named an IPv4 or IPv6 peer (or, for bind, a local address)."""

    pid: int
    process: str
    call: str
    address: str
    port: int
    result: str

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address)

    @property
    def leaves(self) -> bool:
        """Whether this would have left the machine: an outbound call to an address that is
        not loopback, or a DNS query, which a resolver on loopback forwards outward."""
        if self.call not in OUTBOUND_CALLS:
            return False
        return not self.loopback or self.port == DNS_PORT

    def __str__(self) -> str:
        peer = f"[{self.address}]" if ":" in self.address else self.address
        what = " (a DNS lookup)" if self.port == DNS_PORT else ""
        return (
            f"{self.process} (pid {self.pid}): {self.call} to {peer}:{self.port}{what}"
            f" = {self.result}"
        )


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4 loopback mapped into IPv6."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _program(args: str) -> str:
    """A readable name from execve's arguments: its argv, quotes dropped."""
    found = _ARGV.match(args)
    if found is None:
        return "?"
    words = re.findall(r'"((?:[^"\\]|\\.)*)"(\.\.\.)?', found.group("argv"))
    argv = [word + more for word, more in words]
    if argv:
        argv[0] = os.path.basename(argv[0])
    return " ".join(argv)[:160]


def _calls(trace: Iterable[str]) -> Iterable[tuple[int, str, str]]:
    """(pid, call, arguments and result) of each finished call, an interrupted call's two
    halves joined."""
    pending: dict[int, tuple[str, str]] = {}
    for line in trace:
        matched = _LINE.match(line.rstrip("\n"))
        if matched is None:
            continue
        pid, rest = int(matched.group("pid")), matched.group("rest")
        if (part := _UNFINISHED.match(rest)) is not None:
            pending[pid] = (part.group("call"), part.group("args"))
        elif (part := _RESUMED.match(rest)) is not None:
            call, head = pending.pop(pid, (part.group("call"), ""))
            yield pid, call, head + part.group("args")
        elif (part := _CALL.match(rest)) is not None:
            yield pid, part.group("call"), part.group("args")


def attempts(trace: Iterable[str]) -> list[Attempt]:
    """Every IPv4 and IPv6 address named in a `strace -f` trace, with the program (the last
    execve of the pid, or of the thread or process that cloned it) that named it."""
    program: dict[int, str] = {}
    found: list[Attempt] = []
    for pid, call, args in _calls(trace):
        result = _RESULT.search(args)
        ret = result.group("ret") if result else "?"
        if call == "execve":
            if ret == "0":
                program[pid] = _program(args)
            continue
        if call in ("clone", "clone3", "fork", "vfork"):
            if ret.isdigit():
                program[int(ret)] = program.get(pid, "?")
            continue
        for pattern in (_INET, _INET6):
            for addr in pattern.finditer(args):
                outcome = args[result.end() - len(ret) :].strip() if result else "?"
                found.append(
                    Attempt(
                        pid=pid,
                        process=program.get(pid, "?"),
                        call=call,
                        address=addr.group("addr"),
                        port=int(addr.group("port")),
                        result=outcome,
                    )
                )
    return found


def leaving(trace_files: Sequence[Path]) -> list[Attempt]:
    """What in these traces tried to leave the machine."""
    found: list[Attempt] = []
    for path in trace_files:
        with path.open(errors="replace") as lines:
            found += [one for one in attempts(lines) if one.leaves]
    return found


def why_not_isolated() -> str | None:
    """None when a loopback-only namespace with strace in it can be made here, else why not."""
    for tool in ("unshare", "nsenter", "strace"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        made = subprocess.run(
            ["unshare", "--net", "--", sys.executable, __file__, "--check"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare --net: {exc}"
    if made.returncode != 0:
        return f"cannot make a network namespace with loopback up: {made.stderr.strip()}"
    return None


def isolated(trace: Path, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` in a new loopback-only network namespace, traced
    into `trace`; the process it starts is strace, whose only child is `argv`."""
    return ["unshare", "--net", "--", sys.executable, __file__, "--trace", str(trace), *argv]


def joined(namespace_pid: int, trace: Path | None, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` in the network namespace of `namespace_pid`, traced
    into `trace` when one is given."""
    enter = ["nsenter", f"--net=/proc/{namespace_pid}/ns/net", "--"]
    if trace is None:
        return [*enter, *argv]
    return [*enter, sys.executable, __file__, "--trace", str(trace), *argv]


def strace_argv(trace: Path, argv: Sequence[str]) -> list[str]:
    return [
        "strace",
        "-f",
        "-qq",
        "-s",
        "256",
        "-e",
        f"trace={TRACED_CALLS}",
        "-e",
        "signal=none",
        "-o",
        str(trace),
        "--",
        *argv,
    ]


def bring_loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _only_loopback() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check that lo comes up")
    parser.add_argument("--trace", type=Path, help="strace's output file")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    bring_loopback_up()
    if not _only_loopback():
        print(f"interfaces other than lo: {socket.if_nameindex()}", file=sys.stderr)
        return 3
    if args.check:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
        return 0
    command = strace_argv(args.trace, args.command)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
