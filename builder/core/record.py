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
    """The facts of one built variant that commands print and compare, typed; `raw` keeps the whole entry."""

    variant: str
    triton_model: str | None
    accuracy: float | None
    accuracy_drop_points: float | None
    accuracy_drop_se_points: float | None
    agreement_top1: float | None
    speedup_vs_fp32: float | None
    build_seconds: float
    gates_failed: tuple[str, ...]
    version_dir: str | None
    raw: dict = field(repr=False, compare=False)

    @property
    def refused(self) -> bool:
        return bool(self.gates_failed)

    @classmethod
    def of(cls, variant: str, entry: dict) -> "BuildEntry":
        """The typed view of an entry of an upgraded record."""
        return cls(variant=variant, triton_model=entry["triton_model"], accuracy=entry.get("accuracy"),
                   accuracy_drop_points=entry.get("accuracy_drop_points"),
                   accuracy_drop_se_points=entry["accuracy_drop_se_points"],
                   agreement_top1=(entry.get("agreement_with_fp32") or {}).get("top1"),
                   speedup_vs_fp32=entry.get("speedup_vs_fp32"), build_seconds=entry.get("build_seconds") or 0.0,
                   gates_failed=tuple(entry["gates_failed"]), version_dir=entry["version_dir"], raw=entry)


def entries(record: dict) -> dict[str, BuildEntry]:
    """{variant: BuildEntry} of an upgraded record."""
    return {variant: BuildEntry.of(variant, entry) for variant, entry in record["variants"].items()}
