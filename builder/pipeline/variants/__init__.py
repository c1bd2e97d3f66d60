"""The registry of variants: one module per technique, one name used in the CLI, the YAML, the module and the
Triton model name (`minilm_int8`).

Each module declares what the code would otherwise guess from names: `STAGE` ("torch": transforms the nn.Module
before export; "onnx": transforms the exported file), `PRECISION` (of the weights the step leaves: fp32, fp16,
int8), `TRAINS` (True, False, or "option" when an option decides) and `SIZE_ONLY` (it buys size, not speed: the
speed gate only refuses it when slower); `facts(variant)` combines them over a variant's steps
(tests/unit/test_variant_facts.py holds every module to them). It has a frozen `Config` dataclass (its parameters; a model spec sets them under `variants: {module: {...}}`) and
`apply(target, context, config)`, which every process of a launched build runs (it trains on its share). A torch
step that also measures or writes files once training is done puts that in `finish(model, context, config)`: the
build runs it on rank 0 only, right after the step (builder/pipeline/processes.py), and `apply` hands it what it
needs through `context.handoff`. The module's name with `_` written `-` is its variant name and spec key
(embed_factorized: `embed-factorized`). A registry entry is the list of steps a name stands for. Combinations are
written `a+b` and run in the order written; torch-level steps must come before ONNX-level ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import ModuleType

from ...core.errors import VariantError, unknown_name
from . import clustered, distilled, embed_factorized, fp16, fp32, int8, pruned, qat, reparam, shared, svd, tinybert


@dataclass(frozen=True)
class Step:
    module: ModuleType
    fixed: dict = field(default_factory=dict)  # options the variant name itself decides (int8-dynamic: method)

    @property
    def name(self) -> str:
        # the variant's name (CLI, spec's `variants:` key, folders): a module embed_factorized is `embed-factorized`
        return self.module.__name__.rsplit(".", 1)[-1].replace("_", "-")

    @property
    def stage(self) -> str:
        return self.module.STAGE

    @property
    def finish(self):
        """The module's rank-0 part after training (`finish(model, context, config)`), or None."""
        return getattr(self.module, "finish", None)

    def config(self, spec_options: dict):
        """The module's Config from the model spec's options for it, then this variant's fixed options, checked:
        raises VariantError for an unknown option or a bad value, so a
        command refuses it before building anything."""
        options = {**spec_options.get(self.name, {}), **self.fixed}
        known = {f.name for f in dataclasses.fields(self.module.Config)}
        for key in options:
            if key not in known:
                err = unknown_name(f"{self.name} option", key, known, error=VariantError)
                raise VariantError(f"variants.{self.name}: {err}", hint=err.hint)
        typed = {}
        for f in dataclasses.fields(self.module.Config):
            if f.name in options:
                value = options[f.name]
                typed[f.name] = tuple(value) if isinstance(value, list) else value
        config = self.module.Config(**typed)
        if hasattr(config, "check"):
            config.check()
        return config


VARIANTS = {
    "fp32": [Step(fp32)],
    "fp16": [Step(fp16)],
    "int8": [Step(int8)],
    "int8-dynamic": [Step(int8, {"method": "dynamic"})],
    "int8-static": [Step(int8, {"method": "static"})],
    "svd": [Step(svd)],
    "pruned": [Step(pruned)],
    "distilled": [Step(distilled)],
    "tinybert": [Step(tinybert)],  # narrower as well as shallower, TinyBERT's losses through learned projections
    "reparam": [Step(reparam)],  # MobileOne-style student, branches folded into one conv per block
    "embed-factorized": [Step(embed_factorized)],  # ALBERT's factorized embedding
    "shared": [Step(shared)],  # ALBERT's cross-layer sharing
    "clustered": [Step(clustered)],  # k-means weight sharing: dense ONNX, far smaller compressed
    # min-max calibration: the activation ranges QAT trained with are min-max ranges too
    "qat": [Step(qat), Step(int8, {"method": "static", "calibration": "minmax"})],
}


STAGES, PRECISIONS, TRAINING = ("torch", "onnx"), ("fp32", "fp16", "int8"), (True, False, "option")


@dataclass(frozen=True)
class Facts:
    """What a (possibly combined) variant is, from its steps' declarations."""

    precision: str  # of the weights it ships: the last step's that changes them
    trains: bool | str  # True if a step trains, "option" if one may (by its options), else False
    size_only: bool  # every step buys size only

    @property
    def compute_precision(self) -> str:
        """Of its matrix products on a CPU: int8, or fp32 (fp16 weights run in float there)."""
        return "int8" if self.precision == "int8" else "fp32"


def facts(variant: str) -> Facts:
    plan = steps(variant)
    precision = next((s.module.PRECISION for s in reversed(plan) if s.module.PRECISION != "fp32"), "fp32")
    trains = True if any(s.module.TRAINS is True for s in plan) else \
        "option" if any(s.module.TRAINS == "option" for s in plan) else False
    return Facts(precision, trains, all(s.module.SIZE_ONLY for s in plan))


def module_names() -> set[str]:
    """The keys a model spec's `variants:` may set options for: every step's name."""
    return {step.name for steps in VARIANTS.values() for step in steps}


def steps(variant: str) -> list[Step]:
    """The steps of a (possibly combined) variant name, in order. Raises VariantError for unknown names and for
    impossible orders."""
    parts = variant.split("+")
    found: list[Step] = []
    for part in parts:
        if part not in VARIANTS:
            raise unknown_name("variant", part, VARIANTS, error=VariantError)
        found.extend(VARIANTS[part])
    stages = [s.stage for s in found]
    if "onnx" in stages and "torch" in stages[stages.index("onnx"):]:
        first_onnx = next(p for p in parts if any(s.stage == "onnx" for s in VARIANTS[p]))
        later_torch = next(p for p in parts[parts.index(first_onnx):] if any(s.stage == "torch" for s in VARIANTS[p]))
        raise VariantError(f"impossible order in `{variant}`: `{later_torch}` changes the PyTorch model, but "
                           f"`{first_onnx}` already works on the exported ONNX file",
                           hint=f"write torch-level steps first, e.g. `{later_torch}+{first_onnx}`")
    if stages.count("onnx") > 1:
        raise VariantError(f"`{variant}` combines {stages.count('onnx')} ONNX-level precisions; choose one")
    if len(parts) > 1 and "fp32" in parts:
        raise VariantError(f"`fp32` is the baseline and does not combine: build `{variant.replace('fp32+', '').replace('+fp32', '')}`")
    return found
