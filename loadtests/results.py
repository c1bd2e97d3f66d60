"""The results of one load-test run, `<run>/results.json` and its flat `results.csv`: the one module that writes and
reads them. `python -m loadtests run` writes them after every step (a partial run still has a report); the report,
plan, deploy and compare read them back through `read_results`, which upgrades what an older release wrote.

A step (one model at one user count, `steps`) stays the dict loadtests/run.py `run_step` makes: its keys are the
CSV_COLUMNS and the nested `server`, `generator`, `windows` and `errors` figures documented there.

Schema versions: 1, the files written before the field existed (read as they are: every field they lack has its
default here); 2, the same fields and `schema_version`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
from dataclasses import dataclass, field

from builder.core.errors import BuilderError
from builder.core.files import atomic_write

SCHEMA_VERSION = 2
RESULTS_FILE, CSV_FILE = "results.json", "results.csv"
CSV_COLUMNS = ("model", "users", "requests", "failures", "requests_per_s", "throughput", "mean_ms", "p50_ms",
               "p90_ms", "p95_ms", "p99_ms", "realised_batch", "queue_ms", "compute_infer_ms", "request_ms",
               "cpu_utilization", "generator_bound")


class ResultsError(BuilderError):
    """A run folder or results.json that cannot be read."""


@dataclass
class RunResults:
    models: list[str] = field(default_factory=list)  # the served models the run load-tested, in order
    steps: list[dict] = field(default_factory=list)  # one per model, user count and repeat, in the order run
    machine: dict = field(default_factory=dict)  # cpu, cores, host, python, isa (loadtests/run.py machine)
    settings: dict = field(default_factory=dict)  # LoadSettings as a dict, and `mode`
    target: dict = field(default_factory=dict)  # the server's URLs
    started_at: str = "?"
    finished_at: str | None = None
    complete: bool = False  # False: interrupted, partial results
    load_generator: str = "?"  # how Locust ran, for the report's context
    perf_analyzer: dict = field(default_factory=dict)  # model -> the cross-check, or {"skipped": why}
    memory_budget: str | None = None
    footprint: dict = field(default_factory=dict)  # model -> load time and memory per instance
    server_rss_bytes: int | None = None  # the server process with every model of the run loaded
    auto_workers: dict = field(default_factory=dict)  # model -> the probe that chose its Locust workers
    records: dict = field(default_factory=dict)  # model -> its build-record entry as the run saw it
    refused: dict = field(default_factory=dict)  # the entries of variants of those models the build refused
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, raw: dict, where: str = RESULTS_FILE) -> "RunResults":
        """Any version's dict; keys this release does not know (a newer writer's) are kept out, not failed on."""
        if not isinstance(raw, dict) or not isinstance(raw.get("steps", []), list):
            raise ResultsError(f"{where}: not a load-test results file (no list of `steps`)",
                               hint="pass the folder `python -m loadtests run` wrote, or its results.json")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["schema_version"] = SCHEMA_VERSION  # upgraded: versions 1 and 2 hold the same fields
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def as_results(results: RunResults | dict) -> RunResults:
    """A RunResults from either: what the run returns, or a dict (a test's, an older caller's)."""
    return results if isinstance(results, RunResults) else RunResults.from_dict(results)


def results_file(path: pathlib.Path) -> pathlib.Path:
    """`path` itself if it is a file, else the run folder's results.json."""
    path = pathlib.Path(path)
    return path if path.is_file() or path.suffix == ".json" else path / RESULTS_FILE


def read_results(path: pathlib.Path) -> RunResults:
    """A run's results from its folder or its results.json. Raises ResultsError naming the file."""
    file = results_file(path)
    if not file.is_file():
        raise ResultsError(f"{file} does not exist", hint="pass the folder a `python -m loadtests run` wrote")
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"cannot read {file}: {e}", hint="pass the results.json of a load-test run") from e
    return RunResults.from_dict(raw, where=str(file))


def write_results(results: RunResults, out: pathlib.Path) -> None:
    """results.json (atomically) and results.csv, one row per step, into the run folder `out`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / RESULTS_FILE, json.dumps(results.to_dict(), indent=2))

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, CSV_COLUMNS)
    writer.writeheader()
    for step in results.steps:
        server = step.get("server") or {}
        writer.writerow({k: step.get(k, server.get(k)) for k in CSV_COLUMNS})
    atomic_write(out / CSV_FILE, text.getvalue())
