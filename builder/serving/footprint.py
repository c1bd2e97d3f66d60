"""Model size in deployment terms: load time in the server, resident memory per instance, instances per budget.

Method (measured on the running server, never estimated from the file):

- Load time: the model is unloaded (if loaded) and loaded again with a plain `load_model` of its directory
  (explicit model control); `load_seconds` runs from sending the load request to the model reporting READY. It
  includes what Triton does during a load: starting each instance, creating its ONNX Runtime session and the
  config's `model_warmup` requests.
- Memory: the embedded server serves `backend: "onnxruntime"` through the kit's Python-based backend, which runs
  every model instance in its own `triton_python_backend_stub` process. The stubs of the model are found in
  /proc/<pid>/cmdline: the stub's arguments are (python_backend stub_launcher.cc) the model file
  `<repository>/<model>/<version>/<file>`, the shared-memory region, its default and growth sizes, the server's
  pid, the backend folder, the IPC handle and the instance name (`<model>_<group>_<index>`). Only the stubs that
  appeared during our load count (and, for a server started here, only children of that server), so stubs of
  another server on the same machine are never mixed in. Their VmRSS (and VmHWM, RssAnon, RssFile) come from
  /proc/<pid>/status, right after the load and again after one warm-up inference: a real batch-1 request of the
  build's test split (builder/core/artifacts.py; the longest text of its first 256), since ONNX Runtime allocates its
  arena on the first run and grows it for larger inputs. (A config's `model_warmup` may have done that already.)
  Resident memory per instance is the mean over the model's stubs after that inference; `peak_rss_bytes` (VmHWM)
  is higher while a large model loads (ONNX Runtime holds the parsed file and the session's weights at once).
- What the figure includes: each stub carries the Python interpreter, numpy and onnxruntime (~75 MB here)
  whatever the model. `baseline` gives the lowest RSS after load among the models measured in the same run (the
  stub of the smallest model), which is close to that fixed part; `shared_file_rss_bytes` is the part of RSS that is mapped files (shared
  libraries): the kernel keeps one copy of those for all stubs, so the per-instance figure (VmRSS) overstates
  what each further instance costs, and `fits` is a conservative count. The server process itself (~50 MB) is
  not included.
- Scope: these are figures for the embedded server's Python backend. On the official container's native ONNX
  Runtime backend every instance lives inside the tritonserver process (no stub, no per-instance interpreter):
  there, memory per instance has to be measured as the server process's own RSS growth per loaded instance.

Sizes: `parse_size("16GB")`: decimal units (K, M, G, T, KB, MB, GB, TB: powers of 1000) and binary units (Ki, Mi,
Gi, Ti, KiB, MiB, GiB, TiB: powers of 1024), as Kubernetes memory limits read them; case-insensitive; a bare
number is bytes.
"""

from __future__ import annotations

import datetime
import pathlib
import re
import time

from client import ClientError, TritonClient

from ..core.artifacts import find_record, request_batches, update_entry
from ..core.errors import ArtifactsError, BuilderError, unknown_name
from .server import cpu_fallback_config
from .stubs import STUB, Stub, find_stubs, memory  # noqa: F401 (Stub, find_stubs: part of this module's API)

DEFAULT_BUDGET = "16GB"
WARMUP_SPLIT = "test"
WARMUP_CANDIDATES = 256
UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    UNITS |= {_letter: 1000 ** _power, f"{_letter}b": 1000 ** _power,
              f"{_letter}i": 1024 ** _power, f"{_letter}ib": 1024 ** _power}
SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")
SERVER_NOTE = ("embedded tritonserver, Python-based onnxruntime backend: one triton_python_backend_stub process "
               "per instance (on the official native ONNX Runtime backend instances live inside the server process)")


class FootprintError(BuilderError):
    """A footprint could not be measured or stored: bad size, model not loadable, no build record."""


def parse_size(text: str) -> int:
    """Bytes in a memory size such as `16GB`, `512MiB`, `2G`, `1.5Gi` or `1048576`. Raises FootprintError."""
    match = SIZE_PATTERN.fullmatch(str(text).lower())
    if not match or match.group(2) not in UNITS:
        raise FootprintError(f"not a memory size: {text!r}",
                             hint="a number and a unit: 16GB, 512MiB or 2G; GB and G are 1000^3 bytes, GiB and Gi 1024^3")
    size = int(float(match.group(1)) * UNITS[match.group(2)])
    if size <= 0:
        raise FootprintError(f"a memory size must be positive, got {text!r}", hint="e.g. --memory-budget 16GB")
    return size


def fits(budget_bytes: int, per_instance_bytes: int) -> int:
    """How many instances of `per_instance_bytes` each fit in `budget_bytes` (whole instances)."""
    if per_instance_bytes <= 0:
        raise FootprintError(f"memory per instance must be positive, got {per_instance_bytes}")
    return int(budget_bytes) // int(per_instance_bytes)


def process_memory(pid: int) -> dict:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of `pid` in bytes (builder/serving/stubs.py). Raises FootprintError."""
    try:
        return memory(pid)
    except OSError as e:
        raise FootprintError(f"cannot read the memory of stub process {pid}: {e}",
                             hint="it ended during the measurement; measure again") from e


def warmup_request(artifacts: pathlib.Path, model: str) -> dict:
    """One real request of batch 1 from the build's test split: the largest of its first WARMUP_CANDIDATES (the
    longest text; every image is alike), since ONNX Runtime's arena grows with the largest input it has run."""

    try:
        folder, _ = find_record(pathlib.Path(artifacts), model)
        requests = request_batches(folder, WARMUP_SPLIT, batch_size=1, count=WARMUP_CANDIDATES)
        return max(requests, key=lambda r: sum(v.size for v in r.values()))
    except ArtifactsError as e:
        raise FootprintError(f"no warm-up request for {model}: {e}", hint=e.hint) from e


def served_files_bytes(repository: pathlib.Path, model: str) -> int | None:
    """Bytes of the highest version folder of `model` in `repository` (model.onnx plus any external data)."""
    folder = pathlib.Path(repository) / model
    versions = sorted((p for p in folder.glob("*") if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        return None
    return sum(f.stat().st_size for f in versions[-1].rglob("*") if f.is_file())


def stubs_ended(old: set[int], model: str, server_pid: int | None) -> bool:
    """Whether the stubs `old` of `model` ended: all of them for a known server, else any (see the caller)."""
    current = {s.pid for s in find_stubs(model, server_pid)}
    return not old & current if server_pid is not None else (not old or bool(old - current))


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise FootprintError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _mean(values: list[int]) -> int:
    return round(sum(values) / len(values))


def measure_footprint(server_or_urls, repository: pathlib.Path | None, model: str, artifacts: pathlib.Path,
                      timeout: float = 300.0) -> dict:
    """Unload `model`, time a plain load of it to READY, and measure its instances' resident memory after the
    load and after one warm-up inference (see the module docstring for the method).

    `server_or_urls`: an EmbeddedServer, anything with `http_url` (loadtests' Target) or an `http://` URL; the
    server must use explicit model control and run on this machine for the memory figures (else they are None
    and `memory_note` says why). `repository` (optional) gives `file_bytes`, the size of the served version
    folder. `artifacts` holds the build record and test split of the warm-up request.

    Returns {"load_seconds", "instances", "rss_bytes_after_load", "rss_bytes_after_first_inference",
    "rss_bytes_per_instance", ... "per_instance": [...]} (bytes; means over instances). Every model loaded
    before is loaded afterwards (a model only loaded here is unloaded again). Raises FootprintError.
    """

    http_url = server_or_urls if isinstance(server_or_urls, str) else server_or_urls.http_url
    process = getattr(server_or_urls, "process", None)
    server_pid = process.pid if process is not None else None
    fallback = getattr(server_or_urls, "cpu_fallbacks", {}).get(model)  # a KIND_GPU model served on CPU here
    request = warmup_request(artifacts, model)  # before touching the server: a missing record fails first
    # an EmbeddedServer's key is an attribute, a Target's a property; None: client/admin.py finds it
    with TritonClient(http_url, timeout=timeout, admin_key=getattr(server_or_urls, "admin_key", None)) as client:
        try:
            before = {m["name"]: m["state"] for m in client.models()}
        except ClientError as e:
            raise FootprintError(str(e), hint=e.hint) from e
        if model not in before:
            raise unknown_name("model", model, before, FootprintError, hint="the server's repository has these")
        try:
            if before[model] == "READY":
                unload_and_wait(client, model, server_pid, timeout)
            present = {s.pid for s in find_stubs(model, server_pid)}  # not ours: another server's, or ending
            config = None
            if fallback:  # an EmbeddedServer's: load it as the server did, with KIND_CPU instances
                config = cpu_fallback_config(server_or_urls.repository / model / "config.pbtxt")
            started = time.perf_counter()
            client.load_model(model, config=config)
            wait_for(lambda: client.is_model_ready(model), timeout, f"{model} to become READY")
            load_seconds = time.perf_counter() - started
            stubs = [s for s in find_stubs(model, server_pid) if s.pid not in present]
            after_load = {s.pid: process_memory(s.pid) for s in stubs}
            client.infer(model, request)
            after_inference = {s.pid: process_memory(s.pid) for s in stubs}
            configured = sum(int(g.get("count", 1)) for g in client.config(model).get("instance_group", [])) or None
        except ClientError as e:
            raise FootprintError(f"measuring {model} failed: {e}", hint=e.hint) from e
        finally:
            restore(client, before, model)
    return footprint_record(model, repository, request, load_seconds, stubs, configured, after_load,
                            after_inference, bool(fallback))


def footprint_record(model: str, repository: pathlib.Path | None, request: dict, load_seconds: float, stubs: list,
                     configured: int | None, after_load: dict, after_inference: dict, cpu_fallback: bool) -> dict:
    """measure_footprint's result from what it measured: per instance and the means over instances."""
    footprint = {
        "model": model, "file_bytes": served_files_bytes(repository, model) if repository else None, "load_seconds": round(load_seconds, 3),
        "instances": len(stubs), "configured_instances": configured,
        "rss_bytes_after_load": None, "rss_bytes_after_first_inference": None, "rss_bytes_per_instance": None,
        "peak_rss_bytes": None, "shared_file_rss_bytes": None,
        "per_instance": [{"instance": s.instance, "pid": s.pid, "rss_bytes_after_load": after_load[s.pid]["rss"],
                          "rss_bytes_after_first_inference": after_inference[s.pid]["rss"],
                          "peak_rss_bytes": after_inference[s.pid]["peak_rss"]} for s in stubs],
        "warmup_request": {"split": WARMUP_SPLIT, "batch": 1,
                           "shapes": {k: list(v.shape) for k, v in request.items()}},
        "server": SERVER_NOTE, "cpu_fallback": cpu_fallback,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if stubs:
        footprint |= {
            "rss_bytes_after_load": _mean([m["rss"] for m in after_load.values()]),
            "rss_bytes_after_first_inference": _mean([m["rss"] for m in after_inference.values()]),
            "peak_rss_bytes": _mean([m["peak_rss"] for m in after_inference.values()]),
            "shared_file_rss_bytes": _mean([m["file_rss"] for m in after_inference.values()])}
        footprint["rss_bytes_per_instance"] = footprint["rss_bytes_after_first_inference"]
    else:
        footprint["memory_note"] = (f"no {STUB} process of {model} appeared on this machine: the server runs "
                                    "elsewhere, or serves the model in-process (native backend, ensemble)")
    return footprint


def unload_and_wait(client, model: str, server_pid: int | None, timeout: float) -> None:
    """Unload `model` and wait until it is not ready and its stub processes have ended."""
    old = {s.pid for s in find_stubs(model, server_pid)}
    client.unload_model(model)
    # Without the server's pid (a URL), `old` may hold stubs of the same model name served by another server on
    # this machine, which never end: ours have ended once any of them has.
    wait_for(lambda: not client.is_model_ready(model) and stubs_ended(old, model, server_pid),
             timeout, f"{model} to unload")


def restore(client, before: dict[str, str], model: str) -> None:
    """Load again every model READY in `before` that is not now (`model`, a dependent ensemble); unload `model` if
    it was not loaded before."""

    for _ in range(2):  # a second pass: an ensemble whose composing model came back only in the first
        now = {m["name"]: m["state"] for m in client.models()}
        missing = [m for m, state in before.items() if state == "READY" and now.get(m) != "READY"]
        if not missing:
            break
        for name in missing:
            try:
                client.load_model(name)
            except ClientError:
                pass  # the next pass, or the error below, tells
    if before.get(model) != "READY" and client.is_model_ready(model):
        client.unload_model(model)


def measure_models(server_or_urls, repository: pathlib.Path | None, models: list[str], artifacts: pathlib.Path,
                   progress=print) -> dict[str, dict]:
    """`measure_footprint` of each model in turn; each result also gets `baseline`: the lowest RSS after load of
    the models measured here, i.e. the stub of the smallest model (the closest this run has to a stub's fixed
    cost)."""
    measured = {}
    for model in models:
        progress(f"measuring load time and memory of {model}")
        measured[model] = footprint = measure_footprint(server_or_urls, repository, model, artifacts)
        memory = footprint["rss_bytes_per_instance"]
        progress(f"    loaded in {footprint['load_seconds']:.2f} s; " + (
            f"{memory / 1e6:.0f} MB resident per instance ({footprint['instances']} instance(s))" if memory
            else footprint.get("memory_note", "")))
    with_memory = [f for f in measured.values() if f["rss_bytes_after_load"]]
    if with_memory:
        smallest = min(with_memory, key=lambda f: f["rss_bytes_after_load"])
        baseline = {"model": smallest["model"], "file_bytes": smallest["file_bytes"],
                    "rss_bytes": smallest["rss_bytes_after_load"]}
        for footprint in measured.values():
            footprint["baseline"] = baseline
    return measured


def write_footprint(artifacts: pathlib.Path, triton_model: str, footprint: dict) -> pathlib.Path:
    """Store `footprint` as `served_footprint` of the build-record entry of `triton_model` (`minilm_fp32`: model
    `minilm`, variant `fp32`); the record is updated under its lock and replaced atomically (the artifacts store). Returns its path. Raises FootprintError."""
    path = update_entry(artifacts, triton_model, "served_footprint", footprint)
    if path is not None:
        return path
    raise FootprintError(f"no build record for model `{triton_model}` under {artifacts}/",
                         hint="build it with `builder build`, or pass --artifacts where it was built")
