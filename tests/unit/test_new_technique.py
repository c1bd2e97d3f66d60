"""A new variant technique is one module, one registry line and its test (issue: a house a newcomer can extend):
here a technique defined in the test itself, registered as the registry's one line would, is built end to end on
the tiny fixture model, written to the repository and recorded with its declared facts. Nothing else in the kit
names it."""

import dataclasses
import pathlib
import sys
import types

import numpy as np

from builder.pipeline.build import Gates, build_variant
from builder.core.artifacts import read_record
from builder.core.spec import load_spec
from builder.pipeline.variants import VARIANTS, Step, facts

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "tiny" / "tiny.yaml"


def rounded_technique() -> types.ModuleType:
    """What a newcomer writes as builder/pipeline/variants/rounded.py: every float weight rounded to 3 decimals."""
    module = types.ModuleType("builder.pipeline.variants.rounded")

    @dataclasses.dataclass(frozen=True)
    class Config:
        decimals: int = 3

    def apply(model, context, config):
        import copy

        import torch

        rounded = copy.deepcopy(model)
        with torch.no_grad():
            for parameter in rounded.parameters():
                parameter.copy_(torch.round(parameter * 10 ** config.decimals) / 10 ** config.decimals)
        context.notes["rounded_decimals"] = config.decimals
        return rounded

    module.__dict__.update(STAGE="torch", PRECISION="fp32", TRAINS=False, SIZE_ONLY=True, Config=Config,
                           apply=apply)
    return module


def test_a_technique_registered_in_one_line_builds_serves_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURE.parent))
    monkeypatch.setitem(VARIANTS, "rounded", [Step(rounded_technique())])  # the registry's one line
    spec = load_spec(FIXTURE)
    repository, artifacts = tmp_path / "repo", tmp_path / "artifacts"
    quiet = {"progress": lambda m: None, "eval_limit": 60}
    build_variant(spec, "fp32", repository, artifacts, **quiet)
    # forced: on a model this small the speed gate may call either way; what is tested is the path, not the speed
    entry = build_variant(spec, "rounded", repository, artifacts, gates=Gates(force=True), **quiet)
    assert entry["triton_model"] == "tiny_rounded" and entry["notes"]["rounded_decimals"] == 3
    assert (repository / "tiny_rounded" / "1" / "model.onnx").is_file()
    assert read_record(artifacts, "tiny")["variants"]["rounded"]["variant_configs"] == {"rounded": {"decimals": 3}}
    assert facts("rounded").size_only and facts("rounded").trains is False
    assert abs(entry["accuracy_drop_points"]) < 5.0 and np.isfinite(entry["speedup_vs_fp32"]["b1_t1"])
    # spec options reach it like any other technique's
    tuned = dataclasses.replace(spec, variants={"rounded": {"decimals": 1}})
    assert build_variant(tuned, "rounded", repository, artifacts, gates=Gates(force=True),
                         **quiet)["notes"]["rounded_decimals"] == 1
    assert "builder.pipeline.variants.rounded" not in sys.modules  # no file of the kit imports it: the registry is enough
