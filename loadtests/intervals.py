"""Intervals of served figures: a load step split into equal windows, and the range the windows span.

A step's interval is min..max over its windows (not a t-interval: with 3 windows a 95 % t-interval is the mean
± 4.3 standard errors, wider than the range, and it assumes normal, independent windows, which consecutive
windows of one run are not). With n windows, the range holds the median of the window-to-window distribution
with probability 1 - 2 * 0.5^n (75 % for 3, 94 % for 5). Windows of one run see the machine's noise over time
(other processes, garbage collection, the scheduler) but not what changes from one run to the next (process
start, placement): the range is a lower bound on run-to-run noise, so the report calls overlapping variants tied
rather than trusting a narrow gap.

Windows start once every user is running (Locust's `spawning_complete`), so the ramp-up does not widen the
first one; they end at the last request. Pure functions on plain data: `loadtests/locust_windows.py` records
the slots.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Interval:
    """low..high of a figure over `n` measurements (windows)."""
    low: float
    high: float
    n: int

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def text(self, digits: int = 1) -> str:
        return f"{self.low:,.{digits}f}..{self.high:,.{digits}f}"

    @classmethod
    def of(cls, values: list[float]) -> "Interval | None":
        values = [v for v in values if v is not None]
        return cls(min(values), max(values), len(values)) if values else None

    @classmethod
    def from_dict(cls, data: dict | None) -> "Interval | None":
        return cls(data["low"], data["high"], data["n"]) if data else None


def percentile(histogram: dict[float, int], percent: float) -> float | None:
    """Locust's rule (locust.stats.calculate_response_time_percentile): the smallest bucket that at most
    (1 - percent) of the requests exceed. None for no requests."""
    count = sum(histogram.values())
    if count == 0:
        return None
    wanted = int(count * percent)
    seen = 0
    for response_time in sorted(histogram, reverse=True):
        seen += histogram[response_time]
        if count - seen <= wanted:
            return response_time
    return 0.0


def split_windows(recorded: dict, start: float, end: float, count: int, batch_size: int = 1) -> list[dict]:
    """`count` windows of whole slots between epoch seconds `start` and `end` (partial slots at either edge are
    left out), as [{"start_s" (from `start`), "seconds", "requests", "failures", "throughput" (successful
    examples/s), "p99_ms"}]. `recorded` is what locust_windows.py writes. Fewer slots than windows: [] ."""
    slot_s = recorded["slot_s"]
    first, last = math.ceil(start / slot_s), math.floor(end / slot_s)  # slots wholly inside [start, end)
    slots = last - first
    if count < 1 or slots < count:
        return []
    histograms = [dict() for _ in range(count)]
    failures = [0] * count
    edges = [first + round(i * slots / count) for i in range(count + 1)]

    def window_of(slot: int) -> int | None:
        if not first <= slot < last:
            return None
        return next(i for i in range(count) if edges[i] <= slot < edges[i + 1])

    for slot, ms, n in recorded["slots"]:
        i = window_of(slot)
        if i is not None:
            histograms[i][ms] = histograms[i].get(ms, 0) + n
    for slot, n in recorded["failures"]:
        i = window_of(slot)
        if i is not None:
            failures[i] += n
    windows = []
    for i in range(count):
        seconds = (edges[i + 1] - edges[i]) * slot_s
        requests = sum(histograms[i].values())
        windows.append({"start_s": round(edges[i] * slot_s - start, 3), "seconds": round(seconds, 3),
                        "requests": requests, "failures": failures[i],
                        "throughput": round((requests - failures[i]) * batch_size / seconds, 1),
                        "p99_ms": percentile(histograms[i], 0.99)})
    return windows


def merge_repeats(steps: list[dict]) -> list[dict]:
    """One step per (model, users): repeats of a step (`python -m loadtests run --repeats N`) joined, in first-seen
    order. A joined step has the repeats' summed requests and failures, their mean throughput and request rate,
    the worst repeat's p50/p90/p95/p99 (the SLO is checked against the worst), the interval over every window of
    every repeat, `generator_bound` if any repeat was, the last repeat's server figures, and `repeats`."""
    groups: dict[tuple, list[dict]] = {}
    for step in steps:
        groups.setdefault((step["model"], step["users"]), []).append(step)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        windows = [w for s in group for w in s.get("windows", [])]
        step = dict(group[-1]) | {
            "repeats": len(group), "requests": sum(s["requests"] for s in group),
            "failures": sum(s["failures"] for s in group),
            "throughput": round(sum(s["throughput"] for s in group) / len(group), 1),
            "requests_per_s": round(sum(s["requests_per_s"] for s in group) / len(group), 1),
            "generator_bound": any(s.get("generator_bound") for s in group), "windows": windows,
            "interval": step_intervals(windows)}
        for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms"):
            values = [s.get(key) for s in group if s.get(key) is not None]
            step[key] = max(values) if values else None
        if step["interval"]:
            step["interval"]["method"] = (f"min..max over {len(windows)} windows: {len(group)} repeats of the step, "
                                          "each cut into equal windows after every user started")
        merged.append(step)
    return merged


def step_intervals(windows: list[dict]) -> dict | None:
    """{"throughput": {"low", "high", "n"}, "p99_ms": {...}, "method": ...} over the windows; None without any."""
    if not windows:
        return None
    out = {"method": f"min..max over {len(windows)} equal windows of the step, after every user started"}
    for key in ("throughput", "p99_ms"):
        interval = Interval.of([w[key] for w in windows])
        out[key] = dataclasses.asdict(interval) if interval else None
    return out
