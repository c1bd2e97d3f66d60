"""Locust users that send real test examples to a model served by Triton, over gRPC or HTTP.

  locust -f loadtests/locustfile.py --host grpc://127.0.0.1:8001 --model minilm_fp32            (web UI)
  locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --model digits_int8 --headless -u 16 -t 30s

The host's scheme picks the user class (GrpcUser or HttpUser). Each user replays batches of the model's test
split (`--batch-size` examples per request) from the builder's artifacts folder, and checks every response:
a failed request or an output of the wrong shape is a failure, never a fast success. Texts are padded to the
model's length buckets (builder/core/artifacts.py), so Triton can batch them; every request is encoded once, at start.

A request goes through the kit's client, which retries what a retry can cure (a backend being reloaded, a replica
that is down, a full queue: client/retry.py) within its deadline: a retried success counts as one request, with its
whole latency including the failed tries and the waits; only an error left after the retries is a failure.
`--retries 1` counts every reject as a failure (an overload benchmark that measures the server's own answers).

Closed loop (default): each user sends its next request when the last one returns. Open loop
(`--arrival-rate R`): each user sends R requests per second on a fixed schedule whether or not earlier ones have
returned, so a slow server shows up as queueing latency instead of fewer requests (coordinated omission).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import sys
import time

import gevent
import gevent.pool
# gRPC must be told about gevent before any channel exists, or every user's call blocks the whole process and
# the users silently run one at a time.
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import locust.stats  # noqa: E402
from locust import User, constant, events, task  # noqa: E402

from client import RetryPolicy, TritonClient  # noqa: E402
from builder.core.artifacts import bucket_priority, find_record, length_buckets, request_batches  # noqa: E402

# Locust keeps whole milliseconds below 100 ms, too coarse for a 2 ms model. Two significant digits everywhere
# (0.1 ms resolution below 10 ms) through Locust's documented bucketing hook.
locust.stats.bucket_response_time = lambda ms: float(f"{ms:.2g}")

MAX_IN_FLIGHT_PER_USER = 64  # open loop: beyond this the generator, not the server, would be measured


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument("--model", default="", help="served model name, e.g. minilm_fp32")
    parser.add_argument("--batch-size", type=int, default=1, help="examples per request")
    parser.add_argument("--arrival-rate", type=float, default=0.0,
                        help="open loop: requests per second per user (0: closed loop)")
    parser.add_argument("--artifacts", default="artifacts", help="the builder's artifacts folder (test splits)")
    parser.add_argument("--split", default="test", help="which cached split to replay")
    parser.add_argument("--tokens", type=int, default=0,
                        help="text models: cut every request to exactly this many tokens (0: each text as long as it is)")
    parser.add_argument("--length-buckets", type=int, default=1, choices=(0, 1),
                        help="text models: 1 pads each request to the model's length buckets, so Triton can batch "
                             "them (default); 0 sends each text as long as it is")
    parser.add_argument("--retries", type=int, default=RetryPolicy().attempts,
                        help="tries per request, retries included (default: the client's); 1: never retry")
    parser.add_argument("--errors-json", default="", include_in_web_ui=False,
                        help="write Locust's error table (message and count) to this JSON file at the end")


@events.init.add_listener
def keep_users_for_host(environment, **_kwargs):
    """Run only the user class that speaks the host's protocol (both are in this file)."""
    host = (environment.host or "").lower()
    if host.startswith(("grpc://", "http://")) and len(environment.user_classes) > 1:
        environment.user_classes[:] = [u for u in environment.user_classes if host.startswith(u.protocol + "://")]


@events.quitting.add_listener
def write_errors(environment, **_kwargs):
    options = environment.parsed_options
    if options and options.errors_json and not options.worker:  # the master (or a local run) has the totals
        pathlib.Path(options.errors_json).write_text(json.dumps(list(environment.stats.serialize_errors().values())))


@events.quit.add_listener
def exit_now(exit_code, **_kwargs):
    """Everything is written by now. gRPC's gevent integration can hang the interpreter's shutdown (seen here
    intermittently; grpc/grpc#20299 family), so leave without it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


class ShapeError(AssertionError):
    pass


class TritonUser(User):
    abstract = True
    protocol = ""
    wait_time = constant(0)

    def on_start(self):
        options = self.environment.parsed_options
        if not options.model:
            raise ValueError("pass --model (a model name in the server's repository)")
        self.model = options.model
        self.open_loop = options.arrival_rate > 0
        self.interval = 1.0 / options.arrival_rate if self.open_loop else 0.0
        self.client = TritonClient(self.host, concurrency=MAX_IN_FLIGHT_PER_USER if self.open_loop else 1,
                                   retry_policy=RetryPolicy(attempts=options.retries))
        folder, _entry = find_record(pathlib.Path(options.artifacts), self.model)
        batches = request_batches(folder, options.split, options.batch_size, tokens=options.tokens,
                                  buckets=None if options.length_buckets else ())
        outputs = self.client.metadata(self.model)["outputs"]
        self.outputs = [o["name"] for o in outputs]
        self.expected = {o["name"]: o["shape"][1:] for o in outputs}  # per example; -1 matches any size
        # Everything that does not change between sends is done here, outside the timed block: the request is
        # encoded once (input tensors, requested outputs, the gRPC message or HTTP body), so a user's CPU goes to
        # sending, and the generator is less often the bottleneck
        buckets = length_buckets(folder) if options.length_buckets else ()
        self.requests = [(self.client.prepare(self.model, batch, self.outputs, bucket_priority(batch, buckets)),
                          len(next(iter(batch.values())))) for batch in batches]
        self.next = random.randrange(len(self.requests))  # users start at different examples
        self.pool = gevent.pool.Pool(MAX_IN_FLIGHT_PER_USER)

    def on_stop(self):
        self.pool.kill()
        self.client.close()

    @task
    def infer(self):
        if not self.open_loop:
            self.send()
            return
        deadline = time.monotonic()
        while True:  # one greenlet per arrival, on schedule
            deadline += self.interval
            gevent.sleep(max(0.0, deadline - time.monotonic()))
            if self.pool.full():
                with self.environment.events.request.measure(self.protocol, self.model):
                    raise RuntimeError(f"more than {MAX_IN_FLIGHT_PER_USER} requests in flight for one user: "
                                       "the server cannot keep up with this arrival rate")
                continue
            self.pool.spawn(self.send)

    def send(self):
        prepared, size = self.requests[self.next]
        self.next = (self.next + 1) % len(self.requests)
        # one measured request, however many tries the client needed for it
        with self.environment.events.request.measure(self.protocol, self.model) as meta:
            result = self.client.send(prepared)
            meta["response_length"] = sum(a.nbytes for a in result.values())
            self.check(result, size)

    def check(self, result: dict, size: int) -> None:
        for name, trailing in self.expected.items():
            shape = result[name].shape
            if shape[0] != size or len(shape) != len(trailing) + 1 or any(
                    want not in (-1, got) for want, got in zip(trailing, shape[1:])):
                raise ShapeError(f"output {name} has shape {list(shape)}, expected [{size}, "
                                 f"{', '.join(map(str, trailing))}]")


class GrpcUser(TritonUser):
    protocol = "grpc"


class HttpUser(TritonUser):
    protocol = "http"
