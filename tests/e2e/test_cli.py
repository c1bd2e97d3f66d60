"""The command lines a user types: `builder build` errors and `python -m client`."""

import pytest

from tests.conftest import FIXTURES, run_cli

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_infer_text(server, built, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    result = run_cli("client", "infer", "--model", "minilm_fp32", "--text", "a gripping, beautifully shot film",
                     "--protocol", protocol, "--url", url, "--artifacts", built["artifacts"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "prediction: fresh" in result.stdout
    assert "embedding: shape [1, 384]" in result.stdout


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_infer_index(server, built, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    result = run_cli("client", "infer", "--model", "digits_fp32", "--index", "3", "--protocol", protocol,
                     "--url", url, "--artifacts", built["artifacts"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "prediction:" in result.stdout and "label:" in result.stdout


def test_client_unknown_model(server, built):
    result = run_cli("client", "infer", "--model", "minilm_fp64", "--text", "x", "--url", server.grpc_url,
                     "--artifacts", built["artifacts"], timeout=120)
    assert result.returncode == 2  # every command's handler: an error the user can fix exits 2
    assert "error: no build record for model `minilm_fp64`" in result.stderr


def test_client_models_lists_states(server):
    result = run_cli("client", "models", "--url", server.http_url, timeout=120)
    assert result.returncode == 0 and "digits_fp32" in result.stdout and "READY" in result.stdout


def test_build_unknown_model_suggests(tmp_path):
    result = run_cli("builder", "build", "--model", "minlm", "--repository", tmp_path / "r", timeout=120)
    assert result.returncode == 2
    assert "error: unknown model `minlm`" in result.stderr and "did you mean `minilm`" in result.stderr


def test_build_unknown_variant_suggests(tmp_path):
    result = run_cli("builder", "build", "--model", "digits", "--variant", "fp23", "--repository", tmp_path / "r")
    assert result.returncode == 2 and "did you mean `fp32`" in result.stderr
    assert not (tmp_path / "r").exists()


def test_build_config_with_unknown_key(tmp_path):
    result = run_cli("builder", "build", "--config", FIXTURES / "bad_specs" / "unknown_key.yaml",
                     "--repository", tmp_path / "r", "--artifacts", tmp_path / "a")
    assert result.returncode == 2
    assert "max_batch_sise" in result.stderr and "did you mean `max_batch_size`" in result.stderr
    assert not (tmp_path / "r").exists()


def test_build_config_with_missing_factory(tmp_path):
    result = run_cli("builder", "build", "--config", FIXTURES / "bad_specs" / "missing_factory.yaml",
                     "--repository", tmp_path / "r", "--artifacts", tmp_path / "a")
    assert result.returncode == 2
    assert "cannot import module `no_such_module`" in result.stderr
    assert not (tmp_path / "r").exists()


def test_build_user_model_from_yaml(tmp_path):
    result = run_cli("builder", "build", "--config", FIXTURES / "tiny" / "tiny.yaml", "--repository", tmp_path / "r",
                     "--artifacts", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r" / "tiny_fp32" / "config.pbtxt").is_file()
    assert (tmp_path / "r" / "tiny_fp32" / "1" / "model.onnx").is_file()
    assert "tiny_fp32" in result.stdout  # the summary table


def test_a_variant_that_cannot_handle_the_model_does_not_stop_the_others(tmp_path):
    result = run_cli("builder", "build", "--config", FIXTURES / "tiny" / "tiny.yaml", "--variant", "distilled,fp16",
                     "--repository", tmp_path / "r", "--artifacts", tmp_path / "a", "--force")
    assert result.returncode == 1
    assert "no student recipe fits this model" in result.stderr
    assert "FAILED tiny_distilled; rebuild just it with:" in result.stdout
    assert "--variant distilled" in result.stdout
    assert (tmp_path / "r" / "tiny_fp16" / "1" / "model.onnx").is_file()  # the other variant was built
    assert not (tmp_path / "r" / "tiny_distilled").exists()


def test_impossible_order_is_refused_before_any_work(tmp_path):
    result = run_cli("builder", "build", "--model", "digits", "--variant", "int8+pruned", "--repository", tmp_path / "r")
    assert result.returncode == 2
    assert "impossible order" in result.stderr and "pruned+int8" in result.stderr
