"""Soak: mixed traffic to several models for a long time at a steady share of the measured maximum, watching for
failures and for memory that grows.

  python -m loadtests soak --models digits_fp32,minilm_fp32 --duration 10m [--load 0.8]

1. The embedded server is started on the repository (loopback, admin APIs locked, crashed stubs reloaded).
2. Maximum: a closed-loop step of `probe_s` with `concurrency` requests in flight, every model in turn (round
   robin), over gRPC: completed requests per second of the whole mix.
3. Soak: open loop at `load` x that maximum, split evenly over the models, each model's requests sent on a fixed
   schedule (whether or not earlier ones have returned, so a slow server shows as latency, not as fewer
   requests). At most `max_in_flight` requests wait at once; a request the schedule calls for beyond that is
   not sent and counted as `not_sent` (the generator, not the server, is then the limit).
4. Every `sample_s`: resident memory (VmRSS) of the tritonserver process and of each of its Python-backend stub
   processes (builder/serving/stubs.py).

Results: requests, failures (with their messages), not_sent, p50/p99 per model; memory growth after warm-up =
(last sample - first sample after `warmup_fraction` of the run) / that first sample, for server + stubs
together and each part; crashed backends the server reloaded. Targets: 0 failures, growth within 5 %. Requests
are the models' real test examples (builder/core/artifacts.py). The load generator runs in this process, beside the
server, on the same cores.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import pathlib
import time

import numpy as np

from builder.core.artifacts import find_record, request_batches
from builder.core.errors import BuilderError, unknown_name
from builder.core.files import atomic_write
from builder.core.machine import cpu_isa
from builder.serving.repository import list_models
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.stubs import all_stubs, memory
from client import AsyncTritonClient, ClientError, TritonClient

from .run import machine

GROWTH_TARGET_PCT = 5.0


class SoakError(BuilderError):
    """A soak could not run: unknown model, no build record, no request completed while probing."""


@dataclasses.dataclass(frozen=True)
class SoakSettings:
    duration_s: float = 600.0
    load: float = 0.8  # share of the measured maximum throughput
    probe_s: float = 10.0  # the closed-loop step that measures the maximum
    concurrency: int = 8  # requests in flight during that step
    sample_s: float = 5.0  # memory sampling interval
    warmup_fraction: float = 0.1  # memory growth is measured after this share of the run
    max_in_flight: int = 256


def memory_sample(server_pid: int, started: float) -> dict:
    """Resident memory now (bytes) of the server process and of each of its stubs."""

    stubs = {}
    for stub in all_stubs(server_pid):
        try:
            stubs[stub.instance] = memory(stub.pid)["rss"]
        except OSError:
            continue  # ended between the listing and the read (a reload)
    server = memory(server_pid)["rss"]
    return {"t_s": round(time.monotonic() - started, 2), "server_rss_bytes": server,
            "stubs_rss_bytes": sum(stubs.values()), "total_rss_bytes": server + sum(stubs.values()),
            "stubs": stubs}


def memory_growth(samples: list[dict], warmup_s: float) -> dict:
    """Growth of each memory figure from the first sample at or after `warmup_s` to the last sample, in % of the
    former; None without two such samples."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        return {"baseline_t_s": None, "server_pct": None, "stubs_pct": None, "total_pct": None}
    first, last = after[0], after[-1]

    def pct(key: str) -> float | None:
        return round((last[key] - first[key]) / first[key] * 100, 2) if first[key] else None

    peak = max(s["total_rss_bytes"] for s in after)
    return {"baseline_t_s": first["t_s"], "last_t_s": last["t_s"], "server_pct": pct("server_rss_bytes"),
            "stubs_pct": pct("stubs_rss_bytes"), "total_pct": pct("total_rss_bytes"),
            "total_peak_pct": round((peak - first["total_rss_bytes"]) / first["total_rss_bytes"] * 100, 2),
            "baseline_total_rss_bytes": first["total_rss_bytes"], "last_total_rss_bytes": last["total_rss_bytes"]}


class Traffic:
    """Per-model counts and latencies of one phase."""

    def __init__(self, models: list[str]):
        self.latencies = {m: [] for m in models}
        self.failures = {m: collections.Counter() for m in models}
        self.not_sent = {m: 0 for m in models}
        self.in_flight = 0

    async def send(self, client, model: str, request: dict, outputs: list[str]) -> None:

        self.in_flight += 1
        started = time.perf_counter()
        try:
            await client.infer(model, request, outputs=outputs)
            self.latencies[model].append(time.perf_counter() - started)
        except ClientError as e:
            self.failures[model][str(e).splitlines()[0][:200]] += 1
        finally:
            self.in_flight -= 1

    def completed(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(sum(c.values()) for c in self.failures.values())

    def figures(self, model: str, seconds: float) -> dict:
        ms = np.array(self.latencies[model]) * 1000
        failed = sum(self.failures[model].values())
        return {"requests": len(ms) + failed, "failures": failed, "not_sent": self.not_sent[model],
                "requests_per_s": round((len(ms) + failed) / seconds, 1),
                "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
                "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
                "errors": [{"message": m, "count": c} for m, c in self.failures[model].most_common()]}


async def probe(url: str, requests: dict[str, list[dict]], outputs: dict[str, list[str]], seconds: float,
                concurrency: int) -> tuple[float, Traffic]:
    """Closed loop: `concurrency` workers, each sending the models' requests in turn; completed requests/s."""

    models = list(requests)
    traffic = Traffic(models)
    async with AsyncTritonClient(url) as client:
        for model in models:  # warm-up: one request each
            await traffic.send(client, model, requests[model][0], outputs[model])
        traffic = Traffic(models)
        deadline = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                model = models[i % len(models)]
                await traffic.send(client, model, requests[model][i % len(requests[model])], outputs[model])
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return traffic.completed() / elapsed, traffic


async def soak(url: str, server_pid: int, requests: dict[str, list[dict]], outputs: dict[str, list[str]],
               rate_per_model: float, settings: SoakSettings, progress) -> tuple[Traffic, list[dict], float]:
    """Open loop at `rate_per_model` requests/s to each model for `settings.duration_s`, sampling memory."""

    models = list(requests)
    traffic = Traffic(models)
    samples: list[dict] = []
    tasks: set = set()
    started = time.monotonic()
    end = started + settings.duration_s
    report_every = min(30.0, max(settings.duration_s / 4, settings.sample_s))
    async with AsyncTritonClient(url) as client:

        async def schedule(model: str) -> None:
            n = 0
            while True:
                due = started + n / rate_per_model
                if due >= end:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if traffic.in_flight >= settings.max_in_flight:
                    traffic.not_sent[model] += 1
                else:
                    task = asyncio.ensure_future(traffic.send(client, model, requests[model][n % len(requests[model])],
                                                              outputs[model]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                n += 1

        async def sample() -> None:
            last_report = started
            while time.monotonic() < end:
                samples.append(memory_sample(server_pid, started))
                now = time.monotonic()
                if now - last_report >= report_every:
                    last_report = now
                    failed = sum(sum(c.values()) for c in traffic.failures.values())
                    progress(f"    [{now - started:5.0f}/{settings.duration_s:g} s] {traffic.completed():,} requests, "
                             f"{failed} failures, {sum(traffic.not_sent.values())} not sent, server + stubs RSS "
                             f"{samples[-1]['total_rss_bytes'] / 1e6:,.0f} MB")
                await asyncio.sleep(min(settings.sample_s, max(0.0, end - time.monotonic())))
            samples.append(memory_sample(server_pid, started))

        await asyncio.gather(sample(), *(schedule(m) for m in models))
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    return traffic, samples, time.monotonic() - started


def soak_requests(models: list[str], artifacts: pathlib.Path) -> dict[str, list[dict]]:
    """Up to 256 real single-example requests per model from its build's test split."""
    found = {}
    for model in models:
        try:
            folder, _ = find_record(artifacts, model)
            found[model] = request_batches(folder, "test", batch_size=1, count=256)
        except ClientError as e:
            raise SoakError(f"no requests for {model}: {e}", hint=e.hint) from e
    return found


def run_soak(models: list[str], repository: pathlib.Path, artifacts: pathlib.Path, settings: SoakSettings,
             out: pathlib.Path, progress=print) -> dict:
    """Start the embedded server on `repository`, measure the maximum, soak (see the module docstring); the
    results go to `out/soak.json` (also written when interrupted, marked incomplete) and are returned."""


    known = list_models(repository)
    for model in models:
        if model not in known:
            raise unknown_name("model", model, known, SoakError, hint="build it first with `builder build`")
    if len(models) < 1 or not 0 < settings.load <= 1:
        raise SoakError("a soak needs at least one model and --load in (0, 1]")
    requests = soak_requests(models, artifacts)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine() | {"isa": isa_flags()}, "settings": dataclasses.asdict(settings), "models": models,
               "protocol": "grpc", "load_generator": "asyncio gRPC client in this process, beside the server",
               "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": False}
    progress(f"starting the embedded Triton server on {repository} ...")
    with EmbeddedServer(repository, free_port(), free_port(), free_port(),
                        on_event=lambda line: progress(f"server: {line}")) as server:
        try:
            with TritonClient(server.grpc_url) as client:
                outputs = {m: client.output_names(m) for m in models}
            progress(f"maximum: closed loop, {settings.concurrency} in flight, {settings.probe_s:g} s, "
                     f"{', '.join(models)} in turn ...")
            max_rps, probed = asyncio.run(probe(server.grpc_url, requests, outputs, settings.probe_s,
                                                settings.concurrency))
            probe_failures = sum(sum(c.values()) for c in probed.failures.values())
            if not max_rps or probe_failures == probed.completed():
                raise SoakError("no request succeeded while measuring the maximum",
                                hint=f"see {server.log_path}; errors: {dict(sum(probed.failures.values(), collections.Counter()))}")
            rate = settings.load * max_rps / len(models)
            results["maximum"] = {"requests_per_s": round(max_rps, 1), "failures": probe_failures}
            results["rate_per_model"] = round(rate, 2)
            progress(f"    maximum {max_rps:,.0f} req/s; soaking at {settings.load:.0%}: {rate:,.1f} req/s to each "
                     f"of {len(models)} model(s) for {settings.duration_s:g} s ...")
            traffic, samples, elapsed = asyncio.run(soak(server.grpc_url, server.process.pid, requests, outputs,
                                                         rate, settings, progress))
            results["elapsed_s"] = round(elapsed, 1)
            results["per_model"] = {m: traffic.figures(m, elapsed) | {"target_per_s": round(rate, 1)} for m in models}
            results["failures"] = sum(r["failures"] for r in results["per_model"].values())
            results["not_sent"] = sum(r["not_sent"] for r in results["per_model"].values())
            results["memory"] = memory_growth(samples, settings.warmup_fraction * settings.duration_s)
            results["samples"] = samples
            results["complete"] = True
        finally:
            results["recoveries"] = [dataclasses.asdict(r) for r in server.recoveries]
            results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            atomic_write(out / "soak.json", json.dumps(results, indent=2))
    return results


def isa_flags() -> list[str]:
    return sorted({"avx512_vnni", "avx512f", "avx2"} & set(cpu_isa()["flags"]))


def verdicts(results: dict) -> list[tuple[str, bool]]:
    """(line, met) for each target: no failed request, memory flat within GROWTH_TARGET_PCT, no crashed backend."""
    growth = results["memory"]["total_pct"]
    not_sent = (f"; {results['not_sent']} scheduled requests not sent: more than "
                f"{results['settings']['max_in_flight']} were waiting (the generator or the machine was the limit)"
                if results["not_sent"] else "")
    return [(f"failures {results['failures']} (target 0){not_sent}", results["failures"] == 0),
            (f"memory growth after warm-up {growth:+.2f} % (server + stubs; target within ±{GROWTH_TARGET_PCT:g} %)"
             if growth is not None else "memory growth: too few samples after warm-up",
             growth is not None and abs(growth) <= GROWTH_TARGET_PCT),
            (f"crashed backends reloaded: {len(results['recoveries'])}", not results["recoveries"])]


def print_soak(results: dict) -> None:
    header = ["model", "target/s", "req/s", "requests", "failures", "not sent", "p50 ms", "p99 ms"]
    body = [[m, f"{r['target_per_s']:.1f}", f"{r['requests_per_s']:.1f}", f"{r['requests']:,}", str(r["failures"]),
             str(r["not_sent"]), f"{r['p50_ms']}", f"{r['p99_ms']}"] for m, r in results["per_model"].items()]
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(header)]
    print()
    for row in [header] + body:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    memory = results["memory"]
    if memory["baseline_t_s"] is not None:
        print(f"\nmemory (VmRSS, server + stubs): {memory['baseline_total_rss_bytes'] / 1e6:,.1f} MB at "
              f"{memory['baseline_t_s']:g} s -> {memory['last_total_rss_bytes'] / 1e6:,.1f} MB at {memory['last_t_s']:g} s "
              f"(server {memory['server_pct']:+.2f} %, stubs {memory['stubs_pct']:+.2f} %, peak "
              f"{memory['total_peak_pct']:+.2f} %)")
    print(f"maximum {results['maximum']['requests_per_s']:,.1f} req/s (closed loop); soak at "
          f"{results['settings']['load']:.0%} for {results['elapsed_s']:g} s; CPU {results['machine']['cpu']} "
          f"({', '.join(results['machine']['isa']) or 'no AVX2'}), {results['machine']['cores']} cores")
    for text, ok in verdicts(results):
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
