"""`python -m client`: talk to the kit's Triton server from the command line.

  python -m client infer --model minilm_fp32 --text "a gripping, beautifully shot film" [--protocol http]
  python -m client infer --model minilm_fp32_text --text "..."   (raw-text endpoint: the server tokenizes)
  python -m client infer --model digits_fp32 --index 3 [--split sklearn_digits]
  python -m client models
  python -m client metadata --model digits_fp32
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from builder.core.artifacts import find_record, split_example, text_endpoint_record, text_inputs
from builder.core.handler import run_command

from .admin import find_admin_key
from .errors import ClientError
from .triton import DEFAULT_PORTS, TritonClient


def main(argv: list[str] | None = None, prog: str = "python -m client") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    common.add_argument("--url", help="server URL, e.g. grpc://127.0.0.1:8001 (default: localhost, the protocol's port)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    infer = commands.add_parser("infer", parents=[common], help="classify one text or one example of a data split")
    infer.add_argument("--model", required=True, help="served model name, e.g. minilm_fp32")
    source = infer.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="text to classify (tokenized here with the model's own tokenizer, or sent "
                                       "as is to a raw-text endpoint such as minilm_fp32_text)")
    source.add_argument("--index", type=int, help="index of an example in a cached data split")
    infer.add_argument("--split", default="test", help="split for --index (default: test)")
    infer.add_argument("--artifacts", default="artifacts", type=pathlib.Path, help="the builder's artifacts folder")
    models = commands.add_parser("models", parents=[common], help="list the server's models and their state")
    models.add_argument("--admin-key-file", help="key of the locked model-repository API (default: "
                                                 "$TRITONKIT_ADMIN_KEY, or the key a local `builder serve` generated)")
    metadata = commands.add_parser("metadata", parents=[common], help="show a model's inputs and outputs")
    metadata.add_argument("--model", required=True)
    args = parser.parse_args(argv)
    return run_command(lambda: run(args), verbose=args.verbose)


def run(args) -> int:
    url = args.url or f"{args.protocol}://127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    key = find_admin_key(url, getattr(args, "admin_key_file", None))
    with TritonClient(url, admin_key=key) as client:
        if args.command == "models":
            for m in client.models():
                print(f"{m['name']:32} {m['version'] or '-':>3} {m['state']:12} {m['reason']}")
        elif args.command == "metadata":
            print(json.dumps(client.metadata(args.model), indent=2))
        else:
            return run_infer(client, args)
    return 0


def run_infer(client: TritonClient, args) -> int:
    text_input = raw_text_input(client, args.model) if args.text is not None else None
    if text_input is not None:  # the server tokenizes: nothing local is needed; a build record adds class names
        folder, entry = None, text_endpoint_record(args.artifacts, args.model)
    else:
        folder, entry = find_record(args.artifacts, args.model)
    class_names = entry.get("spec", {}).get("class_names") or []
    metric = entry.get("spec", {}).get("metric", {})
    metric_output = metric.get("output", "logits") if metric.get("name", "accuracy") == "accuracy" else None
    mask_name = entry.get("spec", {}).get("sequence_mask")
    label = None
    if text_input is not None:
        # surrogateescape: bytes that are not UTF-8 in the command line reach the server as they were typed
        inputs = {text_input: np.array([[args.text.encode("utf-8", "surrogateescape")]], dtype=np.object_)}
    elif args.text is not None:
        inputs = text_inputs(folder, args.text)
    else:
        inputs, label = split_example(folder, args.split, args.index)
    outputs = client.infer(args.model, inputs)
    print(f"model {args.model} via {client.url}")
    if text_input is not None and {"label", "probabilities"} <= set(outputs):
        best = int(outputs.pop("label")[0, 0])
        named = class_names[best] if best < len(class_names) else str(best)
        print(f"  prediction: {named} (p={outputs.pop('probabilities')[0, best]:.3f})")
    for name, value in outputs.items():
        if name == metric_output and value.ndim == 3:  # a token classifier: a class per real (unpadded) token
            mask = outputs.get(mask_name, inputs.get(mask_name))
            best = value[0].argmax(axis=-1)[mask[0].astype(bool)] if mask is not None else value[0].argmax(axis=-1)
            print(f"  per-token prediction: {' '.join(class_names[b] if b < len(class_names) else str(b) for b in best)}")
        elif name == metric_output:
            logits = value[0].astype(np.float64)
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            best = int(np.argmax(probabilities))
            named = class_names[best] if best < len(class_names) else str(best)
            print(f"  prediction: {named} (p={probabilities[best]:.3f})")
            if label is not None:
                truth = class_names[label] if label < len(class_names) else str(label)
                print(f"  label:      {truth} ({'correct' if label == best else 'wrong'})")
        else:
            print(f"  {name}: shape {list(value.shape)}, first values {np.round(value.ravel()[:4], 4).tolist()}")
    return 0


def raw_text_input(client: TritonClient, model: str) -> str | None:
    """The input name if `model` takes one BYTES tensor (a raw-text endpoint), else None (also if unknown)."""
    try:
        inputs = client.metadata(model)["inputs"]
    except ClientError:
        return None
    return inputs[0]["name"] if [t["datatype"] for t in inputs] == ["BYTES"] else None


if __name__ == "__main__":
    sys.exit(main())
