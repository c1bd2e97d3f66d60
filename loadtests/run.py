"""Load-test served models with Locust, headless, one (model, users) step at a time, and record what happened.

Per step: Locust's own JSON stats (requests, failures, latency percentiles; its CSV totals undercount), and from
Triton's /metrics scraped before and after the step, the server's view (queue vs compute time per request,
executions vs requests = realised batch size, CPU utilisation). Locust runs as a subprocess (one process, or a
master and `workers` worker processes), always bounded in time and always stopped, also on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

from builder.core.artifacts import find_record, read_records, request_batches
from builder.core.errors import ArtifactsError, BuilderError, unknown_name
from builder.core.machine import cpu_isa
from builder.serving.footprint import FootprintError, find_stubs, measure_models, process_memory, write_footprint
from builder.serving.server import free_port
from client import ClientError, TritonClient
from client.admin import find_admin_key

from . import intervals, metrics
from .results import RunResults, write_results
from .perf_analyzer import ensure_perf_analyzer, run_perf_analyzer, write_input_data

LOCUSTFILE = pathlib.Path(__file__).with_name("locustfile.py")
# records each request's end time and response time, so a step splits into windows (loadtests/intervals.py)
WINDOWS_PLUGIN = pathlib.Path(__file__).with_name("locust_windows.py")
PERCENTILES = (0.5, 0.9, 0.95, 0.99)
# Triton may answer a request over HTTP a moment before its /metrics counters include it: a scrape right after the
# last response once counted one request fewer than Locust had
METRICS_SETTLE_S = 0.5


class LoadTestError(BuilderError):
    """A load test could not run: server unreachable, unknown model, Locust failed to start."""


@dataclasses.dataclass(frozen=True)
class LoadSettings:
    users: tuple[int, ...] = (1, 4, 16)  # one step per entry
    duration_s: float = 30.0  # per step
    protocol: str = "grpc"
    batch_size: int = 1  # examples per request
    arrival_rate: float = 0.0  # open loop: requests/s per user; 0 = closed loop
    workers: int = 0  # 0: one Locust process; N: a master and N workers
    # choose `workers` per model from a short single-process probe step (choose_workers); `workers` is then ignored
    auto_workers: bool = False
    split: str = "test"
    tokens: int = 0  # text models: 0 = real mix of lengths; N = every request cut to N tokens (batchable)
    # equal windows per step, for the throughput and p99 intervals (loadtests/intervals.py); the report calls
    # variants tied when their intervals overlap, and needs at least 3 to rank with intervals
    windows: int = 3
    # runs of every step, interleaved (all models and steps once, then again): the windows of all repeats make the
    # interval, so it also holds what changes from one Locust run to the next; costs `repeats` x the time
    repeats: int = 1
    length_buckets: bool = True  # text models: pad requests to the model's length buckets (batchable)

    @property
    def mode(self) -> str:
        return "open" if self.arrival_rate > 0 else "closed"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the load goes: Triton's URLs, and where the admin key of its locked APIs is (client/admin.py)."""
    http_url: str
    grpc_url: str
    metrics_url: str
    admin_key_file: str | None = None  # None: $TRITONKIT_ADMIN_KEY, or the key a local server generated

    def url(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.http_url

    @property
    def admin_key(self) -> str | None:
        """The key for model listing, load and unload (not a field: results.json keeps the Target)."""
        return find_admin_key(self.http_url, self.admin_key_file)


def check_target(target: Target, models: list[str]) -> list[str]:
    """Before any load: the server answers and every model is READY. `models == ["all"]` means every READY one."""

    try:
        with TritonClient(target.http_url, timeout=10, admin_key=target.admin_key) as client:
            if not client.is_live():
                raise LoadTestError(f"Triton server at {target.http_url} is not reachable",
                                    hint="start it with `builder serve`, or pass --url (omit it to let the runner "
                                         "start the embedded server)")
            states = {m["name"]: m["state"] for m in client.models()}
    except ClientError as e:
        raise LoadTestError(str(e), hint=e.hint) from e
    ready = sorted(name for name, state in states.items() if state == "READY")
    if models == ["all"]:
        if not ready:
            raise LoadTestError("no model is READY on the server", hint="build one with `builder build`")
        return ready
    for model in models:
        if model not in states:
            raise unknown_name("model", model, sorted(states), LoadTestError,
                               hint="`python -m client models` lists them")
        if states[model] != "READY":
            raise LoadTestError(f"model `{model}` is {states[model] or 'not loaded'} on the server",
                                hint=f"load it, or see the server log; READY: {', '.join(ready) or 'none'}")
    return models


def locust_commands(target: Target, model: str, users: int, settings: LoadSettings, artifacts: pathlib.Path,
                    stats: pathlib.Path, errors: pathlib.Path,
                    windows: pathlib.Path | None = None) -> list[list[str]]:
    """The Locust command lines of one step: [single] or [master, worker, ...]. With `windows`, the windows
    plugin runs too and writes its slots there."""
    files = f"{LOCUSTFILE},{WINDOWS_PLUGIN}" if windows else str(LOCUSTFILE)
    common = [sys.executable, "-m", "locust", "-f", files, "--host", target.url(settings.protocol),
              "--model", model, "--batch-size", str(settings.batch_size), "--arrival-rate", str(settings.arrival_rate),
              "--artifacts", str(artifacts.resolve()), "--split", settings.split, "--tokens", str(settings.tokens),
              "--length-buckets", str(int(settings.length_buckets)), "--loglevel", "WARNING"]
    run = ["--headless", "-u", str(users), "-r", str(users), "-t", f"{settings.duration_s:g}s", "--stop-timeout", "2",
           "--json-file", str(stats.resolve().with_suffix("")), "--errors-json", str(errors.resolve()), "--only-summary",
           "--exit-code-on-error", "0"] + (["--windows-json", str(windows.resolve())] if windows else [])
    if settings.workers == 0:
        return [common + run]

    port = free_port()
    master = common + run + ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                             "--expect-workers", str(settings.workers), "--expect-workers-max-wait", "60"]
    worker = common + ["--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
    return [master] + [worker] * settings.workers


def run_locust(commands: list[list[str]], log: pathlib.Path, timeout: float,
               cpu: "GeneratorCpu | None" = None) -> None:
    """Run the step's Locust processes to the end; kill them all on timeout or Ctrl-C. `cpu` samples their CPU."""
    processes = []
    with open(log, "ab") as out:
        try:
            for command in commands:
                processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent,
                                                  stdin=subprocess.DEVNULL, start_new_session=True))
            if cpu is not None:
                cpu.start([p.pid for p in processes])
            processes[0].wait(timeout)
            for worker in processes[1:]:
                worker.wait(15)
        except subprocess.TimeoutExpired as e:
            raise LoadTestError(f"Locust did not finish within {timeout:.0f} s", hint=f"see {log}") from e
        finally:
            if cpu is not None:
                cpu.stop()
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    if processes[0].returncode not in (0, None):
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        raise LoadTestError(f"Locust exited with code {processes[0].returncode}: {tail}", hint=f"full log: {log}")


def locust_figures(entries: list[dict], model: str, batch_size: int) -> dict:
    """Requests, failures, throughput and latency percentiles of `model` from Locust's JSON stats (its numbers)."""
    entry = next((e for e in entries if e["name"] == model), None)
    if entry is None or entry["num_requests"] == 0:
        return {"requests": 0, "failures": 0, "requests_per_s": 0.0, "throughput": 0.0,
                **{f"p{round(p * 100)}_ms": None for p in PERCENTILES}}
    count = entry["num_requests"]
    times = {float(k): v for k, v in entry["response_times"].items()}
    elapsed = max(entry["last_request_timestamp"] - entry["start_time"], 1e-9)
    successes = count - entry["num_failures"]
    return {"requests": count, "failures": entry["num_failures"], "requests_per_s": round(count / elapsed, 1),
            # examples served per second: what capacity planning needs
            "throughput": round(successes * batch_size / elapsed, 1),
            "mean_ms": round(entry["total_response_time"] / count, 2),
            **{f"p{round(p * 100)}_ms": intervals.percentile(times, p) for p in PERCENTILES},
            "elapsed_s": round(elapsed, 2)}


def run_step(target: Target, model: str, users: int, settings: LoadSettings, artifacts: pathlib.Path,
             raw: pathlib.Path, label: str = "") -> dict:
    """One load step; its raw Locust files are kept under `raw/`."""
    stem = f"{model}_u{users}{label}"
    stats, errors, log = raw / f"{stem}_locust.json", raw / f"{stem}_errors.json", raw / f"{stem}_locust.log"
    windows = raw / f"{stem}_windows.json" if settings.windows else None
    for path in (stats, errors, log, windows):
        if path:
            path.unlink(missing_ok=True)
    commands = locust_commands(target, model, users, settings, artifacts, stats, errors, windows)
    before = scrape_model(target, model)
    generator = GeneratorCpu()
    with metrics.CpuSampler(target.metrics_url) as cpu:
        run_locust(commands, log, timeout=settings.duration_s + 90, cpu=generator)
    time.sleep(METRICS_SETTLE_S)
    after = scrape_model(target, model)
    if not stats.is_file():
        raise LoadTestError(f"Locust wrote no stats for {model} at {users} users", hint=f"see {log}")
    entries = json.loads(stats.read_text())
    figures = locust_figures(entries, model, settings.batch_size)
    figures |= window_figures(entries, model, windows, settings)
    error_rows = json.loads(errors.read_text()) if errors.is_file() else []
    if figures["requests"] == 0:  # the users never got to send: say why (Locust logs the exception)
        lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
        error_rows = error_rows or [{"error": "no request was sent: " + " | ".join(lines[-3:]), "occurrences": 1}]
    entry = next((e for e in json.loads(stats.read_text()) if e["name"] == model), None)
    load = generator.figures(entry["start_time"], entry["last_request_timestamp"]) if entry else {}
    step = {"model": model, "users": users, **figures,
            # a step whose Locust process ran its core flat out measured the generator, not the server: the
            # report flags it and does not rank variants by it
            "generator_bound": bool(load) and load["max_process_demand"] >= GENERATOR_BOUND_CPU, "generator": load,
            "errors": [{"message": e["error"], "count": e["occurrences"]} for e in error_rows],
            "server": metrics.step_figures(before, after) if before and after else None,
            "cpu_utilization": cpu.mean(), "raw": {"locust_stats": stats.name, "locust_log": log.name}
            | ({"windows": windows.name} if windows and windows.is_file() else {}),
            "command": " ".join(commands[0][1:]).replace(str(LOCUSTFILE), "loadtests/locustfile.py")
            .replace(str(WINDOWS_PLUGIN), "loadtests/locust_windows.py")}
    return step


def window_figures(entries: list[dict], model: str, windows: pathlib.Path | None, settings: LoadSettings) -> dict:
    """{"windows": [...], "interval": {...}} of one step from the plugin's file (loadtests/intervals.py): the
    step from the moment every user ran to its last request, cut into `settings.windows` equal windows. Empty
    when the step had no windows file or too few requests."""
    entry = next((e for e in entries if e["name"] == model), None)
    if windows is None or not windows.is_file() or entry is None or not entry["num_requests"]:
        return {}
    recorded = json.loads(windows.read_text())
    start = max(entry["start_time"], recorded.get("spawned_at") or 0.0)
    cut = intervals.split_windows(recorded, start, entry["last_request_timestamp"], settings.windows,
                                  settings.batch_size)
    return {"windows": cut, "interval": intervals.step_intervals(cut)} if cut else {}


GENERATOR_BOUND_CPU = 0.9  # cores a Locust process used or waited for: it is one gevent loop on one core


def process_schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) summed over the threads of a live process
    (/proc/<pid>/task/*/schedstat), None once it is gone. The wait counts too: a generator that is ready to send
    but gets no core is as much the bottleneck as one that uses its core fully."""
    run = wait = 0
    try:
        for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "schedstat").read_text().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    except (OSError, IndexError, ValueError):
        return None
    return run / 1e9, wait / 1e9


class GeneratorCpu:
    """CPU used (and waited for) by the Locust processes of a step, sampled every `interval` s from /proc, so that
    it can be taken over exactly the window Locust measured (its first to its last request)."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.samples: list[tuple[float, list]] = []  # (wall time, [(run s, wait s) or None per process])
        self._stop = None
        self._thread = None

    def start(self, pids: list[int]) -> None:
        import threading

        self._stop = threading.Event()

        def sample():
            while True:
                self.samples.append((time.time(), [process_schedstat(pid) for pid in pids]))
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def figures(self, start: float, end: float) -> dict:
        """Over [start, end] (Locust's wall-clock timestamps), in cores: "cpu_cores" (all processes), and for the
        busiest process "max_process_cpu" (CPU it got) and "max_process_demand" (got + waited for); {} if too few
        samples fell in the window."""
        inside = [(t, cpu) for t, cpu in self.samples if start <= t <= end and None not in cpu]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 2 * self.interval:
            return {}
        (t0, first), (t1, last) = inside[0], inside[-1]
        used = [(b[0] - a[0]) / (t1 - t0) for a, b in zip(first, last)]
        demand = [(b[0] + b[1] - a[0] - a[1]) / (t1 - t0) for a, b in zip(first, last)]
        return {"processes": len(used), "cpu_cores": round(sum(used), 3), "max_process_cpu": round(max(used), 3),
                "max_process_demand": round(max(demand), 3), "window_s": round(t1 - t0, 2)}


PROBE_S = 2.0  # the auto-workers probe step: long enough for GeneratorCpu's samples, short beside the steps


# a second generator process needs a core nobody else uses: measured on 2 shared cores (docs/load-tests.md), a
# master and 2 workers cost 400-450 us of CPU per request against 260-300 us for one process and lost 20 % throughput
SPARE_CORES_FOR_WORKERS = 0.5


def workers_for(probe: dict, cores: int) -> int:
    """How many Locust worker processes a step needs, from a single-process probe step at its users: 0 (one
    process) unless the probe was generator-bound and the machine had at least SPARE_CORES_FOR_WORKERS idle
    (Triton's whole-machine `cpu_utilization`; unknown counts as idle); else one worker per core the probe's
    generator would have taken had it not been capped at one core (at least 2, at most `cores`). On a machine the
    server shares, more generators only take cores from the server."""
    load = probe.get("generator") or {}
    if not probe.get("generator_bound") or not load or cores < 2:
        return 0
    utilization = probe.get("cpu_utilization")
    if utilization is not None and (1 - utilization) * cores < SPARE_CORES_FOR_WORKERS:
        return 0
    wanted = load["max_process_demand"] / max(load["max_process_cpu"], 1e-3)  # > 1: it waited for a core too
    return max(2, min(cores, math.ceil(load["cpu_cores"] * wanted)))


def choose_workers(target: Target, model: str, settings: LoadSettings, artifacts: pathlib.Path,
                   raw: pathlib.Path, progress) -> tuple[int, dict]:
    """(workers, probe facts) for `model`: a PROBE_S single-process step at the highest users, judged by
    workers_for with this machine's cores."""
    users = max(settings.users)
    probe = run_step(target, model, users, dataclasses.replace(settings, duration_s=PROBE_S, workers=0,
                                                                auto_workers=False), artifacts, raw, label="_probe")
    workers = workers_for(probe, os.cpu_count() or 1)
    facts = {"users": users, "seconds": PROBE_S, "requests_per_s": probe["requests_per_s"],
             "generator": probe["generator"], "generator_bound": probe["generator_bound"],
             "cpu_utilization": probe["cpu_utilization"], "workers": workers, "cores": os.cpu_count()}
    progress(f"    auto workers: a {PROBE_S:g} s probe at {users} users was "
             + ("generator-bound" if probe["generator_bound"] else "not generator-bound")
             + (f" ({probe['generator']['max_process_cpu']:.2f}/{probe['generator']['max_process_demand']:.2f} core "
                "used/wanted)" if probe["generator"] else "")
             + (f", machine CPU {probe['cpu_utilization']:.0%}" if probe["cpu_utilization"] is not None else "")
             + f": {workers and f'a master and {workers} workers' or 'one Locust process'}")
    return workers, facts


def scrape_model(target: Target, model: str) -> dict | None:
    try:
        return metrics.model_counters(metrics.scrape(target.metrics_url), model)
    except OSError:
        return None  # the step still counts; the report says the server's view is missing


def machine() -> dict:
    import platform

    isa = cpu_isa()
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f in isa["flags"])  # speed figures depend on it
    return {"cpu": isa["model"] or platform.processor(), "cores": os.cpu_count(), "isa": flags,
            "python": platform.python_version(), "host": platform.node()}


def has_record(model: str, artifacts: pathlib.Path, skip: bool, progress) -> bool:
    """Whether `model` has a build record (the users replay its test split): with `skip`, say so and leave it out;
    otherwise no record is an error before any load."""

    try:
        return bool(find_record(artifacts, model))
    except ArtifactsError as e:
        if not skip:
            raise LoadTestError(str(e), hint=e.hint) from e
        progress(f"skipping {model}: no build record under {artifacts}/ (no test data to replay)")
        return False


def run_load(models: list[str], target: Target, settings: LoadSettings, artifacts: pathlib.Path,
             out: pathlib.Path, progress=print, perf_analyzer=(), footprint: bool = False,
             repository: pathlib.Path | None = None, memory_budget: str = "16GB") -> RunResults:
    """Every model at every users step; then a perf_analyzer cross-check of the models in `perf_analyzer` (a
    collection of names, or True for all). Results so far are written after each step, so Ctrl-C keeps them.
    `models == ["all"]`: every READY model that has a build record (the users replay its test split).
    With `footprint` (`python -m loadtests run` turns it on), first each model's load time and memory per
    instance (builder/serving/footprint.py; reloads the model once), kept under "footprint" and in its build record;
    `memory_budget` is kept for the report."""
    everything = models == ["all"]
    models = check_target(target, models)
    models = [m for m in models if has_record(m, artifacts, skip=everything, progress=progress)]
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    results = RunResults(
        machine=machine(), settings=dataclasses.asdict(settings) | {"mode": settings.mode},
        target=dataclasses.asdict(target), started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        load_generator=generator_description(settings),
        models=models, memory_budget=memory_budget, records=record_snapshot(artifacts, models),
        refused=refused_snapshot(artifacts, models))
    total = len(models) * len(settings.users) * settings.repeats
    try:
        if footprint:
            results.footprint = measure_models(target, repository, models, artifacts, progress=progress)
            for model, measured in results.footprint.items():
                write_footprint(artifacts, model, measured)
            results.server_rss_bytes = server_rss(models)
            write_results(results, out)
        chosen = {}  # model -> the settings its steps run with (auto workers: chosen once per model)
        for repeat, model in ((r, m) for r in range(1, settings.repeats + 1) for m in models):
            if model not in chosen:
                chosen[model] = settings
                if settings.auto_workers:
                    workers, probe = choose_workers(target, model, settings, artifacts, raw, progress)
                    chosen[model] = dataclasses.replace(settings, workers=workers)
                    results.auto_workers[model] = probe
            for users in settings.users:
                progress(f"[{len(results.steps) + 1}/{total}] {model}: {users} user(s), {settings.mode} loop, "
                         f"{settings.protocol}, {settings.duration_s:g} s"
                         + (f", repeat {repeat}/{settings.repeats}" if settings.repeats > 1 else "") + " ...")
                step = run_step(target, model, users, chosen[model], artifacts, raw,
                                label=f"_r{repeat}" if settings.repeats > 1 else "")
                step["workers"] = chosen[model].workers
                if settings.repeats > 1:
                    step["repeat"] = repeat
                results.steps.append(step)
                write_results(results, out)
                if step["requests"] == 0:
                    progress(f"    no request was sent: {step['errors'][0]['message'] if step['errors'] else '?'}")
                progress(step_line(step))
            if repeat == settings.repeats and (perf_analyzer is True or model in perf_analyzer):
                results.perf_analyzer[model] = cross_check(target, model, settings, artifacts, raw, progress)
                write_results(results, out)
        results.complete = True
    finally:
        results.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_results(results, out)
    return results


def generator_description(settings: LoadSettings) -> str:
    """How Locust ran, for the report's context."""
    return ("Locust workers chosen per model by a probe step (auto_workers)" if settings.auto_workers
            else f"{settings.workers} Locust worker process(es) and a master"
            if settings.workers else "one Locust process") + " on this machine, beside the server"


def step_line(step: dict) -> str:
    """The progress line of a finished step."""
    return (f"    {step['requests_per_s']:8.1f} req/s  p50 {fmt(step['p50_ms'])}  p99 {fmt(step['p99_ms'])} ms"
            f"  failures {step['failures']}"
            + (f"  batch {step['server']['realised_batch']}" if step["server"] else "")
            + (f"  generator CPU {step['generator']['max_process_cpu']:.2f}"
               f"/{step['generator']['max_process_demand']:.2f} core (used/wanted)"
               + (" (GENERATOR-BOUND)" if step["generator_bound"] else "") if step["generator"] else ""))


# what the report, the plan and the regression gate read from a build record, copied into results.json so a run
# can be compared with another without the artifacts it was built from
RECORD_KEYS = ("source", "variant", "triton_model", "accuracy", "accuracy_drop_points", "accuracy_drop_se_points",
               "eval_examples", "agreement_with_fp32", "params", "macs", "onnx_bytes", "latency_p50_ms",
               "speedup_vs_fp32", "serving", "text_endpoint", "built_at")


def record_snapshot(artifacts: pathlib.Path, models: list[str]) -> dict[str, dict]:
    records = read_records(artifacts)
    return {m: {k: records[m][k] for k in RECORD_KEYS if k in records[m]} for m in models if m in records}


def refused_snapshot(artifacts: pathlib.Path, models: list[str]) -> dict[str, dict]:
    """The record facts of the variants the build refused (not served) of the same source models as `models`, so
    the report lists them with their reason without the artifacts. Kept apart from `records`: the regression gate
    compares only what was served."""
    records = read_records(artifacts)
    sources = {records[m]["source"] for m in models if m in records}
    return {m: {k: e[k] for k in (*RECORD_KEYS, "gates_failed") if k in e} for m, e in records.items()
            if m not in models and e.get("source") in sources and e.get("gates_failed") and not e.get("version_dir")}


def server_rss(models: list[str]) -> int | None:
    """Resident memory of the tritonserver process serving `models` on this machine (found as the parent named
    in its Python-backend stubs' arguments), with every model of the run loaded; None when it runs elsewhere.
    The capacity plan adds it to each replica's memory: the footprint counts only the instances' stubs."""
    for model in models:
        for stub in find_stubs(model):
            if stub.server_pid:
                try:
                    return process_memory(stub.server_pid)["rss"]
                except FootprintError:
                    return None
    return None


def fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


CROSS_CHECK_TOKENS = 32  # text requests in the cross-check: one shape, so both tools let Triton batch alike


def cross_check(target: Target, model: str, settings: LoadSettings, artifacts: pathlib.Path, raw: pathlib.Path,
                progress) -> dict:
    """Locust and perf_analyzer, one after the other, on the same server, model, concurrency (the highest users
    step) and requests. Text requests are cut to one length for both: perf_analyzer's concurrent contexts walk
    its data in step, so with mixed lengths it would meet batchable same-shape requests far more often than
    Locust's independent users, and the comparison would measure the data order, not the load generators."""
    concurrency = max(settings.users)
    if settings.mode == "open":
        return {"skipped": "perf_analyzer's concurrency mode is closed loop; this run was open loop"}
    if settings.batch_size != 1:
        return {"skipped": "the cross-check sends one example per request; this run used --batch-size "
                           f"{settings.batch_size}"}
    try:
        binary = ensure_perf_analyzer()
        folder, _ = find_record(artifacts, model)
        text = (folder / "tokenizer.json").is_file()
        same = dataclasses.replace(settings, tokens=CROSS_CHECK_TOKENS if text else 0)
        progress(f"    cross-check at concurrency {concurrency}" + (f", {CROSS_CHECK_TOKENS}-token texts" if text else "")
                 + ": Locust ...")
        locust = run_step(target, model, concurrency, same, artifacts, raw, label="_crosscheck")
        data = write_input_data(request_batches(folder, settings.split, 1, tokens=same.tokens),
                                raw / f"{model}_perf_analyzer_input.json")
        progress("    ... perf_analyzer ...")
        before = scrape_model(target, model)
        result = run_perf_analyzer(target.url(settings.protocol), model, concurrency,
                                   seconds=max(settings.duration_s / 3, 1.0), input_data=data, binary=binary)
        after = scrape_model(target, model)
    except (BuilderError, ClientError) as e:  # PerfAnalyzerUnavailable included: the report says why
        progress(f"    perf_analyzer cross-check skipped: {e}")
        return {"skipped": str(e)}
    result["server"] = metrics.step_figures(before, after) if before and after else None
    ratio = locust["throughput"] / result["throughput"] if result["throughput"] else None
    progress(f"    Locust {locust['throughput']:.1f}/s vs perf_analyzer {result['throughput']:.1f}/s"
             + (f" (ratio {ratio:.2f})" if ratio else ""))
    return {"concurrency": concurrency, "tokens": same.tokens, "locust": locust, "perf_analyzer": result,
            "ratio": round(ratio, 3) if ratio else None}
