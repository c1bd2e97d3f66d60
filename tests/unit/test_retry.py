"""The client's retry rules on a fake transport and a fake clock: which errors are retried, how often, on which
replica, with waits that stay within their jitter bounds and a deadline that bounds the whole call."""

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from client import (DeadlineExceededError, InferenceError, InvalidInputError, ModelNotFoundError,
                    ModelRestartingError, RetryPolicy, ServerOverloadedError, ServerUnavailableError, TritonClient)
from client.retry import call
from client.triton import parse_urls, translate

RESTARTING = ModelRestartingError("model `m` is restarting", hint="retry")


class FakeClock:
    """time.monotonic and time.sleep for a test: sleeping advances the clock; each try takes `per_try` seconds."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeTransport:
    """Answers try i with outcomes[i] (an exception is raised, anything else returned) after `per_try` seconds, or
    raises DeadlineExceededError when `remaining` ends first, as gRPC's call deadline does; records (replica,
    remaining) of every try."""

    def __init__(self, clock: FakeClock, outcomes: list, per_try: float = 0.0):
        self.clock, self.outcomes, self.per_try, self.tries = clock, list(outcomes), per_try, []

    def __call__(self, replica: int, remaining: float):
        self.tries.append((replica, remaining))
        if self.per_try > remaining:
            self.clock.now += remaining
            raise DeadlineExceededError("Deadline Exceeded")
        self.clock.now += self.per_try
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def run(outcomes, replicas=1, deadline=60.0, policy=RetryPolicy(), per_try=0.0, first=0, random=lambda: 0.5):
    clock = FakeClock()
    transport = FakeTransport(clock, outcomes, per_try)
    try:
        result = call(transport, replicas, deadline, policy, first=first, clock=clock.clock, sleep=clock.sleep,
                      random=random)
    except Exception as e:
        result = e
    return result, transport, clock


@pytest.mark.parametrize("error", [RESTARTING, ServerUnavailableError("down"), ServerOverloadedError("queue full")])
def test_errors_a_retry_can_cure_are_retried_until_one_answers(error):
    (answer, replica), transport, clock = run([error, error, "outputs"])
    assert answer == "outputs" and replica == 0 and len(transport.tries) == 3 and len(clock.sleeps) == 2


@pytest.mark.parametrize("error", [InvalidInputError("bad shape"), ModelNotFoundError("no such model"),
                                   InferenceError("failed"), DeadlineExceededError("too late")])
def test_other_errors_are_raised_at_once(error):
    raised, transport, clock = run([error, "outputs"])
    assert raised is error and len(transport.tries) == 1 and clock.sleeps == []


def test_tries_are_bounded_and_the_last_error_keeps_its_type():
    raised, transport, _ = run([RESTARTING] * 10, policy=RetryPolicy(attempts=4))
    assert isinstance(raised, ModelRestartingError) and len(transport.tries) == 4
    assert "gave up after 4 tries" in str(raised) and raised.hint == "retry" and raised.__cause__ is RESTARTING


def test_backoff_doubles_up_to_its_cap_and_jitter_stays_within_half_a_step_and_a_step():
    policy = RetryPolicy(attempts=8, backoff_s=0.1, max_backoff_s=1.0)
    steps = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for random, factor in ((lambda: 0.0, 0.5), (lambda: 0.999999, 1.0)):
        _, _, clock = run([RESTARTING] * 7, policy=policy, random=random)
        assert clock.sleeps == pytest.approx([s * factor for s in steps], rel=1e-5)
    import random as real_random

    waits = [policy.backoff(3, real_random.random) for _ in range(1000)]
    assert 0.2 <= min(waits) and max(waits) <= 0.4 and max(waits) - min(waits) > 0.1  # spread, within bounds


def test_the_deadline_bounds_the_whole_call_and_each_try_gets_what_is_left():
    # each failed try takes 1 s (a dead stub: Triton waits ~1 s), deadline 2.5 s: no wait may reach past it
    raised, transport, clock = run([RESTARTING] * 10, deadline=2.5, per_try=1.0,
                                   policy=RetryPolicy(attempts=10, backoff_s=0.1))
    assert isinstance(raised, DeadlineExceededError) and clock.now == pytest.approx(2.5)
    # 2.5 - 1 - 0.075 (the wait: 0.1 x 0.75); then - 1 - 0.15
    assert [round(r, 3) for _, r in transport.tries] == [2.5, 1.425, 0.275]
    # tries that fail fast: the last wait would reach past the deadline, so the last error is raised before it
    raised, transport, clock = run([RESTARTING] * 10, deadline=0.5, policy=RetryPolicy(attempts=10, backoff_s=0.1))
    assert isinstance(raised, ModelRestartingError) and clock.now <= 0.5 and len(transport.tries) == 3


def test_a_deadline_spent_before_a_try_is_a_deadline_error():
    clock = FakeClock()

    def slow_sleep(seconds):  # the wait overran (a busy machine): nothing left for another try
        clock.now += 5

    with pytest.raises(DeadlineExceededError, match="deadline of 3 s"):
        call(FakeTransport(clock, [RESTARTING]), 1, 3.0, RetryPolicy(), clock=clock.clock, sleep=slow_sleep)


def test_failover_goes_round_the_replicas_from_the_one_in_use():
    down = ServerUnavailableError("connection refused")
    (answer, replica), transport, _ = run([down, down, "outputs"], replicas=3, first=1)
    assert [r for r, _ in transport.tries] == [1, 2, 0] and replica == 0 and answer == "outputs"
    (_, replica), transport, _ = run([down, down, down, "outputs"], replicas=2)
    assert [r for r, _ in transport.tries] == [0, 1, 0, 1] and replica == 1


def test_one_try_policy_never_retries():
    raised, transport, _ = run([RESTARTING, "outputs"], policy=RetryPolicy(attempts=1))
    assert isinstance(raised, ModelRestartingError) and len(transport.tries) == 1


# What Triton 2.51 answers when its queue policy sheds load (measured: docs/serving.md, "Bounded queues").
@pytest.mark.parametrize("status", ["503", "StatusCode.UNAVAILABLE"])
@pytest.mark.parametrize("message, why", [("[request id: <id_unknown>] Exceeds maximum queue size", "queue is full"),
                                          ("Request timeout expired", "past its timeout")])
def test_triton_shedding_load_is_an_overload_error_not_an_unreachable_server(status, message, why):
    error = translate(InferenceServerException(msg=message, status=status), "m")
    assert type(error) is ServerOverloadedError and why in str(error) and "retry" in error.hint


def test_a_grpc_deadline_is_a_deadline_error_and_a_bad_input_stays_one():
    error = translate(InferenceServerException(msg="Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), "m")
    assert type(error) is DeadlineExceededError
    bad = translate(InferenceServerException(msg="tokens: token ids must be in [0, 49]",
                                             status="StatusCode.INVALID_ARGUMENT"), "m")
    assert type(bad) is InvalidInputError


def test_urls_of_replicas_are_one_protocol():
    assert parse_urls("grpc://a:1, grpc://b:2") == [("grpc", "a:1"), ("grpc", "b:2")]
    assert parse_urls(["http://a", "http://b:9"]) == [("http", "a:8000"), ("http", "b:9")]
    with pytest.raises(Exception, match="mix gRPC and HTTP"):
        parse_urls("grpc://a:1,http://b:2")


class FakeTriton:
    """A tritonclient-like client whose infer raises `errors` in turn, then answers; records the keywords."""

    def __init__(self, errors):
        self.errors, self.calls = list(errors), []

    def infer(self, model, inputs, outputs=None, **kwargs):
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return type("Result", (), {"as_numpy": lambda _self, name: name})()

    def close(self):
        pass


def test_the_client_fails_over_to_a_live_replica_and_stays_there():
    client = TritonClient("grpc://127.0.0.1:1,grpc://127.0.0.1:2", admin_key="", timeout=5)
    dead = FakeTriton([grpc_unavailable()] * 100)
    live = FakeTriton([InferenceServerException(msg="Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")])
    client._clients = [dead, live]
    assert client.infer("m", {"x": [[1.0]]}, outputs=["y"]) == {"y": "y"}
    # dead, live (queue full), dead again, live: answered
    assert len(dead.calls) == 2 and len(live.calls) == 2 and client.replica_url == "grpc://127.0.0.1:2"
    assert client.infer("m", {"x": [[1.0]]}, outputs=["y"]) == {"y": "y"} and len(dead.calls) == 2
    # the deadline goes to Triton as the queue timeout (µs) and to gRPC as the call's deadline (s)
    sent = live.calls[-1]
    assert 0 < sent["client_timeout"] <= 5 and sent["timeout"] == pytest.approx(sent["client_timeout"] * 1e6, rel=0.01)


def grpc_unavailable():
    return InferenceServerException(msg="failed to connect to all addresses", status=str(grpc.StatusCode.UNAVAILABLE))


def test_a_connection_closed_mid_request_is_an_unreachable_server():
    import http.client

    class HTTPConnectionClosed(http.client.HTTPException):  # geventhttpclient's, without importing gevent here
        pass

    assert type(translate(HTTPConnectionClosed("connection closed."), "m")) is ServerUnavailableError


def test_the_asyncio_form_follows_the_same_rules():
    import asyncio

    from client.retry import acall

    outcomes = [ServerOverloadedError("queue full"), ServerUnavailableError("down"), "outputs"]
    tried = []

    async def attempt(replica, remaining):
        tried.append(replica)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = RetryPolicy(backoff_s=0.001, max_backoff_s=0.002)
    assert asyncio.run(acall(attempt, 2, 5.0, policy)) == ("outputs", 0)
    assert tried == [0, 1, 0]

    async def refused(replica, remaining):
        raise InvalidInputError("bad shape")

    with pytest.raises(InvalidInputError):
        asyncio.run(acall(refused, 2, 5.0, policy))
