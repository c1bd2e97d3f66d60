"""The regression gate: compare a new load-test run with a baseline and say what got worse beyond noise.

  changes = compare_runs(read_results("BASELINE"), read_results("NEW"))   # loadtests/results.py
  failed = [c for c in changes if c["regressed"]]

Per (model, users) step in both runs (steps flagged generator-bound in either run are listed, not gated):
- throughput regressed: the new run's interval lies wholly below the baseline's (new high < baseline low x
  (1 - margin));
- p99 regressed: the new interval lies wholly above the baseline's (new low > baseline high x (1 + margin));
- failures regressed: the new step failed requests, the baseline's did not.
Intervals are min..max over each step's windows (loadtests/intervals.py); a step measured without windows is a
point, and two points are compared only when `allow_points` (any difference then counts: no noise estimate).
Per model: accuracy regressed when it fell by more than `se_multiple` x its paired standard error
(`accuracy_drop_se_points` of the new build record, the noise of an accuracy difference on those examples; fp32
has none, so its binomial standard error sqrt(p(1 - p) / n) stands in). Accuracy comes from the build-record copy
each results.json holds (`records`). A model or step only in one run is listed as such and fails the gate only
when it is missing from the new run.

Windows of one run do not see what changes between runs (the machine's other load, process placement): two
runs of the same build minutes apart on a busy shared machine can fail this gate. `margin` (a fraction, 0 by
default) widens every interval for such machines; the better cure is a quiet runner and both builds measured
back to back in one job (docs/report-and-rollout.md).
"""

from __future__ import annotations

import math

from ..intervals import Interval, merge_repeats
from ..results import RunResults, as_results

DEFAULT_SE_MULTIPLE = 2.0


def _interval(step: dict, key: str) -> Interval | None:
    data = (step.get("interval") or {}).get(key)
    if data and data["n"] >= 2:
        return Interval.from_dict(data)
    value = step.get(key)
    return None if value is None else Interval(value, value, 1)


def _accuracy(entry: dict) -> tuple[float, float] | None:
    """(accuracy in points, standard error in points) of a build-record copy, or None."""
    accuracy = entry.get("accuracy") or {}
    if not accuracy:
        return None
    split = next(iter(accuracy))
    points = accuracy[split] * 100
    se = entry.get("accuracy_drop_se_points")
    if not se:
        n = (entry.get("eval_examples") or {}).get(split)
        p = accuracy[split]
        se = math.sqrt(p * (1 - p) / n) * 100 if n else 0.0
    return points, se


def compare_steps(base: dict, new: dict, allow_points: bool = False, margin: float = 0.0) -> dict:
    """One step pair: {"model", "users", "throughput": (base, new), "p99_ms": (base, new), "regressed": [why],
    "note"}; the pair tuples hold Intervals (or None)."""
    out = {"model": new["model"], "users": new["users"], "regressed": [], "note": ""}
    for key in ("throughput", "p99_ms"):
        out[key] = (_interval(base, key), _interval(new, key))
    if base.get("generator_bound") or new.get("generator_bound"):
        out["note"] = "not gated: generator-bound"
        return out
    if new["failures"] and not base["failures"]:
        out["regressed"].append(f"{new['failures']} failed requests (baseline none)")
    (bt, nt), (bp, np_) = out["throughput"], out["p99_ms"]
    points = any(i is not None and i.n < 2 for i in (bt, nt, bp, np_))
    if points and not allow_points:
        out["note"] = "not gated: measured without windows (no interval)"
        return out
    if bt and nt and nt.high < bt.low * (1 - margin):
        out["regressed"].append(f"throughput {nt.text()} below {bt.text()} examples/s")
    if bp and np_ and np_.low > bp.high * (1 + margin):
        out["regressed"].append(f"p99 {np_.text()} above {bp.text()} ms")
    return out


def compare_runs(base: RunResults | dict, new: RunResults | dict, se_multiple: float = DEFAULT_SE_MULTIPLE,
                 allow_points: bool = False, margin: float = 0.0) -> dict:
    """{"steps": [compare_steps ...], "accuracy": [{"model", "base", "new", "se", "regressed"}], "missing": [...],
    "regressed": bool}."""
    base, new = as_results(base), as_results(new)
    base_steps = {(s["model"], s["users"]): s for s in merge_repeats(base.steps)}
    new_steps = {(s["model"], s["users"]): s for s in merge_repeats(new.steps)}
    steps = [compare_steps(base_steps[k], new_steps[k], allow_points, margin)
             for k in sorted(base_steps) if k in new_steps]
    missing = [f"`{m}` at {u} users: not in the new run" for m, u in sorted(set(base_steps) - set(new_steps))]
    added = [f"`{m}` at {u} users: new (no baseline)" for m, u in sorted(set(new_steps) - set(base_steps))]
    accuracy = []
    base_records, new_records = base.records, new.records
    for model in sorted(set(base_records) & set(new_records)):
        before, after = _accuracy(base_records[model]), _accuracy(new_records[model])
        if before and after:
            drop = before[0] - after[0]
            accuracy.append({"model": model, "base": before[0], "new": after[0], "se": after[1],
                             "regressed": drop > se_multiple * after[1] + 1e-9})
    regressed = bool(missing) or any(s["regressed"] for s in steps) or any(a["regressed"] for a in accuracy)
    return {"steps": steps, "accuracy": accuracy, "missing": missing, "added": added, "regressed": regressed,
            "se_multiple": se_multiple,
            "accuracy_unchecked": not (base_records and new_records)}


def tables(result: dict) -> list[tuple[list[str], list[list[str]]]]:
    """The steps table and the accuracy table, as (header, rows)."""
    def text(interval):
        return "-" if interval is None else interval.text() if interval.n >= 2 else f"{interval.low:,.1f}"

    def change(pair):
        before, after = pair
        if not before or not after or not before.low:
            return "-"
        mid_b, mid_a = (before.low + before.high) / 2, (after.low + after.high) / 2
        return f"{(mid_a / mid_b - 1) * 100:+.1f} %"

    steps = (["model", "users", "examples/s baseline", "examples/s new", "change", "p99 ms baseline", "p99 ms new",
              "change", "verdict"],
             [[s["model"], str(s["users"]), text(s["throughput"][0]), text(s["throughput"][1]), change(s["throughput"]),
               text(s["p99_ms"][0]), text(s["p99_ms"][1]), change(s["p99_ms"]),
               "REGRESSED: " + "; ".join(s["regressed"]) if s["regressed"] else s["note"] or "within noise"]
              for s in result["steps"]])
    accuracy = (["model", "accuracy % baseline", "accuracy % new", "change pts", f"{result['se_multiple']:g} x se",
                 "verdict"],
                [[a["model"], f"{a['base']:.2f}", f"{a['new']:.2f}", f"{a['new'] - a['base']:+.2f}",
                  f"{result['se_multiple'] * a['se']:.2f}", "REGRESSED" if a["regressed"] else "within noise"]
                 for a in result["accuracy"]])
    return [steps, accuracy]
