"""The HTTP front's rules (builder/serving/front.py), without Triton: a request's declared shapes must be covered by
the bytes it carries; bodies are bounded; what passes reaches the upstream with the front's key and nothing else
changed. The front runs as its own process against a small upstream that records what it gets."""

import gzip
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from builder.serving.front import FRONT_HEADER, RequestError, check_infer, declared_elements, inflate, is_infer
from builder.serving.server import FRONT_SCRIPT, free_port


def body(*inputs) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def test_a_json_shape_must_be_covered_by_the_json_that_came():
    small = body({"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]})
    check_infer(small, None)
    huge = body({"name": "image", "shape": [64, 1, 28000, 2800], "datatype": "FP32", "data": [1]})
    with pytest.raises(RequestError) as e:
        check_infer(huge, None)
    assert e.value.status == 400
    assert str(e.value) == ("input `image` declares shape [64, 1, 28000, 2800] (5,017,600,000 elements) but the "
                            f"request's JSON has only {len(huge)} bytes; send the data the shape declares")


def test_binary_data_must_hold_the_declared_bytes():
    header = body({"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}})
    check_infer(header + bytes(16), len(header))
    lying = body({"name": "x", "shape": [1, 10**9], "datatype": "FP32", "parameters": {"binary_data_size": 16}})
    with pytest.raises(RequestError, match=r"declares shape \[1, 1000000000\] \(4,000,000,000 bytes of FP32\) "
                                           r"but carries 16 bytes"):
        check_infer(lying + bytes(16), len(lying))
    with pytest.raises(RequestError, match="binary_data_size 16 is more than the 8 binary bytes left"):
        check_infer(header + bytes(8), len(header))
    with pytest.raises(RequestError, match="Inference-Header-Content-Length 999 is larger than the body"):
        check_infer(header, 999)


@pytest.mark.parametrize("shape, message", [
    ([1, -5], "must be a list of non-negative integers"),
    ([1, 2.5], "must be a list of non-negative integers"),
    ("1,4", "must be a list of non-negative integers"),
    ([True, 4], "must be a list of non-negative integers"),
])
def test_a_shape_is_a_list_of_non_negative_integers(shape, message):
    with pytest.raises(RequestError, match=message):
        declared_elements(shape, "input `x`")


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "cannot be parsed"),
    (b"[1, 2]", "must be an object with a list `inputs`"),
    (b'{"inputs": [7]}', r"inputs\[0\] must be an object"),
])
def test_malformed_requests_get_one_line(raw, message):
    with pytest.raises(RequestError, match=message):
        check_infer(raw, None)


def test_a_compressed_body_is_bounded_after_inflating():
    assert inflate(gzip.compress(b"abc"), "gzip", 100) == b"abc"
    with pytest.raises(RequestError) as e:
        inflate(gzip.compress(bytes(10_000)), "gzip", 1000)
    assert e.value.status == 413
    with pytest.raises(RequestError, match="'br' is not supported"):
        inflate(b"x", "br", 100)


def test_only_infer_posts_are_inspected():
    assert is_infer("POST", "/v2/models/m/infer") and is_infer("POST", "/v2/models/m/versions/1/infer")
    assert not is_infer("GET", "/v2/models/m/infer") and not is_infer("POST", "/v2/repository/models/m/load")


class Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.seen.append((self.path, dict(self.headers), data))
        answer = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    """(front URL, upstream records): the front process in front of Recorder."""
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    folder = tmp_path_factory.mktemp("front")
    (folder / "key").write_text("front-secret\n")
    port = free_port()
    process = subprocess.Popen([sys.executable, str(FRONT_SCRIPT), f"--listen=127.0.0.1:{port}",
                                f"--upstream={upstream.server_address[1]}", f"--key-file={folder / 'key'}",
                                "--max-body-mb=1", f"--ready-file={folder / 'ready'}"])
    deadline = time.monotonic() + 10
    while not (folder / "ready").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", Recorder.seen
    process.terminate()
    process.wait(5)
    upstream.shutdown()


def post(url: str, data: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_valid_request_reaches_the_upstream_with_the_key_and_its_own_headers(front):
    url, seen = front
    seen.clear()
    data = body({"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]})
    assert post(f"{url}/v2/models/m/infer", data, {"tritonkit-admin-key": "k", FRONT_HEADER: "forged"}) == (
        200, {"ok": True})
    path, headers, forwarded = seen[-1]
    assert (path, forwarded) == ("/v2/models/m/infer", data)
    assert headers[FRONT_HEADER] == "front-secret" and headers["tritonkit-admin-key"] == "k"


def test_a_lying_request_never_reaches_the_upstream(front):
    url, seen = front
    seen.clear()
    status, answer = post(f"{url}/v2/models/m/infer",
                          body({"name": "ids", "shape": [1, 10**9], "datatype": "INT64", "data": [1]}))
    assert status == 400 and "declares shape [1, 1000000000]" in answer["error"]
    assert seen == []


def test_a_body_over_the_limit_is_refused_before_it_is_read(front):
    url, seen = front
    seen.clear()
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n")
        answer = s.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413 ") and "more than the front's limit of 1,048,576" in answer
    assert seen == []


def test_a_gzip_bomb_is_refused(front):
    url, seen = front
    seen.clear()
    status, answer = post(f"{url}/v2/models/m/infer", gzip.compress(bytes(5 * 1024 * 1024)),
                          {"Content-Encoding": "gzip"})
    assert status == 413 and "inflates to more than" in answer["error"]
    assert seen == []


def test_a_gzip_request_is_sent_on_inflated(front):
    url, seen = front
    seen.clear()
    data = body({"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]})
    assert post(f"{url}/v2/models/m/infer", gzip.compress(data), {"Content-Encoding": "gzip"})[0] == 200
    path, headers, forwarded = seen[-1]
    assert forwarded == data and "Content-Encoding" not in headers
