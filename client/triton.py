"""One Triton client for both protocols: the URL's scheme picks gRPC (`grpc://host:8001`) or HTTP
(`http://host:8000`). Built on tritonclient; numpy in, numpy out; failures become client.errors types.

Inference calls have a deadline and are retried (client/retry.py) on errors a retry can cure; with several URLs
(replicas of one repository) a retry goes to the next one, and the client stays with the replica that answered.
"""

from __future__ import annotations

import http.client
from typing import Sequence

import numpy as np

from . import retry
from .admin import ADMIN_HEADER, admin_headers, find_admin_key
from .errors import (ClientError, DeadlineExceededError, InferenceError, InvalidInputError, ModelNotFoundError,
                     ModelRestartingError, ServerOverloadedError, ServerUnavailableError)
from .retry import RetryPolicy

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}


def parse_url(url: str) -> tuple[str, str]:
    """`grpc://h:p` / `http://h:p` / `h:p` (gRPC) -> (protocol, "h:p")."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "grpc", url
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ClientError(f"unsupported URL scheme `{scheme}` in {url}", hint="use grpc://host:8001 or http://host:8000")
    rest = rest.rstrip("/")
    if ":" not in rest:
        rest = f"{rest}:{DEFAULT_PORTS[scheme]}"
    return scheme, rest


def parse_urls(urls: str | Sequence[str]) -> list[tuple[str, str]]:
    """One URL, a comma-separated list or a sequence of them -> [(protocol, "h:p")], all of one protocol."""
    items = [u.strip() for u in (urls.split(",") if isinstance(urls, str) else urls) if u.strip()]
    if not items:
        raise ClientError("no server URL given", hint="pass grpc://host:8001 or http://host:8000, or several")
    parsed = [parse_url(u) for u in items]
    if len({protocol for protocol, _ in parsed}) > 1:
        raise ClientError(f"the URLs mix gRPC and HTTP: {', '.join(items)}",
                          hint="replicas of one client speak one protocol: give every URL the same scheme")
    return parsed


def _protocol_module(protocol: str, aio: bool = False):
    if protocol == "grpc":
        if aio:
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.grpc as module
    else:
        if aio:
            import tritonclient.http.aio as module
        else:
            import tritonclient.http as module
    return module


def make_inputs(module, inputs: dict) -> list:
    from tritonclient.utils import np_to_triton_dtype

    made = []
    for name, array in inputs.items():
        array = np.asarray(array)
        if array.dtype.kind == "U":  # str: Triton's BYTES (TYPE_STRING) carries UTF-8 bytes
            array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[np.object_])(array)
        datatype = np_to_triton_dtype(array.dtype)
        if datatype is None:
            raise InvalidInputError(f"input `{name}` has dtype {array.dtype}, which Triton cannot carry",
                                    hint="send float32, int64, ... as the model's metadata says")
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        made.append(tensor)
    return made


def translate(error: Exception, model: str | None = None) -> ClientError:
    """A tritonclient / connection exception as a typed ClientError with a hint."""
    message = error.message() if hasattr(error, "message") and callable(error.message) else str(error)
    message = (message or str(error)).strip()
    status = str(error.status()) if hasattr(error, "status") and callable(error.status) else ""
    lowered = message.lower()
    # Triton core's queue policy (dynamic_batching.default_queue_policy) shedding load, measured on 2.51: gRPC
    # UNAVAILABLE / HTTP 503 with these words, before the generic UNAVAILABLE below (not an unreachable server)
    if "exceeds maximum queue size" in lowered or "request timeout expired" in lowered:
        why = "its queue is full" if "queue size" in lowered else "it waited in the queue past its timeout"
        return ServerOverloadedError(
            f"model `{model}` refused the request, {why}: the server is past its capacity ({message})",
            hint="retry after a backoff or on another replica (the kit's client does, within its deadline); for "
                 "more capacity add instances or replicas; the queue policy is in config.pbtxt (`builder build "
                 "--slo-p99-ms`)")
    if "deadline_exceeded" in status.lower() or isinstance(error, TimeoutError):
        return DeadlineExceededError(f"no answer from the server within the deadline: {message}",
                                     hint="pass a longer timeout=, or check the server's load")
    if "is not healthy" in lowered:  # Triton 2.51's words for a Python-backend stub that died
        return ModelRestartingError(f"model `{model}` is restarting: its backend process died ({message})",
                                    hint="retry in a few seconds: the embedded server reloads a crashed model within "
                                         "10 s; another server needs `load_model` with the admin key")
    if status in ("403", "StatusCode.PERMISSION_DENIED") or "restricted" in lowered:
        return ClientError(f"refused: {message}", hint=f"this API needs the admin key (header {ADMIN_HEADER}): "
                                                         "set TRITONKIT_ADMIN_KEY or pass the key file")
    # a server that dies while a request is in flight: HTTP's geventhttpclient raises HTTPConnectionClosed
    # ("connection closed."), an http.client.HTTPException, not an OSError
    dropped = isinstance(error, http.client.HTTPException) and "connection closed" in lowered
    # 502: the kit's HTTP front could not reach Triton behind it (a server going down or restarting)
    if isinstance(error, OSError) or dropped or "unavailable" in status.lower() or "failed to connect" in lowered \
            or "connection refused" in lowered or status == "502":
        return ServerUnavailableError(f"Triton server not reachable: {message}",
                                      hint="start it with `builder serve`, or check --url")
    if "unknown model" in lowered or "not found" in lowered or "no available versions" in lowered \
            or "is not ready" in lowered:
        return ModelNotFoundError(f"model `{model}` is not available: {message}",
                                  hint="`python -m client models` lists the models the server has")
    if status in ("400", "StatusCode.INVALID_ARGUMENT") or "unexpected" in lowered or "expected" in lowered \
            or "batch-size" in lowered or "datatype" in lowered:
        return InvalidInputError(message, hint=f"`python -m client metadata --model {model}` shows the expected inputs")
    return InferenceError(message)


def _shape(dims) -> list[int]:
    return [int(d) for d in dims]


def normalise_metadata(raw: dict) -> dict:
    """Model metadata with integer shapes (gRPC's JSON gives int64 as strings)."""
    def tensors(items):
        return [{"name": t["name"], "datatype": t["datatype"], "shape": _shape(t.get("shape", []))} for t in items]

    return {"name": raw.get("name"), "versions": raw.get("versions", []), "platform": raw.get("platform"),
            "inputs": tensors(raw.get("inputs", [])), "outputs": tensors(raw.get("outputs", []))}


class TritonClient:
    """Synchronous client. `infer(model, {name: array}) -> {name: array}`; errors are client.errors types."""

    def __init__(self, url: str | Sequence[str] = "grpc://127.0.0.1:8001", timeout: float = 60.0,
                 concurrency: int = 1, admin_key: str | None = None, retry_policy: RetryPolicy = RetryPolicy()):
        """`url`: one server, or several replicas serving the same models (a sequence, or comma-separated), all
        gRPC or all HTTP. Inference goes to one replica at a time and fails over to the next on an error a retry
        can cure (client/retry.py); every other call goes to the replica in use.
        `timeout`: seconds; the deadline of every inference call that passes none, and the HTTP socket timeout.
        `concurrency`: HTTP connections kept for requests in flight at once (gRPC multiplexes one channel).
        `admin_key`: sent with the administrative calls (models, load_model, unload_model), which a server the kit
        starts locks; None: found as client/admin.py `find_admin_key` says (environment, key file of the port).
        `retry_policy`: how often an inference call is tried (retry.NO_RETRY: once)."""
        parsed = parse_urls(url)
        self.protocol = parsed[0][0]
        self.urls = [f"{protocol}://{address}" for protocol, address in parsed]
        self.url, self.address = self.urls[0], parsed[0][1]
        key = admin_key if admin_key is not None else find_admin_key(self.url)
        self._admin_headers = admin_headers(self.protocol, key)
        self._module = _protocol_module(self.protocol)
        self._timeout = timeout
        self.retry_policy = retry_policy
        if self.protocol == "grpc":
            self._clients = [self._module.InferenceServerClient(address) for _, address in parsed]
        else:
            self._clients = [self._module.InferenceServerClient(address, connection_timeout=timeout,
                                                                network_timeout=timeout, concurrency=concurrency)
                             for _, address in parsed]
        self._replica = 0  # the replica in use: the last one that answered an inference call
        self._output_names: dict[str, list[str]] = {}

    @property
    def _client(self):
        return self._clients[self._replica]

    @property
    def replica_url(self) -> str:
        """The URL of the replica in use."""
        return self.urls[self._replica]

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def _call(self, method: str, *args, model: str | None = None, **kwargs):
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except Exception as e:  # tritonclient, grpc and socket errors alike
            raise translate(e, model) from e

    def _json(self, method: str, *args, model: str | None = None) -> dict:
        if self.protocol == "grpc":
            return self._call(method, *args, model=model, as_json=True)
        return self._call(method, *args, model=model)

    def _with_retries(self, attempt, timeout: float | None, model: str):
        """`attempt(tritonclient client, remaining seconds)` under the retry policy and the deadline, starting at
        the replica in use; the replica that answers becomes the one in use."""
        deadline = self._timeout if timeout is None else timeout

        def on_replica(replica: int, remaining: float):
            try:
                return attempt(self._clients[replica], remaining)
            except ClientError:
                raise
            except Exception as e:  # tritonclient, grpc and socket errors alike
                raise translate(_as_tritonclient_error(e), model) from e

        result, self._replica = retry.call(on_replica, len(self._clients), deadline, self.retry_policy,
                                           first=self._replica)
        return result

    def is_live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except Exception:
            return False

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:
            return False

    def is_model_ready(self, model: str) -> bool:
        try:
            return bool(self._client.is_model_ready(model))
        except Exception:
            return False

    def models(self) -> list[dict]:
        """Every model in the server's repository: name, version, state and (if failed) reason."""
        if self.protocol == "grpc":
            index = self._call("get_model_repository_index", as_json=True, headers=self._admin_headers)
        else:
            index = self._call("get_model_repository_index", headers=self._admin_headers)
        items = index.get("models", []) if isinstance(index, dict) else index
        return [{"name": m.get("name"), "version": m.get("version", ""), "state": m.get("state", ""),
                 "reason": m.get("reason", "")} for m in items]

    def metadata(self, model: str) -> dict:
        return normalise_metadata(self._json("get_model_metadata", model, model=model))

    def config(self, model: str) -> dict:
        raw = self._json("get_model_config", model, model=model)
        return raw.get("config", raw)

    def statistics(self, model: str = "") -> dict:
        return self._json("get_inference_statistics", model, model=model or None)

    def load_model(self, model: str, config: dict | None = None) -> None:
        """(Re)load `model` (explicit model control); `config` overrides its config.pbtxt for this load."""
        import json

        if config is None:
            self._call("load_model", model, model=model, headers=self._admin_headers)
        else:
            self._call("load_model", model, config=json.dumps(config), model=model, headers=self._admin_headers)

    def unload_model(self, model: str) -> None:
        self._call("unload_model", model, model=model, headers=self._admin_headers)

    def output_names(self, model: str) -> list[str]:
        if model not in self._output_names:
            self._output_names[model] = [o["name"] for o in self.metadata(model)["outputs"]]
        return self._output_names[model]

    def infer(self, model: str, inputs: dict, outputs: list[str] | None = None,
              timeout: float | None = None) -> dict:
        """Run one request (the batch is axis 0 of every input). Returns every output, or those in `outputs`.

        `timeout`: the deadline in seconds for the call, retries included (None: the client's `timeout`). What is
        left of it goes with each try: to Triton as the request's queue timeout (honoured where the queue policy
        allows overrides, as the kit's configs do; it can only shorten the configured one) and, over gRPC, as the
        call's deadline. Over HTTP the socket waits up to the client's `timeout` per try. Raises client.errors
        types: the last error once the retries are spent, DeadlineExceededError when the deadline is."""
        module = self._module
        tensors = make_inputs(module, inputs)

        def attempt(client, remaining: float):
            names = outputs or self._names_from(client, model)
            requested = [module.InferRequestedOutput(n) for n in names]
            queue_timeout_us = max(1, int(remaining * 1e6))
            if self.protocol == "grpc":
                result = client.infer(model, tensors, outputs=requested, timeout=queue_timeout_us,
                                      client_timeout=remaining)
            else:
                result = client.infer(model, tensors, outputs=requested, timeout=queue_timeout_us)
            return {n: result.as_numpy(n) for n in names}

        return self._with_retries(attempt, timeout, model)

    def _names_from(self, client, model: str) -> list[str]:
        if model not in self._output_names:
            raw = client.get_model_metadata(model, as_json=True) if self.protocol == "grpc" else \
                client.get_model_metadata(model)
            self._output_names[model] = [o["name"] for o in normalise_metadata(raw)["outputs"]]
        return self._output_names[model]

    # tritonclient has no public call that sends an already-encoded request: prepare/send use what its own `infer`
    # calls (the same in tritonclient 2.51 to 2.73): gRPC `_get_inference_request` and the stub's ModelInfer, HTTP
    # `generate_request_body` (public) and `_post`. tests/e2e/test_batching.py checks both against infer.
    def prepare(self, model: str, inputs: dict, outputs: list[str] | None = None, priority: int = 0) -> PreparedRequest:
        """`priority`: Triton's request priority (0: the model's default level)."""
        names = outputs or self.output_names(model)
        module = self._module
        tensors = make_inputs(module, inputs)
        requested = [module.InferRequestedOutput(n) for n in names]
        if self.protocol == "grpc":
            from tritonclient.grpc._utils import _get_inference_request

            message = _get_inference_request(model_name=model, inputs=tensors, model_version="", request_id="",
                                             outputs=requested, sequence_id=0, sequence_start=False,
                                             sequence_end=False, priority=priority, timeout=None,
                                             parameters=None)
            return PreparedRequest(model, names, message)
        import urllib.parse

        body, json_size = module.InferenceServerClient.generate_request_body(tensors, outputs=requested,
                                                                             priority=priority)
        uri = f"v2/models/{urllib.parse.quote(model, safe='/+')}/infer"
        return PreparedRequest(model, names, (uri, body),
                               {"Inference-Header-Content-Length": json_size} if json_size is not None else None)

    def send(self, prepared: PreparedRequest, timeout: float | None = None) -> dict:
        """Send a prepared request; its outputs as numpy arrays. Retried, within `timeout` (as infer; the queue
        timeout is not sent: the request is encoded once), and raises client.errors types, as infer does."""
        def attempt(client, remaining: float):
            if self.protocol == "grpc":
                response = client._client_stub.ModelInfer(request=prepared.payload,
                                                          metadata=client._get_metadata(None), timeout=remaining)
                result = self._module.InferResult(response)
            else:
                from tritonclient.http._utils import _raise_if_error

                uri, body = prepared.payload
                response = client._post(uri, body, prepared.headers, None)
                _raise_if_error(response)
                result = self._module.InferResult(response, False)
            return {n: result.as_numpy(n) for n in prepared.outputs}

        return self._with_retries(attempt, timeout, prepared.model)


def _as_tritonclient_error(error: Exception) -> Exception:
    """A raw grpc.RpcError as the InferenceServerException tritonclient's own infer raises; others unchanged."""
    import grpc

    if isinstance(error, grpc.RpcError):
        from tritonclient.utils import InferenceServerException

        return InferenceServerException(msg=error.details(), status=str(error.code()))
    return error


class PreparedRequest:
    """One inference request encoded once into what goes on the wire (gRPC message or HTTP body), to be sent many
    times with TritonClient.send: a load generator then spends its CPU on sending, not on re-encoding."""

    def __init__(self, model: str, outputs: list[str], payload, headers: dict | None = None):
        self.model, self.outputs, self.payload, self.headers = model, outputs, payload, headers


class AsyncTritonClient:
    """asyncio client over gRPC (tritonclient.grpc.aio), with the same methods as TritonClient, awaited, and the
    same deadline, retries and failover on inference (client/retry.py)."""

    def __init__(self, url: str | Sequence[str] = "grpc://127.0.0.1:8001", timeout: float = 60.0,
                 retry_policy: RetryPolicy = RetryPolicy()):
        parsed = parse_urls(url)
        self.protocol, self.address = parsed[0]
        if any(protocol != "grpc" for protocol, _ in parsed):
            raise ClientError("the asyncio client speaks gRPC only", hint="use grpc:// URLs")
        self.urls = [f"grpc://{address}" for _, address in parsed]
        self._module = _protocol_module("grpc", aio=True)
        self._clients = [self._module.InferenceServerClient(address) for _, address in parsed]
        self._replica = 0  # the replica in use: the last one that answered an inference call
        self._timeout = timeout
        self.retry_policy = retry_policy
        self._output_names: dict[str, list[str]] = {}

    @property
    def _client(self):
        return self._clients[self._replica]

    async def __aenter__(self) -> "AsyncTritonClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    async def _call(self, method: str, *args, model: str | None = None, **kwargs):
        try:
            return await getattr(self._client, method)(*args, **kwargs)
        except Exception as e:
            raise translate(e, model) from e

    async def is_live(self) -> bool:
        try:
            return bool(await self._client.is_server_live())
        except Exception:
            return False

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready())
        except Exception:
            return False

    async def metadata(self, model: str) -> dict:
        return normalise_metadata(await self._call("get_model_metadata", model, model=model, as_json=True))

    async def output_names(self, model: str) -> list[str]:
        if model not in self._output_names:
            self._output_names[model] = [o["name"] for o in (await self.metadata(model))["outputs"]]
        return self._output_names[model]

    async def infer(self, model: str, inputs: dict, outputs: list[str] | None = None,
                    timeout: float | None = None) -> dict:
        """As TritonClient.infer: `timeout` seconds bound the call, retries included (None: the client's), and
        what is left of them goes with each try as its queue timeout and gRPC deadline."""
        module = self._module
        tensors = make_inputs(module, inputs)

        async def on_replica(replica: int, remaining: float):
            client = self._clients[replica]
            try:
                names = outputs or await self._names_from(client, model)
                requested = [module.InferRequestedOutput(n) for n in names]
                result = await client.infer(model, tensors, outputs=requested, timeout=max(1, int(remaining * 1e6)),
                                            client_timeout=remaining)
            except Exception as e:  # tritonclient and grpc errors alike
                raise translate(_as_tritonclient_error(e), model) from e
            return {n: result.as_numpy(n) for n in names}

        deadline = self._timeout if timeout is None else timeout
        result, self._replica = await retry.acall(on_replica, len(self._clients), deadline, self.retry_policy,
                                                  first=self._replica)
        return result

    async def _names_from(self, client, model: str) -> list[str]:
        if model not in self._output_names:
            raw = await client.get_model_metadata(model, as_json=True)
            self._output_names[model] = [o["name"] for o in normalise_metadata(raw)["outputs"]]
        return self._output_names[model]
