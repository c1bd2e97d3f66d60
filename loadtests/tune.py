"""Tuning sweep: the Triton settings that matter on CPU, each point load-tested in the running server.

Settings swept: instances x intra-op threads (never more threads than cores in all), max queue delay, max batch
size. Each point reloads the model with a config override (explicit model control; the file on disk is not
touched), runs one closed-loop Locust step, and records its throughput and latency.

Then, for a model whose config bounds its queue (default_queue_policy), the queue policy of the best point: queue
timeouts of 1/4, 1/2 and 3/4 of the latency budget and queue sizes of 1, 2 and 4 x max batch x instances, each
under open-loop Poisson load at `overload_multiple` x the best point's throughput (loadtests/overload.py), scored
by goodput (answers within the SLO per second). A closed loop never overfills a queue, so only overload can tell
policies apart. This phase has its own time budget (`queue_budget_s`).

The best point, with the best policy, can be written back to the repository's config.pbtxt. Whatever happens (the
time budget, Ctrl-C, an error), the model is reloaded from its config on disk at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import pathlib
import time

import numpy as np

from builder.core.files import atomic_write
from builder.serving.repository import replace_config
from builder.serving.tritonconfig import QUEUE_SIZE_FACTOR, QUEUE_TIMEOUT_SHARE, parse_text, queue_policy
from client import ClientError, TritonClient

from .overload import OverloadSettings, model_requests, open_loop
from .run import LoadSettings, LoadTestError, Target, check_target, has_record, run_step

QUEUE_DELAYS_US = (0, 500, 2000)
MAX_BATCH_SIZES = (8, 64)
QUEUE_TIMEOUT_SHARES = (0.25, 0.5, 0.75)  # of the latency budget
QUEUE_SIZE_FACTORS = (1, 2, 4)  # x max batch x instances


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    users: int = 8
    duration_s: float = 10.0  # per point
    budget_s: float = 600.0  # the whole sweep
    protocol: str = "grpc"
    slo_p99_ms: float = 50.0
    queue_budget_s: float = 150.0  # the queue-policy phase (0: skip it)
    overload_multiple: float = 2.0  # its open-loop load, x the best point's throughput


def grid(cores: int, max_batch: int) -> list[dict]:
    """Every (instances, threads, queue delay, max batch) with instances x threads <= cores; fullest use first."""
    shapes = [(i, t) for i in range(1, cores + 1) for t in range(1, cores + 1) if i * t <= cores]
    shapes.sort(key=lambda it: (-it[0] * it[1], it[0]))
    batches = sorted({b for b in MAX_BATCH_SIZES if b <= max_batch} | {max_batch})
    return [{"instances": i, "threads": t, "max_queue_delay_us": d, "max_batch_size": b}
            for (i, t), d, b in itertools.product(shapes, QUEUE_DELAYS_US, batches)]


def queue_grid(point: dict) -> list[dict]:
    """The queue-policy candidates of a point: every timeout share x size factor, the build's own first."""
    pairs = sorted(itertools.product(QUEUE_TIMEOUT_SHARES, QUEUE_SIZE_FACTORS),
                   key=lambda p: p != (QUEUE_TIMEOUT_SHARE, QUEUE_SIZE_FACTOR))
    return [point | {"queue_timeout_share": share, "queue_size_factor": factor} for share, factor in pairs]


def with_point(config, point: dict, slo_p99_ms: float | None = None):
    """A copy of the ModelConfig message `config` with the point's settings. Where `config` bounds its queue
    (default_queue_policy) and `slo_p99_ms` is given, the policy is derived again for the point (queue size from
    its max batch and instances, timeout from the budget and its batching delay), as the build derives it, with the
    point's `queue_timeout_share` and `queue_size_factor` where it has them: a tuned config sheds load the way a
    built one does."""
    changed = type(config)()
    changed.CopyFrom(config)
    changed.max_batch_size = point["max_batch_size"]
    if not changed.instance_group:
        changed.instance_group.add()
    for group in changed.instance_group:
        group.count = point["instances"]
    changed.parameters["intra_op_thread_count"].string_value = str(point["threads"])
    changed.dynamic_batching.max_queue_delay_microseconds = point["max_queue_delay_us"]
    if slo_p99_ms is not None and changed.dynamic_batching.HasField("default_queue_policy"):
        policy = queue_policy(slo_p99_ms, point["max_batch_size"], point["instances"], point["max_queue_delay_us"],
                              point.get("queue_timeout_share", QUEUE_TIMEOUT_SHARE),
                              point.get("queue_size_factor", QUEUE_SIZE_FACTOR))
        changed.dynamic_batching.default_queue_policy.max_queue_size = policy["max_queue_size"]
        changed.dynamic_batching.default_queue_policy.default_timeout_microseconds = \
            policy["default_timeout_microseconds"]
    return changed


def as_json(config) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def best_point(points: list[dict], slo_p99_ms: float) -> dict | None:
    """The highest-throughput point with p99 <= SLO and no failures."""
    ok = [p for p in points if p["p99_ms"] is not None and p["p99_ms"] <= slo_p99_ms and p["failures"] == 0
          and p["requests"] > 0]
    return max(ok, key=lambda p: p["throughput"]) if ok else None


def run_tune(model: str, target: Target, settings: TuneSettings, repository: pathlib.Path, artifacts: pathlib.Path,
             out: pathlib.Path, write: bool = False, progress=print) -> dict:
    check_target(target, [model])
    has_record(model, artifacts, skip=False, progress=progress)  # the users replay its test split
    config_path = repository / model / "config.pbtxt"
    if not config_path.is_file():
        raise LoadTestError(f"{config_path} does not exist", hint="tune a model of the repository the server serves "
                                                                 "(--repository)")
    original = parse_text(config_path.read_text(), str(config_path))
    points = grid(os.cpu_count() or 1, original.max_batch_size)
    load = LoadSettings(users=(settings.users,), duration_s=settings.duration_s, protocol=settings.protocol)
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    result = {"model": model, "settings": dataclasses.asdict(settings), "original": as_json(original),
              "grid_size": len(points), "points": [], "complete": False}
    deadline = time.monotonic() + settings.budget_s
    client = TritonClient(target.http_url, admin_key=target.admin_key)
    try:
        for n, point in enumerate(points, 1):
            if time.monotonic() + settings.duration_s + 10 > deadline:
                progress(f"time budget of {settings.budget_s:g} s reached after {n - 1} of {len(points)} points")
                break
            progress(f"[{n}/{len(points)}] {model}: {point['instances']} instance(s) x {point['threads']} thread(s), "
                     f"queue delay {point['max_queue_delay_us']} us, max batch {point['max_batch_size']} ...")
            result["points"].append(measure_point(client, model, point, original, target, settings, load,
                                                  artifacts, raw, f"_point{n}", progress))
            atomic_write(out / "tune.json", json.dumps(result, indent=2))
        best = best_point(result["points"], settings.slo_p99_ms)
        if best and settings.queue_budget_s > 0 and original.dynamic_batching.HasField("default_queue_policy"):
            result["queue_points"] = tune_queue(model, best, original, target, settings, artifacts, client, progress)
            result["best_queue"] = max(result["queue_points"], key=lambda p: p["goodput_per_s"], default=None)
            atomic_write(out / "tune.json", json.dumps(result, indent=2))
        result["complete"] = True
    finally:
        # back to what is on disk, whatever stopped the sweep. Explicitly: Triton reloads an unchanged model
        # directory only when given a config, and would otherwise keep serving the last override.
        try:
            client.load_model(model, config=as_json(original))
        finally:
            client.close()
        result["best"] = best_point(result["points"], settings.slo_p99_ms)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "tune.json", json.dumps(result, indent=2))
    chosen = result.get("best_queue") or result["best"]
    if write and chosen:
        replace_config(config_path.parent, with_point(original, chosen, settings.slo_p99_ms))
        with TritonClient(target.http_url, admin_key=target.admin_key) as client:
            client.load_model(model)
        result["written"] = str(config_path)
        progress(f"wrote the best setting to {config_path} and reloaded {model}")
    return result


def measure_point(client, model: str, point: dict, original, target: Target, settings: TuneSettings,
                  load: LoadSettings, artifacts: pathlib.Path, raw: pathlib.Path, label: str, progress) -> dict:
    """Load `model` with `point`'s settings and load-test it once: the point with its figures, or its error."""
    try:
        client.load_model(model, config=as_json(with_point(original, point, settings.slo_p99_ms)))
    except ClientError as e:
        progress(f"    not loadable: {e}")
        return point | {"error": str(e), "requests": 0, "failures": 0, "p99_ms": None, "throughput": 0.0}
    step = run_step(target, model, settings.users, load, artifacts, raw, label=label)
    progress(f"    {step['throughput']:8.1f} examples/s  p99 {step['p99_ms']} ms  failures {step['failures']}")
    return (point | {k: step[k] for k in ("requests", "failures", "throughput", "p50_ms", "p99_ms")}
            | {"realised_batch": (step["server"] or {}).get("realised_batch")})


def tune_queue(model: str, best: dict, original, target: Target, settings: TuneSettings, artifacts: pathlib.Path,
               client: TritonClient, progress=print) -> list[dict]:
    """The queue-policy phase (see module doc): one open-loop step per candidate of queue_grid(best)."""
    requests = model_requests(artifacts, model)
    rate = settings.overload_multiple * best["throughput"]
    load = OverloadSettings(seconds=settings.duration_s, slo_ms=settings.slo_p99_ms)
    deadline = time.monotonic() + settings.queue_budget_s
    candidates, points = queue_grid(best), []
    for n, candidate in enumerate(candidates, 1):
        if time.monotonic() + settings.duration_s + 10 > deadline:
            progress(f"queue-policy budget of {settings.queue_budget_s:g} s reached after {n - 1} of "
                     f"{len(candidates)} policies")
            break
        config = with_point(original, candidate, settings.slo_p99_ms)
        policy = config.dynamic_batching.default_queue_policy
        progress(f"[queue {n}/{len(candidates)}] {model}: timeout {policy.default_timeout_microseconds} us, queue "
                 f"{policy.max_queue_size}, open loop at {rate:.0f}/s ...")
        client.load_model(model, config=as_json(config))
        step = asyncio.run(open_loop(target.grpc_url, model, requests, rate, load, np.random.default_rng(n)))
        points.append(candidate | {"queue_timeout_us": policy.default_timeout_microseconds,
                                   "max_queue_size": policy.max_queue_size, "offered_per_s": round(rate, 1)}
                      | {k: step[k] for k in ("sent_per_s", "goodput_per_s", "p50_ms", "p99_ms", "rejected",
                                              "rejected_p99_ms", "deadline", "errors")})
        progress(f"    goodput {step['goodput_per_s']:.1f}/s  p99 {step['p99_ms']} ms  rejected {step['rejected']}")
    return points


def print_tune(result: dict) -> None:
    print(f"\n{'instances':>9} {'threads':>7} {'delay us':>8} {'max batch':>9} {'examples/s':>11} {'p99 ms':>7} "
          f"{'batch':>6} {'failures':>8}")
    for p in result["points"]:
        print(f"{p['instances']:>9} {p['threads']:>7} {p['max_queue_delay_us']:>8} {p['max_batch_size']:>9} "
              f"{p['throughput']:>11.1f} {p['p99_ms'] if p['p99_ms'] is not None else '-':>7} "
              f"{p.get('realised_batch') or '-':>6} {p['failures']:>8}")
    best = result.get("best")
    slo = result["settings"]["slo_p99_ms"]
    if best:
        print(f"\nbest under p99 <= {slo:g} ms: {best['instances']} instance(s) x {best['threads']} thread(s), "
              f"queue delay {best['max_queue_delay_us']} us, max batch {best['max_batch_size']}: "
              f"{best['throughput']:.1f} examples/s, p99 {best['p99_ms']} ms"
              + ("" if result.get("written") else "  (--write puts it in config.pbtxt)"))
    else:
        print(f"\nno point met p99 <= {slo:g} ms without failures")
    if result.get("queue_points"):
        print(f"\nqueue policy of that point, open loop at {result['queue_points'][0]['offered_per_s']:.0f}/s:")
        print(f"{'timeout us':>10} {'queue':>6} {'goodput/s':>10} {'p99 ms':>8} {'rejected':>9}")
        for p in result["queue_points"]:
            print(f"{p['queue_timeout_us']:>10} {p['max_queue_size']:>6} {p['goodput_per_s']:>10.1f} "
                  f"{p['p99_ms'] if p['p99_ms'] is not None else '-':>8} {p['rejected']:>9}")
        q = result["best_queue"]
        print(f"best goodput: timeout {q['queue_timeout_us']} us, queue {q['max_queue_size']} "
              f"({q['goodput_per_s']:.1f}/s)" + ("" if result.get("written") else "  (--write puts it in config.pbtxt)"))
