"""The raw-text endpoint of a text model: the Triton ensemble `<model>_<variant>_text`, strings in, answers out.

    TEXT (TYPE_STRING [batch, 1])
      -> <model>_tokenizer     Python model, the model's own tokenizer.json (tokenizer_model.py)
      -> <model>_<variant>     the encoder variant, unchanged
      -> <model>_postprocess   a two-node ONNX graph: Softmax and ArgMax over the metric output (logits)
    -> label (INT64 [batch, 1]), probabilities (FP32 [batch, classes]), and the encoder's other outputs (embedding)

A model that is not a classifier of whole texts (a token classifier, an embedding model: builder/pipeline/sources/hf.py)
gets the first two steps only, and answers the encoder's outputs as they are; a token classifier's also answers the
tokenizer's attention mask, which tells its real tokens from the padding of its length bucket.

One tokenizer and one postprocess model per model, shared by the ensembles of all its variants: the tokenizer is the
model's, not the variant's, and on the embedded server every model is a process of its own. The postprocess is ONNX
rather than Python so that the official image runs it on its native ONNX Runtime backend, and the portability test
checks it like every other ONNX model the builder writes. A Python model calling the encoder itself (BLS) would be
one model fewer but holds its instance for the encoder's whole run; an ensemble lets Triton pipeline the three steps
and batch each one dynamically.

A text model is one whose spec has a `sequence_mask` and exactly one other input (the token ids), both int64, and
whose factory writes `tokenizer.json` into its work folder (`<artifacts>/<model>/`) with the truncation length it
was trained with (builder/pipeline/sources/minilm.py: 256 tokens). Texts longer than that are truncated, as the training data
and the client's `--text` are.
"""

from __future__ import annotations

import json
import pathlib

from ...core.artifacts import tokenizer_path
from ...core.errors import ConfigError, RepositoryError
from ...core.names import model_name
from ...core.spec import length_buckets
from .. import repository as repo
from ..limits import PARAMETER as LIMITS_PARAMETER, to_parameter
from ..tritonconfig import TRITON_DTYPES, ServingConfig, parse_text, queue_policy, to_text

TEXT_INPUT = "TEXT"
MODEL_SOURCE = pathlib.Path(__file__).with_name("tokenizer_model.py")
ONNX_OPSET = 18  # as the exported models; IR version 9: ONNX Runtime 1.19 (the 24.10 image) reads up to 10


def text_model_name(encoder: str) -> str:
    return f"{encoder}_text"


def tokenizer_model_name(spec) -> str:
    return f"{spec.name}_tokenizer"


def postprocess_model_name(spec) -> str:
    return f"{spec.name}_postprocess"


def text_inputs(spec) -> tuple[str, str]:
    """(token ids input, attention mask input) of a text model's spec. Raises ConfigError for any other spec."""
    hint = ("the raw-text endpoint needs a text model: `sequence_mask` in its spec, one other int64 input (token "
            "ids), and tokenizer.json written to its work folder by its factory")
    if not spec.sequence_mask:
        raise ConfigError(f"{spec.name} is not a text model: its spec has no sequence_mask", hint=hint)
    others = [t for t in spec.inputs if t.name != spec.sequence_mask]
    if len(others) != 1 or any(t.dtype != "int64" for t in spec.inputs):
        raise ConfigError(f"{spec.name}: the raw-text endpoint feeds token ids and an attention mask (int64), but "
                          f"the model takes {[f'{t.name} {t.dtype}' for t in spec.inputs]}", hint=hint)
    return others[0].name, spec.sequence_mask


def max_tokens(tokenizer_file: pathlib.Path) -> int:
    """The truncation length saved in a tokenizer.json. Raises ConfigError if it sets none."""
    truncation = json.loads(tokenizer_file.read_text()).get("truncation") or {}
    if not truncation.get("max_length"):
        raise ConfigError(f"{tokenizer_file} sets no truncation length; the text endpoint needs the model's maximum",
                          hint="save the tokenizer with `enable_truncation(max_length=...)` in the model's factory")
    return int(truncation["max_length"])


def encoder_max_length(config_file: pathlib.Path, ids: str) -> int | None:
    """The longest sequence the encoder's input limits (builder/serving/limits.py) allow for `ids`, if it records them."""
    limits = parse_text(config_file.read_text(), where=str(config_file)).parameters.get(LIMITS_PARAMETER)
    if limits is None:
        return None
    dims = json.loads(limits.string_value).get("dims", {})
    return min((d["max"] for d in dims.values() if any(name == ids for name, _ in d["axes"])), default=None)


def write_text_endpoint(spec, variant: str, repository: pathlib.Path, artifacts: pathlib.Path,
                        serving: ServingConfig = ServingConfig()) -> dict:
    """Write `<model>_tokenizer`, `<model>_postprocess` and the ensemble `<model>_<variant>_text` into
    `repository` (each atomically, the ensemble last). Returns what was written, for the build record.
    The tokenizer and postprocess models get the encoder's queue policy (`serving`'s latency budget), for their
    one instance; the ensemble has no queue of its own.

    Raises ConfigError for a model that is not a text model, RepositoryError if the encoder `<model>_<variant>`
    is not in the repository (an ensemble without it could never load).
    """
    ids, mask = text_inputs(spec)
    encoder = model_name(spec.name, variant)
    text_model = text_model_name(encoder)
    if not (repository / encoder / "config.pbtxt").is_file():
        raise RepositoryError(f"cannot write the ensemble `{text_model}`: its encoder model `{encoder}` is not in "
                              f"{repository}", hint=f"build the encoder with it: `builder build --model {spec.name} "
                                                    f"--variant {variant} --text-endpoint`")
    workdir = artifacts / spec.name
    tokenizer_file = tokenizer_path(artifacts, spec.name)
    if not tokenizer_file.is_file():
        raise ConfigError(f"{spec.name}: no tokenizer.json in {workdir}",
                          hint="a text model's factory writes its tokenizer.json to its work folder "
                               "(see builder/pipeline/sources/minilm.py)")
    length = max_tokens(tokenizer_file)
    longest = encoder_max_length(repository / encoder / "config.pbtxt", ids)
    if longest is not None and length > longest:  # every long text would be refused by the encoder's input checks
        raise ConfigError(f"{spec.name}: tokenizer.json truncates at {length} tokens, but `{encoder}` runs at most "
                          f"{longest}", hint=f"save the tokenizer with `enable_truncation(max_length={longest})`")
    logits = next(t for t in spec.outputs if t.name == spec.metric.output)
    classes = logits.shape[-1] if classifies_texts(spec) else None
    if spec.metric.name == "accuracy" and len(logits.shape) == 2 and classes is None:
        raise ConfigError(f"{spec.name}: the metric output `{logits.name}` must be float32 [batch, classes] with "
                          f"a fixed number of classes for the text endpoint's label and probabilities, "
                          f"got {logits.shape}")

    serving = serving.for_spec(spec)
    policy = queue_policy(serving.slo_p99_ms, spec.max_batch_size, 1) if serving.queue_policy else None  # no batching delay there
    tokenizer = tokenizer_model_name(spec)
    repo.write_model(repository, tokenizer, to_text(tokenizer_config(tokenizer, spec, ids, mask, length,
                                                                     length_buckets(spec, length), policy)),
                     files={"model.py": MODEL_SOURCE, "tokenizer.json": tokenizer_file})
    postprocess = postprocess_model_name(spec) if classes else None
    if postprocess:
        onnx_file = postprocess_onnx(logits.name, classes, workdir / "text_endpoint" / "postprocess.onnx")
        repo.write_model(repository, postprocess,
                         to_text(postprocess_config(postprocess, spec, logits.name, classes, policy)), onnx_file)
    repo.write_model(repository, text_model,
                     to_text(ensemble_config(text_model, spec, encoder, tokenizer, postprocess, classes)))
    return {"model": text_model, "tokenizer": tokenizer, "postprocess": postprocess, "max_tokens": length}


def tokenizer_config(name: str, spec, ids: str, mask: str, length: int, buckets: tuple[int, ...],
                     policy: dict | None = None) -> dict:
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "input": [{"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [{"name": ids, "data_type": "TYPE_INT64", "dims": [-1]},
                   {"name": mask, "data_type": "TYPE_INT64", "dims": [-1]}],
        # requests that arrive together are tokenized in one call; each is padded on its own
        "dynamic_batching": {"default_queue_policy": policy} if policy else {},
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],  # tokenizing is CPU work, also with --device gpu
        "parameters": {"ids_output": {"string_value": ids}, "mask_output": {"string_value": mask},
                       "max_length": {"string_value": str(length)},
                       # each request padded to the smallest of these that holds its longest text, so the encoder
                       # behind can batch requests of one bucket (Triton batches equal shapes only)
                       "length_buckets": {"string_value": ",".join(map(str, buckets))}},
    }


def postprocess_config(name: str, spec, logits: str, classes: int, policy: dict | None = None) -> dict:
    return {
        "name": name,
        "backend": "onnxruntime",
        "max_batch_size": spec.max_batch_size,
        "input": [{"name": logits, "data_type": "TYPE_FP32", "dims": [classes]}],
        "output": [{"name": "label", "data_type": "TYPE_INT64", "dims": [1]},
                   {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [classes]}],
        "dynamic_batching": {"default_queue_policy": policy} if policy else {},
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],  # two element-wise nodes: never worth a GPU copy
        "parameters": {"intra_op_thread_count": {"string_value": "1"},
                       "inter_op_thread_count": {"string_value": "1"},
                       # it takes the encoder's logits, finite unless the encoder broke (builder/serving/limits.py)
                       **to_parameter({"inputs": {logits: {"finite": True}}, "dims": {}})},
    }


def classifies_texts(spec) -> bool:
    """A classifier of whole texts: its metric output float32 [batch, classes] scored by accuracy. Its text endpoint
    answers a label and probabilities; any other model's, the encoder's outputs."""
    output = next(t for t in spec.outputs if t.name == spec.metric.output)
    return (spec.metric.name == "accuracy" and len(output.shape) == 2 and isinstance(output.shape[1], int)
            and output.dtype == "float32")


def ensemble_config(name: str, spec, encoder: str, tokenizer: str, postprocess: str | None,
                    classes: int | None) -> dict:
    """tokenizer -> encoder (-> postprocess: a classifier's label and probabilities, when `postprocess`)."""
    ids, mask = text_inputs(spec)
    logits = spec.metric.output
    passed = [t for t in spec.outputs if t.name != logits or not postprocess]  # straight from the encoder

    def tensor(t):
        return {"name": t.name, "data_type": TRITON_DTYPES[t.dtype], "dims": [-1 if isinstance(d, str) else d
                                                                               for d in t.shape[1:]]}

    steps = [{"model_name": tokenizer, "model_version": -1, "input_map": {TEXT_INPUT: TEXT_INPUT},
              "output_map": {ids: ids, mask: mask}},
             {"model_name": encoder, "model_version": -1, "input_map": {ids: ids, mask: mask},
              "output_map": {t.name: t.name for t in spec.outputs}}]
    outputs = [tensor(t) for t in passed]
    if postprocess:
        steps.append({"model_name": postprocess, "model_version": -1, "input_map": {logits: logits},
                      "output_map": {"label": "label", "probabilities": "probabilities"}})
        outputs[:0] = [{"name": "label", "data_type": "TYPE_INT64", "dims": [1]},
                       {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [classes]}]
    elif spec.sequence_outputs:  # which rows of a token output are text, which the length bucket's padding
        outputs.append({"name": mask, "data_type": "TYPE_INT64", "dims": [-1]})
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": spec.max_batch_size,
        "input": [{"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": outputs,
        "ensemble_scheduling": {"step": steps},
    }


def postprocess_onnx(logits: str, classes: int, path: pathlib.Path) -> pathlib.Path:
    """[batch, classes] logits -> probabilities (Softmax over classes), label (ArgMax, [batch, 1] int64)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", [logits], ["probabilities"], axis=-1),
         helper.make_node("ArgMax", [logits], ["label"], axis=1, keepdims=1)],
        "postprocess",
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", classes])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch", 1]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=9,
                              producer_name="triton-deploy-kit")
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
