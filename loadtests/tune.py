"""Tuning sweep: the Triton settings that matter on CPU, each point load-tested in the running server.

Settings swept: instances x intra-op threads (never more threads than cores in all), max queue delay, max batch
size. Each point reloads the model with a config override (explicit model control; the file on disk is not
touched), runs one closed-loop Locust step, and records its throughput and latency. The best point under the SLO
can be written back to the repository's config.pbtxt. Whatever happens (the time budget, Ctrl-C, an error), the
model is reloaded from its config on disk at the end.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import time

from builder.core.files import atomic_write
from builder.serving.repository import replace_config
from builder.serving.tritonconfig import parse_text, queue_policy
from client import ClientError, TritonClient

from .run import LoadSettings, LoadTestError, Target, check_target, has_record, run_step

QUEUE_DELAYS_US = (0, 500, 2000)
MAX_BATCH_SIZES = (8, 64)


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    users: int = 8
    duration_s: float = 10.0  # per point
    budget_s: float = 600.0  # the whole sweep
    protocol: str = "grpc"
    slo_p99_ms: float = 50.0


def grid(cores: int, max_batch: int) -> list[dict]:
    """Every (instances, threads, queue delay, max batch) with instances x threads <= cores; fullest use first."""
    shapes = [(i, t) for i in range(1, cores + 1) for t in range(1, cores + 1) if i * t <= cores]
    shapes.sort(key=lambda it: (-it[0] * it[1], it[0]))
    batches = sorted({b for b in MAX_BATCH_SIZES if b <= max_batch} | {max_batch})
    return [{"instances": i, "threads": t, "max_queue_delay_us": d, "max_batch_size": b}
            for (i, t), d, b in itertools.product(shapes, QUEUE_DELAYS_US, batches)]


def with_point(config, point: dict, slo_p99_ms: float | None = None):
    """A copy of the ModelConfig message `config` with the point's settings. Where `config` bounds its queue
    (default_queue_policy) and `slo_p99_ms` is given, the policy is derived again for the point (queue size from
    its max batch and instances, timeout from the budget and its batching delay), as the build derives it: a tuned
    config sheds load the way a built one does."""
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
        policy = queue_policy(slo_p99_ms, point["max_batch_size"], point["instances"], point["max_queue_delay_us"])
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
            try:
                client.load_model(model, config=as_json(with_point(original, point, settings.slo_p99_ms)))
            except ClientError as e:
                result["points"].append(point | {"error": str(e), "requests": 0, "failures": 0, "p99_ms": None,
                                                 "throughput": 0.0})
                progress(f"    not loadable: {e}")
                continue
            step = run_step(target, model, settings.users, load, artifacts, raw, label=f"_point{n}")
            result["points"].append(point | {k: step[k] for k in ("requests", "failures", "throughput", "p50_ms",
                                                                   "p99_ms")}
                                    | {"realised_batch": (step["server"] or {}).get("realised_batch")})
            progress(f"    {step['throughput']:8.1f} examples/s  p99 {step['p99_ms']} ms  failures {step['failures']}")
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
    if write and result["best"]:
        replace_config(config_path.parent, with_point(original, result["best"], settings.slo_p99_ms))
        with TritonClient(target.http_url, admin_key=target.admin_key) as client:
            client.load_model(model)
        result["written"] = str(config_path)
        progress(f"wrote the best setting to {config_path} and reloaded {model}")
    return result


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
