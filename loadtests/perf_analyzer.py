"""NVIDIA's `perf_analyzer`, fetched once and run against a running Triton server, with the kit's real data.

Newer `tritonclient` wheels (>= 2.52) carry a binary that needs glibc 2.38, and pip silently falls back to a
placeholder `perf-analyzer` package; the 2.51.0 manylinux1 wheel's binary runs on glibc 2.36. It links
`libb64.so.0d` and `libcudart.so.12`, which the installed nvidia-pytriton wheel ships under hashed names, so a
`lib/` folder of symlinks next to the cached binary supplies them (no CUDA device is needed to run it).

  binary = ensure_perf_analyzer()        # raises PerfAnalyzerUnavailable when it cannot be had here
  write_input_data(requests, "data.json")
  run_perf_analyzer("grpc://127.0.0.1:8001", "minilm_fp32", concurrency=4, seconds=5, input_data="data.json")
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from builder.core.errors import BuilderError
from builder.serving.server import triton_paths

VERSION = "2.51.0"
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "triton-deploy-kit" / f"perf_analyzer-{VERSION}"
# soname perf_analyzer asks for -> glob of the hashed copy in nvidia_pytriton.libs
LIBRARIES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
WINDOWS = 3  # perf_analyzer needs 3 consecutive windows before it calls a measurement stable


class PerfAnalyzerError(BuilderError):
    """perf_analyzer failed, timed out, or wrote no report."""


class PerfAnalyzerUnavailable(PerfAnalyzerError):
    """perf_analyzer cannot be had on this machine (no network, another platform, a binary that does not run)."""


def ensure_perf_analyzer(cache: pathlib.Path = DEFAULT_CACHE) -> pathlib.Path:
    """The path of a runnable perf_analyzer 2.51.0 in `cache`, downloading the wheel on first use (~14 MB).

    Raises PerfAnalyzerUnavailable (never anything else for an expected failure); callers that can do without
    perf_analyzer catch it and report its message.
    """
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise PerfAnalyzerUnavailable(f"the kit fetches perf_analyzer for linux x86_64 only, not {sys.platform} "
                                      f"{platform.machine()}")
    cache = pathlib.Path(cache)
    binary = cache / "perf_analyzer"
    if not binary.is_file():
        _download(binary)
    _link_libraries(cache / "lib")
    try:  # it has no --help (that exits 99); --version proves it loads its libraries
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, env=_env(binary))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PerfAnalyzerUnavailable(f"{binary} does not run: {e}", hint=f"delete {cache} to fetch it again") from e
    if done.returncode != 0 or "Perf Analyzer Version" not in done.stdout + done.stderr:
        raise PerfAnalyzerUnavailable(f"{binary} --version failed (exit {done.returncode}): {_tail(done)}",
                                      hint=f"delete {cache} to fetch it again")
    return binary


def _download(binary: pathlib.Path) -> None:
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
        # pip, not urllib: it honours the user's index, proxy and certificate settings
        command = [sys.executable, "-m", "pip", "download", f"tritonclient=={VERSION}", "--no-deps", "--only-binary",
                   ":all:", "--platform", "manylinux1_x86_64", "--quiet", "-d", tmp]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PerfAnalyzerUnavailable(f"could not download tritonclient {VERSION}: {e}") from e
        wheels = list(pathlib.Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise PerfAnalyzerUnavailable(f"could not download tritonclient {VERSION}: {_tail(done)}",
                                          hint=f"run `{shlex.join(command[:-1] + ['.'])}` by hand to see why")
        with zipfile.ZipFile(wheels[0]) as wheel:  # the binary sits in tritonclient-2.51.0.data/data/bin/
            member = next((n for n in wheel.namelist() if n.endswith("/bin/perf_analyzer")), None)
            if member is None:
                raise PerfAnalyzerUnavailable(f"{wheels[0].name} holds no perf_analyzer binary")
            partial = pathlib.Path(tmp) / "perf_analyzer"
            partial.write_bytes(wheel.read(member))
        partial.chmod(0o755)
        os.replace(partial, binary)  # atomic: an interrupted download never leaves a half binary behind


def _link_libraries(lib: pathlib.Path) -> None:
    try:
        _, wheel_libs, _ = triton_paths()
    except BuilderError as e:
        raise PerfAnalyzerUnavailable(f"perf_analyzer borrows libraries from nvidia-pytriton: {e}", hint=e.hint) from e
    lib.mkdir(exist_ok=True)
    for soname, pattern in LIBRARIES.items():
        found = sorted(wheel_libs.glob(pattern))
        if not found:
            raise PerfAnalyzerUnavailable(f"no {pattern} in {wheel_libs} for perf_analyzer's {soname}")
        link = lib / soname
        link.unlink(missing_ok=True)  # relinked every time: the virtual environment may have moved
        link.symlink_to(found[0])


def _env(binary: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(binary.parent / "lib"), env.get("LD_LIBRARY_PATH")]))
    return env


def _tail(done, lines: int = 8) -> str:
    text = (done.stderr or "").strip() or (done.stdout or "").strip()
    return " | ".join(text.splitlines()[-lines:]) or "(no output)"


def write_input_data(requests: list[dict[str, np.ndarray]], path: str | pathlib.Path) -> pathlib.Path:
    """Write perf_analyzer's `--input-data` JSON: one entry per request, used round-robin.

    Each request maps input name -> array of batch size 1 (axis 0); each input is written as its flattened
    `content` and its `shape` without the batch axis, so variable dims (a sequence length) may differ per request.
    With run_perf_analyzer(batch_size > 1) perf_analyzer stacks consecutive entries, which must then share a shape.
    """
    entries = []
    for i, request in enumerate(requests):
        entry = {}
        for name, array in request.items():
            array = np.asarray(array)
            if array.ndim == 0 or array.shape[0] != 1:
                raise PerfAnalyzerError(f"request {i}, input `{name}`: shape {array.shape} has no batch axis of 1")
            entry[name] = {"content": array.reshape(-1).tolist(), "shape": list(array.shape[1:])}
        entries.append(entry)
    path = pathlib.Path(path)
    path.write_text(json.dumps({"data": entries}))
    return path


def run_perf_analyzer(url: str, model: str, concurrency: int, seconds: float, batch_size: int = 1,
                      input_data: str | pathlib.Path | None = None, binary: pathlib.Path | None = None) -> dict:
    """Load `model` at `url` (grpc://host:port or http://host:port) with `concurrency` requests in flight.

    perf_analyzer measures WINDOWS windows of `seconds` each and reports their average: its stability check is
    switched off (a 1000 % threshold) so a noisy shared machine still finishes in about 3 x `seconds`.
    Without `input_data` perf_analyzer sends random data, which models with token ids reject (out-of-range ids)
    and which needs fixed input shapes: pass real data.
    Returns {"throughput" (infer/s), "p50_ms", "p90_ms", "p95_ms", "p99_ms" (client-side latency),
    "concurrency", "batch_size", "command"}. Raises PerfAnalyzerError with perf_analyzer's last output lines.
    """
    protocol, _, address = url.partition("://")
    if protocol not in ("grpc", "http") or not address:
        raise PerfAnalyzerError(f"bad URL `{url}`", hint="use grpc://host:port or http://host:port")
    binary = binary or ensure_perf_analyzer()
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-") as tmp:
        report = pathlib.Path(tmp) / "report.csv"
        command = [str(binary), "-m", model, "-i", protocol, "-u", address, "-b", str(batch_size),
                   f"--concurrency-range={concurrency}:{concurrency}", "--measurement-mode=time_windows",
                   f"--measurement-interval={round(seconds * 1000)}", "--stability-percentage=1000",
                   f"--max-trials={WINDOWS}", "-f", str(report)]
        if input_data is not None:
            command.append(f"--input-data={input_data}")
        timeout = WINDOWS * seconds * 2 + 60  # windows overrun under load; plus start-up and the server's stats
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(binary))
        except subprocess.TimeoutExpired as e:
            raise PerfAnalyzerError(f"perf_analyzer ran past {timeout:.0f} s: {shlex.join(command)}") from e
        if done.returncode != 0 or not report.is_file():
            raise PerfAnalyzerError(f"perf_analyzer failed (exit {done.returncode}): {_tail(done)}",
                                    hint=f"command: {shlex.join(command)}")
        with open(report, newline="") as handle:
            row = next(csv.DictReader(handle))
    result = {"throughput": float(row["Inferences/Second"])}
    for p in (50, 90, 95, 99):
        result[f"p{p}_ms"] = float(row[f"p{p} latency"]) / 1000.0  # the report is in microseconds
    return {**result, "concurrency": concurrency, "batch_size": batch_size, "command": shlex.join(command)}
