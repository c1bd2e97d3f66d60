"""The machine a figure was measured on: the CPU's model and ISA from /proc/cpuinfo, printed beside every speed
figure (speeds differ about 2x between machines of one kind, and int8's gain depends on VNNI). Standard library
only: the load tests and the build both read it."""

from __future__ import annotations

import os
import pathlib

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
# Set by loadtests/as_avx2.c in a process whose CPUID hides these flags (`python -m loadtests.as_avx2`): the
# kernels the libraries pick follow CPUID, not /proc/cpuinfo, so the ISA reported here must leave them out too.
HIDDEN_ENV = "KIT_CPUID_HIDDEN"


CPUINFO = pathlib.Path("/proc/cpuinfo")


def read_cpuinfo(cpuinfo: str | None = None) -> tuple[str | None, set[str]]:
    """(the CPU's model name, every flag of its first processor) from /proc/cpuinfo or the given text; (None,
    set()) where it is unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            cpuinfo = ""
    model, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def cpu_isa(cpuinfo: str | None = None) -> dict:
    """{"model": CPU model name, "flags": the ISA_FLAGS present, "summary": e.g. "AVX-512 VNNI"} from
    /proc/cpuinfo (or the given text); {"model": None, "flags": [], "summary": "unknown"} where it is unreadable.
    Reading /proc/cpuinfo under loadtests.as_avx2, the flags CPUID hides are left out and the model says so."""
    model, flags = read_cpuinfo(cpuinfo)
    hidden = set(os.environ.get(HIDDEN_ENV, "").split()) if cpuinfo is None else set()
    if flags & hidden:
        flags -= hidden
        model = f"{model} (AVX-512 and VNNI hidden from CPUID)"
    present = [f for f in ISA_FLAGS if f in flags]
    if "amx_int8" in flags:
        summary = "AMX"
    elif "avx512_vnni" in flags:
        summary = "AVX-512 VNNI"
    elif "avx512f" in flags:
        summary = "AVX-512 (no VNNI)"
    elif "avx_vnni" in flags:
        summary = "AVX2 + AVX-VNNI"
    elif "avx2" in flags:
        summary = "AVX2 (no VNNI)"
    else:
        summary = "unknown"
    return {"model": model, "flags": present, "summary": summary}
