"""A Locust plugin that records, per 50 ms slot of wall-clock time, how many requests ended and their response
times, so the runner can split a load step into equal windows and give throughput and p99 an interval.

  locust -f loadtests/locustfile.py,loadtests/locust_windows.py ... --windows-json raw/<step>_windows.json

Why a plugin and not Locust's own history: `--csv-full-history` has per-second counts but its percentiles are
over a sliding 10 s window, and the JSON stats hold one histogram for the whole step. Here every request lands in
the slot of the moment it ended (the moment Locust's own per-second counts use), bucketed as Locust buckets it
(`locust.stats.bucket_response_time`, which the kit's locustfile sets to two significant digits), so a window's
p99 follows Locust's rule. Workers send their slots with each stats report; the master (or the single process)
merges them and writes the file when it quits:

  {"slot_s": 0.05, "spawned_at": <epoch s when every user had started, or null>,
   "slots": [[slot, response_ms, count], ...], "failures": [[slot, count], ...]}   (slot = int(epoch_s / slot_s))

Per request this costs two dict updates in the listener, no I/O.
"""

from __future__ import annotations

import collections
import json
import pathlib
import time

import locust.stats
from locust import events

SLOT_S = 0.05

_slots: collections.Counter = collections.Counter()  # (slot, bucketed ms) -> requests that ended then
_failures: collections.Counter = collections.Counter()  # slot -> failed requests that ended then
_spawned_at: list[float] = []


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument("--windows-json", default="", include_in_web_ui=False,
                        help="write per-50 ms request counts and response times to this JSON file at the end")


@events.request.add_listener
def count(response_time, exception=None, **_kwargs):
    slot = int(time.time() / SLOT_S)
    _slots[slot, locust.stats.bucket_response_time(response_time)] += 1
    if exception is not None:
        _failures[slot] += 1


@events.spawning_complete.add_listener
def spawned(**_kwargs):
    _spawned_at[:] = [time.time()]


@events.report_to_master.add_listener
def send(client_id, data, **_kwargs):
    """Worker: hand over what was counted since the last report (msgpack keeps lists, not tuple keys)."""
    data["windows"] = {"slots": [[s, ms, n] for (s, ms), n in _slots.items()],
                       "failures": [[s, n] for s, n in _failures.items()]}
    _slots.clear()
    _failures.clear()


@events.worker_report.add_listener
def receive(client_id, data, **_kwargs):
    for slot, ms, n in data.get("windows", {}).get("slots", []):
        _slots[slot, ms] += n
    for slot, n in data.get("windows", {}).get("failures", []):
        _failures[slot] += n


@events.quitting.add_listener
def write(environment, **_kwargs):
    options = environment.parsed_options
    if options and options.windows_json and not options.worker:
        pathlib.Path(options.windows_json).write_text(json.dumps({
            "slot_s": SLOT_S, "spawned_at": _spawned_at[0] if _spawned_at else None,
            "slots": sorted([s, ms, n] for (s, ms), n in _slots.items()),
            "failures": sorted([s, n] for s, n in _failures.items())}))
