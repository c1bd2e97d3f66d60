"""An ONNX file and an .npz of its inputs and labels as a model source, without Python from the user.

    builder build --onnx-model model.onnx --data data.npz --variant fp32,int8,fp16

There is no PyTorch module: the factory (`load_model`) answers an `OnnxFile`, which the build copies as fp32 (checked
by running it on real examples) and on which it runs only the ONNX-level, post-training variants: fp16, int8,
int8-dynamic, int8-static. A variant that trains or changes the PyTorch model (pruned, distilled, qat, ...) is
refused in one line (builder/pipeline/build.py), and so is fp32's `fine_tune`.

The spec is read off the graph: its inputs and outputs with their element types, the first axis of each the batch
(it must be dynamic), other named axes dynamic with the data's sizes as export examples; the metric output is the
first float output shaped [batch, classes]. The .npz holds one array per graph input (batch on axis 0) and
`labels`, integer class indices; one file is split 70/10/20 with a fixed seed, or one file per split. Bad data gets
one line naming the file, the array or row, and what is wrong (DataError); nothing is written before every array
is checked.

An image model (one float input shaped [batch, 1 or 3, H, W]) may take an image folder instead: one subfolder per
class, sorted by name (class index 0 the first), each image decoded with Pillow, made grayscale or RGB, resized to
H x W and scaled to 0..`pixel_max` (1.0 by default, as torchvision's ToTensor; the spec's `data_args.pixel_max`
sets 255 for a model that takes raw intensities). The class names go into the spec.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from ...core.data import Split
from ...core.errors import ConfigError, DataError
from .files import check_split_names, split_seeded

# ONNX TensorProto element types the spec knows (builder/core/spec.py DTYPES)
ELEMENT_TYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}
LABELS = "labels"
SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class OnnxFile:
    """What the factory of an ONNX source returns in place of a torch module: the file, used as fp32 as it is, and
    the torch.export program it was exported from, if any (what `qat` trains: builder/pipeline/variants/qat.py)."""

    path: pathlib.Path
    program: pathlib.Path | None = None


def read_graph(path: pathlib.Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX file as spec tensors {name, dtype, shape}. Raises ConfigError for a file that
    is not ONNX, keeps its weights in external data, or has an input without a dynamic first (batch) axis."""
    import onnx

    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file", hint="pass the .onnx file to --onnx-model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... for a file that is not a model
        raise ConfigError(f"{path}: not an ONNX model: {e}") from e
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ConfigError(f"{path}: its weights are in a separate external-data file",
                          hint="save it as one file: onnx.save_model(onnx.load(p), q, save_as_external_data=False)")
    weights = {t.name for t in model.graph.initializer}

    def tensors(values, kind: str) -> list[dict]:
        result = []
        for value in values:
            if value.name in weights:  # old exporters list initializers among the inputs
                continue
            tensor = value.type.tensor_type
            dtype = ELEMENT_TYPES.get(tensor.elem_type)
            if dtype is None:
                raise ConfigError(f"{path}: {kind} `{value.name}` has element type {tensor.elem_type}, which the "
                                  f"kit does not serve", hint=f"types: {', '.join(ELEMENT_TYPES.values())}")
            dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "") for d in tensor.shape.dim]
            if not dims or isinstance(dims[0], int):
                raise ConfigError(f"{path}: {kind} `{value.name}` has shape {dims}: its first axis must be a "
                                  f"dynamic batch axis", hint="export with a dynamic batch dimension "
                                                              "(dynamic_axes / dynamic_shapes)")
            shape = ["batch"] + [d if isinstance(d, int) else (d or f"{value.name}_{i}")
                                 for i, d in enumerate(dims[1:], start=1)]
            result.append({"name": value.name, "dtype": dtype, "shape": shape})
        return result

    return tensors(model.graph.input, "input"), tensors(model.graph.output, "output")


def image_input(inputs: list[dict]) -> dict | None:
    """The graph's one input if it takes images: float, [batch, 1 or 3, H, W] with H and W fixed; else None."""
    if len(inputs) != 1:
        return None
    shape = inputs[0]["shape"]
    if inputs[0]["dtype"] != "float32" or len(shape) != 4 or shape[1] not in (1, 3) \
            or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return inputs[0]


def class_folders(path: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image_folder(path: pathlib.Path, inputs: list[dict], classes: int,
                      pixel_max: float = 1.0) -> tuple[dict, np.ndarray]:
    """The images and labels of a folder of class subfolders (see module doc). Raises DataError naming the folder
    or the file, and what is wrong."""
    from PIL import Image, UnidentifiedImageError

    tensor = image_input(inputs)
    if tensor is None:
        raise DataError(f"{path}: an image folder needs a model with one float input shaped [batch, 1 or 3, H, W]; "
                        f"this one takes {[(t['name'], t['shape']) for t in inputs]}",
                        hint="an .npz with one array per input and `labels`")
    folders = class_folders(path)
    if len(folders) != classes:
        raise DataError(f"{path}: {len(folders)} class folders ({', '.join(f.name for f in folders) or 'none'}), the "
                        f"model has {classes} classes", hint="one subfolder per class, in the model's class order "
                                                            "when sorted by name")
    channels, height, width = tensor["shape"][1:]
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
        if not files:
            raise DataError(f"{folder}: no images in this class folder")
        for file in files:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{file}: not an image file (suffixes read: {', '.join(IMAGE_SUFFIXES)})")
            try:
                with Image.open(file) as image:
                    image = image.convert("L" if channels == 1 else "RGB").resize((width, height))
                    pixels = np.asarray(image, dtype=np.float32)
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f"{file}: not readable as an image: {e}") from e
            pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
            images.append(pixels * (pixel_max / 255.0))
            labels.append(label)
    return {tensor["name"]: np.stack(images)}, np.asarray(labels, dtype=np.int64)


def read_arrays(path, inputs: list[dict], classes: int, pixel_max: float = 1.0) -> tuple[dict, np.ndarray]:
    """The inputs and labels of one .npz (or image folder), checked against the graph's `inputs` and `classes`.
    Raises DataError naming the file, the array or the row, and what is wrong."""
    path = pathlib.Path(path)
    if path.is_dir():
        return read_image_folder(path, inputs, classes, pixel_max)
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: unknown data format `{path.suffix or '(no extension)'}` for an ONNX model",
                        hint="a NumPy .npz with one array per model input and `labels`, or for an image model a "
                             "folder with one subfolder of images per class")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable as .npz: {e}") from e
    for name in [t["name"] for t in inputs] + [LABELS]:
        if name not in arrays:
            raise DataError(f"{path}: no array `{name}` (arrays: {', '.join(sorted(arrays)) or 'none'})",
                            hint=f"one array per model input ({', '.join(t['name'] for t in inputs)}) and `labels`")
    labels = arrays[LABELS]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: `labels` must be one integer class index per example, got {labels.dtype} "
                        f"shaped {list(labels.shape)}")
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if len(bad):
        raise DataError(f"{path}, row {bad[0]}: label {labels[bad[0]]} is not a class index 0..{classes - 1}")
    result = {}
    for tensor in inputs:
        name, array = tensor["name"], arrays[tensor["name"]]
        if len(array) != len(labels):
            raise DataError(f"{path}: array `{name}` has {len(array)} rows, `labels` {len(labels)}")
        fixed = [(i, d) for i, d in enumerate(tensor["shape"]) if isinstance(d, int)]
        if array.ndim != len(tensor["shape"]) or any(array.shape[i] != d for i, d in fixed):
            raise DataError(f"{path}: array `{name}` is shaped {list(array.shape)}, the model takes "
                            f"{tensor['shape']}")
        want = np.dtype(tensor["dtype"])
        if want.kind != array.dtype.kind and not (want.kind == "f" and array.dtype.kind in "iu"):
            raise DataError(f"{path}: array `{name}` holds {array.dtype}, the model takes {want}")
        array = array.astype(want, copy=False)
        if want.kind == "f":
            rows = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
            if len(rows):
                raise DataError(f"{path}, row {rows[0]}: array `{name}` holds NaN or inf")
        result[name] = array
    return result, labels.astype(np.int64)


def read_splits(files, inputs: list[dict], classes: int, seed: int = SEED,
                pixel_max: float = 1.0) -> dict[str, Split]:
    """{train, validation, test: Split} from one .npz or image folder (split 70/10/20 with `seed`) or one per
    split."""
    check_split_names(files)
    if isinstance(files, dict):
        return {name: Split(*read_arrays(path, inputs, classes, pixel_max)) for name, path in files.items()}
    arrays, labels = read_arrays(files, inputs, classes, pixel_max)
    return {name: Split({k: v[index] for k, v in arrays.items()}, labels[index])
            for name, index in split_seeded(len(labels), files, seed).items()}


def metric_output(path, outputs: list[dict]) -> dict:
    """The first float output shaped [batch, classes] with a fixed number of classes. Raises ConfigError."""
    for tensor in outputs:
        if tensor["dtype"] == "float32" and len(tensor["shape"]) == 2 and isinstance(tensor["shape"][1], int):
            return tensor
    raise ConfigError(f"{path}: no float32 output shaped [batch, classes] to score accuracy on "
                      f"(outputs: {[(t['name'], t['shape']) for t in outputs]})",
                      hint="describe the model in a spec (docs/own-model.md)")


def load_model(workdir: pathlib.Path, path: str, program: str | None = None) -> OnnxFile:
    """The spec's factory: the file itself (see module doc), and the program it came from (`--torch-program`)."""
    for file, what in ((path, "path names the ONNX file"), (program, "program names the torch.export program")):
        if file is not None and not pathlib.Path(file).is_file():
            raise ConfigError(f"{file}: no such file", hint=f"the spec's factory_args.{what}")
    return OnnxFile(pathlib.Path(path), pathlib.Path(program) if program else None)


def load_data(workdir: pathlib.Path, model: str, files, seed: int = SEED, pixel_max: float = 1.0) -> dict[str, Split]:
    """The spec's data function: the .npz file(s) or image folder(s), checked against the graph of `model`."""
    inputs, outputs = read_graph(pathlib.Path(model))
    return read_splits(files, inputs, metric_output(model, outputs)["shape"][1], seed, pixel_max)


def infer_spec(path: pathlib.Path, files, name: str) -> dict:
    """The spec (as YAML's dict) of an ONNX file and its .npz data, every array checked."""
    path = pathlib.Path(path).resolve()
    inputs, outputs = read_graph(path)
    metric = metric_output(path, outputs)
    files = {k: str(pathlib.Path(v).resolve()) for k, v in files.items()} if isinstance(files, dict) \
        else str(pathlib.Path(files).resolve())
    splits = read_splits(files, inputs, metric["shape"][1])  # every array, before anything is written
    first = next(iter(splits.values()))
    sizes = {}
    for tensor in inputs:  # named axes other than batch: their size in the data, for export examples and warm-up
        for axis, dim in enumerate(tensor["shape"][1:], start=1):
            if isinstance(dim, str):
                sizes.setdefault(dim, int(first.inputs[tensor["name"]].shape[axis]))
    spec = {
        "name": name,
        "factory": "builder.pipeline.sources.onnxfile:load_model",
        "factory_args": {"path": str(path)},
        "data": "builder.pipeline.sources.onnxfile:load_data",
        "data_args": {"model": str(path), "files": files, "seed": SEED},
        "inputs": inputs,
        "outputs": outputs,
        "metric": {"name": "accuracy", "output": metric["name"]},
        "evaluate": ["test"],
        "standard_variants": ["fp32", "fp16", "int8"],
    }
    if sizes:
        spec["example_sizes"] = sizes
    folders = [pathlib.Path(f) for f in (files.values() if isinstance(files, dict) else [files])]
    if all(f.is_dir() for f in folders):  # an image folder: its pixel scale, editable, and its class names
        spec["data_args"]["pixel_max"] = 1.0
        spec["class_names"] = [f.name for f in class_folders(folders[0])]
    return spec
