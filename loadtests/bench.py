"""Benchmark: in-process ONNX Runtime vs the same model served by the embedded Triton over HTTP and gRPC.

For each model: p50/p99 latency at concurrency 1 (batch 1; MiniLM at 32 tokens), and throughput at concurrency
16 with dynamic batching, next to the best in-process throughput with the same intra-op thread count (batch 1, 4,
16, 32). It also measures the dynamic-batching queue delay the builder's default rests on (0 vs 500 us), by
reloading the model with a config override. Timings on a shared 2-core machine are noisy: read the ratios within
one run. Speed is reported here, never asserted in tests.

  python -m loadtests bench [--models minilm_fp32,digits_fp32] [--seconds 5] [--out reports/bench.json]
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time

import numpy as np

from builder.core.artifacts import read_split
from builder.core.evaluate import onnx_session
from builder.core.names import source_of
from builder.serving.repository import latest_model_file
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.tritonconfig import parse_text
from client import TritonClient
from client.triton import make_inputs

from .run import machine

SEQUENCE_TOKENS = 32
CONCURRENCY = 16
IN_PROCESS_BATCHES = (1, 4, 16, 32)
QUEUE_DELAYS_US = (0, 500)


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "count": len(ms)}


def timed_loop(call, seconds: float, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def example_requests(model: str, artifacts: pathlib.Path, count: int = 64) -> list[dict]:
    """Real single-example requests: test images for digits, test texts cut to exactly 32 tokens for MiniLM."""

    source = source_of(model)
    split = read_split(artifacts / source / "data" / "test.npz")
    if "attention_mask" in split.inputs:
        long_enough = np.flatnonzero(split.inputs["attention_mask"].sum(axis=1) >= SEQUENCE_TOKENS)
        return [{k: v[i:i + 1, :SEQUENCE_TOKENS] for k, v in split.inputs.items()} for i in long_enough[:count]]
    return [{k: v[i:i + 1] for k, v in split.inputs.items()} for i in range(min(count, len(split)))]


def stack(requests: list[dict], batch: int) -> dict:
    picked = [requests[i % len(requests)] for i in range(batch)]
    return {k: np.concatenate([r[k] for r in picked]) for k in picked[0]}


def threads_of(config_text: str) -> int:
    return int(parse_text(config_text).parameters["intra_op_thread_count"].string_value)


def in_process(onnx_file: pathlib.Path, threads: int, requests: list[dict], seconds: float) -> dict:
    session = onnx_session(onnx_file, threads=threads)
    names = [o.name for o in session.get_outputs()]
    single = requests[0]
    latency = percentiles(timed_loop(lambda: session.run(names, single), seconds))
    throughput = {}
    for batch in IN_PROCESS_BATCHES:
        feed = stack(requests, batch)
        times = timed_loop(lambda: session.run(names, feed), seconds / 2, warmup=3)
        throughput[batch] = round(batch * len(times) / sum(times), 1)
    best = max(throughput, key=throughput.get)
    return {"latency_c1": latency, "throughput_by_batch": throughput,
            "best_throughput": throughput[best], "best_batch": best}


STAGES = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def server_breakdown(client, model: str, before: dict | None = None) -> dict:
    """Triton's cumulative per-stage time; with `before`, the mean ms per request since then."""
    stats = client.statistics(model)["model_stats"][0]["inference_stats"]
    now = {k: (int(stats[k]["count"]), int(stats[k]["ns"])) for k in STAGES}
    if before is None:
        return now
    count = max(now["success"][0] - before["success"][0], 1)
    return {("request" if k == "success" else k) + "_ms": round((now[k][1] - before[k][1]) / count / 1e6, 3)
            for k in STAGES}


def served_latency(url: str, model: str, requests: list[dict], seconds: float) -> dict:
    """Client-side p50/p99 at concurrency 1, and where the server spent the time (Triton's statistics)."""

    with TritonClient(url) as client:
        names = client.output_names(model)
        client.infer(model, requests[0], names)
        before = server_breakdown(client, model)
        result = percentiles(timed_loop(lambda: client.infer(model, requests[0], names), seconds, warmup=0))
        result["server"] = server_breakdown(client, model, before)
        return result


def served_throughput(url: str, model: str, requests: list[dict], seconds: float, concurrency: int) -> dict:
    """`concurrency` requests in flight at all times from one asyncio loop (gRPC aio / HTTP aio)."""
    protocol = url.split("://")[0]

    async def run():
        if protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module

        client = module.InferenceServerClient(url.split("://")[1])
        names = [o["name"] for o in (await client.get_model_metadata(model, **({"as_json": True} if protocol == "grpc" else {})))["outputs"]]
        outputs = [module.InferRequestedOutput(n) for n in names]
        prepared = [make_inputs(module, r) for r in requests]
        done, latencies = 0, []
        stop_at = time.perf_counter() + seconds

        async def user(k: int):
            nonlocal done
            i = k
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                await client.infer(model, prepared[i % len(prepared)], outputs=outputs)
                latencies.append(time.perf_counter() - start)
                done += 1
                i += concurrency

        for k in range(concurrency):  # warm-up round
            await client.infer(model, prepared[k % len(prepared)], outputs=outputs)
        started = time.perf_counter()
        await asyncio.gather(*(user(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
        await client.close()
        return {"throughput": round(done / elapsed, 1), **percentiles(latencies)}

    return asyncio.run(run())


def execution_stats(url: str, model: str) -> tuple[int, int]:
    with TritonClient(url) as client:
        stats = client.statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def with_queue_delay(url: str, model: str, config: dict, delay_us: int, admin_key: str | None = None) -> None:
    """Reload `model` in the running server (explicit model control) with another max queue delay."""

    override = json.loads(json.dumps(config))
    override.setdefault("dynamic_batching", {})["max_queue_delay_microseconds"] = delay_us
    with TritonClient(url, admin_key=admin_key) as client:
        client.load_model(model, config=override)


def run_bench(models: list[str], repository: pathlib.Path, artifacts: pathlib.Path, seconds: float,
              progress=print) -> dict:
    results = {"machine": machine(), "seconds_per_point": seconds, "concurrency": CONCURRENCY,
               "sequence_tokens": SEQUENCE_TOKENS, "models": {}}
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
        for model in models:
            requests = example_requests(model, artifacts)
            config_text = (repository / model / "config.pbtxt").read_text()
            threads = threads_of(config_text)
            progress(f"[{model}] in-process ONNX Runtime, {threads} intra-op thread(s) ...")
            row = {"threads": threads, "in_process": in_process(latest_model_file(repository, model), threads,
                                                                 requests, seconds)}
            with TritonClient(server.http_url) as client:
                config = client.config(model)
            for url in (server.http_url, server.grpc_url):
                protocol = url.split("://")[0]
                progress(f"[{model}] served over {protocol} ...")
                before = execution_stats(server.http_url, model)
                row[protocol] = {"latency_c1": served_latency(url, model, requests, seconds)}
                mid = execution_stats(server.http_url, model)
                row[protocol][f"c{CONCURRENCY}"] = served_throughput(url, model, requests, seconds, CONCURRENCY)
                after = execution_stats(server.http_url, model)
                row[protocol][f"c{CONCURRENCY}"]["realised_batch"] = round(
                    (after[0] - mid[0]) / max(after[1] - mid[1], 1), 2)
                row[protocol]["latency_c1"]["realised_batch"] = round((mid[0] - before[0]) / max(mid[1] - before[1], 1), 2)
            delays = {}
            for delay in QUEUE_DELAYS_US:
                progress(f"[{model}] gRPC with max_queue_delay_microseconds={delay} ...")
                with_queue_delay(server.http_url, model, config, delay, server.admin_key)
                delays[delay] = {"latency_c1": served_latency(server.grpc_url, model, requests, seconds),
                                 f"c{CONCURRENCY}": served_throughput(server.grpc_url, model, requests, seconds,
                                                                      CONCURRENCY)}
            with_queue_delay(server.http_url, model, config,
                             config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0), server.admin_key)
            row["queue_delay_us"] = delays
            row["checks"] = checks(row)
            results["models"][model] = row
    return results


def checks(row: dict) -> dict:
    """The issue's targets, evaluated on this run's numbers (reported, not asserted)."""
    local = row["in_process"]
    out = {}
    for protocol in ("http", "grpc"):
        added = row[protocol]["latency_c1"]["p50_ms"] - local["latency_c1"]["p50_ms"]
        ratio = row[protocol][f"c{CONCURRENCY}"]["throughput"] / local["best_throughput"]
        out[protocol] = {"added_p50_ms": round(added, 3), "p50_within_0.6ms": added <= 0.6,
                         "throughput_ratio": round(ratio, 3), "throughput_at_least_0.8x": ratio >= 0.8}
    return out


def print_table(results: dict) -> None:
    print(f"\nmachine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
          f"{results['seconds_per_point']} s per point")
    print(f"{'model':14} {'path':10} {'p50 c1':>8} {'p99 c1':>8} {'req/s c16':>10} {'batch':>6} {'vs local':>9}")
    for model, row in results["models"].items():
        local = row["in_process"]
        print(f"{model:14} {'in-process':10} {local['latency_c1']['p50_ms']:8.2f} {local['latency_c1']['p99_ms']:8.2f} "
              f"{local['best_throughput']:10.1f} {local['best_batch']:6} {'':>9}")
        for protocol in ("http", "grpc"):
            served = row[protocol]
            c16 = served[f"c{CONCURRENCY}"]
            server = served["latency_c1"]["server"]
            print(f"{'':14} {protocol:10} {served['latency_c1']['p50_ms']:8.2f} {served['latency_c1']['p99_ms']:8.2f} "
                  f"{c16['throughput']:10.1f} {c16['realised_batch']:6} "
                  f"{row['checks'][protocol]['throughput_ratio']:8.2f}x  server: request {server['request_ms']:.2f} "
                  f"= queue {server['queue_ms']:.2f} + infer {server['compute_infer_ms']:.2f} + other")
        for delay, point in row["queue_delay_us"].items():
            print(f"{'':14} {'delay ' + str(delay):10} {point['latency_c1']['p50_ms']:8.2f} "
                  f"{point['latency_c1']['p99_ms']:8.2f} {point[f'c{CONCURRENCY}']['throughput']:10.1f}")
