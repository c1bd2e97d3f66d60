"""One build of every test model and one real embedded Triton server for the whole e2e session."""

import dataclasses
import os
import pathlib

import pytest

from builder.pipeline.build import build_variant
from builder.pipeline.models import resolve_spec
from builder.serving.server import EmbeddedServer, free_port
from builder.core.spec import load_spec
from builder.serving.tritonconfig import ServingConfig
from client import TritonClient
from tests.conftest import TINY_SPEC

# The tiny models (here, and the text one of test_input_validation.py) wait up to 200 ms for company in their queue,
# so concurrent requests are reliably batched together. Their latency budget sets their queue timeout: the delay plus
# half the budget (queue_policy). With the default 50 ms budget a request waiting out the delay had 25 ms to spare,
# and a 40 ms stall of a busy CI machine got perf_analyzer's requests rejected ("Request timeout expired"); a 1 s
# budget leaves 500 ms for such stalls.
BATCHING = ServingConfig(max_queue_delay_us=200_000, slo_p99_ms=1000.0)
# minilm's fp32 is MiniLM fine-tuned end to end (builder/pipeline/sources/minilm.yaml: the full recipe). The tests' teacher
# takes TEST_TEACHER_STEPS steps of batch 32 at lr 1e-4 from the frozen encoder's head instead (about a minute here);
# every minilm variant of the e2e suite is measured against this one.
TEST_TEACHER_STEPS = 80


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict:
    """{"repository", "artifacts", "specs": {name: spec}, "records": {triton model: record entry}}.

    KIT_TEST_ARTIFACTS (optional) keeps data splits, the trained sentiment head and the fine-tuned teacher between
    local runs.
    """
    root = tmp_path_factory.mktemp("kit")
    artifacts = pathlib.Path(os.environ.get("KIT_TEST_ARTIFACTS") or root / "artifacts")
    repository = root / "model_repository"
    minilm = resolve_spec("minilm")
    minilm = dataclasses.replace(minilm, variants={**minilm.variants, "fp32": {
        **minilm.variants["fp32"], "train_steps": TEST_TEACHER_STEPS, "train_lr": 1e-4}})
    specs = {"digits": resolve_spec("digits"), "minilm": minilm, "tiny": load_spec(TINY_SPEC)}
    records = {}
    for name, spec in specs.items():
        serving = BATCHING if name == "tiny" else ServingConfig()
        entry = build_variant(spec, "fp32", repository, artifacts, serving, command="tests")
        records[entry["triton_model"]] = entry
    return {"repository": repository, "artifacts": artifacts, "specs": specs, "records": records}


@pytest.fixture(scope="session")
def server(built):
    with EmbeddedServer(built["repository"], free_port(), free_port(), free_port()) as running:
        yield running


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    url = server.http_url if request.param == "http" else server.grpc_url
    with TritonClient(url) as c:
        yield c
