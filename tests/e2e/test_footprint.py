"""Model size in deployment terms, measured on the real embedded server: load time, resident memory of each
model's instances (their Python backend stub processes), how many fit in a budget, and the build record.

The measurement unloads and reloads each model of the shared session server; every model must be READY again
afterwards, serving as before."""

import json
import pathlib

import pytest

from builder.serving.footprint import FootprintError, find_stubs, fits, measure_models, parse_size, write_footprint
from client import TritonClient
from builder.core.artifacts import find_record, request_batches
from builder.core.artifacts import read_records
from loadtests.report import build_report, write_report
from loadtests.run import LoadSettings, Target, run_load
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e

MB = 10 ** 6


@pytest.fixture(scope="module")
def measured(built, server) -> dict:
    before = {m.name: m.state for m in server.models()}
    footprints = measure_models(server, built["repository"], sorted(built["records"]), built["artifacts"],
                                progress=lambda _: None)
    return {"before": before, "footprints": footprints}


def test_every_served_model_has_load_time_and_memory(measured, built):
    footprints = measured["footprints"]
    assert sorted(footprints) == sorted(built["records"]) == ["digits_fp32", "minilm_fp32", "tiny_fp32"]
    for model, f in footprints.items():
        assert f["load_seconds"] > 0, model
        assert f["instances"] == f["configured_instances"] >= 1, model
        assert len(f["per_instance"]) == f["instances"]
        for instance in f["per_instance"]:
            assert 0 < instance["rss_bytes_after_load"] <= instance["rss_bytes_after_first_inference"], model
            assert instance["rss_bytes_after_first_inference"] <= instance["peak_rss_bytes"]
        assert 0 < f["rss_bytes_after_load"] <= f["rss_bytes_after_first_inference"] == f["rss_bytes_per_instance"]
        assert 10 * MB < f["rss_bytes_per_instance"] < 4000 * MB, model
        assert f["file_bytes"] == (built["repository"] / model / "1" / "model.onnx").stat().st_size
        assert f["warmup_request"]["batch"] == 1


def test_memory_follows_the_model(measured):
    footprints = measured["footprints"]
    # MiniLM's 90 MB of weights live in its stub; the tiny MLP's stub is little more than Python + onnxruntime
    assert footprints["minilm_fp32"]["rss_bytes_per_instance"] > footprints["tiny_fp32"]["rss_bytes_per_instance"] + 50 * MB
    baseline = footprints["digits_fp32"]["baseline"]
    assert baseline == footprints["tiny_fp32"]["baseline"]
    assert baseline["rss_bytes"] == min(f["rss_bytes_after_load"] for f in footprints.values())


def test_the_measured_processes_are_the_models_own_stubs(measured, server, built):
    for model, f in measured["footprints"].items():
        stubs = {s.pid: s for s in find_stubs(model, server.process.pid)}
        for instance in f["per_instance"]:
            stub = stubs[instance["pid"]]  # still serving: the model was left loaded with these instances
            assert stub.instance == instance["instance"] and stub.instance.startswith(f"{model}_")
            assert pathlib.Path(stub.model_file).parent.parent == built["repository"].resolve() / model


def test_every_model_is_left_as_it_was_found(measured, server, built):
    assert {m.name: m.state for m in server.models()} == measured["before"]
    with TritonClient(server.grpc_url) as client:
        for model in built["records"]:
            folder, _ = find_record(built["artifacts"], model)
            assert client.infer(model, request_batches(folder, "test", 1, count=1)[0])


def test_fits_is_the_budget_divided_by_memory_per_instance(measured):
    budget = parse_size("16GB")
    for f in measured["footprints"].values():
        per_instance = f["rss_bytes_per_instance"]
        assert fits(budget, per_instance) == budget // per_instance >= 1


def test_a_bad_budget_gets_a_clear_error(server, built):
    with pytest.raises(FootprintError, match="not a memory size: '16 gigs'"):
        parse_size("16 gigs")
    result = run_cli("loadtests", "footprint", "--url", server.http_url, "--memory-budget", "16 gigs",
                     "--repository", built["repository"], "--artifacts", built["artifacts"], timeout=60)
    assert result.returncode == 2 and "not a memory size: '16 gigs'" in result.stderr


def test_the_record_gets_the_footprint(measured, built):
    for model, f in measured["footprints"].items():
        write_footprint(built["artifacts"], model, f)
    records = read_records(built["artifacts"])
    for model, f in measured["footprints"].items():
        assert records[model]["served_footprint"] == json.loads(json.dumps(f))
        assert records[model]["accuracy"] == built["records"][model]["accuracy"]  # the rest is kept


def test_the_cli_measures_a_running_server_and_prints_the_table(server, built):
    result = run_cli("loadtests", "footprint", "--url", server.http_url, "--models", "digits_fp32",
                     "--memory-budget", "2GiB", "--repository", built["repository"], "--artifacts", built["artifacts"],
                     timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(l for l in lines if "fit in 2GiB" in l)
    row = next(l for l in lines if l.split()[:1] == ["digits_fp32"])
    columns = dict(zip(header.split()[-1:], row.split()[-1:]))
    entry = read_records(built["artifacts"])["digits_fp32"]["served_footprint"]
    assert int(columns["2GiB"]) == 2 * 1024 ** 3 // entry["rss_bytes_per_instance"]
    assert server.models() and all(m.state == "READY" for m in server.models() if m.name in built["records"])


def test_a_load_test_run_measures_first_and_reports_it(server, built, tmp_path):
    target = Target(server.http_url, server.grpc_url, server.metrics_url)
    lines = []
    results = run_load(["digits_fp32"], target, LoadSettings(users=(1,), duration_s=2), built["artifacts"], tmp_path,
                       progress=lines.append, footprint=True, repository=built["repository"], memory_budget="1GB")
    assert "measuring load time and memory of digits_fp32" in lines
    assert lines.index("measuring load time and memory of digits_fp32") < next(
        i for i, l in enumerate(lines) if "1 user(s)" in l)
    footprint = results.footprint["digits_fp32"]
    assert footprint["load_seconds"] > 0 and footprint["rss_bytes_per_instance"] > 10 * MB
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["footprint"]["digits_fp32"] == footprint and saved["memory_budget"] == "1GB"
    assert read_records(built["artifacts"])["digits_fp32"]["served_footprint"] == footprint
    report = build_report(saved, read_records(built["artifacts"]), slo_p99_ms=50, max_accuracy_drop=1.0)
    md, _ = write_report(report, tmp_path)
    text = md.read_text()
    assert "fit in 1GB" in text and f"| {10 ** 9 // footprint['rss_bytes_per_instance']} |" in text
