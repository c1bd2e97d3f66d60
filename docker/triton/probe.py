#!/usr/bin/env python3
"""Probes and a smoke test for a Triton server, standard library only: it runs on the Triton image's own python3
(3.10, no tritonclient), in the Docker HEALTHCHECK, the Kubernetes probes and the smoke-test Job alike.

    probe.py ready [--url URL]              exit 0 when the server is ready AND serves at least one model
    probe.py live  [--url URL]              exit 0 when the server answers and every model that runs in a Python
                                            stub answers one inference
    probe.py smoke [--url URL] [--wait S]   wait up to S seconds for `ready`, then one inference per served model;
                                            prints a table; exit 0 only if every model answered

Why not the health endpoints alone: with --strict-readiness=true an empty repository is "ready" (zero of zero models
loaded), and after a Python-backend stub dies (killed by the OOM killer, say) Triton 2.51 keeps answering 200 on
/v2/health/ready and /v2/models/<m>/ready while every request to that model fails: only an inference tells.

Only APIs that docker/triton/entrypoint.sh leaves open are used: health, statistics (which lists the loaded models),
model config and inference. The request for a model is made from its config: INT inputs are ones (a valid token id
and attention mask), FP inputs zeros, BYTES inputs a short sentence, and each variable dimension is 4.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

VARIABLE_DIM = 4
TEXT = "a smoke test"


class ProbeError(Exception):
    """What went wrong, in one line."""


def request(url: str, path: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    """GET (or POST `body` as JSON) and return the JSON answer; ProbeError with Triton's message otherwise."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace").strip()
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise ProbeError(f"{path}: HTTP {e.code}: {detail}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ProbeError(f"{url}{path}: {getattr(e, 'reason', e)}") from e
    return json.loads(text) if text else {}


def served_models(url: str) -> list[str]:
    """Names of the loaded models (the statistics API lists only those), sorted."""
    return sorted({m["name"] for m in request(url, "/v2/models/stats").get("model_stats", [])})


def check_ready(url: str) -> list[str]:
    """The served models; ProbeError unless the server is ready and serves at least one."""
    request(url, "/v2/health/ready")
    models = served_models(url)
    if not models:
        raise ProbeError("the server is up but serves no model: the model repository is empty or nothing loaded")
    return models


def datatype(config_type: str) -> str:
    """config.pbtxt's TYPE_FP32 -> the inference protocol's FP32 (TYPE_STRING -> BYTES)."""
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def inference_body(config: dict) -> dict:
    """A valid request for the model described by `config` (Triton's JSON form of its config.pbtxt)."""
    inputs = []
    for spec in config.get("input", []):
        if spec.get("optional"):
            continue
        dims = [int(d) for d in spec.get("dims", [])]
        shape = ([1] if int(config.get("max_batch_size", 0)) > 0 else []) + [VARIABLE_DIM if d < 0 else d for d in dims]
        count = 1
        for d in shape:
            count *= d
        kind = datatype(spec["data_type"])
        value = TEXT if kind == "BYTES" else False if kind == "BOOL" else 1 if kind[0] in "IU" else 0.0
        inputs.append({"name": spec["name"], "shape": shape, "datatype": kind, "data": [value] * count})
    return {"inputs": inputs}


def infer_once(url: str, model: str) -> dict:
    """One inference with a made-up valid request; the config, for the caller. ProbeError if it fails or the
    answer lacks an output the config declares."""
    quoted = urllib.parse.quote(model, safe="")
    config = request(url, f"/v2/models/{quoted}/config")
    answer = request(url, f"/v2/models/{quoted}/infer", inference_body(config), timeout=60.0)
    missing = {o["name"] for o in config.get("output", [])} - {o["name"] for o in answer.get("outputs", [])}
    if missing:
        raise ProbeError(f"{model}: the answer has no output {', '.join(sorted(missing))}")
    return config


def in_stub(config: dict) -> bool:
    """Whether Triton runs the model in a Python-backend stub process (a Python model, or a Python-based backend
    such as the kit's embedded `onnxruntime`, reported with runtime model.py)."""
    return config.get("backend") == "python" or str(config.get("runtime", "")).endswith(".py")


def check_live(url: str) -> None:
    request(url, "/v2/health/live")
    for model in served_models(url):
        quoted = urllib.parse.quote(model, safe="")
        if in_stub(request(url, f"/v2/models/{quoted}/config")):
            infer_once(url, model)


def smoke(url: str, wait: float) -> int:
    deadline = time.monotonic() + wait
    while True:
        try:
            models = check_ready(url)
            break
        except ProbeError as e:
            if time.monotonic() >= deadline:
                print(f"error: not ready after {wait:.0f} s: {e}", file=sys.stderr)
                return 1
            time.sleep(2)
    rows, failed = [], 0
    for model in models:
        start = time.perf_counter()
        try:
            infer_once(url, model)
            rows.append((model, "ok", f"{(time.perf_counter() - start) * 1000:.1f}", ""))
        except ProbeError as e:
            failed += 1
            rows.append((model, "FAILED", f"{(time.perf_counter() - start) * 1000:.1f}", str(e)))
    header = ("model", "result", "ms", "detail")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    print(f"{len(models) - failed} of {len(models)} models answered one inference at {url}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=["ready", "live", "smoke"])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint")
    parser.add_argument("--wait", type=float, default=0.0, help="smoke: seconds to wait for the server to be ready")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    if args.check == "smoke":
        return smoke(url, args.wait)
    try:
        check_ready(url) if args.check == "ready" else check_live(url)
    except ProbeError as e:
        print(f"{args.check}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
