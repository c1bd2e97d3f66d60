"""Capacity plan and cost: how many replicas of a variant serve a target request rate within the SLO, what each
replica needs, and what that costs on a user's instance types.

  prices = read_prices(pathlib.Path("prices.yaml"))     # optional
  line = plan_variant(model, throughput_low=..., batch_size=1, instances=1, threads=2, rss_per_instance=...,
                      target_qps=2000, headroom=0.3, prices=prices)

Arithmetic (every input measured, each margin stated):
- capacity of one replica = the lower bound of the throughput interval of the variant's best step within the SLO
  (examples/s over the step's windows, `loadtests/intervals.py`) / the run's examples per request = requests/s;
- replicas = ceil(target / (capacity x (1 - headroom))): with headroom 0.3 no replica runs above 70 % of the
  lowest rate it was measured to sustain (the base HPA's CPU target is the same 70 %);
- cores per replica = the config's instances x ONNX Runtime intra-op threads (build record `serving`): the pod
  requests exactly those, as docker/k8s/base/deployment.yaml's resource rule says;
- memory per replica = instances x resident memory per instance (served footprint) x (1 + memory margin) + the
  server process's resident memory (measured by the run with all its models loaded, so on the high side): the
  margin, 0.5 by default, covers ONNX Runtime's arena growing for batches larger than the warm-up request;
- per instance type (name, vCPUs, memory, $/h): replicas per node = min(vCPUs // cores, memory // memory per
  replica); nodes = ceil(replicas / that); $/h = nodes x price; $ per million requests = $/h / (target x 3600)
  x 1e6. The node figures should be its allocatable resources, not the advertised ones.

The figures come from the machine the load test ran on. From a small shared machine (2 cores, the load
generator beside the server) they extrapolate only roughly: re-measure on the target instance type (`python -m
loadtests run --url grpc://<pod>:8001` against one replica) and plan from that run.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

from builder.core.errors import BuilderError, unknown_name
from builder.serving.footprint import FootprintError, parse_size

DEFAULT_HEADROOM = 0.3
DEFAULT_MEMORY_MARGIN = 0.5
SECONDS_PER_HOUR = 3600
MIB = 1024 ** 2


class PlanError(BuilderError):
    """A capacity plan cannot be made: a bad prices file, a target rate that is not positive."""


@dataclasses.dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: float
    memory: str  # a size as Kubernetes writes it: 16GiB, 32Gi, 64GB
    usd_per_hour: float

    @property
    def memory_bytes(self) -> int:
        try:
            return parse_size(self.memory)
        except FootprintError as e:
            raise PlanError(f"instance type `{self.name}`: memory {self.memory!r}: {e}", hint=e.hint) from e


def read_prices(path: pathlib.Path) -> list[InstanceType]:
    """The `instance_types` list of a YAML file (see loadtests/prices.example.yaml). Raises PlanError naming the
    file, the entry and the field."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PlanError(f"cannot read prices file {path}: {e}", hint="see loadtests/prices.example.yaml") from e
    if not isinstance(data, dict) or not isinstance(data.get("instance_types"), list) or not data["instance_types"]:
        raise PlanError(f"{path}: expected a non-empty `instance_types:` list",
                        hint="see loadtests/prices.example.yaml")
    unknown = set(data) - {"instance_types"}
    if unknown:
        raise unknown_name(f"key in {path}", sorted(unknown)[0], ["instance_types"], PlanError)
    fields = [f.name for f in dataclasses.fields(InstanceType)]
    types = []
    for i, item in enumerate(data["instance_types"]):
        where = f"{path}: instance_types[{i}]"
        if not isinstance(item, dict):
            raise PlanError(f"{where}: expected a mapping with {', '.join(fields)}")
        for key in item:
            if key not in fields:
                raise unknown_name(f"field in {where}", key, fields, PlanError)
        missing = [f for f in fields if f not in item]
        if missing:
            raise PlanError(f"{where}: missing {', '.join(missing)}", hint="see loadtests/prices.example.yaml")
        for key in ("vcpus", "usd_per_hour"):
            if not isinstance(item[key], (int, float)) or item[key] <= 0:
                raise PlanError(f"{where}: {key} must be a positive number, got {item[key]!r}")
        kind = InstanceType(str(item["name"]), float(item["vcpus"]), str(item["memory"]), float(item["usd_per_hour"]))
        kind.memory_bytes  # noqa: B018 -- checks the size now, naming the entry
        types.append(kind)
    return types


def replicas_for(target_qps: float, capacity_rps: float, headroom: float) -> int:
    """Replicas so that each runs at most at (1 - headroom) of `capacity_rps` at `target_qps`."""
    if target_qps <= 0 or capacity_rps <= 0 or not 0 <= headroom < 1:
        raise PlanError(f"cannot plan {target_qps:g} requests/s on {capacity_rps:g} per replica with headroom "
                        f"{headroom:g}", hint="target and capacity must be positive, headroom in [0, 1)")
    return max(1, math.ceil(target_qps / (capacity_rps * (1 - headroom)) - 1e-9))


@dataclasses.dataclass(frozen=True)
class NodeCost:
    """What `replicas` pods cost on one instance type."""

    instance_type: str
    replicas_per_node: int
    nodes: int
    usd_per_hour: float
    usd_per_million_requests: float


@dataclasses.dataclass(frozen=True)
class PlanLine:
    """One variant's line of the plan (see the module docstring). The report adds what it knows of the variant
    (loadtests/report.py plan_lines); `as_json` is what deploy's plan.json holds."""

    model: str
    capacity_rps: float  # requests/s one replica sustains: the interval's low bound / examples per request
    target_qps: float
    headroom: float
    replicas: int
    max_replicas: int  # for twice the target (the HPA's max)
    instances: int
    threads: int
    cores: int  # instances x threads: what the pod requests
    memory_bytes: int | None  # None without a footprint
    memory_mib: int | None
    memory_margin: float
    server_rss_bytes: int | None
    costs: tuple[NodeCost, ...] = ()  # per instance type that fits, cheapest first
    users: int | None = None  # of the step it was sized from
    variant: str = ""
    accuracy_drop_points: float | None = None
    agreement: float | None = None
    p99_ms: float | None = None
    compute: float | None = None  # in-process relative compute (ties between equal costs)
    interval_windows: int | None = None
    generator_bound: bool = False  # sized on a generator-bound step: replicas are upper bounds

    @property
    def cheapest(self) -> NodeCost | None:
        return self.costs[0] if self.costs else None

    def as_json(self) -> dict:
        return dataclasses.asdict(self) | {"cheapest": self.cheapest and dataclasses.asdict(self.cheapest)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """The plan of one source model: a line per variant within the SLO and budgets, and the cheapest's name."""

    lines: tuple[PlanLine, ...]
    cheapest: str | None

    def line(self, model: str) -> PlanLine | None:
        return next((line for line in self.lines if line.model == model), None)


def cost_on(kind: InstanceType, replicas: int, cores: int, memory_bytes: int, target_qps: float) -> NodeCost | None:
    """Nodes and cost of `replicas` pods of `cores` and `memory_bytes` on `kind`; None when one pod does not fit."""
    per_node = min(int(kind.vcpus // cores), int(kind.memory_bytes // memory_bytes))
    if per_node < 1:
        return None
    nodes = math.ceil(replicas / per_node)
    per_hour = nodes * kind.usd_per_hour
    return NodeCost(kind.name, per_node, nodes, round(per_hour, 4),
                    round(per_hour / (target_qps * SECONDS_PER_HOUR) * 1e6, 4))


def plan_variant(model: str, throughput_low: float, batch_size: int, instances: int, threads: int,
                 rss_per_instance: int | None, target_qps: float, headroom: float = DEFAULT_HEADROOM,
                 memory_margin: float = DEFAULT_MEMORY_MARGIN, prices: list[InstanceType] = (),
                 users: int | None = None, server_rss: int | None = None) -> PlanLine:
    """One variant's line of the plan (see the module docstring), costed on `prices`."""
    capacity = throughput_low / batch_size
    replicas = replicas_for(target_qps, capacity, headroom)
    cores = instances * threads
    memory = (math.ceil(instances * rss_per_instance * (1 + memory_margin) + (server_rss or 0))
              if rss_per_instance else None)
    mib = math.ceil(memory / MIB) if memory else None
    costs = ()
    if mib:
        costs = tuple(sorted((c for c in (cost_on(k, replicas, cores, mib * MIB, target_qps) for k in prices) if c),
                             key=lambda c: (c.usd_per_hour, c.instance_type)))
    return PlanLine(model, round(capacity, 1), target_qps, headroom, replicas,
                    replicas_for(2 * target_qps, capacity, headroom), instances, threads, cores, memory, mib,
                    memory_margin, server_rss, costs, users=users)


def cheapest(lines: list[PlanLine]) -> PlanLine | None:
    """The plan line with the lowest cost per hour (ties: fewer cores x replicas, then lower in-process `compute`
    where the lines carry it), or None without prices."""
    priced = [line for line in lines if line.cheapest]
    return min(priced, key=lambda l: (l.cheapest.usd_per_hour, l.cores * l.replicas,
                                      l.compute if l.compute is not None else float("inf"))
               ) if priced else None


CAVEAT = ("Throughput per replica is the lower bound of the measured interval on the machine the load test ran "
          "on. Figures from a small shared machine (a few cores, the load generator beside the server) extrapolate "
          "to other machines only roughly: cores of another CPU generation, a dedicated node and no generator on "
          "the same cores all change it. Re-measure on the target: deploy one replica (`python -m loadtests deploy "
          "... --replicas 1`), run `python -m loadtests run --url grpc://<that pod>:8001 --models <model>` from "
          "another machine, and plan from that run.")
