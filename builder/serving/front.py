"""The HTTP front: what stands between an HTTP client and Triton's HTTP port, so that no request can make the server
allocate more than its own size justifies.

Why it exists: Triton 2.51's HTTP frontend allocates the full *declared* shape of a JSON input before it compares it
with the data. A 95-byte body declaring `[64, 1, 28000, 2800]` float32 drove the server past 15 GB; two such
requests ended it (docs/security.md, "Requests cannot make the server allocate"). Triton has no flag that bounds it.
Its gRPC port is safe as it is: there the declared shape is checked against the bytes that came before anything is
allocated (INVALID_ARGUMENT in 2-30 ms, memory unchanged), so gRPC needs no front.

What it does, per HTTP/1.1 request:
- a body larger than `max_body` gets 413 before it is read; a chunked body gets 411 (stock clients send
  Content-Length); a gzip/deflate body is inflated here, bounded by `max_body`, and sent on plain;
- `POST .../infer`: each input's declared shape must be covered by what the request carries. For JSON `data`, at
  most one element per byte of the JSON header (an element takes at least one character); for binary data, the
  declared bytes must fit in its `binary_data_size`, which must fit in the body. Otherwise 400 with one line that
  names the input, its declared shape and what came, before Triton sees the request. So a request may make Triton
  allocate at most about 8 bytes per byte it sent;
- everything else is passed on unchanged, with the header FRONT_HEADER. Triton's own HTTP port listens on loopback
  and refuses every API without that header (`--http-restricted-api=...:tritonkit-front-key=<key>`), so nothing
  reaches it around the front. The administrative APIs keep their own key on top: the front passes the caller's
  admin header as it came and never adds one.

Standard library only, one file: the official image runs it with its own python3 (docker/triton/entrypoint.sh),
the embedded server with the kit's (builder/serving/server.py). Run as
`python3 front.py --listen HOST:PORT --upstream PORT --key-file FILE [--max-body-mb N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import sys
import threading
import zlib

FRONT_HEADER = "tritonkit-front-key"
MAX_BODY_MB = 64  # default bound on one request's body (after inflating); `--max-body-mb` changes it
HEAD_LIMIT = 64 * 1024  # request line + headers
IDLE_TIMEOUT_S = 120.0  # an idle keep-alive connection is closed after this
READ_TIMEOUT_S = 60.0  # a started request must arrive within this (slow-loris)
UPSTREAM_TIMEOUT_S = 600.0  # Triton's answer (a long queue, a slow model) must come within this
MAX_CONNECTIONS = 1024
ELEMENT_BYTES = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2, "INT32": 4,
                 "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8, "BYTES": 4}  # BYTES: its length prefix
# Not passed on: they describe this connection, not the request (RFC 9110 7.6.1), or are ours to set.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect", "content-length", "content-encoding", FRONT_HEADER}
REASONS = {400: "Bad Request", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable"}


class RequestError(Exception):
    """A request the front answers itself: `status` and a one-line message (Triton's `{"error": ...}` body)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.close = status, close


def declared_elements(shape, where: str) -> int:
    """The element count of a declared shape; RequestError for anything but a list of non-negative integers."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(400, f"{where}: `shape` must be a list of non-negative integers, got {json.dumps(shape)[:80]}")
    count = 1
    for dim in shape:
        count *= dim
    return count


def check_infer(body: bytes, header_length: int | None) -> None:
    """Raise RequestError(400) unless every input of an infer request is covered by the bytes that came.

    body: the whole (inflated) request body; header_length: the Inference-Header-Content-Length (binary tensor
    extension), None when the body is all JSON.
    """
    if header_length is None:
        header_length = len(body)
    elif header_length > len(body):
        raise RequestError(400, f"Inference-Header-Content-Length {header_length} is larger than the body "
                                f"({len(body)} bytes)")
    try:
        request = json.loads(body[:header_length])
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request's JSON cannot be parsed: {e}") from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list):
        raise RequestError(400, "the request's JSON must be an object with a list `inputs`")
    binary_left = len(body) - header_length
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise RequestError(400, f"inputs[{i}] must be an object")
        name = str(tensor.get("name", f"inputs[{i}]"))[:64]
        where = f"input `{name}`"
        elements = declared_elements(tensor.get("shape"), where)
        element_bytes = ELEMENT_BYTES.get(tensor.get("datatype"), 8)
        parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
        binary = parameters.get("binary_data_size")
        if binary is not None:
            if type(binary) is not int or binary < 0 or binary > binary_left:
                raise RequestError(400, f"{where}: binary_data_size {binary} is more than the "
                                        f"{binary_left} binary bytes left in the body")
            binary_left -= binary
            if elements * element_bytes > max(binary, 0) and tensor.get("datatype") != "BYTES":
                raise RequestError(400, f"{where} declares shape {tensor['shape']} ({elements * element_bytes:,} bytes "
                                        f"of {tensor.get('datatype')}) but carries {binary:,} bytes")
            if tensor.get("datatype") == "BYTES" and elements * 4 > binary:
                raise RequestError(400, f"{where} declares {elements:,} strings but carries {binary:,} bytes")
        elif "shared_memory_region" not in parameters and elements > header_length:
            # JSON data: every element takes at least one character of the JSON text
            raise RequestError(400, f"{where} declares shape {tensor['shape']} ({elements:,} elements) but the "
                                    f"request's JSON has only {header_length:,} bytes; send the data the shape declares")


def inflate(body: bytes, encoding: str, max_body: int) -> bytes:
    """The body decompressed (gzip or deflate, as Triton accepts), at most `max_body` bytes; RequestError otherwise."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise RequestError(400, f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits)
    try:
        plain = inflater.decompress(body, max_body + 1)
    except zlib.error as e:
        raise RequestError(400, f"the {encoding} body cannot be decompressed: {e}") from None
    if len(plain) > max_body or inflater.unconsumed_tail:
        raise RequestError(413, f"the body inflates to more than {max_body:,} bytes (the front's limit, "
                                f"--max-body-mb)", close=True)
    return plain


def is_infer(method: str, path: str) -> bool:
    if method != "POST":
        return False
    path = path.split("?", 1)[0].rstrip("/")
    return path.startswith("/v2/models/") and path.endswith("/infer")


def error_response(status: int, message: str, close: bool) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n")
    return head.encode("latin-1") + body


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(method, target, version, [(lower-case name, value)]) of a request head; RequestError if malformed."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise RequestError(400, "malformed request line", close=True) from None
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise RequestError(400, "malformed header line", close=True)
        headers.append((name.lower(), value.strip()))
    return method, target, version, headers


class Connection:
    """One client connection, served on its own thread with blocking sockets: at one request at a time that costs
    fewer Python steps than an event loop (the front sits on every HTTP request's path)."""

    def __init__(self, client: socket.socket, front: "Front"):
        self.client, self.front = client, front
        self.reader = client.makefile("rb")
        self.upstream: socket.socket | None = None
        self.upstream_reader = None

    def serve(self) -> None:
        try:
            while self.serve_one():
                pass
        except (OSError, ValueError):
            pass  # the client went away or timed out: nothing to answer
        finally:
            self.close_upstream()
            self.reader.close()
            self.client.close()
            self.front.slots.release()

    def serve_one(self) -> bool:
        """Answer one request; whether the connection stays open."""
        self.client.settimeout(IDLE_TIMEOUT_S)
        line = self.reader.readline(HEAD_LIMIT)
        if not line:
            return False
        self.client.settimeout(READ_TIMEOUT_S)
        try:
            request, keep_alive, head_only = self.read_request(line)
        except RequestError as e:
            self.client.sendall(error_response(e.status, str(e), e.close))
            return not e.close
        try:
            response, upstream_open = self.exchange(request, head_only)
        except (OSError, ValueError) as e:
            self.close_upstream()
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            self.client.sendall(error_response(502, f"Triton's HTTP port did not answer ({reason})", True))
            return False
        self.client.sendall(response)
        if not upstream_open:
            self.close_upstream()
        return keep_alive

    def read_request(self, line: bytes) -> tuple[bytes, bool, bool]:
        """(the request as it goes to Triton, keep the connection alive?, a HEAD?); RequestError for one we answer."""
        if not line.endswith(b"\n"):
            raise RequestError(431, f"request line over {HEAD_LIMIT} bytes", close=True)
        head = [line]
        size = len(line)
        while True:
            line = self.reader.readline(HEAD_LIMIT)
            size += len(line)
            if size > HEAD_LIMIT:
                raise RequestError(431, f"request headers over {HEAD_LIMIT} bytes", close=True)
            if line in (b"\r\n", b"\n", b""):
                break
            head.append(line)
        method, target, version, headers = parse_head(b"".join(head))
        fields = dict(headers)
        connection = fields.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        if "transfer-encoding" in fields:
            raise RequestError(411, "chunked request bodies are not accepted: send Content-Length", close=True)
        try:
            length = int(fields.get("content-length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            raise RequestError(400, "Content-Length must be a non-negative integer", close=True) from None
        if length > self.front.max_body:
            raise RequestError(413, f"the body is {length:,} bytes, more than the front's limit of "
                                    f"{self.front.max_body:,} (--max-body-mb)", close=True)
        if length and fields.get("expect", "").lower() == "100-continue":
            self.client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = self.reader.read(length) if length else b""
        except TimeoutError:
            raise RequestError(408, f"the body did not arrive within {READ_TIMEOUT_S:.0f} s", close=True) from None
        if len(body) < length:
            raise RequestError(400, "the connection closed before the body was complete", close=True)
        encoding = fields.get("content-encoding", "identity").lower()
        if encoding != "identity":
            body = inflate(body, encoding, self.front.max_body)
        if is_infer(method, target):
            header_length = fields.get("inference-header-content-length")
            try:
                header_length = int(header_length) if header_length is not None else None
            except ValueError:
                raise RequestError(400, "Inference-Header-Content-Length must be an integer") from None
            check_infer(body, header_length)
        lines = [f"{method} {target} HTTP/1.1", self.front.key_line, f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers if name not in HOP_BY_HOP]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, keep_alive, method == "HEAD"

    def exchange(self, request: bytes, head_only: bool) -> tuple[bytes, bool]:
        """Send `request` to Triton (connecting on first use); (its response, does Triton keep the connection?)."""
        if self.upstream is None:
            self.upstream = socket.create_connection(("127.0.0.1", self.front.upstream), timeout=UPSTREAM_TIMEOUT_S)
            self.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.upstream_reader = self.upstream.makefile("rb")
        self.upstream.sendall(request)
        return read_response(self.upstream_reader, head_only)

    def close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream_reader.close()
            self.upstream.close()
            self.upstream = self.upstream_reader = None


def read_response(reader, head_only: bool) -> tuple[bytes, bool]:
    """(Triton's response as it goes to the client, does Triton keep the connection open?) from a buffered reader."""
    status_line = reader.readline(HEAD_LIMIT)
    if not status_line:
        raise ValueError("the connection closed")
    lines, fields = [status_line], {}
    while (line := reader.readline(HEAD_LIMIT)) not in (b"\r\n", b"\n", b""):
        lines.append(line)
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    status = int(status_line.split(b" ", 2)[1])
    upstream_open = fields.get(b"connection", b"").lower() != b"close"
    if head_only or status < 200 or status in (204, 304):
        return b"".join(lines) + b"\r\n", upstream_open
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":  # sent on with a Content-Length instead
        body = bytearray()
        while size := int(reader.readline(HEAD_LIMIT).split(b";")[0].strip(), 16):
            body += reader.read(size)
            reader.readline(HEAD_LIMIT)
        while reader.readline(HEAD_LIMIT) not in (b"\r\n", b"\n", b""):  # trailers, if any
            pass
        kept = [line for line in lines if not line.lower().startswith(b"transfer-encoding")]
        return b"".join(kept) + b"Content-Length: %d\r\n\r\n" % len(body) + bytes(body), upstream_open
    if b"content-length" in fields:
        length = int(fields[b"content-length"])
        body = reader.read(length)
        if len(body) < length:
            raise ValueError("the connection closed inside a response")
        return b"".join(lines) + b"\r\n" + body, upstream_open
    return b"".join(lines) + b"\r\n" + reader.read(), False  # no framing: the body ends with the connection


@dataclasses.dataclass
class Front:
    """Listen, check each request, pass it on to Triton's HTTP on 127.0.0.1:`upstream` with the front's key.

    One thread and one upstream connection per client connection (opened on its first request, kept alive with
    it); at most MAX_CONNECTIONS at once, the next is answered 503 and closed.
    """

    upstream: int
    key: str
    max_body: int
    slots: threading.Semaphore = dataclasses.field(default_factory=lambda: threading.BoundedSemaphore(MAX_CONNECTIONS))

    @functools.cached_property
    def key_line(self) -> str:
        """The header line every forwarded request carries, formatted once."""
        return f"{FRONT_HEADER}: {self.key}"

    def serve_forever(self, listener: socket.socket, stop: threading.Event) -> None:
        listener.settimeout(0.5)  # so that `stop` is noticed
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    return
                raise
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self.slots.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    client.sendall(error_response(503, f"more than {MAX_CONNECTIONS} connections are open", True))
                client.close()
                continue
            threading.Thread(target=Connection(client, self).serve, daemon=True).start()


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def listen(address: tuple[str, int]) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(1024)
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT the front listens on (the public HTTP port)")
    parser.add_argument("--upstream", type=int, required=True, help="Triton's HTTP port on 127.0.0.1")
    parser.add_argument("--key-file", required=True, help=f"file with the key Triton expects in {FRONT_HEADER}")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_MB, help="largest request body, inflated")
    parser.add_argument("--ready-file", help="written with our pid once the port listens")
    args = parser.parse_args(argv)
    with open(args.key_file) as f:
        key = f.read().strip()
    try:
        listener = listen(parse_listen(args.listen))
    except OSError as e:
        print(f"error: the HTTP front cannot listen on {args.listen}: {e.strerror}", file=sys.stderr)
        return 1
    if args.ready_file:  # the port listens: whoever started us may connect
        with open(args.ready_file, "w") as f:
            f.write(str(os.getpid()))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Front(args.upstream, key, int(args.max_body_mb * 1024 * 1024)).serve_forever(listener, stop)
    listener.close()
    return 0


if __name__ == "__main__":  # run by path, standard library only (the official image has no kit): no kit handler
    sys.exit(main())
