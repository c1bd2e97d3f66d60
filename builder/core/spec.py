"""A model spec: what the kit needs to know about a model, read from YAML into frozen dataclasses.

The demo models are described by the same YAML files a user writes (builder/pipeline/sources/*.yaml). Example::

    name: digits
    factory: builder.pipeline.sources.digits:load_model   # (workdir: Path) -> torch.nn.Module
    data: builder.pipeline.sources.digits:load_data       # (workdir: Path) -> dict[str, builder.core.data.Split]
    inputs:
      - {name: image, dtype: float32, shape: [batch, 1, 28, 28]}
    outputs:
      - {name: logits, dtype: float32, shape: [batch, 10]}
    metric: {name: accuracy, output: logits}
    evaluate: [test, sklearn_digits]

Shapes: the first dimension is always `batch`; other named dimensions are dynamic (their size for export examples
and warm-up comes from `example_sizes`), integers are fixed. The module's forward takes the inputs as keyword
arguments and returns one tensor or a tuple in the order of `outputs`. `factory_args` / `data_args` (optional) are
keyword arguments passed besides the work folder: the built-in sources for a Hugging Face directory or an ONNX file
(builder/pipeline/sources/hf.py, onnxfile.py) are such functions, and the spec the kit infers for them is one of these files.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Collection

from .errors import ConfigError, unknown_name
from .names import MAX_MODEL_NAME, SERVED_NAME

# every dynamic non-batch axis is exported as Dim(min=1, max=MAX_DYNAMIC_SIZE): the sizes the graph is made for
MAX_DYNAMIC_SIZE = 4096

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
METRICS = ("accuracy", "knn_accuracy")  # builder/core/evaluate.py says what each is


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple  # of int | str; shape[0] == "batch"
    # inputs only, checked by the embedded backend before ONNX Runtime runs (builder/serving/limits.py):
    range: tuple | None = None  # (min, max), inclusive, e.g. pixel intensities (0, 255)
    finite: bool = True  # float inputs: refuse NaN and inf; false for a model that reads NaN as "missing"

    @property
    def dynamic_dims(self) -> dict[int, str]:
        """Axis index -> name for every dynamic axis, batch included."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class MetricSpec:
    output: str
    name: str = "accuracy"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str
    data: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metric: MetricSpec
    evaluate: tuple[str, ...] = ("test",)
    train_split: str = "train"
    validation_split: str = "validation"
    calibration_split: str = "train"
    example_sizes: dict = field(default_factory=dict)  # dynamic dim name -> size used for examples and warm-up
    max_batch_size: int = 64
    # An input whose zeros mark right padding along axis 1 (an attention mask): evaluation and training trim each
    # batch to its longest example instead of computing on padding.
    sequence_mask: str | None = None
    class_names: tuple[str, ...] = ()  # names of the metric output's classes, for people; index order
    # Text models: the sequence lengths requests are right-padded to (ids 0, mask 0) by the client, the load tests
    # and the raw-text endpoint. Triton's dynamic batcher joins only requests of one shape, so texts trimmed to
    # their own lengths never batch; padded to a few buckets they do. Empty: the default (length_buckets()).
    length_buckets: tuple[int, ...] = ()
    # Triton instances per model when the build command does not say (`--instances`); None: 1. A text model
    # serves better with 2: with one instance, Triton 2.51's dynamic batcher now and then leaves a request of a
    # variable-length model in its queue for the batcher's 500 ms idle wait (measured on MiniLM: ~1-3 % of
    # requests at 1 user, p99 510 ms against a p50 of 4 ms; none with 2 instances; docs/load-tests.md)
    instances: int | None = None
    # The p99 latency budget (ms) its served config's queue policy is derived from (builder/serving/tritonconfig.py
    # queue_policy) when the build command does not say (`--slo-p99-ms`); None: 50.
    slo_p99_ms: float | None = None
    # options per variant module, e.g. {pruned: {ratio: 0.5}}; checked against the module's Config when built
    variants: dict = field(default_factory=dict)
    # what `--variant all` builds; fp16 only on request: on a CPU it is slower than fp32, and the gate refuses it
    standard_variants: tuple[str, ...] = ("fp32", "int8")
    training: dict = field(default_factory=dict)  # builder.pipeline.train.TrainConfig fields for every trained variant
    # keyword arguments of the factory and the data function besides `workdir`: one function serves many models
    # (builder/pipeline/sources/hf.py: the directory and the data files of each), checked against its signature
    factory_args: dict = field(default_factory=dict)
    data_args: dict = field(default_factory=dict)
    source: str = ""  # the YAML file it came from

    @property
    def sequence_outputs(self) -> tuple[str, ...]:
        """Outputs with one row per token (axis 1 named as the sequence mask's): a token classifier's logits."""
        mask = next((t for t in self.inputs if t.name == self.sequence_mask), None)
        if mask is None or len(mask.shape) < 2:
            return ()
        return tuple(t.name for t in self.outputs if len(t.shape) > 1 and t.shape[1] == mask.shape[1])

    def example_shape(self, tensor: TensorSpec, batch: int = 1) -> list[int]:
        return [batch if d == "batch" else self.example_sizes[d] if isinstance(d, str) else d for d in tensor.shape]


SMALLEST_BUCKET = 16


def length_buckets(spec: ModelSpec, max_tokens: int) -> tuple[int, ...]:
    """The lengths a text model's requests are padded to, ascending, ending at `max_tokens` (the model's maximum:
    its tokenizer's truncation length), so that every text has a bucket. The spec's `length_buckets` if it sets
    them (those beyond the maximum dropped), else the default: powers of two from SMALLEST_BUCKET below the
    maximum, e.g. (16, 32, 64, 128, 256) for 256."""
    if spec.length_buckets:
        below = [b for b in spec.length_buckets if b < max_tokens]
    else:
        below = [SMALLEST_BUCKET << k for k in range(max_tokens.bit_length()) if SMALLEST_BUCKET << k < max_tokens]
    return (*below, max_tokens)


def load_spec(path: str | pathlib.Path, variant_modules: Collection[str] = ()) -> ModelSpec:
    """Read and strictly validate a model spec. Raises ConfigError naming the file, the field and the bad value.

    `variant_modules`: the keys `variants:` may use (the variant registry's, `builder.pipeline.variants.module_names()`);
    the core does not import the registry, so its caller passes them. Empty: the keys are not checked."""
    import yaml

    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"model spec {path} does not exist", hint="pass the path of a YAML file to --config")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    return parse_spec(raw, where=str(path), variant_modules=variant_modules)


def parse_spec(raw: dict, where: str, variant_modules: Collection[str] = ()) -> ModelSpec:
    values = _check_fields(ModelSpec, raw, where, skip={"source"})
    name = values.get("name")
    if not isinstance(name, str) or not SERVED_NAME.match(name) or len(name) > MAX_MODEL_NAME:
        raise ConfigError(f"{where}: name {name!r} must be letters, digits and `_ . -` inside, at most "
                          f"{MAX_MODEL_NAME} characters",
                          hint="it starts every served model's name (`<name>_<variant>_text`), which Kubernetes "
                               "labels and URL paths must hold")
    values["inputs"] = _tensors(values.get("inputs"), f"{where}: inputs")
    values["outputs"] = _tensors(values.get("outputs"), f"{where}: outputs", limits=False)
    metric = values.get("metric")
    if not isinstance(metric, dict):
        raise ConfigError(f"{where}: metric must be a mapping like {{name: accuracy, output: logits}}, got {metric!r}")
    values["metric"] = MetricSpec(**_check_fields(MetricSpec, metric, f"{where}: metric"))
    if values["metric"].name not in METRICS:
        raise unknown_name("metric", values["metric"].name, METRICS)
    if values["metric"].output not in {t.name for t in values["outputs"]}:
        raise ConfigError(f"{where}: metric.output `{values['metric'].output}` is not one of the outputs")
    if isinstance(values.get("evaluate"), str):
        values["evaluate"] = [values["evaluate"]]
    values["evaluate"] = tuple(values.get("evaluate", ("test",)))
    values["class_names"] = tuple(str(c) for c in values.get("class_names", ()))
    if "standard_variants" in values:
        values["standard_variants"] = tuple(values["standard_variants"])
    if not isinstance(values.get("variants", {}), dict) or not all(
            isinstance(v, dict) for v in values.get("variants", {}).values()):
        raise ConfigError(f"{where}: variants must map a variant module to its options, e.g. {{pruned: {{ratio: 0.5}}}}")
    for key in values.get("variants", {}):
        # a misspelt key would otherwise be ignored, and its options silently not used
        if variant_modules and key not in variant_modules:
            err = unknown_name("variant module", key, variant_modules)
            raise ConfigError(f"{where}: variants: {err}", hint=err.hint)
    for key in ("factory", "data"):
        if not isinstance(values.get(key), str) or values[key].count(":") != 1:
            raise ConfigError(f"{where}: {key} must be `package.module:function`, got {values.get(key)!r}")
        values[key] = moved_reference(values[key])
        if not isinstance(values.get(f"{key}_args", {}), dict):
            raise ConfigError(f"{where}: {key}_args must map argument names to values, got {values[f'{key}_args']!r}")
    sizes = values.get("example_sizes", {}) or {}
    for t in values["inputs"]:
        for d in t.shape[1:]:
            if isinstance(d, str) and d not in sizes:
                raise ConfigError(f"{where}: input `{t.name}` has dynamic dimension `{d}` but example_sizes has no `{d}`",
                                  hint=f"add `example_sizes: {{{d}: 32}}`")
    mask = values.get("sequence_mask")
    if mask is not None and mask not in {t.name for t in values["inputs"]}:
        raise ConfigError(f"{where}: sequence_mask `{mask}` is not one of the inputs")
    _check_serving(values, where, mask)
    return ModelSpec(**values, source=where)


def _check_serving(values: dict, where: str, mask: str | None) -> None:
    """The serving fields of a spec (length buckets, batch size, instances, latency budget), checked in place."""
    buckets = values.get("length_buckets", ())
    if not isinstance(buckets, (list, tuple)) or any(not isinstance(b, int) or b < 1 for b in buckets) \
            or list(buckets) != sorted(set(buckets)):
        raise ConfigError(f"{where}: length_buckets must be increasing positive integers, e.g. [16, 32, 64, 128], "
                          f"got {buckets!r}")
    if buckets and mask is None:
        raise ConfigError(f"{where}: length_buckets needs a sequence_mask (the input whose zeros mark padding)")
    values["length_buckets"] = tuple(buckets)
    mbs = values.get("max_batch_size", 64)
    if not isinstance(mbs, int) or mbs < 1:
        raise ConfigError(f"{where}: max_batch_size must be a positive integer, got {mbs!r}")
    instances = values.get("instances")
    if instances is not None and (not isinstance(instances, int) or isinstance(instances, bool) or instances < 1):
        raise ConfigError(f"{where}: instances must be a positive integer (Triton instances per model), "
                          f"got {instances!r}")
    slo = values.get("slo_p99_ms")
    if slo is not None and (not isinstance(slo, (int, float)) or isinstance(slo, bool) or slo <= 0):
        raise ConfigError(f"{where}: slo_p99_ms must be a positive number of milliseconds (the p99 latency budget), "
                          f"got {slo!r}")


def _tensors(raw, where: str, limits: bool = True) -> tuple[TensorSpec, ...]:
    """TensorSpecs of a list of {name, dtype, shape}; inputs (`limits`) may add `range` and `finite`."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: expected a non-empty list of {{name, dtype, shape}}, got {raw!r}")
    tensors = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}[{i}]: expected a mapping {{name, dtype, shape}}, got {item!r}")
        values = _check_fields(TensorSpec, item, f"{where}[{i}]")
        if values["dtype"] not in DTYPES:
            raise unknown_name("dtype", str(values["dtype"]), DTYPES)
        shape = values["shape"]
        if not isinstance(shape, list) or not shape or shape[0] != "batch":
            raise ConfigError(f"{where}[{i}] `{values['name']}`: shape must be a list starting with `batch`, got {shape!r}")
        if any(not isinstance(d, (int, str)) or (isinstance(d, int) and d < 1) for d in shape):
            raise ConfigError(f"{where}[{i}] `{values['name']}`: dimensions are positive integers or names, got {shape!r}")
        if not limits and {"range", "finite"} & set(values):
            raise ConfigError(f"{where}[{i}] `{values['name']}`: range and finite apply to inputs only")
        value_range = values.get("range")
        if value_range is not None:
            if (not isinstance(value_range, list) or len(value_range) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
                    or value_range[0] > value_range[1]):
                raise ConfigError(f"{where}[{i}] `{values['name']}`: range must be [min, max] with min <= max, "
                                  f"got {value_range!r}")
            value_range = tuple(value_range)
        finite = values.get("finite", True)
        if not isinstance(finite, bool) or (not finite and not values["dtype"].startswith("float")):
            raise ConfigError(f"{where}[{i}] `{values['name']}`: finite is true or false, for float inputs only, "
                              f"got {finite!r}")
        tensors.append(TensorSpec(name=values["name"], dtype=values["dtype"], shape=tuple(shape),
                                  range=value_range, finite=finite))
    return tuple(tensors)


def _check_fields(cls, raw: dict, where: str, skip=frozenset()) -> dict:
    known = {f.name for f in dataclasses.fields(cls)} - set(skip)
    for key in raw:
        if key not in known:
            err = unknown_name("field", str(key), known)
            raise ConfigError(f"{where}: {err}", hint=err.hint)
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING} - set(skip)
    missing = sorted(required - set(raw))
    if missing:
        raise ConfigError(f"{where}: missing required field(s): {', '.join(missing)}")
    return dict(raw)


def call_source(spec: ModelSpec, which: str, workdir: pathlib.Path):
    """Call the spec's `factory` or `data` (`which`) with `workdir` and its `<which>_args`. Raises ConfigError,
    naming the file, for an argument the function does not take or a required one the spec leaves out."""
    import inspect

    reference, args = getattr(spec, which), getattr(spec, f"{which}_args")
    function = resolve_callable(reference, spec.source)
    try:
        inspect.signature(function).bind(workdir, **args)
    except TypeError as e:  # checked before the call, so a TypeError inside the function is not mistaken for this
        raise ConfigError(f"{spec.source}: {which}_args do not fit `{reference}`: {e}",
                          hint=f"its parameters: {inspect.signature(function)}") from e
    return function(workdir, **args)


# The kit's own sources moved into the build pipeline's package (release of 2026-12): a spec written before names
# them by the old path, which still resolves.
MOVED_PACKAGES = {"builder.sources.": "builder.pipeline.sources."}


def moved_reference(reference: str) -> str:
    """`reference` with a moved package of the kit's renamed to where it is now."""
    for old, new in MOVED_PACKAGES.items():
        if reference.startswith(old):
            return new + reference[len(old):]
    return reference


def resolve_callable(reference: str, where: str = "model spec"):
    """Import `package.module:function`. The spec's own folder is importable, so a factory can sit beside its YAML."""
    module_name, _, attr = reference.partition(":")
    if where.endswith((".yaml", ".yml")):
        folder = str(pathlib.Path(where).resolve().parent)
        if folder not in sys.path:
            sys.path.append(folder)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{where}: cannot import module `{module_name}` for `{reference}`: {e}",
                          hint="the module must be importable (installed, or next to the YAML file)") from e
    if not hasattr(module, attr):
        raise ConfigError(f"{where}: module `{module_name}` has no function `{attr}`")
    return getattr(module, attr)
