import pytest

from builder.core.errors import RepositoryError
from builder.serving.repository import latest_model_file, list_models, versions, write_model

CONFIG = 'name: "m"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "src.onnx"
    path.write_bytes(b"first")
    return path


def test_new_model_appears_complete(tmp_path, onnx_file):
    repository = tmp_path / "repo"
    version_dir = write_model(repository, "m", CONFIG, onnx_file)
    assert version_dir == repository / "m" / "1"
    assert (repository / "m" / "config.pbtxt").read_text() == CONFIG
    assert (version_dir / "model.onnx").read_bytes() == b"first"
    assert list_models(repository) == ["m"]
    assert not list(tmp_path.glob(".staging-*"))


def test_rebuild_adds_a_version_and_drops_the_old(tmp_path, onnx_file):
    repository = tmp_path / "repo"
    write_model(repository, "m", CONFIG, onnx_file)
    onnx_file.write_bytes(b"second")
    version_dir = write_model(repository, "m", CONFIG.replace("4", "8"), onnx_file)
    assert versions(repository / "m") == [2]
    assert latest_model_file(repository, "m") == version_dir / "model.onnx"
    assert version_dir.joinpath("model.onnx").read_bytes() == b"second"
    assert "max_batch_size: 8" in (repository / "m" / "config.pbtxt").read_text()


def test_failed_write_leaves_nothing_behind(tmp_path):
    repository = tmp_path / "repo"
    with pytest.raises(FileNotFoundError):
        write_model(repository, "m", CONFIG, tmp_path / "missing.onnx")
    assert not (repository / "m").exists()
    assert not list(tmp_path.glob(".staging-*"))


def test_failed_rebuild_keeps_the_served_model(tmp_path, onnx_file):
    repository = tmp_path / "repo"
    write_model(repository, "m", CONFIG, onnx_file)
    with pytest.raises(FileNotFoundError):
        write_model(repository, "m", CONFIG, tmp_path / "missing.onnx")
    assert versions(repository / "m") == [1]
    assert (repository / "m" / "1" / "model.onnx").read_bytes() == b"first"


def test_invalid_config_is_never_written(tmp_path, onnx_file):
    with pytest.raises(RepositoryError, match="not a valid Triton 2.51 model config"):
        write_model(tmp_path / "repo", "m", CONFIG + "bogus_field: 1\n", onnx_file)
    assert not (tmp_path / "repo" / "m").exists()


def test_bad_model_name(tmp_path, onnx_file):
    with pytest.raises(RepositoryError, match="not a valid model name"):
        write_model(tmp_path / "repo", "../escape", CONFIG, onnx_file)


def test_latest_model_file_of_unknown_model(tmp_path):
    with pytest.raises(RepositoryError, match="not in"):
        latest_model_file(tmp_path, "nope")
