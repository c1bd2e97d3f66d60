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
import asyncio
import json
import os
import signal
import sys
import zlib

FRONT_HEADER = "tritonkit-front-key"
MAX_BODY_MB = 64  # default bound on one request's body (after inflating); `--max-body-mb` changes it
HEAD_LIMIT = 64 * 1024  # request line + headers
IDLE_TIMEOUT_S = 120.0  # an idle keep-alive connection is closed after this
READ_TIMEOUT_S = 60.0  # a started request must arrive within this (slow-loris)
ELEMENT_BYTES = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2, "INT32": 4,
                 "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8, "BYTES": 4}  # BYTES: its length prefix
# Not passed on: they describe this connection, not the request (RFC 9110 7.6.1), or are ours to set.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect", "content-length", "content-encoding", FRONT_HEADER}
REASONS = {400: "Bad Request", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway"}


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


class Front:
    """Listen on (host, port), check each request, pass it to Triton's HTTP on 127.0.0.1:`upstream`.

    One upstream connection per client connection, opened on its first request and kept alive with it.
    """

    def __init__(self, upstream: int, key: str, max_body: int):
        self.upstream, self.key, self.max_body = upstream, key, max_body

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    writer.write(error_response(431, f"request headers over {HEAD_LIMIT} bytes", True))
                    return
                try:
                    request, keep_alive = await self.read_request(head, reader, writer)
                except RequestError as e:
                    writer.write(error_response(e.status, str(e), e.close))
                    if e.close:
                        return
                    continue
                if upstream is None:
                    try:
                        upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
                    except OSError as e:
                        writer.write(error_response(502, f"Triton's HTTP port is not answering ({e.strerror})", True))
                        return
                try:
                    upstream[1].write(request)
                    response, upstream_open = await relay_response(upstream[0], head.startswith(b"HEAD "))
                except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                    writer.write(error_response(502, f"Triton's HTTP port closed the connection ({e})", True))
                    return
                writer.write(response)
                await writer.drain()
                if not upstream_open:
                    upstream[1].close()
                    upstream = None
                if not keep_alive:
                    return
        finally:
            if upstream is not None:
                upstream[1].close()
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()

    async def read_request(self, head: bytes, reader, writer) -> tuple[bytes, bool]:
        """(the request as it goes to Triton, keep the connection alive?); RequestError for one we answer."""
        method, target, version, headers = parse_head(head[:-4])
        fields = dict(headers)
        keep_alive = (fields.get("connection", "").lower() != "close"
                      and (version == "HTTP/1.1" or fields.get("connection", "").lower() == "keep-alive"))
        if "transfer-encoding" in fields:
            raise RequestError(411, "chunked request bodies are not accepted: send Content-Length", close=True)
        try:
            length = int(fields.get("content-length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            raise RequestError(400, "Content-Length must be a non-negative integer", close=True) from None
        if length > self.max_body:
            raise RequestError(413, f"the body is {length:,} bytes, more than the front's limit of "
                                    f"{self.max_body:,} (--max-body-mb)", close=True)
        if fields.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S) if length else b""
        except asyncio.TimeoutError:
            raise RequestError(408, f"the body did not arrive within {READ_TIMEOUT_S:.0f} s", close=True) from None
        except asyncio.IncompleteReadError:
            raise RequestError(400, "the connection closed before the body was complete", close=True) from None
        encoding = fields.get("content-encoding", "identity").lower()
        if encoding != "identity":
            body = inflate(body, encoding, self.max_body)
        if is_infer(method, target):
            header_length = fields.get("inference-header-content-length")
            try:
                check_infer(body, int(header_length) if header_length is not None else None)
            except ValueError:
                raise RequestError(400, "Inference-Header-Content-Length must be an integer") from None
        lines = [f"{method} {target} HTTP/1.1", f"{FRONT_HEADER}: {self.key}", f"Content-Length: {len(body)}",
                 "Connection: keep-alive"]
        lines += [f"{name}: {value}" for name, value in headers if name not in HOP_BY_HOP]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, keep_alive


async def relay_response(reader: asyncio.StreamReader, head_only: bool) -> tuple[bytes, bool]:
    """(Triton's response as it goes to the client, Triton keeps the connection open?)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    fields = {}
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name:
            fields[name.strip().lower()] = value.strip()
    upstream_open = fields.get(b"connection", b"").lower() != b"close"
    if head_only or status < 200 or status in (204, 304):
        return head, upstream_open
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":  # sent on with a Content-Length instead
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
            pass
        kept = [line for line in rest.split(b"\r\n") if line and not line.lower().startswith(b"transfer-encoding")]
        head = b"\r\n".join([status_line, *kept, b"Content-Length: %d" % len(body)]) + b"\r\n\r\n"
        return head + bytes(body), upstream_open
    if b"content-length" in fields:
        return head + await reader.readexactly(int(fields[b"content-length"])), upstream_open
    return head + await reader.read(), False  # no framing: the body ends with the connection


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(listen: tuple[str, int], front: Front, ready_file: str | None) -> None:
    server = await asyncio.start_server(front.serve_client, *listen, limit=HEAD_LIMIT, reuse_address=True)
    if ready_file:  # the listening socket exists: whoever started us may connect
        with open(ready_file, "w") as f:
            f.write(str(os.getpid()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


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
        listen = parse_listen(args.listen)
        asyncio.run(serve(listen, Front(args.upstream, key, int(args.max_body_mb * 1024 * 1024)), args.ready_file))
    except OSError as e:
        print(f"error: the HTTP front cannot listen on {args.listen}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
