"""The capacity plan's arithmetic, the prices file, and the report's plan table: on hand-made results."""

import pytest

from loadtests.rollout.plan import (InstanceType, NodeCost, PlanError, PlanLine, cheapest, cost_on, plan_variant,
                                    read_prices, replicas_for)
from loadtests.report import build_report, plan_table, plan_text
from tests.conftest import ROOT

MIB = 1024 ** 2
EXAMPLE = [InstanceType("small", 2, "8GiB", 0.10), InstanceType("big", 8, "32GiB", 0.40),
           InstanceType("tiny-memory", 16, "256MiB", 0.05)]


def test_replicas_keep_the_headroom_on_the_interval_low():
    assert replicas_for(2000, 1000, 0.3) == 3        # 2000 / 700 = 2.86
    assert replicas_for(1400, 1000, 0.3) == 2        # exactly 2 x 700: no extra replica from rounding
    assert replicas_for(10, 1000, 0.0) == 1
    for bad in ((0, 100, 0.3), (100, 0, 0.3), (100, 100, 1.0)):
        with pytest.raises(PlanError):
            replicas_for(*bad)


def test_a_variants_plan_line():
    line = plan_variant("m_int8", throughput_low=1000.0, batch_size=1, instances=2, threads=1,
                        rss_per_instance=100 * MIB, target_qps=2000, headroom=0.3, prices=EXAMPLE, users=4)
    assert (line.replicas, line.max_replicas, line.cores) == (3, 6, 2)  # max: twice the target
    assert line.memory_mib == 300  # 2 instances x 100 MiB x 1.5
    # small: 1 pod per node (2 vCPUs) -> 3 nodes, $0.30/h; big: 4 per node -> 1 node, $0.40/h; tiny-memory: no fit
    assert [c.instance_type for c in line.costs] == ["small", "big"]
    assert line.cheapest == NodeCost("small", replicas_per_node=1, nodes=3, usd_per_hour=0.3,
                                     usd_per_million_requests=round(0.3 / (2000 * 3600) * 1e6, 4))
    assert line.as_json()["cheapest"]["nodes"] == 3 and line.as_json()["users"] == 4  # deploy's plan.json
    with_server = plan_variant("m_int8", 1000.0, 1, 2, 1, 100 * MIB, 2000, server_rss=60 * MIB)
    assert with_server.memory_mib == 360  # the server process's own memory on top of the instances'
    batched = plan_variant("m", 1000.0, batch_size=4, instances=1, threads=2, rss_per_instance=None,
                           target_qps=500, prices=EXAMPLE)
    assert batched.capacity_rps == 250 and batched.replicas == 3 and batched.costs == ()  # no memory: no cost
    assert batched.cheapest is None


def test_cost_on_a_node_that_holds_several_pods():
    kind = InstanceType("n", 8, "4GiB", 1.0)
    assert cost_on(kind, replicas=5, cores=2, memory_bytes=1024 * MIB, target_qps=100).nodes == 2  # 4 per node
    assert cost_on(kind, 5, cores=2, memory_bytes=2048 * MIB, target_qps=100).replicas_per_node == 2  # memory binds
    assert cost_on(kind, 5, cores=16, memory_bytes=MIB, target_qps=100) is None


def plan_line(model: str, usd_per_hour: float | None, cores: int, replicas: int, compute=None) -> PlanLine:
    costs = () if usd_per_hour is None else (NodeCost("n", 1, replicas, usd_per_hour, 0.0),)
    return PlanLine(model, 100.0, 100.0, 0.3, replicas, 2 * replicas, 1, cores, cores, None, None, 0.5, None, costs,
                    compute=compute)


def test_cheapest_line():
    lines = [plan_line("a", 0.4, 2, 2), plan_line("b", 0.3, 2, 3), plan_line("c", None, 1, 1)]
    assert cheapest(lines).model == "b" and cheapest(lines[2:]) is None
    same_cost = [plan_line("fp32", 0.3, 2, 3, compute=1.0), plan_line("pruned", 0.3, 2, 3, compute=0.15)]
    assert cheapest(same_cost).model == "pruned"  # equal cost: the lower in-process compute


def test_prices_file(tmp_path):
    example = read_prices(ROOT / "loadtests" / "prices.example.yaml")
    assert example and all(k.name.startswith("example-") for k in example)  # labelled as examples
    bad = tmp_path / "prices.yaml"
    bad.write_text("instance_types:\n  - {name: x, vcpus: 2, memory: 8GiB, usd_per_hr: 0.1}\n")
    with pytest.raises(PlanError, match=r"instance_types\[0\]") as e:
        read_prices(bad)
    assert "usd_per_hour" in e.value.hint
    bad.write_text("instance_types:\n  - {name: x, vcpus: 0, memory: 8GiB, usd_per_hour: 0.1}\n")
    with pytest.raises(PlanError, match="vcpus must be a positive number"):
        read_prices(bad)
    bad.write_text("instance_types:\n  - {name: x, vcpus: 2, memory: lots, usd_per_hour: 0.1}\n")
    with pytest.raises(PlanError, match="memory 'lots'"):
        read_prices(bad)


def step(model, throughput, low, high, p99=5.0, users=4):
    return {"model": model, "users": users, "throughput": throughput, "p99_ms": p99, "failures": 0, "requests": 900,
            "p50_ms": 2.0, "interval": {"throughput": {"low": low, "high": high, "n": 3},
                                        "p99_ms": {"low": p99, "high": p99, "n": 3}}}


def record(variant, drop, rss_mib, threads, speedup=1.0):
    return {"source": "m", "variant": variant, "accuracy": {"test": 0.9}, "accuracy_drop_points": drop,
            "speedup_vs_fp32": {"b1_t1": speedup, "b32_t1": speedup}, "onnx_bytes": 1_000_000,
            "serving": {"instances": 1, "intra_op_threads": threads},
            "served_footprint": {"instances": 1, "rss_bytes_per_instance": rss_mib * MIB}}


def test_the_report_plans_every_variant_within_slo_and_budgets():
    records = {"m_fp32": record("fp32", 0.0, 200, 2), "m_int8": record("int8", 0.3, 100, 1, speedup=2.0),
               "m_svd": record("svd", 3.0, 90, 1)}
    steps = [step("m_fp32", 700, 650, 720), step("m_int8", 800, 700, 900), step("m_svd", 900, 850, 950),
             step("m_int8", 1500, 1400, 1600, p99=80, users=16)]  # over the SLO: not planned from
    results = {"models": list(records), "steps": steps, "settings": {"batch_size": 1}}
    report = build_report(results, records, slo_p99_ms=50, max_accuracy_drop=1.0, target_qps=2000, prices=EXAMPLE)
    plan = report["plans"]["m"]
    lines = {line.model: line for line in plan.lines}
    assert set(lines) == {"m_fp32", "m_int8"}  # svd misses the accuracy budget
    assert lines["m_int8"].capacity_rps == 700 and lines["m_int8"].replicas == 5  # 2000 / 490
    assert lines["m_fp32"].replicas == 5 and lines["m_fp32"].cores == 2  # 2000 / 455 = 4.4
    assert lines["m_int8"].variant == "int8" and lines["m_int8"].accuracy_drop_points == 0.3  # the report's facts
    # int8 (1 core, 150 MiB): 5 tiny-memory nodes of 1 pod, $0.25/h (small: 3 nodes of 2, $0.30/h);
    # fp32 (2 cores, 300 MiB): no room on tiny-memory, 5 small nodes, $0.50/h (big: 2 nodes of 4, $0.80/h)
    assert lines["m_int8"].cheapest == NodeCost("tiny-memory", replicas_per_node=1, nodes=5, usd_per_hour=0.25,
                                                usd_per_million_requests=0.0347)
    assert [(c.instance_type, c.usd_per_hour) for c in lines["m_fp32"].costs] == [("small", 0.5), ("big", 0.8)]
    assert plan.cheapest == "m_int8"
    header, body = plan_table(report, "m")
    assert body[[r[0] for r in body].index("int8 (cheapest)")][header.index("replicas")] == "5"
    text = plan_text(report, "m")
    assert "Cheapest variant meeting SLO and accuracy: `m_int8`" in text and "extrapolate" in text
    assert "re-measure" in text.lower() or "Re-measure" in text
    unpriced = build_report(results, records, 50, 1.0, target_qps=2000)
    assert "pass --prices" in plan_text(unpriced, "m") and build_report(results, records, 50, 1.0)["plans"] == {}


def test_when_every_step_was_generator_bound_the_plan_sizes_on_them_as_upper_bounds():
    """The report ships a variant measured only on generator-bound steps (a small model on a small machine); the
    plan, and so `deploy`, must be able to deploy it: sized on the generator's throughput, a lower bound of the
    server's, so the replicas are never too few. A step that is not generator-bound still wins when there is one."""
    records = {"m_fp32": record("fp32", 0.0, 200, 1), "m_int8": record("int8", 0.3, 100, 1, speedup=2.0)}
    bound = [step("m_fp32", 700, 650, 720) | {"generator_bound": True},
             step("m_int8", 800, 700, 900) | {"generator_bound": True}]
    results = {"models": list(records), "steps": bound, "settings": {"batch_size": 1}}
    report = build_report(results, records, slo_p99_ms=50, max_accuracy_drop=1.0, target_qps=2000)
    lines = {line.model: line for line in report["plans"]["m"].lines}
    assert set(lines) == {"m_fp32", "m_int8"} and all(line.generator_bound for line in lines.values())
    assert report["recommendations"]["m"]["model"] in lines  # what the report ships can be deployed
    assert "replicas are upper bounds" in plan_text(report, "m")
    free = {**results, "steps": bound + [step("m_fp32", 600, 580, 620, users=1)]}
    lines = build_report(free, records, 50, 1.0, target_qps=2000)["plans"]["m"].lines
    assert [(line.model, line.generator_bound) for line in lines] == [("m_fp32", False)]
