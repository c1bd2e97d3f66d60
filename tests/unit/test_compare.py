"""The regression gate on hand-made runs: fires on a made-up regression, stays quiet within the noise."""

import copy
import json
import subprocess
import sys

from loadtests.rollout.compare import compare_runs
from tests.conftest import ROOT


def step(model, users, low, high, p99_low, p99_high, failures=0, **extra):
    return {"model": model, "users": users, "throughput": (low + high) / 2, "p99_ms": p99_high, "failures": failures,
            "requests": 1000, "interval": {"throughput": {"low": low, "high": high, "n": 3},
                                           "p99_ms": {"low": p99_low, "high": p99_high, "n": 3}}} | extra


def run(steps, accuracy=0.90, se=0.4):
    return {"steps": steps, "records": {
        "m_fp32": {"variant": "fp32", "accuracy": {"test": 0.92}, "eval_examples": {"test": 1000}},
        "m_int8": {"variant": "int8", "accuracy": {"test": accuracy}, "accuracy_drop_se_points": se}}}


BASE = run([step("m_fp32", 4, 900, 1000, 3.0, 3.6), step("m_int8", 4, 1500, 1700, 2.0, 2.4)])


def test_two_runs_within_noise_pass():
    # the second run of the same build: every interval moved, but each overlaps the baseline's
    again = run([step("m_fp32", 4, 950, 1080, 2.9, 3.4), step("m_int8", 4, 1450, 1520, 2.3, 2.6)], accuracy=0.897)
    result = compare_runs(BASE, again)
    assert not result["regressed"], result
    assert all(not s["regressed"] for s in result["steps"]) and not any(a["regressed"] for a in result["accuracy"])
    assert not compare_runs(BASE, copy.deepcopy(BASE))["regressed"]


def test_throughput_p99_failures_and_accuracy_regressions_fire():
    slower = run([step("m_fp32", 4, 900, 1000, 3.0, 3.6), step("m_int8", 4, 1200, 1450, 2.0, 2.4)])
    (int8,) = [s for s in compare_runs(BASE, slower)["steps"] if s["model"] == "m_int8"]
    assert int8["regressed"] == ["throughput 1,200.0..1,450.0 below 1,500.0..1,700.0 examples/s"]
    assert not compare_runs(BASE, slower, margin=0.05)["regressed"]  # 1,450 is within 5 % of 1,500
    assert compare_runs(BASE, slower, margin=0.02)["regressed"]
    later = run([step("m_fp32", 4, 900, 1000, 3.7, 4.0), step("m_int8", 4, 1500, 1700, 2.0, 2.4)])
    assert compare_runs(BASE, later)["steps"][0]["regressed"] == ["p99 3.7..4.0 above 3.0..3.6 ms"]
    failing = run([step("m_fp32", 4, 900, 1000, 3.0, 3.6, failures=3), step("m_int8", 4, 1500, 1700, 2.0, 2.4)])
    assert compare_runs(BASE, failing)["regressed"]
    # accuracy: 0.9 -> 0.89 is 1.0 point, beyond 2 x 0.4; 0.895 (0.5 points) is not
    assert compare_runs(BASE, run(BASE["steps"], accuracy=0.89))["regressed"]
    assert not compare_runs(BASE, run(BASE["steps"], accuracy=0.895))["regressed"]
    # fp32 has no paired se: the binomial se of its new 90 % on 1,000 examples (0.95 points) stands in
    worse_fp32 = run(BASE["steps"])
    worse_fp32["records"]["m_fp32"]["accuracy"]["test"] = 0.90
    (fp32,) = [a for a in compare_runs(BASE, worse_fp32)["accuracy"] if a["model"] == "m_fp32"]
    assert fp32["regressed"] and round(fp32["se"], 2) == 0.95


def test_generator_bound_and_pointwise_steps_are_not_gated_and_missing_steps_fail():
    bound = run([step("m_fp32", 4, 100, 200, 30, 40, generator_bound=True), step("m_int8", 4, 1500, 1700, 2.0, 2.4)])
    result = compare_runs(BASE, bound)
    assert not result["regressed"] and result["steps"][0]["note"] == "not gated: generator-bound"
    points = copy.deepcopy(BASE)
    for s in points["steps"]:
        del s["interval"]
    assert compare_runs(BASE, points)["steps"][0]["note"].startswith("not gated: measured without windows")
    missing = run(BASE["steps"][:1])
    assert compare_runs(BASE, missing)["regressed"] and compare_runs(BASE, missing)["missing"]


def test_cli_exit_codes_and_table(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps(BASE))
    slower = run([step("m_fp32", 4, 900, 1000, 3.0, 3.6), step("m_int8", 4, 1200, 1450, 2.0, 2.4)])
    (tmp_path / "new.json").write_text(json.dumps(slower))
    cli = [sys.executable, "-m", "loadtests", "compare"]
    quiet = subprocess.run(cli + [tmp_path / "base.json", tmp_path / "base.json"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert quiet.returncode == 0 and "no regression" in quiet.stdout
    fired = subprocess.run(cli + [tmp_path / "base.json", tmp_path / "new.json"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert fired.returncode == 1 and "REGRESSED: throughput" in fired.stdout and "-17.2 %" in fired.stdout  # interval midpoints 1,600 -> 1,325
    bad = subprocess.run(cli + [tmp_path / "nothing.json", tmp_path / "new.json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.splitlines()[0] == f"error: {tmp_path / 'nothing.json'} does not exist"
