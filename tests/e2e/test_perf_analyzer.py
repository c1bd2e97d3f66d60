"""NVIDIA's perf_analyzer, fetched by loadtests/perf_analyzer.py, loading the tiny model on the real server."""

import numpy as np
import pytest

from builder.core.artifacts import load_splits
from client import TritonClient
from loadtests.perf_analyzer import (DEFAULT_CACHE, WINDOWS, PerfAnalyzerError, PerfAnalyzerUnavailable,
                                     ensure_perf_analyzer, run_perf_analyzer, write_input_data)

pytestmark = pytest.mark.e2e

MODEL = "tiny_fp32"
OUT_OF_VOCABULARY = 1000  # tests/fixtures/tiny/tiny_model.py has 50 tokens
SECONDS = 1.0  # one measurement window; perf_analyzer measures WINDOWS of them, ~3.5 s per run in all


@pytest.fixture(scope="module")
def binary():
    try:
        return ensure_perf_analyzer()
    except PerfAnalyzerUnavailable as e:
        if (DEFAULT_CACHE / "perf_analyzer").is_file():
            raise  # fetched but does not run here: a real failure, not a missing network
        pytest.skip(f"perf_analyzer could not be downloaded: {e}")


def served_requests(url: str) -> int:
    with TritonClient(url) as client:
        (stats,) = client.statistics(MODEL)["model_stats"]
    return int(stats["inference_stats"]["success"]["count"])  # gRPC's JSON writes int64 as a string


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_real_requests(binary, server, built, tmp_path, protocol):
    tokens = load_splits(built["specs"]["tiny"], built["artifacts"] / "tiny")["test"].inputs["tokens"]
    data = write_input_data([{"tokens": tokens[i:i + 1]} for i in range(len(tokens))], tmp_path / "tiny.json")
    url = server.grpc_url if protocol == "grpc" else server.http_url
    before = served_requests(url)

    result = run_perf_analyzer(url, MODEL, concurrency=2, seconds=SECONDS, input_data=data, binary=binary)

    assert result["throughput"] > 0 and 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert (result["concurrency"], result["batch_size"]) == (2, 1)
    assert f"-i {protocol}" in result["command"] and f"--input-data={data}" in result["command"]
    # Triton itself saw the load perf_analyzer reports: every measured request, plus the ones between windows
    assert served_requests(url) - before >= result["throughput"] * WINDOWS * SECONDS * 0.5


def test_real_data_reaches_the_model(binary, server, tmp_path):
    # an unknown token id is refused by the backend's input checks: the message proves perf_analyzer sent this file's
    # data
    data = write_input_data([{"tokens": np.full((1, 6), OUT_OF_VOCABULARY, dtype=np.int64)}], tmp_path / "bad.json")
    with pytest.raises(PerfAnalyzerError, match=f"input `tokens`: {OUT_OF_VOCABULARY} at \\[0, 0\\] is outside the allowed"):
        run_perf_analyzer(server.grpc_url, MODEL, concurrency=1, seconds=SECONDS, input_data=data, binary=binary)


def test_a_request_without_a_batch_axis_of_one_is_refused(tmp_path):
    with pytest.raises(PerfAnalyzerError, match="no batch axis of 1"):
        write_input_data([{"tokens": np.zeros((2, 6), dtype=np.int64)}], tmp_path / "data.json")
