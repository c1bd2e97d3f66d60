"""A TorchScript program or a `torch.export` program, and an .npz of its inputs and labels (or, for an image model,
an image folder), as a model source.

    builder build --torch-program model.pt --data data.npz --variant fp32,int8,fp16    (torch.jit.save)
    builder build --torch-program model.pt2 --data data.npz --variant fp32,int8        (torch.export.save)
    builder build --torch-program model.pt --data images/ --variant fp32,int8          (a subfolder per class)

The program is exported to ONNX once, into `<artifacts>/<name>/program.onnx`, and from there it is an ONNX source
(builder/pipeline/sources/onnxfile.py): fp32 as exported, the post-training variants (fp16, int8 with its accuracy search),
variants that train refused in one line. A TorchScript program goes through torch's TorchScript exporter (the
dynamo exporter cannot trace a ScriptModule), with every input's and output's first axis a dynamic batch axis; a
`torch.export` program through the dynamo exporter, with the dynamic axes it was exported with (its batch axis
must be dynamic: `dynamic_shapes=` at export).

The .npz holds one array per argument of the program's `forward`, named as the arguments, and `labels`. The
export is checked on real rows of it: ONNX Runtime's outputs must match the program's (ExportError otherwise). The
file is written atomically and only after the data and the check pass.

An image folder feeds a program with one argument. A program carries no input shape, so the folder's first image
gives it: 1 channel for a grayscale image, else 3 (RGB), at that image's height and width; every image is read
as an ONNX source's image folder is (builder/pipeline/sources/onnxfile.py: converted, resized, scaled to 0..1).
"""

from __future__ import annotations

import pathlib

import numpy as np

from ...core.errors import ConfigError, DataError, ExportError
from ...core.files import atomic_write

OPSET = 18  # what the kit's own exports use (builder/pipeline/torch2onnx.py)
SUFFIXES = (".pt", ".pth", ".pt2", ".ts")
CHECK_ROWS = 4
ATOL = 1e-4
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow's one-channel modes (LA: grey plus alpha)


def trainable_program(path: pathlib.Path):
    """The torch.export program at `path` as a torch module that trains: its graph module, whose own train() and
    eval() torch refuses, in a wrapper whose mode switch does not reach it. The graph was exported in eval mode,
    so it has no train-mode behaviour to switch (BatchNorm uses its running statistics, dropout is gone)."""
    import torch

    program, names, kind = load_program(path)
    if kind != "export":
        raise ConfigError(f"{path}: a TorchScript program cannot be trained here; QAT rewrites the graph of a "
                          "torch.export program", hint="save the model with torch.export.save, or build fp32, "
                                                        "fp16 and int8 from this one")

    class TrainableProgram(torch.nn.Module):
        def __init__(self, graph):
            super().__init__()
            self.graph_module = graph

        def train(self, mode: bool = True):
            self.training = mode
            return self

        def forward(self, *args, **kwargs):  # the kit passes inputs by name, the graph takes them in order
            return self.graph_module(*args, *(kwargs[name] for name in names))

    return TrainableProgram(program.module())


def load_program(path: pathlib.Path):
    """(program, argument names, kind): a ScriptModule ("torchscript") or an ExportedProgram ("export"). Raises
    ConfigError for a file that is neither."""
    import torch

    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file", hint="pass the file torch.jit.save or torch.export.save wrote")
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is not a program
            raise ConfigError(f"{path}: not a torch.export program: {e}",
                              hint="write it with torch.export.save(torch.export.export(model, args), path)") from e
        names = [spec.arg.name for spec in program.graph_signature.input_specs
                 if spec.kind.name == "USER_INPUT"]
        return program, names, "export"
    try:
        program = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: not a TorchScript program: {e}",
                          hint="write it with torch.jit.save(torch.jit.script(model), path); a state_dict or a "
                               "pickled module is not a program: describe it in a spec (docs/own-model.md)") from e
    names = [a.name for a in program.forward.schema.arguments[1:]]  # [0] is self
    return program.eval(), names, "torchscript"


def example_rows(path: pathlib.Path, names: list[str], rows: int = CHECK_ROWS) -> dict[str, np.ndarray]:
    """The first `rows` rows of every argument's array in the .npz (float64 as float32). Raises DataError."""
    path = pathlib.Path(path)
    if path.is_dir():
        return folder_rows(path, names, rows)
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise DataError(f"{path}: a program's data is an existing .npz file or image folder",
                        hint=f"one array per argument of forward ({', '.join(names)}) and `labels`")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise DataError(f"{path}: no array for the program's argument(s) {', '.join(missing)} (arrays: "
                                f"{', '.join(sorted(data.files)) or 'none'})",
                                hint=f"name the arrays as forward's arguments: {', '.join(names)}, and `labels`")
            found = {n: data[n][:rows] for n in names}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable as .npz: {e}") from e
    return {n: a.astype(np.float32) if a.dtype == np.float64 else a for n, a in found.items()}


def folder_rows(path: pathlib.Path, names: list[str], rows: int) -> dict[str, np.ndarray]:
    """The first `rows` images of an image folder, shaped as its first image says (see module doc)."""
    from PIL import Image, UnidentifiedImageError

    from .onnxfile import IMAGE_SUFFIXES, class_folders, read_image_folder

    if len(names) != 1:
        raise DataError(f"{path}: an image folder feeds a program with one argument; its forward takes "
                        f"{', '.join(names)}", hint="an .npz with one array per argument and `labels`")
    folders = class_folders(path)
    first = next((f for folder in folders for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES),
                 None)
    if first is None:
        raise DataError(f"{path}: no images in class subfolders", hint="one subfolder of images per class")
    try:
        with Image.open(first) as image:
            channels, (width, height) = (1 if image.mode in GRAYSCALE_MODES else 3), image.size
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{first}: not readable as an image: {e}") from e
    tensor = {"name": names[0], "dtype": "float32", "shape": ["batch", channels, height, width]}
    inputs, _ = read_image_folder(path, [tensor], len(folders))
    return {names[0]: inputs[names[0]][:rows]}


def output_names(outputs) -> list[str]:
    if isinstance(outputs, (tuple, list)):
        return [f"output_{i}" for i in range(len(outputs))]
    return ["output"]


def export_program(path: pathlib.Path, data: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """Export the program at `path` to ONNX at `target`, checked on the first rows of `data` (see module doc)."""
    program, names, kind = load_program(path)
    if not names:
        raise ConfigError(f"{path}: its forward takes no arguments", hint="a model takes at least one input tensor")
    proto = program_onnx(program, kind, names, example_rows(data, names), path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, proto.SerializeToString())
    return target


def program_onnx(program, kind: str, names: list[str], rows: dict[str, np.ndarray], path: pathlib.Path):
    """The ONNX model of `program` (within ONNX Runtime 1.19's limits), its outputs checked equal to the
    program's on `rows`. Raises ExportError."""
    import io

    import onnx
    import onnxruntime as ort
    import torch

    from ..torch2onnx import enforce_limits

    args = tuple(torch.from_numpy(rows[n]) for n in names)
    with torch.no_grad():
        expected = (program.module() if kind == "export" else program)(*args)
    outputs = output_names(expected)
    expected = [t.numpy() for t in (expected if isinstance(expected, (tuple, list)) else [expected])]
    buffer = io.BytesIO()
    try:
        if kind == "torchscript":
            axes = {n: {0: "batch"} for n in [*names, *outputs]}
            torch.onnx.export(program, args, buffer, dynamo=False, input_names=names, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET)
            proto = onnx.load_from_string(buffer.getvalue())
        else:
            proto = torch.onnx.export(program, args, dynamo=True, input_names=names, output_names=outputs,
                                      opset_version=OPSET).model_proto
    except Exception as e:  # noqa: BLE001 - the exporters raise many kinds
        raise ExportError(f"{path}: could not export the {kind} program to ONNX: {str(e).splitlines()[0]}") from e
    enforce_limits(proto, path.name)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(outputs, {n: rows[n] for n in names})
    for name, want, have in zip(outputs, expected, got):
        difference = float(np.max(np.abs(want - have))) if want.size else 0.0
        if want.shape != have.shape or difference > ATOL * max(1.0, float(np.max(np.abs(want)))):
            raise ExportError(f"{path}: the ONNX export's `{name}` differs from the program's on the data's first "
                              f"rows (max |difference| {difference:.3g}, shapes {list(want.shape)} / "
                              f"{list(have.shape)})", hint="describe the model in a spec (docs/own-model.md)")
    return proto


def retrained_program_onnx(path: pathlib.Path, weights: dict, rows: dict[str, np.ndarray], target: pathlib.Path):
    """The torch.export program at `path` with `weights` (a state dict of its parameters, e.g. after QAT)
    exported to ONNX at `target`, checked against the retrained program on `rows` (program_onnx)."""
    import torch

    program, names, kind = load_program(path)
    with torch.no_grad():
        for name, tensor in program.state_dict.items():
            if name in weights:
                tensor.copy_(weights[name])
    proto = program_onnx(program, kind, names, rows, path)
    atomic_write(target, proto.SerializeToString())
    return target
