"""`python -m loadtests.as_avx2 COMMAND...`: run a command as on an x86 machine with AVX2 and no AVX-512 or VNNI,
on a machine that has them (`make test-avx2`, `make bench-avx2`).

The speed targets count on AVX2 machines without VNNI, and int8 behaves differently there: ONNX Runtime's u8 x s8
kernels sum byte pairs in 16 bits and can saturate, so the kit writes 7-bit weights (reduce_range). This runs the
command with as_avx2.c preloaded: CPUID, in that process and every program it starts, reports no AVX-512 and no
VNNI, so ONNX Runtime, PyTorch and NumPy pick the same AVX2 kernels as on such a machine, and the kit's
`cpu_isa()` reports "AVX2 (no VNNI)" with the hiding named beside the CPU model.

What it measures is the AVX2 code on this machine's cores: the kernels and their numbers are an AVX2 machine's,
the clock and caches are not (an AVX2-only server of an older generation can be slower in absolute terms).
Needs the kernel's CPUID faulting (`cpuid_fault` in /proc/cpuinfo; KVM guests on recent hosts have it) and a C
compiler; the shim is compiled once into ~/.cache/triton-deploy-kit/.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from builder.core.errors import KitError
from builder.core.handler import run_command
from builder.core.machine import read_cpuinfo

SOURCE = pathlib.Path(__file__).with_name("as_avx2.c")
CACHE = pathlib.Path.home() / ".cache" / "triton-deploy-kit"


class CannotHide(KitError):
    """AVX-512 cannot be hidden on this machine: the message says why and what to do instead."""


def can_fault_cpuid(cpuinfo: str | None = None) -> bool:
    return "cpuid_fault" in read_cpuinfo(cpuinfo)[1]


def shim() -> pathlib.Path:
    """The compiled shim, built on first use (named by its source's hash: an edit rebuilds it)."""
    source = SOURCE.read_bytes()
    target = CACHE / f"as_avx2-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if target.exists():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise CannotHide("as_avx2: needs a C compiler to build its CPUID shim",
                         hint="install one (apt-get install gcc) or set CC")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        built = pathlib.Path(scratch) / target.name
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(built), str(SOURCE), "-ldl"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise CannotHide(f"as_avx2: compiling {SOURCE.name} failed: {done.stderr.strip()[-400:]}")
        os.replace(built, target)  # whole or absent: another run may be compiling too
    return target


def environment() -> dict:
    """This process's environment with the shim preloaded ahead of anything already preloaded."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise CannotHide("as_avx2: hides x86 CPU features, and this is not an x86-64 Linux machine",
                         hint="measure on a real AVX2 machine instead")
    if not can_fault_cpuid():
        raise CannotHide("as_avx2: this CPU or kernel cannot fault on CPUID (no `cpuid_fault` flag in "
                         "/proc/cpuinfo), so AVX-512 cannot be hidden here", hint="measure on a real AVX2 machine instead")
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(shim()), env.get("LD_PRELOAD", "")]))
    return env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        return 0 if argv else 2
    return run_command(lambda: run_hidden(argv))


def run_hidden(argv: list[str]) -> int:
    """Replace this process by `argv` with the shim preloaded; returns only by raising CannotHide."""
    env = environment()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        raise CannotHide(f"as_avx2: cannot run {argv[0]!r}: {e.strerror}",
                         hint="give the command as it is run without as_avx2, e.g. .venv/bin/python -m pytest") from e


if __name__ == "__main__":
    sys.exit(main())
