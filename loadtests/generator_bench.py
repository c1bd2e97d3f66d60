"""Benchmark: is the load generator the limit? Locust and perf_analyzer on the same model, concurrency and protocol,
interleaved, with the CPU each spends per request and the CPU the server spends per request.

  python -m loadtests bench --generator-only --models minilm_fp32,digits_fp32 --seconds 4 --repeats 2

Per model, protocol (gRPC, HTTP) and round: Locust in one process, Locust with the workers the runner's
`--workers auto` chooses (loadtests/run.py choose_workers), then perf_analyzer. CPU per request:
  - Locust: its processes' CPU over its own window (the step's `generator.cpu_cores`) / its requests per second;
  - perf_analyzer: its process's CPU (resource.getrusage of the finished child) / the requests Triton counted;
  - server: tritonserver and its backend stubs (/proc/<pid>/stat, the server and its children) / requests counted.
When server and generator share C cores and both run flat out, throughput <= C / (server + generator CPU per
request), so the best Locust/perf_analyzer ratio these costs allow is
  (server_pa + perf_analyzer) / (server_locust + Locust)
which `bound` reports next to the measured ratio. Timings on a shared machine are noisy: read ratios within a
round, and the load average printed beside them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import resource
import time

import numpy as np

from builder.core.artifacts import find_record, request_batches
from builder.serving.server import EmbeddedServer, free_port
from client import TritonClient

from .perf_analyzer import ensure_perf_analyzer, run_perf_analyzer, write_input_data
from .run import LoadSettings, Target, choose_workers, run_step

CONCURRENCY = 16
PROTOCOLS = ("grpc", "http")
TEXT_TOKENS = 32  # text requests cut to one length for both tools (see loadtests/run.py cross_check)


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its direct children (the server and its stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def finished_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def answered(client: TritonClient, model: str) -> int:
    return int(client.statistics(model)["model_stats"][0]["inference_stats"]["success"]["count"])


def bound(locust: dict, pa: dict) -> float | None:
    """The Locust/perf_analyzer throughput ratio that the CPU costs per request allow on shared cores."""
    need_locust = locust["server_us_per_request"] + locust["generator_us_per_request"]
    need_pa = pa["server_us_per_request"] + pa["generator_us_per_request"]
    return round(need_pa / need_locust, 3) if need_locust > 0 else None


def run_generator_bench(models: list[str], repository: pathlib.Path, artifacts: pathlib.Path, seconds: float,
                        repeats: int, raw: pathlib.Path, progress=print) -> dict:
    """{"machine"..., "models": {model: {protocol: {"rounds": [...], "median_ratio": {...}}}}}; see the module doc."""
    from .run import machine

    raw.mkdir(parents=True, exist_ok=True)
    binary = ensure_perf_analyzer()
    results = {"machine": machine(), "concurrency": CONCURRENCY, "seconds": seconds, "repeats": repeats,
               "models": {}}
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server, \
            TritonClient(server.http_url) as client:
        target = Target(server.http_url, server.grpc_url, server.metrics_url)
        for model in models:
            folder, _ = find_record(artifacts, model)
            tokens = TEXT_TOKENS if (folder / "tokenizer.json").is_file() else 0
            data = write_input_data(request_batches(folder, "test", 1, tokens=tokens), raw / f"{model}_input.json")
            results["models"][model] = {}
            for protocol in PROTOCOLS:
                settings = LoadSettings(users=(CONCURRENCY,), duration_s=seconds, protocol=protocol, tokens=tokens)
                workers, probe = choose_workers(target, model, settings, artifacts, raw, progress)
                rounds = []
                for k in range(repeats):
                    row = {"load_average": round(os.getloadavg()[0], 2)}
                    for name, count in (("locust_1_process", 0), ("locust_auto", workers)):
                        if name == "locust_auto" and workers == 0:
                            continue
                        row[name] = measure(client, server.process.pid, model, lambda: run_step(
                            target, model, CONCURRENCY, dataclasses.replace(settings, workers=count), artifacts,
                            raw, label=f"_gen_{protocol}_{name}{k}"))
                        row[name]["workers"] = count
                    row["perf_analyzer"] = measure(client, server.process.pid, model, lambda: run_perf_analyzer(
                        target.url(protocol), model, CONCURRENCY, seconds=seconds / 3, input_data=data,
                        binary=binary))
                    for name in ("locust_1_process", "locust_auto"):
                        if name in row:
                            row[name]["ratio"] = round(row[name]["throughput"] / row["perf_analyzer"]["throughput"], 3)
                            row[name]["bound"] = bound(row[name], row["perf_analyzer"])
                    rounds.append(row)
                    progress(f"[{model} {protocol}] round {k + 1}: " + "; ".join(
                        f"{n} {v['throughput']:.0f}/s" + (f" (x{v['ratio']}, bound {v['bound']})" if "ratio" in v else "")
                        for n, v in row.items() if isinstance(v, dict)) + f"; load average {row['load_average']}")
                medians = {n: round(float(np.median([r[n]["ratio"] for r in rounds])), 3)
                           for n in ("locust_1_process", "locust_auto") if all(n in r for r in rounds)}
                results["models"][model][protocol] = {"auto_workers": probe, "rounds": rounds, "median_ratio": medians}
    return results


def measure(client: TritonClient, server_pid: int, model: str, run) -> dict:
    """Run one load (`run()` returns a Locust step or a perf_analyzer result) and its CPU per request."""
    server0, children0, answered0, started = process_tree_cpu(server_pid), finished_children_cpu(), \
        answered(client, model), time.time()
    result = run()
    count = max(answered(client, model) - answered0, 1)
    facts = {"throughput": result["throughput"], "wall_s": round(time.time() - started, 2),
             "server_us_per_request": round((process_tree_cpu(server_pid) - server0) / count * 1e6, 1)}
    if "generator" in result:  # a Locust step: its processes' CPU over its own window
        load = result["generator"] or {}
        facts["generator_us_per_request"] = round(load.get("cpu_cores", 0) / max(result["requests_per_s"], 1e-9) * 1e6, 1)
        facts["generator_bound"] = result["generator_bound"]
    else:
        facts["generator_us_per_request"] = round((finished_children_cpu() - children0) / count * 1e6, 1)
    return facts


def print_table(results: dict) -> None:
    machine = results["machine"]
    print(f"\nmachine: {machine['cpu']} ({machine.get('isa', '?')}), {machine['cores']} cores; concurrency "
          f"{results['concurrency']}, {results['seconds']} s per Locust step")
    print(f"{'model':14} {'proto':5} {'round':>5} {'tool':17} {'req/s':>8} {'gen us/req':>10} {'server us/req':>13} "
          f"{'ratio':>6} {'bound':>6} {'load':>5}")
    for model, protocols in results["models"].items():
        for protocol, entry in protocols.items():
            for k, row in enumerate(entry["rounds"], 1):
                for name, v in row.items():
                    if isinstance(v, dict):
                        print(f"{model:14} {protocol:5} {k:5} {name:17} {v['throughput']:8.0f} "
                              f"{v['generator_us_per_request']:10.0f} {v['server_us_per_request']:13.0f} "
                              f"{v.get('ratio', ''):>6} {v.get('bound', ''):>6} {row['load_average']:5.1f}")
            print(f"{'':14} {protocol:5} median Locust/perf_analyzer: {entry['median_ratio']}; auto workers: "
                  f"{entry['auto_workers']['workers']}")
