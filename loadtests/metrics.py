"""Triton's Prometheus endpoint (`/metrics`): scrape, and turn two scrapes into per-request figures.

Counters are cumulative per model and version; a step's figures are the difference of a scrape before and after
it, summed over versions (a reload in between starts a new version's counters). CPU utilisation is a gauge, so it
is sampled during the step and averaged.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from dataclasses import dataclass

LINE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
COUNTS = ("request_success", "request_failure", "count", "exec_count")


@dataclass(frozen=True)
class ServerTime:
    """A cumulative `nv_inference_<counter>` duration, reported per request as `key` (ms) in a step's `server`
    figures. One line of TIMES is all a new Triton duration counter needs: the report's server-time plot and its
    steps table take theirs from here (tests/unit/test_new_counter.py)."""

    key: str
    counter: str
    label: str  # in the report
    in_time_plot: bool  # a part of the request's time, stacked in the report's queue-vs-compute plot
    in_steps_table: bool  # a column of the report's load-steps table


TIMES = (ServerTime("request_ms", "request_duration_us", "request", False, False),
         ServerTime("queue_ms", "queue_duration_us", "queue", True, True),
         ServerTime("compute_input_ms", "compute_input_duration_us", "input", True, False),
         ServerTime("compute_infer_ms", "compute_infer_duration_us", "infer", True, True),
         ServerTime("compute_output_ms", "compute_output_duration_us", "output", True, False))


def counter_names() -> tuple[str, ...]:
    return (*COUNTS, *(t.counter for t in TIMES))


def parse(text: str) -> list[tuple[str, dict, float]]:
    """Prometheus text exposition -> [(metric name, labels, value)]; comments skipped."""
    samples = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def scrape(url: str, timeout: float = 5.0) -> list[tuple[str, dict, float]]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode())


def model_counters(samples, model: str) -> dict[str, float]:
    """The `nv_inference_*` counters of `model`, summed over versions (and failure reasons)."""
    totals = dict.fromkeys(counter_names(), 0.0)
    for name, labels, value in samples:
        key = name.removeprefix("nv_inference_")
        if labels.get("model") == model and key in totals:
            totals[key] += value
    return totals


def step_figures(before: dict, after: dict) -> dict:
    """Per-request server figures for one load step from counters before and after it."""
    delta = {k: after[k] - before[k] for k in counter_names()}
    requests = max(delta["request_success"], 1.0)
    return {"server_requests": int(delta["request_success"]), "server_failures": int(delta["request_failure"]),
            "server_inferences": int(delta["count"]), "executions": int(delta["exec_count"]),
            # examples per model execution: how much dynamic batching actually grouped
            "realised_batch": round(delta["count"] / delta["exec_count"], 2) if delta["exec_count"] else 0.0,
            **{t.key: round(delta[t.counter] / requests / 1000.0, 3) for t in TIMES}}


class CpuSampler:
    """Average of Triton's `nv_cpu_utilization` gauge (0..1, whole machine) sampled every `interval` s."""

    def __init__(self, url: str, interval: float = 1.0):
        self.url, self.interval = url, interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.samples += [v for n, _, v in scrape(self.url, timeout=self.interval) if n == "nv_cpu_utilization"]
            except OSError:
                pass  # a missed sample is not worth failing a load step for

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 3) if self.samples else None
