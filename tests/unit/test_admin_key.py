"""Where the admin key comes from, and that its files are never readable by others."""

import os
import stat

import pytest

from client.admin import (ADMIN_HEADER, ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV, GRPC_ADMIN_HEADER, AdminKeyError,
                          admin_headers, configured_key, find_admin_key, key_file_for, read_key_file, write_key_file)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    monkeypatch.delenv(ADMIN_KEY_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))


def private_file(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_written_key_file_is_private_from_the_start(tmp_path):
    path = key_file_for(8000)
    write_key_file(path, "s3cret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_key_file(path) == "s3cret"
    assert path.parent == tmp_path / "run" / "tritonkit"


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = private_file(tmp_path / "key", "s3cret\n")
    path.chmod(0o644)
    with pytest.raises(AdminKeyError, match="accessible to other users") as e:
        read_key_file(path)
    assert e.value.hint == f"chmod 600 {path}"


def test_an_empty_or_missing_key_file_is_an_error(tmp_path):
    with pytest.raises(AdminKeyError, match="is empty"):
        read_key_file(private_file(tmp_path / "key", "  \n"))
    with pytest.raises(AdminKeyError, match="cannot read"):
        read_key_file(tmp_path / "nope")


def test_the_environment_comes_before_a_file(monkeypatch, tmp_path):
    path = private_file(tmp_path / "key", "from-file")
    assert configured_key() is None
    assert configured_key(path) == ("from-file", str(path))
    monkeypatch.setenv(ADMIN_KEY_FILE_ENV, str(path))
    assert configured_key() == ("from-file", str(path))
    monkeypatch.setenv(ADMIN_KEY_ENV, "from-env")
    assert configured_key(path) == ("from-env", f"${ADMIN_KEY_ENV}")


def test_a_generated_key_is_found_for_loopback_urls_only():
    write_key_file(key_file_for(18000), "generated")
    assert find_admin_key("http://127.0.0.1:18000") == "generated"
    assert find_admin_key("grpc://localhost:18000") == "generated"
    assert find_admin_key("127.0.0.1:18000") == "generated"
    assert find_admin_key("http://10.1.2.3:18000") is None  # never sent to another machine unasked
    assert find_admin_key("http://127.0.0.1:18001") is None


def test_grpc_carries_the_key_under_tritons_prefixed_name():
    assert admin_headers("http", "k") == {ADMIN_HEADER: "k"}
    assert admin_headers("grpc", "k") == {GRPC_ADMIN_HEADER: "k"} == {"triton-grpc-protocol-tritonkit-admin-key": "k"}
    assert admin_headers("grpc", None) is None
    assert not os.environ.get(ADMIN_KEY_ENV)
