"""The build record's format: its schema version, the one reader that upgrades older records, and a typed view of
an entry.

  {"schema_version": 2, "model": "minilm", "variants": {"int8": {<entry>}, ...}}

Versions:
  1  records written through 2026-12-03, before the version field: an entry may lack `triton_model` (then, unless
     the build refused it, it was served under its key: `minilm_pruned+int8`), `gates_failed`, `version_dir`, `accuracy_drop_se_points`, `notes` or `training`.
  2  `schema_version` at the top; every entry has every ENTRY_DEFAULTS key.

`upgrade` turns any older record into the current one, so readers need no branch for old files; a record from a
newer kit is refused in one line. builder/core/artifacts.py reads and writes records through this module.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from .errors import ArtifactsError
from .names import legacy_name

SCHEMA_VERSION = 2

# every entry has these keys from version 2 on; the value is what an older entry without the key meant
ENTRY_DEFAULTS = {
    "triton_model": None,  # the served name; None before entries named themselves (version 1: the key names it)
    "gates_failed": [],  # the build's gates this variant failed: refused and not served when not empty
    "version_dir": None,  # where its model.onnx was written; None when refused
    "accuracy_drop_se_points": None,  # standard error of the drop, paired per example
    "accuracy_drop_by_split": {},  # {split: [drop, se]} on every evaluation split; {} before the gate held on each
    "notes": {},  # what the variant's steps recorded (int8 search, fusion, pruning ratio, ...)
    "training": {},  # per trained step: steps, seconds, selected checkpoint
}


def upgrade(record: dict, where: str = "the build record") -> dict:
    """`record` in the current schema (a new dict; the argument is left as it was). Raises ArtifactsError for a
    record written by a newer kit or one that is not a record."""
    if not isinstance(record, dict) or not isinstance(record.get("variants"), dict):
        raise ArtifactsError(f"{where} is not a build record (no `variants` object)",
                             hint="rebuild the model: builder build --model <model> --variant all")
    version = record.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ArtifactsError(f"{where} has schema version {version!r}; this kit reads versions up to "
                             f"{SCHEMA_VERSION}", hint="upgrade the kit, or rebuild the model with this one")
    upgraded = copy.deepcopy(record)
    for variant, entry in upgraded["variants"].items():
        for key, default in ENTRY_DEFAULTS.items():
            entry.setdefault(key, copy.deepcopy(default))
        if version == 1 and entry["triton_model"] is None and not entry["gates_failed"]:
            entry["triton_model"] = legacy_name(upgraded.get("model", ""), variant)  # served under its key then
    upgraded["schema_version"] = SCHEMA_VERSION
    return upgraded


def new_record(model: str) -> dict:
    return {"schema_version": SCHEMA_VERSION, "model": model, "variants": {}}


@dataclass(frozen=True)
class BuildEntry:
    """One built variant, typed: what the build summary, the report and the benchmark read. `raw` keeps the whole
    entry for the rarer facts (operator profile, roofline detail, serving config) that only one reader uses."""

    variant: str
    triton_model: str | None
    accuracy: dict = field(default_factory=dict)  # {split: accuracy}, in the spec's split order
    accuracy_drop_points: float | None = None  # vs fp32, first split; 0 for fp32
    accuracy_drop_se_points: float | None = None
    agreement_top1: float | None = None  # with fp32; 1 for fp32
    speedup_vs_fp32: dict = field(default_factory=dict)  # {"b1_t1": x, "b32_t1": x, ...}
    build_seconds: float = 0.0
    gates_failed: tuple[str, ...] = ()
    version_dir: str | None = None
    source: str | None = None  # the model it was built from
    eval_examples: dict = field(default_factory=dict)  # {split: examples scored}
    params: int | None = None
    onnx_bytes: int | None = None
    macs: int | None = None
    latency_p50_ms: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # per trained step: steps, planned_steps, seconds, ...
    training_cut_by_time_cap: tuple[str, ...] = ()
    verdict_reused: bool = False
    built_at: str | None = None
    cpu_isa: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def refused(self) -> bool:
        return bool(self.gates_failed)

    @property
    def first_split(self) -> str | None:
        return next(iter(self.accuracy), None)

    @property
    def relative_compute(self) -> float | None:
        """Compute relative to fp32: 1 / geometric mean speedup at batch 1 and 32, 1 thread (fp32's own latency
        measured beside the variant, so machine drift between builds cancels). None without."""
        if self.variant == "fp32":
            return 1.0
        values = ([v for k, v in self.speedup_vs_fp32.items() if k in ("b1_t1", "b32_t1") and v]
                  or [v for v in self.speedup_vs_fp32.values() if v])
        return round(1.0 / math.exp(sum(map(math.log, values)) / len(values)), 4) if values else None

    def peak_fraction(self, key: str) -> float | None:
        """Achieved FLOP/s as a fraction of the machine's measured peak at `key` ("b1_t1"); None if not recorded."""
        roofline = ((self.raw.get("roofline") or {}).get("by_latency") or {}).get(key)
        return None if roofline is None else roofline["fraction_of_peak"]

    @classmethod
    def of(cls, variant: str | None, entry: dict) -> "BuildEntry":
        """The typed view of an entry (of an upgraded record, or a copy a load-test run kept: keys may be missing);
        `variant` None: the entry's own."""
        variant = variant or entry.get("variant") or ""
        fp32 = variant == "fp32"
        return cls(variant=variant, triton_model=entry.get("triton_model"), accuracy=dict(entry.get("accuracy") or {}),
                   accuracy_drop_points=entry.get("accuracy_drop_points", 0.0 if fp32 else None),
                   accuracy_drop_se_points=entry.get("accuracy_drop_se_points"),
                   agreement_top1=1.0 if fp32 else (entry.get("agreement_with_fp32") or {}).get("top1"),
                   speedup_vs_fp32=dict(entry.get("speedup_vs_fp32") or {}),
                   build_seconds=entry.get("build_seconds") or 0.0,
                   gates_failed=tuple(entry.get("gates_failed") or ()), version_dir=entry.get("version_dir"),
                   source=entry.get("source"), eval_examples=dict(entry.get("eval_examples") or {}),
                   params=entry.get("params"), onnx_bytes=entry.get("onnx_bytes"), macs=entry.get("macs"),
                   latency_p50_ms=dict(entry.get("latency_p50_ms") or {}), training=dict(entry.get("training") or {}),
                   training_cut_by_time_cap=tuple(entry.get("training_cut_by_time_cap") or ()),
                   verdict_reused=bool(entry.get("verdict_reused")), built_at=entry.get("built_at"),
                   cpu_isa=dict(entry.get("cpu_isa") or {}), raw=entry)


def entries(record: dict) -> dict[str, BuildEntry]:
    """{variant: BuildEntry} of an upgraded record."""
    return {variant: BuildEntry.of(variant, entry) for variant, entry in record["variants"].items()}
