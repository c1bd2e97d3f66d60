"""Benchmark: in-process ONNX Runtime vs the same model served by the embedded Triton, and where the time goes.

For each model:
  - in-process ONNX Runtime: p50/p99 at batch 1 (MiniLM at 32 tokens) and throughput at batch 1, 4, 16, 32;
  - served over HTTP and gRPC with the kit's Python client: p50/p99 at concurrency 1 with Triton's stage
    breakdown, and throughput at concurrency 16 with dynamic batching;
  - served with perf_analyzer (C++, little client overhead) as the client: p50 at concurrency 1 and the
    server-added time from Triton's own statistics (request duration minus compute_infer, mean per request), and
    throughput at concurrency 16;
  - Locust against perf_analyzer at concurrency 16, interleaved `repeats` times (is the load generator the limit?);
  - text models: the test split's natural mix of lengths, padded to the model's length buckets, closed loop at
    1, 4 and 16 Locust users, next to in-process ONNX Runtime on the same texts, buckets and thread count;
  - ONNX Runtime thread spinning in the embedded backend (KIT_ORT_ALLOW_SPINNING): the perf_analyzer points with
    spinning off (the default) and on, on servers started for each, interleaved;
  - the dynamic-batching queue delay the builder's default rests on (0 vs 500 us), by reloading the model.
Timings on a shared machine are noisy: read the ratios within one run, and the spread over repeats. Speed is
reported here, never asserted in tests.

  python -m loadtests bench [--models minilm_fp32,digits_fp32] [--seconds 5] [--repeats 2] [--out reports/bench.json]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import tempfile
import time

import numpy as np

from builder.core.artifacts import find_record, length_buckets, read_split, request_batches
from builder.core.evaluate import onnx_session
from builder.core.names import source_of
from builder.serving.repository import latest_model_file
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.tritonconfig import parse_text
from client import TritonClient
from client.triton import make_inputs

from .perf_analyzer import (PerfAnalyzerError, PerfAnalyzerUnavailable, ensure_perf_analyzer, run_perf_analyzer,
                            write_input_data)
from .run import LoadSettings, LoadTestError, Target, machine, run_step

SEQUENCE_TOKENS = 32
CONCURRENCY = 16
IN_PROCESS_BATCHES = (1, 4, 16, 32)
QUEUE_DELAYS_US = (0, 500)
MIXED_USERS = (1, 4, 16)
SPINNING = ("0", "1")  # KIT_ORT_ALLOW_SPINNING: off (the embedded backend's default), on (ONNX Runtime's default)


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

        from tritonclient.utils import InferenceServerException

        client = module.InferenceServerClient(url.split("://")[1])
        names = [o["name"] for o in (await client.get_model_metadata(model, **({"as_json": True} if protocol == "grpc" else {})))["outputs"]]
        outputs = [module.InferRequestedOutput(n) for n in names]
        prepared = [make_inputs(module, r) for r in requests]
        done, shed, latencies = 0, 0, []
        stop_at = time.perf_counter() + seconds

        async def infer(i: int) -> bool:
            """One request; False when the queue policy shed it (its timeout expired in Triton's queue)."""
            try:
                await client.infer(model, prepared[i % len(prepared)], outputs=outputs)
                return True
            except InferenceServerException as e:
                if "timeout expired" not in str(e).lower():
                    raise
                return False

        async def user(k: int):
            nonlocal done, shed
            i = k
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                if await infer(i):
                    latencies.append(time.perf_counter() - start)
                    done += 1
                else:
                    shed += 1
                i += concurrency

        try:
            for k in range(concurrency):  # warm-up round
                await infer(k)
            started = time.perf_counter()
            await asyncio.gather(*(user(k) for k in range(concurrency)))
            elapsed = time.perf_counter() - started
        finally:
            await client.close()
        # shed: refused by the build's queue policy past capacity (a served figure, not a failure of the bench)
        return {"throughput": round(done / elapsed, 1), "shed": shed, **percentiles(latencies)}

    return asyncio.run(run())


def execution_stats(url: str, model: str) -> tuple[int, int]:
    with TritonClient(url) as client:
        stats = client.statistics(model)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def without_queue_policy(server, model: str) -> dict:
    """Reload `model` in `server` without the dynamic batcher's default queue policy; its config (JSON) now. The
    bench measures capacity, so nothing is shed: past it the queue policy the build wrote refuses requests, which
    `loadtests overload` measures (and perf_analyzer stops at the first refusal)."""
    with TritonClient(server.http_url, admin_key=server.admin_key) as client:
        config = json.loads(json.dumps(client.config(model)))
        config.get("dynamic_batching", {}).pop("default_queue_policy", None)
        client.load_model(model, config=config)
    return config


def with_queue_delay(url: str, model: str, config: dict, delay_us: int, admin_key: str | None = None) -> None:
    """Reload `model` in the running server (explicit model control) with another max queue delay."""

    override = json.loads(json.dumps(config))
    override.setdefault("dynamic_batching", {})["max_queue_delay_microseconds"] = delay_us
    with TritonClient(url, admin_key=admin_key) as client:
        client.load_model(model, config=override)


def perf_analyzer_points(url: str, model: str, data: pathlib.Path, seconds: float, binary) -> dict:
    """perf_analyzer as the client: concurrency 1 (client p50/p99 and Triton's per-request stages, whose request
    minus compute_infer is what the server adds around the backend) and concurrency CONCURRENCY (throughput)."""
    with TritonClient(url) as client:
        before = server_breakdown(client, model)
        c1 = run_perf_analyzer(url, model, 1, seconds=seconds / 3, input_data=data, binary=binary)
        c1["server"] = server_breakdown(client, model, before)
    c1["server"]["server_added_ms"] = round(c1["server"]["request_ms"] - c1["server"]["compute_infer_ms"], 3)
    many = run_perf_analyzer(url, model, CONCURRENCY, seconds=seconds / 3, input_data=data, binary=binary)
    return {"latency_c1": {k: c1[k] for k in ("p50_ms", "p99_ms", "server")},
            f"c{CONCURRENCY}": {"throughput": many["throughput"], "p50_ms": many["p50_ms"], "p99_ms": many["p99_ms"]},
            "commands": [c1["command"], many["command"]]}


def locust_vs_perf_analyzer(target, model: str, artifacts: pathlib.Path, raw: pathlib.Path, data: pathlib.Path,
                            tokens: int, seconds: float, repeats: int, binary, progress) -> dict:
    """Locust (gRPC users) and perf_analyzer (gRPC) at CONCURRENCY on the same requests, one after the other,
    `repeats` times: the ratios, their median, and Locust's own CPU per step."""
    settings = LoadSettings(users=(CONCURRENCY,), duration_s=seconds, protocol="grpc", tokens=tokens)
    rounds = []
    for k in range(repeats):
        locust = run_step(target, model, CONCURRENCY, settings, artifacts, raw, label=f"_bench{k}")
        pa = run_perf_analyzer(target.grpc_url, model, CONCURRENCY, seconds=seconds / 3, input_data=data,
                               binary=binary)
        rounds.append({"locust": locust["throughput"], "perf_analyzer": pa["throughput"],
                       "ratio": round(locust["throughput"] / pa["throughput"], 3) if pa["throughput"] else None,
                       "generator": locust["generator"], "generator_bound": locust["generator_bound"],
                       "locust_realised_batch": (locust["server"] or {}).get("realised_batch")})
        progress(f"    round {k + 1}: Locust {locust['throughput']:.0f}/s, perf_analyzer {pa['throughput']:.0f}/s")
    ratios = [r["ratio"] for r in rounds if r["ratio"]]
    return {"concurrency": CONCURRENCY, "tokens": tokens, "rounds": rounds,
            "median_ratio": round(float(np.median(ratios)), 3) if ratios else None}


def mixed_lengths(target, model: str, artifacts: pathlib.Path, raw: pathlib.Path, onnx_file: pathlib.Path,
                  threads: int, seconds: float, progress) -> dict:
    """Test-split texts in their natural mix of lengths, padded to the model's buckets: Locust closed loop at
    MIXED_USERS (throughput, p99, requests per execution), and in-process ONNX Runtime on the same requests with
    the same threads, grouped by bucket into batches of up to CONCURRENCY (what the server could do at best)."""
    folder, _ = find_record(artifacts, model)
    requests = request_batches(folder)
    by_bucket: dict[int, list[dict]] = {}
    for r in requests:
        by_bucket.setdefault(r["input_ids"].shape[1], []).append(r)
    session = onnx_session(onnx_file, threads=threads)
    names = [o.name for o in session.get_outputs()]
    feeds = [{k: np.concatenate([r[k] for r in group[i:i + CONCURRENCY]]) for k in group[0]}
             for group in by_bucket.values() for i in range(0, len(group), CONCURRENCY)]
    for feed in feeds[:3]:
        session.run(names, feed)  # warm-up
    examples, elapsed, deadline = 0, 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for feed in feeds:
            start = time.perf_counter()
            session.run(names, feed)
            elapsed += time.perf_counter() - start
            examples += len(feed["input_ids"])
    result = {"buckets": list(length_buckets(folder)), "requests": len(requests),
              "requests_by_bucket": {b: len(g) for b, g in sorted(by_bucket.items())},
              "in_process_throughput": round(examples / elapsed, 1), "users": {}}
    for users in MIXED_USERS:
        progress(f"    {users} user(s), mixed lengths padded to buckets ...")
        step = run_step(target, model, users, LoadSettings(users=(users,), duration_s=seconds), artifacts, raw,
                        label="_bench_mixed")
        result["users"][users] = {"throughput": step["throughput"], "p50_ms": step["p50_ms"],
                                  "p99_ms": step["p99_ms"], "failures": step["failures"],
                                  "realised_batch": (step["server"] or {}).get("realised_batch"),
                                  "generator_bound": step["generator_bound"]}
    best = max(u["throughput"] for u in result["users"].values())
    result["served_vs_in_process"] = round(best / result["in_process_throughput"], 3)
    return result


@contextlib.contextmanager
def server_with_spinning(repository: pathlib.Path, spinning: str):
    """The embedded server with KIT_ORT_ALLOW_SPINNING=`spinning` in its (and its stubs') environment."""
    saved = os.environ.get("KIT_ORT_ALLOW_SPINNING")
    os.environ["KIT_ORT_ALLOW_SPINNING"] = spinning
    try:
        with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
            yield server
    finally:
        if saved is None:
            os.environ.pop("KIT_ORT_ALLOW_SPINNING")
        else:
            os.environ["KIT_ORT_ALLOW_SPINNING"] = saved


def perf_analyzer_data(model: str, artifacts: pathlib.Path, requests: list[dict], raw: pathlib.Path) -> pathlib.Path:
    return write_input_data(requests, raw / f"{model}_bench_input.json")


def run_bench(models: list[str], repository: pathlib.Path, artifacts: pathlib.Path, seconds: float,
              progress=print, repeats: int = 2, raw: pathlib.Path | None = None) -> dict:
    raw = raw or pathlib.Path(tempfile.mkdtemp(prefix="bench-raw-"))
    raw.mkdir(parents=True, exist_ok=True)
    try:
        binary = ensure_perf_analyzer()
    except PerfAnalyzerUnavailable as e:
        progress(f"perf_analyzer unavailable, its points are left out: {e}")
        binary = None
    results = {"machine": machine(), "seconds_per_point": seconds, "concurrency": CONCURRENCY, "repeats": repeats,
               "sequence_tokens": SEQUENCE_TOKENS, "spinning_default": SPINNING[0], "models": {},
               "queue_policy": "removed for the bench, which measures capacity (loadtests overload: past it)"}
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
        target = Target(server.http_url, server.grpc_url, server.metrics_url)
        for model in models:
            requests = example_requests(model, artifacts)
            if not requests:
                raise LoadTestError(f"{model}: its test split has no text of {SEQUENCE_TOKENS} tokens or more, the "
                                    "length every point is measured at", hint="bench a model with longer texts")
            text = "attention_mask" in requests[0]
            config_text = (repository / model / "config.pbtxt").read_text()
            threads = threads_of(config_text)
            progress(f"[{model}] in-process ONNX Runtime, {threads} intra-op thread(s) ...")
            row = {"threads": threads, "in_process": in_process(latest_model_file(repository, model), threads,
                                                                 requests, seconds)}
            config = without_queue_policy(server, model)
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
            row["queue_delay_us"] = queue_delay_points(server, model, config, requests, seconds, progress)
            if binary is not None:
                data = perf_analyzer_data(model, artifacts, requests, raw)
                progress(f"[{model}] perf_analyzer as the client, concurrency 1 and {CONCURRENCY} ...")
                row["perf_analyzer"] = perf_analyzer_points(server.grpc_url, model, data, seconds, binary)
                progress(f"[{model}] Locust vs perf_analyzer at concurrency {CONCURRENCY}, {repeats} round(s) ...")
                row["locust_vs_perf_analyzer"] = locust_vs_perf_analyzer(
                    target, model, artifacts, raw, data, SEQUENCE_TOKENS if text else 0, seconds, repeats, binary,
                    progress)
            if text:
                progress(f"[{model}] test-split texts, natural mix of lengths, padded to buckets ...")
                row["mixed_lengths"] = mixed_lengths(target, model, artifacts, raw,
                                                     latest_model_file(repository, model), threads, seconds, progress)
            row["checks"] = checks(row)
            results["models"][model] = row
    if binary is not None:
        results["spinning"] = spinning_points(models, repository, artifacts, raw, seconds, repeats, binary, progress)
    return results


def queue_delay_points(server, model: str, config: dict, requests, seconds: float, progress) -> dict:
    """Latency at concurrency 1 and throughput at CONCURRENCY over gRPC at each of QUEUE_DELAYS_US, then the
    model's own delay back."""
    delays = {}
    for delay in QUEUE_DELAYS_US:
        progress(f"[{model}] gRPC with max_queue_delay_microseconds={delay} ...")
        with_queue_delay(server.http_url, model, config, delay, server.admin_key)
        delays[delay] = {"latency_c1": served_latency(server.grpc_url, model, requests, seconds),
                         f"c{CONCURRENCY}": served_throughput(server.grpc_url, model, requests, seconds, CONCURRENCY)}
    with_queue_delay(server.http_url, model, config,
                     config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0), server.admin_key)
    return delays


def spinning_points(models, repository, artifacts, raw, seconds, repeats, binary, progress) -> dict:
    """perf_analyzer points of every model with ONNX Runtime's intra-op spinning off and on, each on its own
    server, interleaved `repeats` times; medians per setting."""
    points = {model: {setting: [] for setting in SPINNING} for model in models}
    for k in range(repeats):
        for setting in SPINNING:
            progress(f"spinning {'on' if setting == '1' else 'off'}, round {k + 1}: starting a server ...")
            with server_with_spinning(repository, setting) as server:
                for model in models:
                    data = raw / f"{model}_bench_input.json"
                    without_queue_policy(server, model)
                    try:
                        points[model][setting].append(perf_analyzer_points(server.grpc_url, model, data, seconds,
                                                                           binary))
                    except PerfAnalyzerError as e:  # one failed point (an unstable window) does not lose the run
                        progress(f"    {model}: point left out: {e}")
    summary = {}
    for model, by_setting in points.items():
        summary[model] = {}
        for setting, runs in by_setting.items():
            if not runs:
                continue
            summary[model]["on" if setting == "1" else "off"] = {
                "p50_c1_ms": round(float(np.median([r["latency_c1"]["p50_ms"] for r in runs])), 3),
                "server_added_c1_ms": round(float(np.median([r["latency_c1"]["server"]["server_added_ms"]
                                                             for r in runs])), 3),
                f"throughput_c{CONCURRENCY}": round(float(np.median([r[f"c{CONCURRENCY}"]["throughput"]
                                                                     for r in runs])), 1),
                "runs": len(runs)}
    return summary


def checks(row: dict) -> dict:
    """The issue's targets, evaluated on this run's numbers (reported, not asserted)."""
    local = row["in_process"]
    out = {}
    for protocol in ("http", "grpc"):
        added = row[protocol]["latency_c1"]["p50_ms"] - local["latency_c1"]["p50_ms"]
        ratio = row[protocol][f"c{CONCURRENCY}"]["throughput"] / local["best_throughput"]
        out[protocol] = {"added_p50_ms": round(added, 3), "p50_within_0.6ms": added <= 0.6,
                         "throughput_ratio": round(ratio, 3), "throughput_at_least_0.8x": ratio >= 0.8}
    if "perf_analyzer" in row:
        added = row["perf_analyzer"]["latency_c1"]["server"]["server_added_ms"]
        out["perf_analyzer"] = {"server_added_c1_ms": added, "server_added_within_1.0ms": added <= 1.0}
    if row.get("locust_vs_perf_analyzer", {}).get("median_ratio") is not None:
        ratio = row["locust_vs_perf_analyzer"]["median_ratio"]
        out["locust"] = {"median_ratio_vs_perf_analyzer": ratio, "at_least_0.85x": ratio >= 0.85}
    if "mixed_lengths" in row:
        mixed = row["mixed_lengths"]
        throughputs = [u["throughput"] for u in mixed["users"].values()]
        top = mixed["users"][max(MIXED_USERS)]
        out["mixed_lengths"] = {"throughput_never_falls": all(b >= a * 0.95 for a, b in zip(throughputs, throughputs[1:])),
                                f"requests_per_execution_u{max(MIXED_USERS)}": top["realised_batch"],
                                "at_least_3_per_execution": (top["realised_batch"] or 0) >= 3,
                                "served_vs_in_process": mixed["served_vs_in_process"],
                                "at_least_0.8x": mixed["served_vs_in_process"] >= 0.8}
    return out


def print_table(results: dict) -> None:
    print(f"\nmachine: {results['machine']['cpu']} ({results['machine'].get('isa', '?')}), "
          f"{results['machine']['cores']} cores; "
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
        if "perf_analyzer" in row:
            pa = row["perf_analyzer"]
            server = pa["latency_c1"]["server"]
            print(f"{'':14} {'perf_anlz':10} {pa['latency_c1']['p50_ms']:8.2f} {pa['latency_c1']['p99_ms']:8.2f} "
                  f"{pa[f'c{CONCURRENCY}']['throughput']:10.1f} {'':6} {'':9}  server adds "
                  f"{server['server_added_ms']:.3f} ms/request = request {server['request_ms']:.3f} - compute_infer "
                  f"{server['compute_infer_ms']:.3f} (queue {server['queue_ms']:.3f}, input "
                  f"{server['compute_input_ms']:.3f}, output {server['compute_output_ms']:.3f})")
        versus = row.get("locust_vs_perf_analyzer")
        if versus:
            print(f"{'':14} Locust / perf_analyzer at concurrency {versus['concurrency']}: "
                  + ", ".join(f"{r['locust']:.0f}/{r['perf_analyzer']:.0f} = {r['ratio']}"
                              + (" (generator-bound)" if r["generator_bound"] else "") for r in versus["rounds"])
                  + f"; median {versus['median_ratio']}")
        mixed = row.get("mixed_lengths")
        if mixed:
            print(f"{'':14} mixed lengths, buckets {mixed['buckets']} ({mixed['requests_by_bucket']} requests): "
                  f"in-process {mixed['in_process_throughput']:.1f}/s; Locust "
                  + ", ".join(f"{u} users {m['throughput']:.1f}/s p99 {m['p99_ms']} ms batch {m['realised_batch']}"
                              for u, m in mixed["users"].items())
                  + f"; served/in-process {mixed['served_vs_in_process']}")
    for model, settings in results.get("spinning", {}).items():
        print(f"{model:14} spinning   " + "; ".join(
            f"{name}: p50 c1 {v['p50_c1_ms']:.2f} ms, server adds {v['server_added_c1_ms']:.3f} ms, "
            f"c{CONCURRENCY} {v[f'throughput_c{CONCURRENCY}']:.1f}/s" for name, v in settings.items()))
