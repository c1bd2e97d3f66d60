"""A TorchScript program and a torch.export program with an .npz, built without Python (`builder build
--torch-program FILE --data NPZ`): exported once to ONNX beside the record, fp32, int8 and fp16 built from it,
served on the real embedded Triton server and answered through the stock tritonclient as the program itself
answers; a data file that does not name the program's arguments, and a file that is not a program, get one line
and leave nothing behind."""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.core.spec import load_spec
from builder.serving.server import EmbeddedServer, free_port
from tests.conftest import run_cli
from tests.e2e.test_onnx_model import make_cnn

pytestmark = pytest.mark.e2e
VARIANTS = ["fp32", "int8", "fp16"]
KINDS = {"scripted": "cnn.pt", "exported": "cnn.pt2"}


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("programs")
    model = make_cnn()
    torch.jit.save(torch.jit.script(model), str(root / KINDS["scripted"]))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.randn(2, 1, 8, 8),), dynamic_shapes={"image": {0: batch}})
    torch.export.save(program, str(root / KINDS["exported"]))
    images = np.random.default_rng(1).normal(size=(200, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    np.savez(root / "data.npz", image=images, labels=logits.argmax(1))
    return {"root": root, "images": images, "logits": logits}


@pytest.fixture(scope="module")
def built(programs):
    root = programs["root"]
    for kind, file in KINDS.items():
        # --force: on a model this small int8 and fp16 may measure slower than fp32 (the speed gate)
        result = run_cli("builder", "build", "--torch-program", root / file, "--data", root / "data.npz",
                         "--name", kind, "--variant", ",".join(VARIANTS), "--force",
                         "--repository", root / "model_repository", "--artifacts", root / "artifacts", timeout=400)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with EmbeddedServer(root / "model_repository", free_port(), free_port(), free_port()) as server:
        yield {"artifacts": root / "artifacts", "repository": root / "model_repository", "server": server}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_spec_names_the_exported_file_and_the_programs_argument(built, kind):
    spec = load_spec(built["artifacts"] / kind / "spec.yaml")
    assert [(t.name, t.shape) for t in spec.inputs] == [("image", ("batch", 1, 8, 8))]
    assert [(t.name, t.shape) for t in spec.outputs] == [("output", ("batch", 4))]
    assert (built["artifacts"] / kind / "program.onnx").is_file()
    assert "--torch-program" in (built["artifacts"] / kind / "spec.yaml").read_text().splitlines()[0]


@pytest.mark.parametrize("stock", [httpclient, grpcclient], ids=["http", "grpc"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_stock_client_answers_as_the_program(built, programs, stock, variant, kind):
    import onnxruntime

    images = np.ascontiguousarray(programs["images"][:8])
    model = f"{kind}_{variant}"
    session = onnxruntime.InferenceSession(str(built["repository"] / model / "1" / "model.onnx"))
    expected = session.run(["output"], {"image": images})[0]
    server = built["server"]
    client = stock.InferenceServerClient((server.http_url if stock is httpclient else server.grpc_url).split("://")[1])
    try:
        tensor = stock.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        served = client.infer(model, [tensor]).as_numpy("output")
    finally:
        client.close()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)
    if variant == "fp32":  # fp32 is the program itself
        np.testing.assert_allclose(served, programs["logits"][:8], rtol=0, atol=1e-4)


def test_data_without_the_programs_argument_and_a_file_that_is_no_program(programs, tmp_path):
    root = programs["root"]
    np.savez(tmp_path / "data.npz", pixels=programs["images"], labels=np.zeros(200, dtype=np.int64))
    (tmp_path / "weights.pt").write_bytes(b"not a program")
    cases = [(root / KINDS["scripted"], tmp_path / "data.npz",
              f"error: {tmp_path / 'data.npz'}: no array for the program's argument(s) image (arrays: labels, pixels)"),
             (tmp_path / "weights.pt", root / "data.npz", f"error: {tmp_path / 'weights.pt'}: not a TorchScript program")]
    for program, data, first_line in cases:
        result = run_cli("builder", "build", "--torch-program", program, "--data", data,
                         "--repository", tmp_path / "model_repository", "--artifacts", tmp_path / "artifacts")
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines()[0].startswith(first_line), result.stderr
        assert not (tmp_path / "artifacts").exists() and not (tmp_path / "model_repository").exists()


def test_an_image_folder_feeds_a_scripted_program(programs, tmp_path):
    """The folder's first image gives the program's input shape (8x8 grayscale); the export is checked on its
    images, and the served fp32 answers as the program does on those images scaled to 0..1."""
    import onnxruntime
    import torch

    from tests.e2e.test_onnx_model import write_image_folder

    pixels = np.random.default_rng(3).integers(0, 256, size=(40, 8, 8)).astype(np.uint8)
    folder = write_image_folder(tmp_path / "images", pixels)
    result = run_cli("builder", "build", "--torch-program", programs["root"] / KINDS["scripted"], "--data", folder,
                     "--name", "folder", "--variant", "fp32,int8", "--force", "--repository", tmp_path / "repo",
                     "--artifacts", tmp_path / "artifacts", timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    spec = load_spec(tmp_path / "artifacts" / "folder" / "spec.yaml")
    assert [(t.name, t.shape) for t in spec.inputs] == [("image", ("batch", 1, 8, 8))]
    assert spec.class_names == ("class_0", "class_1", "class_2", "class_3")
    images = pixels[:8, None].astype(np.float32) / 255.0
    program = torch.jit.load(str(programs["root"] / KINDS["scripted"]))
    with torch.no_grad():
        expected = program(torch.from_numpy(images)).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "repo" / "folder_fp32" / "1" / "model.onnx"))
    np.testing.assert_allclose(session.run(["output"], {"image": images})[0], expected, rtol=0, atol=1e-4)
    assert (tmp_path / "repo" / "folder_int8" / "1" / "model.onnx").is_file()


def test_an_image_folder_for_a_program_of_two_arguments_gets_one_line(tmp_path):
    import torch

    from tests.e2e.test_onnx_model import write_image_folder

    class Two(torch.nn.Module):
        def forward(self, image, scale):
            return image.flatten(1) * scale

    torch.jit.save(torch.jit.script(Two()), str(tmp_path / "two.pt"))
    folder = write_image_folder(tmp_path / "images", np.zeros((8, 8, 8), dtype=np.uint8))
    result = run_cli("builder", "build", "--torch-program", tmp_path / "two.pt", "--data", folder,
                     "--repository", tmp_path / "repo", "--artifacts", tmp_path / "artifacts")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[0] == (f"error: {folder}: an image folder feeds a program with one argument; "
                                             "its forward takes image, scale"), result.stderr
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "repo").exists()


def test_qat_trains_a_torch_export_program_and_serves_its_int8_model(programs, tmp_path):
    """qat rewrites the program's graph (fake-quantized weights and inputs of each conv and linear), trains it,
    exports the program with the trained weights and quantizes it (static QDQ); the stock clients answer as
    in-process ONNX Runtime."""
    import json

    import onnx
    import onnxruntime

    root, repository, artifacts = programs["root"], tmp_path / "repo", tmp_path / "artifacts"
    result = run_cli("builder", "build", "--torch-program", root / KINDS["exported"], "--data", root / "data.npz",
                     "--name", "qat", "--variant", "fp32,qat", "--force", "--repository", repository,
                     "--artifacts", artifacts, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    entry = json.loads((artifacts / "qat" / "record.json").read_text())["variants"]["qat"]
    assert entry["notes"]["qat_layers"] == 3 and entry["notes"]["int8_method"] == "static"  # 2 convs, 1 linear
    assert entry["training"]["quantization-aware training"]["steps"] > 0
    served = repository / "qat_qat" / "1" / "model.onnx"
    ops = [n.op_type for n in onnx.load(str(served)).graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 6
    images = np.ascontiguousarray(programs["images"][:8])
    expected = onnxruntime.InferenceSession(str(served)).run(["output"], {"image": images})[0]
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server:
        for stock, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
            client = stock.InferenceServerClient(url.split("://")[1])
            try:
                tensor = stock.InferInput("image", list(images.shape), "FP32")
                tensor.set_data_from_numpy(images)
                np.testing.assert_allclose(client.infer("qat_qat", [tensor]).as_numpy("output"), expected,
                                           rtol=0, atol=1e-5)
            finally:
                client.close()


def test_qat_of_a_torchscript_program_is_refused_in_one_line(built):
    result = run_cli("builder", "build", "--config", built["artifacts"] / "scripted" / "spec.yaml", "--variant", "qat",
                     "--repository", built["repository"], "--artifacts", built["artifacts"])
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[0] == (
        "error: scripted: `qat` trains the model, and this ONNX source has no torch.export program to train "
        "(a TorchScript program's graph cannot be rewritten)"), result.stderr
    assert not (built["repository"] / "scripted_qat").exists()
