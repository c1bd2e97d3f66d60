"""`python -m loadtests overload`: what production traffic past capacity does, open loop, with the queue policy the
build wrote and without it.

Closed-loop tests (Locust, the soak) slow down with the server: a client waits for its answer before it sends
again, so they never offer more than the server can take. Real traffic does not wait. Here:

1. The measured maximum: `users` concurrent clients, one request each at a time, for `seconds`: answers/s.
2. Open-loop steps at `multiples` of it (default 0.5, 1, 1.5, 2, 3): Poisson arrivals at that rate for `seconds`,
   each request sent at its arrival time whether or not earlier ones were answered (asyncio over gRPC, no
   retries). Latency counts from the arrival time, so a generator that falls behind adds to it instead of
   hiding it. Per step: goodput (answers within the SLO, per second), p50 and p99 of the accepted requests,
   rejections (Triton's queue full or queue timeout) and how fast they were answered, client deadlines
   (10 x the SLO), other errors, and the peak resident memory of tritonserver, its stubs and the front against
   the step's start.
3. Recovery: after the last step, one request at a time until 5 in a row answer within 2 x the p50 of the first
   step: the seconds that took.

The same, on a copy of the model's repository entry without `default_queue_policy` (Triton's unbounded queue),
when `--without-policy` is given. A benchmark: it asserts nothing; `verdicts` states the issue's targets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import shutil
import tempfile
import time

import numpy as np

from builder.core.artifacts import find_record, request_batches
from builder.core.machine import cpu_isa
from builder.serving.repository import replace_config
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.tritonconfig import parse_text
from client import NO_RETRY, AsyncTritonClient, DeadlineExceededError, ServerOverloadedError

from .oversize import Sampler

MULTIPLES = (0.5, 1.0, 1.5, 2.0, 3.0)
RECOVERY_RUN = 5  # answers in a row within RECOVERY_FACTOR x the first step's p50
RECOVERY_FACTOR = 2.0
RECOVERY_LIMIT_S = 30.0


@dataclasses.dataclass(frozen=True)
class OverloadSettings:
    multiples: tuple = MULTIPLES
    seconds: float = 10.0  # per step
    slo_ms: float = 50.0  # an answer later than this is not goodput
    users: int = 8  # clients of the closed-loop maximum
    seed: int = 0


def arrival_times(rate: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson arrivals at `rate` per second over [0, seconds): exponential gaps, seeded."""
    gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 16)
    times = np.cumsum(gaps)
    while times[-1] < seconds:  # rare: too few gaps drawn
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=len(times)))])
    return times[times < seconds]


def summarise(outcomes: list[tuple[str, float]], seconds: float, slo_ms: float, sent: int) -> dict:
    """One step's figures from (outcome, latency ms) pairs: outcome ok | rejected | deadline | error."""
    def of(kind):
        return [ms for outcome, ms in outcomes if outcome == kind]

    ok, rejected = of("ok"), of("rejected")

    def pct(values, q):
        return round(float(np.percentile(values, q)), 2) if values else None

    return {"sent": sent, "sent_per_s": round(sent / seconds, 1), "answered": len(ok),
            "goodput_per_s": round(sum(ms <= slo_ms for ms in ok) / seconds, 1),
            "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99), "rejected": len(rejected),
            "rejected_p99_ms": pct(rejected, 99), "deadline": len(of("deadline")), "errors": len(of("error"))}


async def _one(client, model: str, inputs: dict, due: float, deadline_s: float, outcomes: list) -> None:
    try:
        await client.infer(model, inputs, timeout=deadline_s)
        outcome = "ok"
    except ServerOverloadedError:
        outcome = "rejected"
    except DeadlineExceededError:
        outcome = "deadline"
    except Exception:  # noqa: BLE001 - counted, not raised: the step goes on
        outcome = "error"
    outcomes.append((outcome, (time.perf_counter() - due) * 1000))


async def open_loop(url: str, model: str, requests: list[dict], rate: float, settings: OverloadSettings,
                    rng: np.random.Generator) -> dict:
    """One open-loop step at `rate` requests/s."""
    times = arrival_times(rate, settings.seconds, rng)
    outcomes: list = []
    async with AsyncTritonClient(url, retry_policy=NO_RETRY) as client:
        await client.infer(model, requests[0])  # output names looked up before the clock starts
        start = time.perf_counter() + 0.05
        tasks = []
        for i, at in enumerate(times):
            due = start + at
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, model, requests[i % len(requests)], due,
                                                  10 * settings.slo_ms / 1000, outcomes)))
        await asyncio.gather(*tasks)
    return summarise(outcomes, settings.seconds, settings.slo_ms, len(times))


async def closed_loop(url: str, model: str, requests: list[dict], settings: OverloadSettings) -> float:
    """Answers per second with `settings.users` clients, each waiting for its answer before the next request."""
    answered = 0
    end = time.perf_counter() + settings.seconds

    async def user(k: int):
        nonlocal answered
        i = k
        while time.perf_counter() < end:
            await client.infer(model, requests[i % len(requests)], timeout=10)
            answered += 1
            i += settings.users

    async with AsyncTritonClient(url) as client:
        await client.infer(model, requests[0])
        started = time.perf_counter()
        end = started + settings.seconds
        await asyncio.gather(*(user(k) for k in range(settings.users)))
        return answered / (time.perf_counter() - started)


async def recovery(url: str, model: str, request: dict, normal_ms: float) -> float | None:
    """Seconds until RECOVERY_RUN answers in a row come within RECOVERY_FACTOR x `normal_ms`; None past the limit."""
    started = time.perf_counter()
    run = 0
    async with AsyncTritonClient(url, retry_policy=NO_RETRY) as client:
        while time.perf_counter() - started < RECOVERY_LIMIT_S:
            sent = time.perf_counter()
            try:
                await client.infer(model, request, timeout=5)
                ok = (time.perf_counter() - sent) * 1000 <= RECOVERY_FACTOR * normal_ms
            except Exception:  # noqa: BLE001 - a refusal is not recovered yet
                ok = False
            run = run + 1 if ok else 0
            if run == RECOVERY_RUN:
                return round(time.perf_counter() - started, 2)
    return None


def model_requests(artifacts: pathlib.Path, model: str, count: int = 64) -> list[dict]:
    """Real requests of batch 1 from the build's test split."""
    folder, _ = find_record(pathlib.Path(artifacts), model)
    return request_batches(folder, "test", batch_size=1, count=count)


def run_model(server: EmbeddedServer, model: str, requests: list[dict], settings: OverloadSettings,
              progress=print) -> dict:
    rng = np.random.default_rng(settings.seed)
    maximum = asyncio.run(closed_loop(server.grpc_url, model, requests, settings))
    progress(f"{model}: closed-loop maximum {maximum:.0f} answers/s at {settings.users} users")
    steps = []
    for multiple in settings.multiples:
        with Sampler(server) as sampler:
            step = asyncio.run(open_loop(server.grpc_url, model, requests, multiple * maximum, settings, rng))
        step |= {"multiple": multiple, "offered_per_s": round(multiple * maximum, 1),
                 "memory_start_mb": round(sampler.before / 1e6, 1), "memory_peak_mb": round(sampler.peak / 1e6, 1)}
        steps.append(step)
        progress(f"{model}: {multiple:g}x ({step['offered_per_s']:.0f}/s offered, {step['sent_per_s']:.0f}/s sent): "
                 f"goodput {step['goodput_per_s']:.0f}/s, p99 {step['p99_ms']} ms, {step['rejected']} rejected, "
                 f"{step['deadline']} past the deadline")
    normal = steps[0]["p50_ms"] or settings.slo_ms
    recovered = asyncio.run(recovery(server.grpc_url, model, requests[0], normal))
    return {"model": model, "closed_loop_max_per_s": round(maximum, 1), "steps": steps, "recovery_s": recovered}


def single_model(repository: pathlib.Path, model: str, into: pathlib.Path, queue_policy: bool) -> pathlib.Path:
    """A repository holding only `model` (the server then loads nothing else), its config as built or, with
    `queue_policy` off, without default_queue_policy: Triton's unbounded queue."""
    shutil.copytree(pathlib.Path(repository) / model, into / model)
    if not queue_policy:
        config = parse_text((into / model / "config.pbtxt").read_text(), where=f"{model}/config.pbtxt")
        config.dynamic_batching.ClearField("default_queue_policy")
        replace_config(into / model, config)
    return into


def run_overload(repository: pathlib.Path, models: list[str], artifacts: pathlib.Path,
                 settings: OverloadSettings = OverloadSettings(), policy_off_too: bool = False,
                 progress=print) -> dict:
    results = {"settings": dataclasses.asdict(settings), "cpu": cpu_isa(), "runs": []}
    for model in models:
        requests = model_requests(artifacts, model)
        for policy in (True, False) if policy_off_too else (True,):
            with tempfile.TemporaryDirectory() as scratch:
                alone = single_model(repository, model, pathlib.Path(scratch), policy)
                with EmbeddedServer(alone, free_port(), free_port(), free_port()) as server:
                    progress(f"{model}: queue policy {'as built' if policy else 'removed'}")
                    results["runs"].append(run_model(server, model, requests, settings, progress)
                                           | {"queue_policy": policy})
    return results


def verdicts(run: dict, slo_ms: float) -> dict:
    """The issue's targets at the highest multiple, against the 1x step."""
    steps = {s["multiple"]: s for s in run["steps"]}
    top, one = steps[max(steps)], steps.get(1.0)
    out = {}
    if one and one["goodput_per_s"]:
        out["goodput_vs_1x"] = round(top["goodput_per_s"] / one["goodput_per_s"], 2)
    out["memory_growth"] = round(top["memory_peak_mb"] / top["memory_start_mb"] - 1, 3) if top["memory_start_mb"] else None
    out["p99_within_slo"] = top["p99_ms"] is not None and top["p99_ms"] <= slo_ms
    out["rejections_under_10ms"] = None if top["rejected_p99_ms"] is None else top["rejected_p99_ms"] < 10
    out["recovery_s"] = run["recovery_s"]
    return out


def print_overload(results: dict) -> None:
    from builder.core.console import print_table

    slo = results["settings"]["slo_ms"]
    header = ["model", "policy", "x max", "offered/s", "sent/s", "goodput/s", "p50 ms", "p99 ms", "rejected",
              "rej p99 ms", "deadline", "errors", "memory MB"]
    body = []
    for run in results["runs"]:
        for s in run["steps"]:
            body.append([run["model"], "on" if run["queue_policy"] else "off", f"{s['multiple']:g}",
                         f"{s['offered_per_s']:.0f}", f"{s['sent_per_s']:.0f}", f"{s['goodput_per_s']:.0f}",
                         str(s["p50_ms"]), str(s["p99_ms"]), str(s["rejected"]), str(s["rejected_p99_ms"]),
                         str(s["deadline"]), str(s["errors"]), f"{s['memory_start_mb']:.0f}->{s['memory_peak_mb']:.0f}"])
    print(f"\nopen-loop overload, SLO {slo:g} ms, {results['settings']['seconds']:g} s steps; CPU "
          f"{results['cpu']['model']}, {results['cpu']['summary']}")
    print_table(header, body)
    for run in results["runs"]:
        v = verdicts(run, slo)
        print(f"{run['model']} (queue policy {'on' if run['queue_policy'] else 'off'}): closed-loop max "
              f"{run['closed_loop_max_per_s']:.0f}/s; at {max(s['multiple'] for s in run['steps']):g}x goodput "
              f"{v.get('goodput_vs_1x')}x the 1x step's, memory {v['memory_growth']:+.1%}, p99 within the SLO: "
              f"{v['p99_within_slo']}, rejections under 10 ms: {v['rejections_under_10ms']}, recovered in "
              f"{v['recovery_s']} s")
    if any(s["sent_per_s"] < 0.9 * s["offered_per_s"] for r in results["runs"] for s in r["steps"]):
        print("note: in some steps the generator sent under 90 % of the offered rate (it shares the CPU with the "
              "server): their figures are at the rate sent")

