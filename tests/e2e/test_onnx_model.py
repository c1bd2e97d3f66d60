"""An ONNX file and an .npz, built without Python (`builder build --onnx-model FILE --data NPZ`): fp32 as given,
int8 and fp16 from it, served on the real embedded Triton server and answered through the stock tritonclient as
in-process ONNX Runtime answers on the written file; a trained variant refused in one line; each kind of bad data
answered with its one line, nothing left behind.

The model is made here: a two-convolution CNN on 1x8x8 images exported by torch.onnx with a dynamic batch axis;
its labels are its own answers on random images, so fp32 scores 1.0 and a variant's drop is what it costs.
"""

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from builder.core.artifacts import read_split
from builder.core.spec import load_spec
from builder.pipeline.measure import count_macs
from builder.serving.server import EmbeddedServer, free_port
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e
VARIANTS = ["fp32", "int8", "fp16"]  # int8 (auto) quantizes a convolutional graph statically, with calibration


def make_cnn():
    import torch

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16 * 4 * 4, 4)

        def forward(self, image):
            x = torch.relu(self.conv1(image))
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    return CNN().eval()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("onnx")
    model = make_cnn()
    # torch's default exporter as a user would call it, in one file, with a dynamic batch axis
    torch.onnx.export(model, (torch.randn(2, 1, 8, 8),), str(root / "cnn.onnx"), input_names=["image"],
                      output_names=["logits"], dynamic_shapes={"image": {0: torch.export.Dim("n")}},
                      external_data=False)
    images = np.random.default_rng(0).normal(size=(200, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(images)).argmax(1).numpy()
    np.savez(root / "data.npz", image=images, labels=labels)
    return {"root": root, "model": model, "images": images, "labels": labels}


@pytest.fixture(scope="module")
def built(source):
    root = source["root"]
    # --force: on a model this small int8 and fp16 may measure slower than fp32, and the speed gate would keep
    # them out of the repository; what is tested here is that each serves what ONNX Runtime computes
    result = run_cli("builder", "build", "--onnx-model", root / "cnn.onnx", "--data", root / "data.npz",
                     "--variant", ",".join(VARIANTS), "--force", "--repository", root / "model_repository",
                     "--artifacts", root / "artifacts", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"repository": root / "model_repository", "artifacts": root / "artifacts"}


@pytest.fixture(scope="module")
def server(built):
    with EmbeddedServer(built["repository"], free_port(), free_port(), free_port()) as running:
        yield running


def test_the_inferred_spec_and_the_record(built, source):
    spec = load_spec(built["artifacts"] / "cnn" / "spec.yaml")
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [("image", "float32", ("batch", 1, 8, 8))]
    assert [(t.name, t.shape) for t in spec.outputs] == [("logits", ("batch", 4))]
    record = json.loads((built["artifacts"] / "cnn" / "record.json").read_text())["variants"]
    assert record["fp32"]["accuracy"]["test"] == 1.0  # its own answers: the file is served as given
    # counted from the graph's shapes, they equal torch's count on the module the file was exported from
    assert record["fp32"]["macs"] == count_macs(source["model"], {"image": source["images"][:1]})
    assert record["fp32"]["params"] == sum(p.numel() for p in source["model"].parameters())
    assert {len(read_split(built["artifacts"] / "cnn" / "data" / f"{s}.npz")) for s in ("validation", "test")} \
        == {20, 40}


def test_int8_holds_integer_ops(built):
    import onnx

    ops = {n.op_type for n in onnx.load(str(built["repository"] / "cnn_int8" / "1" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops or "ConvInteger" in ops or "QLinearConv" in ops


@pytest.mark.parametrize("stock", [httpclient, grpcclient], ids=["http", "grpc"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_stock_client_answers_as_onnx_runtime(built, server, source, stock, variant):
    import onnxruntime

    model = f"cnn_{variant}"
    images = np.ascontiguousarray(source["images"][:8])
    session = onnxruntime.InferenceSession(str(built["repository"] / model / "1" / "model.onnx"))
    expected = session.run(["logits"], {"image": images})[0]
    url = (server.http_url if stock is httpclient else server.grpc_url).split("://", 1)[1]
    client = stock.InferenceServerClient(url)
    try:
        tensor = stock.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        served = client.infer(model, [tensor]).as_numpy("logits")
    finally:
        client.close()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_a_trained_variant_is_refused_in_one_line(built, source):
    root = source["root"]
    result = run_cli("builder", "build", "--config", built["artifacts"] / "cnn" / "spec.yaml", "--variant",
                     "distilled+int8", "--repository", root / "model_repository", "--artifacts", root / "artifacts")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == ("error: cnn: `distilled+int8` trains or changes the PyTorch model "
                                             "(distilled), and an ONNX file has none")
    assert not (root / "model_repository" / "cnn_distilled-int8").exists()


def bad(images, labels, what: str) -> dict:
    """The arrays of one broken .npz: `what` is the one thing wrong with it."""
    if what == "no labels":
        return {"image": images}
    if what == "label out of range":
        return {"image": images, "labels": np.where(np.arange(len(labels)) == 7, 9, labels)}
    if what == "a NaN pixel":
        broken = images.copy()
        broken[12, 0, 3, 3] = np.nan
        return {"image": broken, "labels": labels}
    if what == "rows differ":
        return {"image": images[:-1], "labels": labels}
    if what == "wrong image size":
        return {"image": images[:, :, :7, :7], "labels": labels}
    raise AssertionError(what)


BAD_DATA = {
    "no labels": ": no array `labels` (arrays: image)",
    "label out of range": ", row 7: label 9 is not a class index 0..3",
    "a NaN pixel": ", row 12: array `image` holds NaN or inf",
    "rows differ": ": array `image` has 199 rows, `labels` 200",
    "wrong image size": ": array `image` is shaped [200, 1, 7, 7], the model takes ['batch', 1, 8, 8]",
}


@pytest.mark.parametrize("what", sorted(BAD_DATA))
def test_bad_data_gets_one_line_and_leaves_nothing(source, tmp_path, what):
    path = tmp_path / "data.npz"
    np.savez(path, **bad(source["images"], source["labels"], what))
    result = run_cli("builder", "build", "--onnx-model", source["root"] / "cnn.onnx", "--data", path,
                     "--repository", tmp_path / "model_repository", "--artifacts", tmp_path / "artifacts")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[0] == f"error: {path}{BAD_DATA[what]}"
    assert not (tmp_path / "artifacts").exists() and not (tmp_path / "model_repository").exists()


def write_image_folder(root, images: np.ndarray, classes: int = 4):
    """8-bit grayscale PNGs, image i in folder `class_<i % classes>`."""
    from PIL import Image

    for i, pixels in enumerate(images):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def image_build(source, tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    pixels = np.random.default_rng(2).integers(0, 256, size=(120, 8, 8), dtype=np.uint8)
    folder = write_image_folder(root / "digits", pixels)
    result = run_cli("builder", "build", "--onnx-model", source["root"] / "cnn.onnx", "--data", folder,
                     "--name", "cnnimages", "--variant", "fp32,int8", "--force", "--repository", root / "repo",
                     "--artifacts", root / "artifacts", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"root": root, "pixels": pixels, "artifacts": root / "artifacts", "repository": root / "repo"}


def test_an_image_folder_is_read_scaled_and_split(image_build, source):
    import onnxruntime

    spec = load_spec(image_build["artifacts"] / "cnnimages" / "spec.yaml")
    assert spec.class_names == ("class_0", "class_1", "class_2", "class_3")
    splits = {s: read_split(image_build["artifacts"] / "cnnimages" / "data" / f"{s}.npz")
              for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 84, "validation": 12, "test": 24}
    expected = {(p.astype(np.float32)[None] * np.float32(1.0 / 255.0)).tobytes(): i % 4
                for i, p in enumerate(image_build["pixels"])}
    for split in splits.values():
        for image, label in zip(split.inputs["image"], split.labels):
            assert expected[image.tobytes()] == label  # the file's pixels / 255, labelled by its folder
    # the record's fp32 accuracy is the file's on those arrays
    session = onnxruntime.InferenceSession(str(image_build["repository"] / "cnnimages_fp32" / "1" / "model.onnx"))
    answers = session.run(["logits"], {"image": splits["test"].inputs["image"]})[0].argmax(1)
    record = json.loads((image_build["artifacts"] / "cnnimages" / "record.json").read_text())["variants"]
    assert record["fp32"]["accuracy"]["test"] == pytest.approx(float((answers == splits["test"].labels).mean()))
    assert (image_build["repository"] / "cnnimages_int8" / "1" / "model.onnx").is_file()


def test_a_broken_image_or_a_missing_class_folder_gets_one_line(source, tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    broken = write_image_folder(tmp_path / "broken", pixels)
    (broken / "class_2" / "007.png").write_bytes(b"not a png")
    three = write_image_folder(tmp_path / "three", pixels, classes=3)
    cases = [(broken, f"error: {broken / 'class_2' / '007.png'}: not readable as an image"),
             (three, f"error: {three}: 3 class folders (class_0, class_1, class_2), the model has 4 classes")]
    for folder, first_line in cases:
        result = run_cli("builder", "build", "--onnx-model", source["root"] / "cnn.onnx", "--data", folder,
                         "--repository", tmp_path / "repo", "--artifacts", tmp_path / "artifacts")
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines()[0].startswith(first_line), result.stderr
        assert not (tmp_path / "artifacts").exists() and not (tmp_path / "repo").exists()
