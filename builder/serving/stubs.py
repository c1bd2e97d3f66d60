"""The Python backend's stub processes of a running server, found in /proc, and their resident memory.

The embedded server runs every model instance in its own `triton_python_backend_stub` process. Its arguments
are (python_backend stub_launcher.cc) the model file `<repository>/<model>/<version>/<file>`, the shared-memory
region, its default and growth sizes, the server's pid, the backend folder, the IPC handle and the instance name
(`<model>_<group>_<index>`). A stub that has died (a zombie until its server reaps it) has no arguments left and
is not listed.
"""

from __future__ import annotations

import dataclasses
import pathlib

STUB = "triton_python_backend_stub"
MEMORY_FIELDS = {"VmRSS": "rss", "VmHWM": "peak_rss", "RssAnon": "anon_rss", "RssFile": "file_rss"}


@dataclasses.dataclass(frozen=True)
class Stub:
    pid: int
    server_pid: int | None
    instance: str  # `<model>_<group>_<index>`
    model_file: str

    @property
    def model(self) -> str:
        return pathlib.Path(self.model_file).parts[-3]


def all_stubs(server_pid: int | None = None) -> list[Stub]:
    """Every live stub process on this machine (of the server `server_pid`, if given), by instance name."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue  # ended meanwhile, or not ours to read
        if len(args) < 9 or pathlib.Path(args[0]).name != STUB or len(pathlib.Path(args[1]).parts) < 3:
            continue
        parent = int(args[5]) if args[5].isdigit() else None
        if server_pid is not None and parent != server_pid:
            continue
        found.append(Stub(int(proc.name), parent, args[8], args[1]))
    return sorted(found, key=lambda s: s.instance)


def find_stubs(model: str, server_pid: int | None = None) -> list[Stub]:
    """The live stubs whose model file lies in a `<model>/<version>/` folder (of the server `server_pid`)."""
    return [s for s in all_stubs(server_pid) if s.model == model]


def memory(pid: int) -> dict:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of `pid` in bytes, from /proc/<pid>/status. Raises OSError
    if the process has ended."""
    found = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in MEMORY_FIELDS:
            found[MEMORY_FIELDS[key]] = int(value.split()[0]) * 1024  # the kernel writes kB (KiB)
    return found
