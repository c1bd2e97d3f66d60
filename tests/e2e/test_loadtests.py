"""Locust load tests against the real embedded server: per protocol, open loop, distributed, failures, the report,
the tuning sweep, Ctrl-C. Runs are a few seconds long: they check that numbers are recorded correctly, not how
fast anything is."""

import html.parser
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from builder.serving.tritonconfig import parse_text
from client import TritonClient
from builder.core.artifacts import read_records
from loadtests.report import build_report, write_report
from loadtests.run import LoadSettings, LoadTestError, Target, run_load
from loadtests.tune import TuneSettings, run_tune
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

MODEL = "digits_fp32"  # real test images, milliseconds per request


def target_of(server) -> Target:
    return Target(server.http_url, server.grpc_url, server.metrics_url)


def command_lines() -> list[str]:
    lines = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass  # ended meanwhile
    return lines


def locust_processes() -> list[str]:
    # this checkout's only: other checkouts on a shared machine run their own
    return [line for line in command_lines() if f"{ROOT}/loadtests/locustfile.py" in line]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_short_run_records_what_locust_and_triton_counted(protocol, built, server, tmp_path):
    settings = LoadSettings(users=(2,), duration_s=3, protocol=protocol)
    results = run_load([MODEL], target_of(server), settings, built["artifacts"], tmp_path, progress=lambda _: None)

    step = results.steps[0]
    assert results.complete and step["requests"] > 50 and step["failures"] == 0 and step["throughput"] > 0
    assert step["p50_ms"] <= step["p90_ms"] <= step["p99_ms"]
    # the recorded numbers are Locust's own
    raw = json.loads((tmp_path / "raw" / step["raw"]["locust_stats"]).read_text())
    entry = next(e for e in raw if e["name"] == MODEL)
    assert step["requests"] == entry["num_requests"] and step["failures"] == entry["num_failures"]
    # and the server saw the same requests, up to the few in flight when the step stops: cut off client-side, or
    # (over HTTP, seen in 2 of 3 runs here) counted by Locust but not yet by Triton's counters
    assert abs(step["server"]["server_requests"] - step["requests"]) <= 3
    assert step["server"]["executions"] > 0 and step["server"]["realised_batch"] >= 1.0
    assert step["server"]["compute_infer_ms"] > 0
    # three equal windows after every user started, within the step: an interval around the figures
    windows = step["windows"]
    assert len(windows) == 3 and sum(w["requests"] for w in windows) <= step["requests"]
    assert all(w["requests"] > 0 and w["p99_ms"] > 0 for w in windows)
    assert max(w["seconds"] for w in windows) - min(w["seconds"] for w in windows) <= 0.05 + 1e-9
    interval = step["interval"]
    assert interval["throughput"]["low"] <= interval["throughput"]["high"] and interval["throughput"]["n"] == 3
    assert interval["p99_ms"]["low"] <= step["p99_ms"] * 1.5 and (tmp_path / "raw" / step["raw"]["windows"]).is_file()
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["steps"][0]["requests"] == step["requests"]
    assert (tmp_path / "results.csv").read_text().splitlines()[1].startswith(f"{MODEL},2,{step['requests']},")
    assert not locust_processes()


def test_open_loop_sends_on_schedule(built, server, tmp_path):
    settings = LoadSettings(users=(2,), duration_s=4, arrival_rate=25.0)
    step = run_load([MODEL], target_of(server), settings, built["artifacts"], tmp_path,
                    progress=lambda _: None).steps[0]
    expected = 2 * 25.0 * step["elapsed_s"]  # 2 users x 25 requests/s, whatever the latency
    assert step["failures"] == 0 and abs(step["requests"] - expected) <= 0.15 * expected + 3


def test_distributed_master_and_one_worker(built, server, tmp_path):
    settings = LoadSettings(users=(2,), duration_s=3, workers=1)
    started = time.monotonic()
    step = run_load([MODEL], target_of(server), settings, built["artifacts"], tmp_path,
                    progress=lambda _: None).steps[0]
    assert step["requests"] > 20 and step["failures"] == 0
    assert time.monotonic() - started < 60
    assert not locust_processes()


def test_a_model_unloaded_mid_run_counts_failures_and_the_run_finishes(built, server, tmp_path):
    model = "tiny_fp32"
    settings = LoadSettings(users=(2,), duration_s=5)

    def unload():  # its own client: an HTTP client belongs to the thread that made it
        with TritonClient(server.http_url) as admin:
            admin.unload_model(model)

    timer = threading.Timer(2.0, unload)
    timer.start()
    try:
        results = run_load([model], target_of(server), settings, built["artifacts"], tmp_path, progress=lambda _: None)
    finally:
        timer.join()
        with TritonClient(server.http_url) as admin:
            admin.load_model(model)
    step = results.steps[0]
    assert results.complete and step["requests"] > step["failures"] > 0
    assert step["errors"] and any(model in e["message"] for e in step["errors"])


def test_unknown_model_and_unreachable_server_fail_before_any_load(built, server, tmp_path):
    with pytest.raises(LoadTestError, match="unknown model `digits_fp23`") as unknown:
        run_load(["digits_fp23"], target_of(server), LoadSettings(), built["artifacts"], tmp_path)
    assert "did you mean `digits_fp32`" in unknown.value.hint
    with pytest.raises(LoadTestError, match="no build record for model `digits_fp32`"):  # no test data to replay
        run_load([MODEL], target_of(server), LoadSettings(), tmp_path / "no-artifacts", tmp_path)
    started = time.monotonic()
    with pytest.raises(LoadTestError, match="not reachable"):
        run_load([MODEL], Target("http://127.0.0.1:9", "grpc://127.0.0.1:9", "http://127.0.0.1:9/metrics"),
                 LoadSettings(), built["artifacts"], tmp_path)
    assert time.monotonic() - started < 15


class Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self.tables += tag == "table"


def test_report_renders_with_plots_and_a_recommendation(built, server, tmp_path):
    import base64
    import io

    import matplotlib.image

    settings = LoadSettings(users=(1, 2), duration_s=2)
    results = run_load([MODEL], target_of(server), settings, built["artifacts"], tmp_path, progress=lambda _: None)
    report = build_report(results, read_records(built["artifacts"]), slo_p99_ms=1000, max_accuracy_drop=1.0)
    md, page = write_report(report, tmp_path)

    parser = Images()
    parser.feed(page.read_text())
    assert parser.tables >= 2 and len(parser.images) == 4  # 3 load plots + the operator profile of the one model
    for src in parser.images:  # real, non-empty images
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0
    assert report["recommendations"]["digits"]["model"] == MODEL
    text = md.read_text()
    assert "Ship `digits_fp32`" in text and "raw/digits_fp32_u1_locust.json" in text
    assert str(os.cpu_count()) + " cores" in text


def test_tune_sweeps_within_its_budget_and_restores_the_config(built, server, tmp_path):
    settings = TuneSettings(users=2, duration_s=2, budget_s=14, slo_p99_ms=10_000, queue_budget_s=14)
    config_path = built["repository"] / MODEL / "config.pbtxt"
    before = config_path.read_text()
    started = time.monotonic()
    result = run_tune(MODEL, target_of(server), settings, built["repository"], built["artifacts"], tmp_path,
                      progress=lambda _: None)
    assert time.monotonic() - started < 14 + 14 + 30
    # the queue-policy phase: the build's own policy first, then others, each under open-loop load
    queue = result["queue_points"]
    assert 1 <= len(queue) < 9 and result["best_queue"] in queue
    first = queue[0]
    assert (first["queue_timeout_share"], first["queue_size_factor"]) == (0.5, 2)
    assert first["max_queue_size"] == 2 * first["max_batch_size"] * first["instances"]
    assert first["queue_timeout_us"] == 5_000_000 + first["max_queue_delay_us"]
    assert all(p["sent_per_s"] > 0 and p["offered_per_s"] == queue[0]["offered_per_s"] for p in queue)
    assert 1 <= len(result["points"]) < result["grid_size"]
    for point in result["points"]:
        assert point["instances"] * point["threads"] <= os.cpu_count() and point["requests"] > 0
    assert result["best"] in result["points"]
    assert config_path.read_text() == before
    with TritonClient(server.http_url) as client:  # served again with the config on disk
        served = client.config(MODEL)
    assert int(served["max_batch_size"]) == parse_text(before).max_batch_size
    assert served["dynamic_batching"].get("max_queue_delay_microseconds", "0") in (0, "0")


def servers_on(repository) -> int:
    return sum(line.split(" ")[0].endswith("/tritonserver") and f"--model-repository={repository} " in line
               for line in command_lines())


def test_ctrl_c_stops_locust_and_the_server_and_keeps_partial_results(built, tmp_path):
    out = tmp_path / "run"
    servers_before = servers_on(built["repository"])
    process = subprocess.Popen([sys.executable, "-m", "loadtests", "run", "--models", MODEL, "--users", "1,2,3",
                                "--duration", "20s", "--no-perf-analyzer", "--no-footprint",
                                "--repository", str(built["repository"]),
                                "--artifacts", str(built["artifacts"]), "--out", str(out)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               # Ctrl-C as at a terminal: a suite started in the background by a non-interactive
                               # shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "raw").is_dir() or not locust_processes():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.5)
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 130, output
    assert "interrupted" in output
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    assert not locust_processes()
    assert servers_on(built["repository"]) == servers_before  # the one it started is gone, the session's is not


def loadtests_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtests", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_real_run_plans_gates_and_deploys(built, server, tmp_path):
    """A short real run of the digits model (footprint included): the plan sizes it, the gate passes it against
    itself and fails a made-up regression of it, and the overlay for it renders and loads only it."""
    import yaml

    settings = LoadSettings(users=(1, 2), duration_s=3)
    run = tmp_path / "run"
    results = run_load([MODEL], target_of(server), settings, built["artifacts"], run, progress=lambda _: None,
                       footprint=True, repository=built["repository"])
    assert all(len(s["windows"]) == 3 for s in results.steps)
    assert results.records[MODEL]["accuracy"] == built["records"][MODEL]["accuracy"]

    plan = loadtests_cli("plan", "--report", run, "--artifacts", built["artifacts"], "--target-qps", 2000,
                         "--slo-p99-ms", 1000, "--prices", ROOT / "loadtests" / "prices.example.yaml")
    assert plan.returncode == 0, plan.stderr
    assert "Cheapest variant meeting SLO and accuracy: `digits_fp32`" in plan.stdout and "re-measure" in plan.stdout.lower()

    same = loadtests_cli("compare", run / "results.json", run / "results.json")
    assert same.returncode == 0 and "no regression" in same.stdout, same.stdout + same.stderr
    worse = json.loads((run / "results.json").read_text())
    # A made-up regression: a tenth of the throughput, every window below the baseline's. Half was not enough: in a
    # fresh-clone CI run one 1-s window ran 4x below the others (153.8..612.9 examples/s), so the halved interval
    # still overlapped and the gate rightly called it noise. Why that window was slow is not yet known.
    for s in worse["steps"]:
        s["interval"]["throughput"] = {k: v / 10 if k != "n" else v for k, v in s["interval"]["throughput"].items()}
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    gate = loadtests_cli("compare", run / "results.json", tmp_path / "worse.json")
    assert gate.returncode == 1 and "REGRESSED: throughput" in gate.stdout, gate.stdout + gate.stderr

    out = tmp_path / "deploy"
    deploy = loadtests_cli("deploy", "--report", run, "--artifacts", built["artifacts"], "--target-qps", 500,
                           "--slo-p99-ms", 1000, "--out", out)
    assert deploy.returncode == 0, deploy.stderr
    line = json.loads((out / "plan.json").read_text())
    assert line["model"] == MODEL and line["memory_mib"] > 0
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: the overlay was written but not rendered")
    rendered = subprocess.run([kubectl, "kustomize", str(out)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--load-model")] == [f"--load-model={MODEL}"]
    assert deployment["spec"]["replicas"] == line["replicas"]
