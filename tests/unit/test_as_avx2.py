"""loadtests.as_avx2: a command run with AVX-512 and VNNI hidden from CPUID, so that the libraries pick their AVX2
kernels, as on the AVX2-only machines the speed targets count on. Where the machine cannot fault on CPUID, the
command refuses with one line."""

import subprocess
import sys

import pytest

from builder.core.machine import HIDDEN_ENV, cpu_isa
from loadtests import as_avx2

CAN_HIDE = sys.platform == "linux" and as_avx2.can_fault_cpuid()
needs_cpuid_faulting = pytest.mark.skipif(not CAN_HIDE, reason="no CPUID faulting here (`cpuid_fault` flag)")

# what a process sees: NumPy's own CPUID reading, the kit's ISA, and the same from a program it starts
PROBE = """
import json, subprocess, sys
from numpy._core._multiarray_umath import __cpu_features__ as cpu
from builder.core.machine import cpu_isa
child = subprocess.run([sys.executable, "-c", "from numpy._core._multiarray_umath import __cpu_features__ as c; "
                        "print(c['AVX512F'])"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"avx512f": cpu["AVX512F"], "avx2": cpu["AVX2"], "isa": cpu_isa(), "child_avx512f": child}))
"""


def run_hidden(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtests.as_avx2", *command], capture_output=True, text=True,
                          timeout=120)


@needs_cpuid_faulting
def test_the_command_and_the_programs_it_starts_see_avx2_without_avx512_or_vnni():
    import json

    done = run_hidden(sys.executable, "-c", PROBE)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    native = cpu_isa()
    assert seen["avx512f"] is False and seen["child_avx512f"] == "False"
    assert seen["avx2"] is ("avx2" in native["flags"])
    assert not {f for f in seen["isa"]["flags"] if f.startswith(("avx512", "amx")) or f == "avx_vnni"}
    if "avx2" in native["flags"]:
        assert seen["isa"]["summary"] == "AVX2 (no VNNI)"
    if native["flags"] != seen["isa"]["flags"]:  # something was hidden: every printed ISA says so
        assert "hidden from CPUID" in seen["isa"]["model"]


@needs_cpuid_faulting
def test_a_segv_sent_by_kill_still_ends_a_process_without_a_handler():
    done = run_hidden(sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV); print('alive')")
    assert done.returncode == -11 and "alive" not in done.stdout


@needs_cpuid_faulting
def test_a_real_segfault_still_ends_the_process_and_reaches_its_own_handler():
    done = run_hidden(sys.executable, "-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)")
    assert done.returncode == -11
    assert "Segmentation fault" in done.stderr  # Python's faulthandler ran: the program's handler was kept


def test_without_cpuid_faulting_the_command_refuses_with_an_error_and_a_hint(monkeypatch, capsys):
    monkeypatch.setattr(as_avx2, "can_fault_cpuid", lambda cpuinfo=None: False)
    assert as_avx2.main(["--", "true"]) == 2
    error, hint = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("error: ") and "cpuid_fault" in error
    assert hint.startswith("hint: ") and "real AVX2 machine" in hint


@needs_cpuid_faulting
def test_a_command_that_does_not_exist_is_an_error_not_a_traceback():
    done = run_hidden("no-such-command-here")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: as_avx2: cannot run 'no-such-command-here'")


def test_cpuid_faulting_is_read_from_the_flags():
    assert as_avx2.can_fault_cpuid("flags\t\t: fpu avx2 cpuid_fault avx512f\n")
    assert not as_avx2.can_fault_cpuid("flags\t\t: fpu avx2 avx512f\n")


def test_the_isa_leaves_out_what_cpuid_hides_only_when_reading_this_machine(monkeypatch, tmp_path):
    from builder.core import machine

    text = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx avx2 fma avx512f avx512_vnni cpuid_fault\n"
    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")  # this machine, as a VNNI one
    monkeypatch.setenv(HIDDEN_ENV, "avx512f avx512_vnni")
    assert cpu_isa(text)["summary"] == "AVX-512 VNNI"  # given text describes another machine: nothing hidden
    isa = cpu_isa()
    assert isa["flags"] == ["avx2", "fma"] and isa["summary"] == "AVX2 (no VNNI)"
    assert isa["model"] == "AMD EPYC 9B14 (AVX-512 and VNNI hidden from CPUID)"
    assert as_avx2.can_fault_cpuid()
    monkeypatch.delenv(HIDDEN_ENV)
    assert cpu_isa() == {"model": "AMD EPYC 9B14", "flags": ["avx2", "fma", "avx512f", "avx512_vnni"],
                         "summary": "AVX-512 VNNI"}
