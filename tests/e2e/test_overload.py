"""Overload and faults as a client sees them, on the real embedded server: a bounded queue sheds load with a fast,
typed error and the server stays healthy; a backend killed under load and a whole replica killed under load cost
the kit's client no request (it retries within its deadline, and fails over to the other replica).

Only the tiny model (built here, ~15 s): it runs in well under a millisecond, so the overload case holds its
batches in the queue (a 300 ms batching delay) instead of needing more client threads than 2 cores can drive."""

import asyncio
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from builder.pipeline.build import build_variant
from builder.core.spec import load_spec
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.stubs import find_stubs
from builder.serving.tritonconfig import ServingConfig, parse_text
from client import NO_RETRY, AsyncTritonClient, ClientError, ServerOverloadedError, TritonClient
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.e2e

MODEL = "tiny_fp32"
TOKENS = {"tokens": np.arange(6, dtype=np.int64)[None, :]}
USERS = 4


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("overload")
    build_variant(load_spec(TINY_SPEC), "fp32", root / "repo", root / "artifacts", ServingConfig(), command="tests")
    return root / "repo"


@pytest.fixture(scope="module")
def server(repository):
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as running:
        yield running


def test_the_built_config_bounds_the_queue(repository):
    policy = parse_text((repository / MODEL / "config.pbtxt").read_text()).dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (2 * 16, 25_000)  # max batch 16, 50 ms
    assert policy.timeout_action == 0 and policy.allow_timeout_override  # REJECT


def load_with(server, dynamic_batching: dict) -> None:
    config = server.model_config(MODEL)
    config["dynamic_batching"] = dynamic_batching
    assert server.load(MODEL, config), server.log_tail()


def burst(url: str, count: int) -> list[tuple[float, Exception | None]]:
    """`count` requests at once, each from its own client that never retries: [(seconds, error or None)]."""
    def one(_):
        with TritonClient(url, retry_policy=NO_RETRY, timeout=30) as client:
            started = time.monotonic()
            try:
                client.infer(MODEL, TOKENS)
                return time.monotonic() - started, None
            except ClientError as e:
                return time.monotonic() - started, e

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_full_queue_and_a_queue_timeout_are_refused_fast_with_an_overload_error(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    on_disk = parse_text((server.repository / MODEL / "config.pbtxt").read_text())
    try:
        # the batcher holds requests 300 ms for company: 12 at once overflow a queue of 4
        load_with(server, {"max_queue_delay_microseconds": 300_000, "default_queue_policy": {
            "max_queue_size": 4, "timeout_action": "REJECT", "allow_timeout_override": True}})
        results = burst(url, 12)
        refused = [(took, e) for took, e in results if e is not None]
        assert len(refused) == 8, results
        assert all(isinstance(e, ServerOverloadedError) and "its queue is full" in str(e)
                   and "Exceeds maximum queue size" in str(e) for _, e in refused)
        assert max(took for took, _ in refused) < 0.2  # at once, not after the 300 ms wait (0.6-18 ms measured)
        # one request waits longer than the queue timeout: refused when it runs out, not when the batch would go
        load_with(server, {"max_queue_delay_microseconds": 300_000, "default_queue_policy": {
            "default_timeout_microseconds": 50_000, "timeout_action": "REJECT", "allow_timeout_override": True}})
        [(took, error)] = burst(url, 1)
        assert isinstance(error, ServerOverloadedError) and "Request timeout expired" in str(error)
        assert 0.045 < took < 0.25
        print(f"\n{protocol}: queue full: {len(refused)} of 12 refused in {min(t for t, _ in refused) * 1000:.1f}-"
              f"{max(t for t, _ in refused) * 1000:.1f} ms: {refused[0][1]}\n{protocol}: queue timeout of 50 ms: "
              f"refused after {took * 1000:.1f} ms: {error}")  # docs/serving.md
    finally:
        from google.protobuf import json_format

        assert server.load(MODEL, json_format.MessageToDict(on_disk, preserving_proto_field_name=True))
    with TritonClient(url) as client:  # healthy, and serving normally again
        assert client.is_ready() and client.infer(MODEL, TOKENS)["logits"].shape == (1, 3)


def under_load(url, during, seconds_after: float = 1.5, users: int = USERS) -> tuple[int, list, float]:
    """`users` threads send requests through the kit's client (default retries, 30 s deadline) while
    `during(elapsed)` runs once after 1 s of load; load goes on `seconds_after` s after it returns.
    Returns (answered, [errors], worst latency in s)."""
    stop = threading.Event()
    answered, errors, worst = [0] * users, [], [0.0] * users

    def user(i):
        with TritonClient(url, timeout=30) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    assert client.infer(MODEL, TOKENS)["logits"].shape == (1, 3)
                    answered[i] += 1
                except Exception as e:  # a lost request
                    errors.append(e)
                worst[i] = max(worst[i], time.monotonic() - started)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        during()
        time.sleep(seconds_after)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return sum(answered), errors, max(worst)


def test_a_stub_killed_under_load_loses_no_request(server):
    deadline = time.monotonic() + 20
    while len(find_stubs(MODEL, server.process.pid)) != 1:  # a reload's old stub ends after its new one starts
        assert time.monotonic() < deadline, "tiny_fp32 does not settle at one stub"
        time.sleep(0.1)

    def kill_stub_and_wait_for_reload():
        (stub,) = find_stubs(MODEL, server.process.pid)
        os.kill(stub.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len(server.recoveries) < 1 + before and time.monotonic() < deadline:
            time.sleep(0.1)

    before = len(server.recoveries)
    answered, errors, worst = under_load(server.grpc_url, kill_stub_and_wait_for_reload)
    assert len(server.recoveries) == before + 1 and server.recoveries[-1].reloaded
    print(f"\nstub killed under {USERS} users: {answered} requests answered, {len(errors)} lost, "
          f"worst latency {worst:.2f} s")  # docs/serving.md
    assert errors == [] and answered > 0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_replica_killed_under_load_loses_no_request(repository, tmp_path, protocol):
    # two servers of one repository, like two pods; one dies whole, as the official image's server does when its
    # native backend crashes
    second = tmp_path / "repo"
    shutil.copytree(repository, second)
    with EmbeddedServer(repository, free_port(), free_port(), free_port(), recover=False) as first, \
            EmbeddedServer(second, free_port(), free_port(), free_port(), recover=False) as other:
        urls = [first.grpc_url, other.grpc_url] if protocol == "grpc" else [first.http_url, other.http_url]

        def kill_first():
            os.killpg(first.process.pid, signal.SIGKILL)  # the server and its stubs, at once
            first.process.wait()

        answered, errors, worst = under_load(urls, kill_first)
        print(f"\n{protocol}: replica killed under {USERS} users: {answered} requests answered, {len(errors)} lost, "
              f"worst latency {worst * 1000:.0f} ms")  # docs/serving.md
        assert errors == [] and answered > 0
        with TritonClient(other.http_url) as client:
            assert client.is_ready()
        if protocol == "grpc":  # the asyncio client fails over from the dead replica too
            async def infer():
                async with AsyncTritonClient(urls, timeout=10) as client:
                    return await client.infer(MODEL, TOKENS)

            with TritonClient(other.grpc_url) as client:
                assert_same(asyncio.run(infer()), client.infer(MODEL, TOKENS))


def assert_same(outputs: dict, expected: dict) -> None:
    assert outputs.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(outputs[name], array)


def test_the_open_loop_benchmark_runs_with_and_without_the_queue_policy(repository):
    from loadtests.overload import OverloadSettings, run_overload

    settings = OverloadSettings(multiples=(0.5, 2.0), seconds=1.0, users=2)
    results = run_overload(repository, [MODEL], repository.parent / "artifacts", settings, policy_off_too=True,
                           progress=lambda line: None)
    assert [run["queue_policy"] for run in results["runs"]] == [True, False]
    for run in results["runs"]:
        assert run["closed_loop_max_per_s"] > 0 and run["recovery_s"] is not None
        for step in run["steps"]:
            assert step["sent"] > 0 and step["answered"] > 0 and step["errors"] == 0
            assert step["memory_peak_mb"] >= step["memory_start_mb"] > 0
    # the copy without the policy really has none; the built one has it
    from loadtests.overload import single_model

    built = (repository / MODEL / "config.pbtxt").read_text()
    assert "default_queue_policy" in built
    bare = single_model(repository, MODEL, repository.parent / "bare", queue_policy=False)
    assert "default_queue_policy" not in (bare / MODEL / "config.pbtxt").read_text()
