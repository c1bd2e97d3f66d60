"""`python -m loadtests oversize`: what a small request declaring a huge tensor costs the server, on every port, and
what the HTTP front costs a normal request.

1. Per model and port: one request of under 200 bytes that declares about 20 GB (a fixed-shape input: its last
   axis blown up; a variable axis: 10^9 along it). The ports: the public HTTP port (the kit's front), gRPC, and
   Triton's own HTTP behind the front, called without the front's key as a local process could. Memory (VmRSS of
   tritonserver, its stubs and the front) is sampled every 5 ms during the request; the server must answer 4xx,
   grow by less than 100 MB and stay ready (docs/security.md, "Requests cannot make the server allocate").
2. The hot path: p50 of one request at a time over HTTP through the front and straight to Triton's HTTP (the
   path before the front existed), interleaved in rounds in one run, and over gRPC (which has no front).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from builder.core.machine import cpu_isa
from builder.serving.front import FRONT_HEADER
from builder.serving.server import EmbeddedServer, free_port
from builder.serving.stubs import all_stubs, memory

HUGE_BYTES = 20 * 10**9
LONG_AXIS = 10**9  # a variable axis declared this long
GROWTH_LIMIT = 100 * 10**6
TYPE_BYTES = {"TYPE_FP32": 4, "TYPE_INT64": 8, "TYPE_INT32": 4, "TYPE_FP16": 2, "TYPE_UINT8": 1, "TYPE_INT8": 1,
              "TYPE_FP64": 8, "TYPE_BOOL": 1}


def huge_shapes(config: dict) -> dict[str, list[int]]:
    """{input: declared shape} for one request to a model of this (Triton JSON) config: a variable axis set to
    LONG_AXIS, else the last axis grown until the tensor is about HUGE_BYTES."""
    batch = [1] if config.get("max_batch_size", 0) > 0 else []
    shapes = {}
    for tensor in config["input"]:
        dims = [int(d) for d in tensor["dims"]]
        if any(d < 0 for d in dims):
            shapes[tensor["name"]] = batch + [LONG_AXIS if d < 0 else d for d in dims]
        else:
            shape = batch + dims
            rest = int(np.prod(shape[:-1])) * TYPE_BYTES.get(tensor["data_type"], 4)
            shapes[tensor["name"]] = shape[:-1] + [HUGE_BYTES // rest]
    return shapes


def triton_dtype(data_type: str) -> str:
    return data_type.removeprefix("TYPE_")


def family_rss(server: EmbeddedServer) -> int:
    """Resident bytes of tritonserver, its stubs and the front."""
    total = 0
    for pid in [server.process.pid, server.front.pid, *(s.pid for s in all_stubs(server.process.pid))]:
        try:
            total += memory(pid)["rss"]
        except OSError:
            pass
    return total


class Sampler:
    """Peak of family_rss every 5 ms while in use."""

    def __init__(self, server: EmbeddedServer):
        self.server, self.peak, self._stop = server, 0, threading.Event()
        self.before = family_rss(server)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, family_rss(self.server))
            time.sleep(0.005)

    def __exit__(self, *exc):
        time.sleep(0.05)  # an allocation that lands just after the answer still counts
        self._stop.set()
        self._thread.join()


def http_oversize(url: str, model: str, config: dict, shapes: dict) -> tuple[str, str, int, float]:
    """(status, first line of the answer, body bytes, seconds) of the oversize request over HTTP/JSON."""
    inputs = [{"name": t["name"], "shape": shapes[t["name"]], "datatype": triton_dtype(t["data_type"]), "data": [1]}
              for t in config["input"]]
    body = json.dumps({"inputs": inputs}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=body, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = str(response.status), response.read(200).decode(errors="replace")
    except urllib.error.HTTPError as e:
        answer = str(e.code), json.loads(e.read()).get("error", "")
    except (urllib.error.URLError, OSError) as e:
        answer = "no answer", str(e)
    return *answer, len(body), time.monotonic() - started


def grpc_oversize(url: str, model: str, config: dict, shapes: dict) -> tuple[str, str, int, float]:
    """The same over gRPC, raw contents of one element per input; the channel is connected before the clock starts."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=model)
    for tensor in config["input"]:
        entry = request.inputs.add(name=tensor["name"], datatype=triton_dtype(tensor["data_type"]))
        entry.shape.extend(shapes[tensor["name"]])
        request.raw_input_contents.append(bytes(TYPE_BYTES.get(tensor["data_type"], 4)))
    with grpc.insecure_channel(url.removeprefix("grpc://")) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        started = time.monotonic()
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
            answer = "OK", ""
        except grpc.RpcError as e:
            answer = e.code().name, e.details()
        return *answer, request.ByteSize(), time.monotonic() - started


def oversize_rows(server: EmbeddedServer, models: list[str]) -> list[dict]:
    """One row per (model, port): status, seconds to the answer, memory growth, ready afterwards."""
    behind = f"http://127.0.0.1:{server.triton_http_port}"
    ports = [("HTTP (front)", server.http_url, http_oversize), ("gRPC", server.grpc_url, grpc_oversize),
             ("Triton HTTP, no key", behind, http_oversize)]
    rows = []
    for model in models:
        config = server.model_config(model)
        shapes = huge_shapes(config)
        for port, url, send in ports:
            with Sampler(server) as sampler:
                status, message, size, seconds = send(url, model, config, shapes)
            rows.append({"model": model, "port": port, "declared": shapes, "body_bytes": size, "status": status,
                         "seconds": seconds, "growth_bytes": max(0, sampler.peak - sampler.before),
                         "ready": server_ready(server), "message": message.splitlines()[0][:160] if message else ""})
    return rows


def server_ready(server: EmbeddedServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=10) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def hot_path(server: EmbeddedServer, model: str, requests: int, rounds: int) -> dict:
    """p50 ms per round of `requests` sequential requests: HTTP via the front, HTTP straight to Triton (with the
    front's key: the path before the front), gRPC; and the front/direct ratio per round."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    config = server.model_config(model)
    key = (server.workdir / "front-key").read_text().strip()
    arrays = {}
    for tensor in config["input"]:
        dims = [1] + [8 if int(d) < 0 else int(d) for d in tensor["dims"]]
        arrays[tensor["name"]] = np.ones(dims, dtype={"TYPE_INT64": np.int64}.get(tensor["data_type"], np.float32))

    def caller(module, url, headers=None):
        client = module.InferenceServerClient(url.split("://", 1)[1])
        inputs = []
        for name, array in arrays.items():
            entry = module.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
            entry.set_data_from_numpy(array)
            inputs.append(entry)
        return lambda: client.infer(model, inputs, headers=headers)

    paths = {"HTTP via front": caller(httpclient, server.http_url),
             "HTTP direct": caller(httpclient, f"http://127.0.0.1:{server.triton_http_port}", {FRONT_HEADER: key}),
             "gRPC": caller(grpcclient, server.grpc_url)}
    p50 = {name: [] for name in paths}
    for _ in range(rounds):
        for name, call in paths.items():
            for _ in range(20):  # warm the connection and the model
                call()
            times = []
            for _ in range(requests):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            p50[name].append(statistics.median(times) * 1000)
    ratios = [f / d for f, d in zip(p50["HTTP via front"], p50["HTTP direct"])]
    return {"model": model, "p50_ms": p50, "front_over_direct": ratios,
            "front_added_ms": [f - d for f, d in zip(p50["HTTP via front"], p50["HTTP direct"])]}


def run_oversize(repository, models: list[str], requests: int = 300, rounds: int = 5,
                 progress=print) -> dict:
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
        progress(f"server up; sending the oversize requests to {', '.join(models)}")
        rows = oversize_rows(server, models)
        progress(f"hot path: {rounds} rounds x {requests} sequential requests per path and model")
        paths = [hot_path(server, model, requests, rounds) for model in models]
    return {"cpu": cpu_isa(), "rows": rows, "hot_path": paths}


def print_oversize(results: dict) -> None:
    print(f"\nCPU: {results['cpu']['model']} ({results['cpu']['summary']})")
    print(f"\n{'model':<16} {'port':<20} {'body B':>7} {'answer':<18} {'ms':>8} {'growth MB':>10} ready")
    for r in results["rows"]:
        print(f"{r['model']:<16} {r['port']:<20} {r['body_bytes']:>7} {r['status']:<18} {r['seconds'] * 1000:>8.1f} "
              f"{r['growth_bytes'] / 1e6:>10.1f} {'yes' if r['ready'] else 'NO'}")
    print(f"\n{'model':<16} {'path':<16} p50 ms per round (1 user)")
    for h in results["hot_path"]:
        for name, values in h["p50_ms"].items():
            print(f"{h['model']:<16} {name:<16} " + "  ".join(f"{v:.3f}" for v in values))
        ratios, added = h["front_over_direct"], h["front_added_ms"]
        print(f"{h['model']:<16} front / direct   median {statistics.median(ratios):.3f}x "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f}), +{statistics.median(added):.3f} ms "
              f"({min(added):.3f}-{max(added):.3f})")


def verdict(results: dict) -> bool:
    """Every oversize request got a 4xx/INVALID_ARGUMENT, grew memory < 100 MB and left the server ready."""
    return all((r["status"].startswith("4") or r["status"] == "INVALID_ARGUMENT")
               and r["growth_bytes"] < GROWTH_LIMIT and r["ready"] for r in results["rows"])
