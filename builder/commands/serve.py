"""`builder serve`: the repository on the embedded Triton server until Ctrl-C."""

from __future__ import annotations

import pathlib
import signal
import sys
import time

from ..serving.front import MAX_BODY_MB
from ..serving.repository import check_no_legacy_names, list_models
from ..serving.server import EmbeddedServer
from .options import DEFAULT_REPOSITORY

HELP = 'serve the repository on the embedded Triton server until Ctrl-C'


def add_arguments(serve) -> None:
    serve.add_argument("--repository", type=pathlib.Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--model-control", choices=("explicit", "none", "poll"), default="explicit",
                       help="explicit (default): load all now, load/unload later through the API")
    serve.add_argument("--log-file", type=pathlib.Path, help="server log (default: a temporary file, printed)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address HTTP, gRPC and metrics listen on (default 127.0.0.1: this machine only; "
                            "0.0.0.0: every interface)")
    serve.add_argument("--admin-key-file", type=pathlib.Path,
                       help="file holding the key of the locked admin APIs (default: $TRITONKIT_ADMIN_KEY, else a "
                            "key generated for this run; see docs/security.md)")
    serve.add_argument("--max-body-mb", type=float, default=MAX_BODY_MB,
                       help=f"largest HTTP request body the front accepts, after inflating (default {MAX_BODY_MB} MiB)")


def run(args) -> int:
    check_no_legacy_names(args.repository)
    models = list_models(args.repository)
    if args.repository.is_dir() and not models:
        print(f"warning: {args.repository} holds no model; build one with `builder build`", file=sys.stderr)
    server = EmbeddedServer(args.repository, args.http_port, args.grpc_port, args.metrics_port,
                            model_control=args.model_control, log_file=args.log_file, host=args.host,
                            admin_key_file=args.admin_key_file, max_body_mb=args.max_body_mb,
                            on_event=lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", flush=True))
    # SIGTERM ends the wait like Ctrl-C does, so the server and its stubs are stopped in order
    signal.signal(signal.SIGTERM, _interrupt)
    server.start()
    try:
        print(f"Triton {args.repository.resolve()}")
        print(f"  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n  metrics {server.metrics_url}")
        print(f"  log     {server.log_path}")
        for line in server.exposure():
            print(f"  {line}")
        if args.model_control == "explicit":
            print("  a model whose backend process dies is reloaded (builder/serving/recovery.py)")
        failed = 0
        for m in server.models():
            line = f"  {m.name:32} {m.state}"
            if m.state != "READY":
                failed += 1
                line += f": {m.reason}"
            print(line)
        if failed:
            print(f"{failed} model(s) failed to load; the others are served", file=sys.stderr)
        for name, reason in server.cpu_fallbacks.items():
            print(f"WARNING: {name}: {reason}: SERVED ON CPU instead (config.pbtxt unchanged; the official image "
                  f"on a GPU machine serves it as built)", file=sys.stderr)
        print("serving; Ctrl-C to stop", flush=True)
        code = server.process.wait()
        print(f"error: tritonserver exited with code {code}: {server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    finally:
        server.stop()
        print("stopped", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
