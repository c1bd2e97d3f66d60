"""The embedded server's address checks, before any server starts."""

import socket

import pytest

from builder.core.errors import ServeError
from builder.serving.server import EmbeddedServer, check_host, check_port_free


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])
def test_a_port_taken_on_loopback_or_on_every_interface_is_in_use(address):
    with socket.socket() as taken:
        taken.bind((address, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"port {port} \\(HTTP\\) is already in use"):
            check_port_free(port, "HTTP", "127.0.0.1")


def test_only_ipv4_addresses_are_hosts():
    assert check_host("0.0.0.0") == "0.0.0.0"
    for bad in ("localhost", "::", "127.0.0.256", ""):
        with pytest.raises(ServeError, match="--host must be an IPv4 address"):
            check_host(bad)


def test_the_default_is_loopback_and_clients_reach_0000_through_loopback(tmp_path):
    assert EmbeddedServer(tmp_path).host == "127.0.0.1"
    exposed = EmbeddedServer(tmp_path, 1, 2, 3, host="0.0.0.0")
    assert (exposed.http_url, exposed.grpc_url) == ("http://127.0.0.1:1", "grpc://127.0.0.1:2")
