"""A Locust user counts a request the client retried into a success as one request with its whole latency, and a
request whose retries ran out as one failure. Run in a child process: importing locust monkey-patches the
interpreter with gevent."""

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r'''
import time
import numpy as np
import grpc
from locust.env import Environment
from loadtests import locustfile
from client import RetryPolicy, TritonClient

class Restarting(grpc.RpcError):  # what a dead stub gets from Triton 2.51, as the raw gRPC stub raises it
    def code(self): return grpc.StatusCode.INTERNAL
    def details(self): return "Stub process 'm_0_0' is not healthy."

class Stub:  # the gRPC stub of tritonclient: fails `fail` times, then answers
    def __init__(self, fail): self.fail = fail
    def ModelInfer(self, request, metadata, timeout):
        if self.fail:
            self.fail -= 1
            raise Restarting()
        from tritonclient.grpc import service_pb2
        response = service_pb2.ModelInferResponse(model_name="m")
        out = response.outputs.add(name="y", datatype="FP32", shape=[1, 2])
        response.raw_output_contents.append(np.zeros((1, 2), np.float32).tobytes())
        return response

def user_with(fail, attempts):
    env = Environment(user_classes=[locustfile.GrpcUser])
    env.create_local_runner()  # the runner is what feeds request events into env.stats
    user = locustfile.GrpcUser(env)
    user.model, user.expected = "m", {"y": [2]}
    user.client = TritonClient("grpc://127.0.0.1:1", admin_key="", retry_policy=RetryPolicy(attempts=attempts,
                                                                                               backoff_s=0.2))
    fake = user.client._clients[0]
    fake._client_stub = Stub(fail)
    fake._get_metadata = lambda headers: ()
    from client.triton import PreparedRequest
    user.requests, user.next = [(PreparedRequest("m", ["y"], object()), 1)], 0
    return env, user

env, user = user_with(fail=2, attempts=6)
user.send()
total = env.stats.total
print("retried", total.num_requests, total.num_failures, total.max_response_time)
env, user = user_with(fail=5, attempts=3)
user.send()
total = env.stats.total
print("exhausted", total.num_requests, total.num_failures, flush=True)
import os
os._exit(0)  # as locustfile.exit_now: gRPC's gevent integration can hang the interpreter's shutdown
'''


def test_a_retried_success_is_one_request_with_its_whole_latency_and_spent_retries_one_failure():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.strip()}
    assert "retried" in lines, done.stderr[-3000:]
    requests, failures, max_ms = lines["retried"]
    # two failed tries and two waits (0.1-0.2 s, then 0.2-0.4 s) inside the one measured request
    assert (int(requests), int(failures)) == (1, 0) and float(max_ms) >= 300
    assert [int(n) for n in lines["exhausted"]] == [1, 1]
