"""What `builder build` and `builder demo` share: the model to build (a demo model, a spec, a Transformers
directory, an ONNX file or a torch program, with its data) and where the repository and the artifacts are."""

from __future__ import annotations

import pathlib
import shlex

from ..core.errors import ConfigError
from ..core.files import atomic_write
from ..pipeline.models import resolve_spec
from ..pipeline.sources import files, hf, onnxfile, torchprogram

DEFAULT_REPOSITORY = pathlib.Path("model_repository")


DEFAULT_ARTIFACTS = pathlib.Path("artifacts")


def model_arguments(parser) -> None:
    """The model to build: a demo model, a spec, or a model as it lies on disk with its data (build and demo)."""
    parser.add_argument("--model", help="a demo model: digits or minilm")
    parser.add_argument("--config", type=pathlib.Path, help="YAML spec of your own model")
    parser.add_argument("--hf-model", type=pathlib.Path, metavar="DIR",
                       help="a Hugging Face Transformers directory as save_pretrained wrote it, with its "
                            "tokenizer: a sequence or token classifier, or a sentence embedder (sentence-transformers "
                            "or a bare encoder); the spec inferred goes to <artifacts>/<name>/spec.yaml")
    parser.add_argument("--onnx-model", type=pathlib.Path, metavar="FILE",
                       help="an ONNX file with a dynamic batch axis: fp32 as given and the post-training variants "
                            "(fp16, int8); the spec inferred goes to <artifacts>/<name>/spec.yaml")
    parser.add_argument("--torch-program", type=pathlib.Path, metavar="FILE",
                       help="a TorchScript program (torch.jit.save) or a torch.export program (.pt2), exported "
                            "once to <artifacts>/<name>/program.onnx, then built as --onnx-model")
    parser.add_argument("--data", action="append", metavar="[SPLIT=]FILE",
                       help="with --hf-model a CSV, JSON-lines or Parquet file, with --onnx-model an .npz or an image "
                            "folder (a subfolder per class), with --torch-program an .npz (one array per "
                            "input, and `labels`) or, for a one-input image model, an image folder: split 70/10/20 with a fixed seed, or one per split: "
                            "--data train=a.csv --data validation=b.csv --data test=c.csv")
    parser.add_argument("--text-column", help="with --hf-model: the column holding the text, a token classifier's "
                                             "words (default: text)")
    parser.add_argument("--label-column", help="with --hf-model: the column holding the label, a class name of "
                                              "config.json's id2label or its index, a tag per word for a token "
                                              "classifier, any class name for an embedder (default: label)")
    parser.add_argument("--name", help="with --hf-model, --onnx-model or --torch-program: the model's name (default: the directory's "
                                      "or file's name)")


HF_ONLY = ("data", "text_column", "label_column", "name")  # flags of a model given as it lies on disk


def resolve_build_spec(args):
    """(the spec, how a rebuild command names it: `--model x` or `--config file`). With --hf-model or --onnx-model,
    the spec is inferred from the model and its data, every row checked, and written beside the build record first
    (builder/pipeline/sources/hf.py, onnxfile.py)."""
    given = [f"--{flag.replace('_', '-')}" for flag in HF_ONLY if getattr(args, flag) is not None]
    model_file = args.hf_model or args.onnx_model or args.torch_program
    if not model_file:
        if given:  # never silently ignored
            raise ConfigError(f"{', '.join(given)} apply only with --hf-model, --onnx-model or --torch-program",
                              hint="a spec's own data function reads its data (docs/own-model.md)")
        spec = resolve_spec(args.model, args.config)
        return spec, f"--config {shlex.quote(str(args.config))}" if args.config else f"--model {args.model}"
    if sum(bool(x) for x in (args.model, args.config, args.hf_model, args.onnx_model, args.torch_program)) > 1:
        raise ConfigError("name one model: --model, --config, --hf-model, --onnx-model or --torch-program")
    kind = "--hf-model" if args.hf_model else "--onnx-model" if args.onnx_model else "--torch-program"
    if not args.data:
        raise ConfigError(f"{kind} needs its data: --data FILE ({'CSV or JSON lines' if args.hf_model else '.npz'})",
                          hint="or one file per split: --data train=a --data validation=b --data test=c")
    if not args.hf_model and (args.text_column or args.label_column):
        raise ConfigError("--text-column and --label-column apply to --hf-model; an .npz holds one array per "
                          "input and `labels`")
    command = " ".join(["builder build", kind, shlex.quote(str(model_file)),
                        *(f"--data {shlex.quote(v)}" for v in args.data),
                        *(f"--{flag.replace('_', '-')} {shlex.quote(getattr(args, flag))}"
                          for flag in HF_ONLY[1:] if getattr(args, flag) is not None)])
    if args.hf_model:
        spec = hf.infer_spec(args.hf_model, data_files(args.data), args.text_column or "text",
                             args.label_column or "label", args.name)
    elif args.onnx_model:
        spec = onnxfile.infer_spec(args.onnx_model, data_files(args.data),
                                   args.name or files.default_name(args.onnx_model))
    else:
        return program_spec(args, command)
    path = files.write_spec(spec, args.artifacts, command)
    print(f"wrote the inferred spec {path}")
    return resolve_spec(config=path), f"--config {shlex.quote(str(path))}"


def program_spec(args, command: str):
    """resolve_build_spec for --torch-program: the program exported to a scratch file and its data checked against
    it as an ONNX source's are, then the spec written, then the file moved beside it: a failure leaves nothing."""
    import tempfile

    data = data_files(args.data)
    name = args.name or files.default_name(args.torch_program)
    target = (args.artifacts / name / "program.onnx").resolve()
    with tempfile.TemporaryDirectory() as scratch:
        exported = torchprogram.export_program(args.torch_program,
                                               data if isinstance(data, str) else data["train"],
                                               pathlib.Path(scratch) / "program.onnx")
        spec = onnxfile.infer_spec(exported, data, name)  # every array, checked against the exported graph
        spec["factory_args"]["path"] = spec["data_args"]["model"] = str(target)
        if pathlib.Path(args.torch_program).suffix == ".pt2":  # a graph qat can train (builder/pipeline/variants/qat.py)
            spec["factory_args"]["program"] = str(pathlib.Path(args.torch_program).resolve())
        path = files.write_spec(spec, args.artifacts, command)
        atomic_write(target, exported.read_bytes())
    print(f"exported {args.torch_program} to {target}\nwrote the inferred spec {path}")
    return resolve_spec(config=path), f"--config {shlex.quote(str(path))}"


def data_files(values: list[str]):
    """--data values: one path, or {split: path} from `split=path` values."""
    if len(values) == 1 and values[0].partition("=")[0] not in files.SPLITS:
        return values[0]
    found = {}
    for value in values:
        split, sep, path = value.partition("=")
        if not sep or split not in files.SPLITS or split in found:
            raise ConfigError(f"--data {value}: with several files, each is SPLIT=FILE, one for each of "
                              f"{', '.join(files.SPLITS)}", hint="or one file, which the kit splits 70/10/20")
        found[split] = path
    return found
