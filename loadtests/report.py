"""The variant report: for every served variant, accuracy (from the build record) next to served latency and
throughput (from a load-test run), plots, and which variant to ship under a latency and an accuracy budget.

  report = build_report(results, records, slo_p99_ms=50, max_accuracy_drop=1.0)
  write_report(report, out_dir)     # report.md (+ plots/*.png) and report.html (plots embedded)

Inputs are the run's results.json and the builder's record.json files; every number in the report is copied from
them (the steps table names the raw Locust file of each step).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import pathlib

from builder.core.artifacts import MARGINAL_SPEEDUP
from builder.core.files import atomic_write
from builder.core.names import source_of
from builder.core.record import BuildEntry
from builder.serving.footprint import fits, parse_size

from . import metrics
from .intervals import Interval, merge_repeats
from .results import RunResults, as_results
from .rollout import plan as capacity

# a step needs this many windows for its interval to tell variants apart (loadtests/intervals.py)
MIN_WINDOWS = 3


@dataclasses.dataclass(frozen=True)
class VariantRow:
    """One built variant: build facts and, if served, its best load step."""
    source: str  # the model it was built from, e.g. minilm
    variant: str  # e.g. int8
    triton_model: str
    accuracy: float | None  # on the first evaluation split, 0..1
    eval_examples: int | None  # how many examples of it `accuracy` is measured on
    accuracy_drop_points: float | None  # vs fp32 on the same examples
    params: int | None
    onnx_bytes: int | None
    macs: int | None
    best: dict | None  # the load step with the highest throughput
    failures: int  # over all steps
    accuracy_drop_se_points: float | None = None  # the drop's paired standard error (builder/pipeline/build.py)
    agreement: float | None = None  # top-1 agreement with fp32 on the same examples, 0..1 (fp32: 1)
    # in-process ONNX Runtime latency relative to fp32 measured beside it (build record speedup_vs_fp32), geometric
    # mean of batch 1 and 32 at 1 thread: 0.25 = a quarter of fp32's compute; fp32: 1
    compute: float | None = None
    entry: dict = dataclasses.field(default_factory=dict, repr=False)  # the build-record entry (or {})
    # the gates the build refused it for (build record `gates_failed`): built and measured, not served, no load step
    refused: tuple[str, ...] = ()


def entry_names(model: str, build: BuildEntry) -> tuple[str, str]:
    """(source model, variant as the CLI writes it) of a served model: from its build record, else from its name."""
    if build.source and build.variant:
        return build.source, build.variant
    # no record (a model from elsewhere): its name's parts, the variant as served
    source = source_of(model)
    return source, model[len(source) + 1:]


def build_entry(model: str, results: RunResults, records: dict[str, dict]) -> BuildEntry:
    """The build record of a served model, typed: the artifacts' one now, else the copy results.json kept."""
    return BuildEntry.of(None, records.get(model) or results.records.get(model, {}))


def refused_entries(results: RunResults | dict, records: dict[str, dict]) -> dict[str, BuildEntry]:
    """Build-record entries of the variants the build refused (a gate failed, nothing written to the repository) of
    the run's source models: from the artifacts' records, else from the run's copy (`refused`, loadtests/run.py)."""
    results = as_results(results)
    served = set(results.models)
    sources = {entry_names(m, build_entry(m, results, records))[0] for m in served}
    found = {}
    for model, entry in {**results.refused, **records}.items():
        build = BuildEntry.of(None, entry)
        if model not in served and build.refused and not build.version_dir and entry_names(model, build)[0] in sources:
            found[model] = build
    return found


def row_of(model: str, build: BuildEntry, steps: list[dict], refused: tuple[str, ...] = ()) -> VariantRow:
    first = build.first_split
    source, variant = entry_names(model, build)
    return VariantRow(
        source=source, variant=variant,
        triton_model=model, accuracy=build.accuracy[first] if first else None,
        accuracy_drop_points=build.accuracy_drop_points, eval_examples=build.eval_examples.get(first),
        params=build.params, onnx_bytes=build.onnx_bytes, macs=build.macs,
        best=max(steps, key=lambda s: s["throughput"]) if steps else None,
        failures=sum(s["failures"] for s in steps), accuracy_drop_se_points=build.accuracy_drop_se_points,
        agreement=build.agreement_top1, compute=build.relative_compute, entry=build.raw, refused=refused)


def variant_rows(results: RunResults | dict, records: dict[str, dict]) -> list[VariantRow]:
    """One row per served model of the run, then one per variant of the same source models that the build refused
    (no load step: its accuracy, agreement and in-process speed are the build record's)."""
    results, rows = as_results(results), []
    for model in results.models:
        steps = [s for s in merge_repeats(results.steps) if s["model"] == model]
        rows.append(row_of(model, build_entry(model, results, records), steps))
    for model, build in sorted(refused_entries(results, records).items()):
        rows.append(row_of(model, build, [], refused=build.gates_failed))
    return rows


def refusal_text(row: VariantRow) -> str:
    """Why the build refused `row`, in the build's own words (its `gates_failed`). Records written before the gate
    stated the drop's standard error get it added from the record."""
    reasons = []
    for reason in row.refused:
        if reason.startswith("accuracy drop") and "±" not in reason and row.accuracy_drop_se_points is not None:
            reason = reason.replace(" points", f" ± {row.accuracy_drop_se_points:.2f} points", 1)
        reasons.append(reason)
    return "; ".join(reasons)


def next_faster_refused(rows: list[VariantRow], chosen: VariantRow) -> VariantRow | None:
    """The refused variant that is the next step up in in-process speed from `chosen`: the slowest of those whose
    compute is below the chosen one's by more than MARGINAL_SPEEDUP (the build's noise). None if there is none."""
    if chosen.compute is None:
        return None
    faster = [r for r in rows if r.refused and r.compute is not None
              and r.compute * (1 + MARGINAL_SPEEDUP) < chosen.compute]
    return max(faster, key=lambda r: r.compute, default=None)


def throughput_interval(step: dict) -> Interval:
    """The step's throughput interval over its windows; a point (n = 1) for a step without windows."""
    interval = Interval.from_dict((step.get("interval") or {}).get("throughput"))
    return interval or Interval(step["throughput"], step["throughput"], 1)


def p99_interval(step: dict) -> Interval | None:
    interval = Interval.from_dict((step.get("interval") or {}).get("p99_ms"))
    return interval or (Interval(step["p99_ms"], step["p99_ms"], 1) if step.get("p99_ms") is not None else None)


def eligible_steps(steps: list[dict], slo_p99_ms: float, generator_bound: bool = False) -> list[dict]:
    """Steps that can rank: p99 within the SLO, no failures, requests sent, and (unless `generator_bound`) not
    flagged generator-bound."""
    return [s for s in steps if s["p99_ms"] is not None and s["p99_ms"] <= slo_p99_ms and s["failures"] == 0
            and s["requests"] > 0 and (generator_bound or not s.get("generator_bound"))]


def within_budgets(rows: list[VariantRow], max_accuracy_drop: float, min_agreement: float) -> set[str]:
    return {r.triton_model for r in rows
            if r.accuracy_drop_points is not None and r.accuracy_drop_points <= max_accuracy_drop
            and (min_agreement <= 0 or (r.agreement is not None and r.agreement >= min_agreement))}


def best_steps(rows: list[VariantRow], steps: list[dict], slo_p99_ms: float, max_accuracy_drop: float,
               min_agreement: float = 0.0, generator_bound: bool = False) -> dict[str, dict]:
    """{served model: its highest-throughput eligible step} of the variants within both budgets."""
    ok = within_budgets(rows, max_accuracy_drop, min_agreement)
    best = {}
    for s in eligible_steps(steps, slo_p99_ms, generator_bound):
        if s["model"] in ok and (s["model"] not in best or s["throughput"] > best[s["model"]]["throughput"]):
            best[s["model"]] = s
    return best


def qualifying_steps(rows: list[VariantRow], steps: list[dict], slo_p99_ms: float, max_accuracy_drop: float,
                     min_agreement: float = 0.0) -> tuple[dict[str, dict], bool]:
    """(best_steps, whether they are generator-bound): the steps that are not, or, when every qualifying step was
    generator-bound (a small model on a machine the load generator shares), those. Their throughputs are then the
    generator's, lower bounds of the server's: the recommendation says so, and the plan's replicas are upper bounds.
    The recommendation and the plan both choose here, so the report never ships a variant the plan cannot size."""
    best = best_steps(rows, steps, slo_p99_ms, max_accuracy_drop, min_agreement)
    if best:
        return best, False
    bound = best_steps(rows, steps, slo_p99_ms, max_accuracy_drop, min_agreement, generator_bound=True)
    return bound, bool(bound)


# A step's windows measure its noise within one run only. Between two consecutive demos on one machine (AVX-512
# VNNI, 2 cores) the same digits variant at 1 user moved 0.7-6 %, and the 1.1 % lead of one run reversed into a 3 %
# lag in the next, both "beyond the intervals" (docs/report-and-rollout.md). A throughput within this of the
# leader's is tied with it even when the windows do not overlap.
RUN_TO_RUN = 0.05


def rank(rows: list[VariantRow], best: dict[str, dict]) -> tuple[str, list[str], str]:
    """(chosen model, the models tied with the leader, why) among `best` (model -> step).

    The leader has the highest served throughput; every variant whose throughput interval overlaps the leader's,
    or whose throughput is within RUN_TO_RUN of it, is tied with it. Among the tied, the lowest in-process compute wins (compute within MARGINAL_SPEEDUP of the
    lowest counts as equal: below the build's own noise), then the smaller ONNX file, then throughput.
    """
    by_model = {r.triton_model: r for r in rows}
    leader = max(best, key=lambda m: best[m]["throughput"])
    lead = throughput_interval(best[leader])
    floor = best[leader]["throughput"] * (1 - RUN_TO_RUN)
    tied = sorted((m for m in best if throughput_interval(best[m]).overlaps(lead) or best[m]["throughput"] >= floor),
                  key=lambda m: -best[m]["throughput"])
    inf = float("inf")
    computes = [by_model[m].compute for m in tied if by_model[m].compute is not None]
    lowest = min(computes) if computes else None
    near = [m for m in tied if lowest is None or (by_model[m].compute is not None
                                                  and by_model[m].compute <= lowest * (1 + MARGINAL_SPEEDUP))]
    chosen = min(near, key=lambda m: (by_model[m].onnx_bytes or inf, -best[m]["throughput"]))
    others = [m for m in tied if m != chosen]
    if not others:
        return chosen, [], (f"ahead of every other variant beyond the measured intervals and by more than {RUN_TO_RUN:.0%}")
    names = ", ".join(f"`{m}`" for m in others)
    why = (f"tied with {names} on served throughput (their intervals overlap, or they are within "
           f"{RUN_TO_RUN:.0%}: the spread between runs)")
    rival = min(others, key=lambda m: by_model[m].compute if by_model[m].compute is not None else inf)
    mine, theirs = by_model[chosen].compute, by_model[rival].compute
    if mine and theirs and theirs > mine * (1 + MARGINAL_SPEEDUP):
        return chosen, others, (f"{why}; chosen for {theirs / mine:.1f}x less in-process compute than `{rival}` "
                                "(ONNX Runtime latency at batch 1 and 32, build record)")
    small, big = by_model[chosen].onnx_bytes, min((by_model[m].onnx_bytes or inf) for m in others)
    if small and big != inf and big > small:
        return chosen, others, (f"{why}; in-process compute within {MARGINAL_SPEEDUP:.0%}: chosen for the smaller "
                                f"file ({small / 1e6:.1f} MB vs {big / 1e6:.1f} MB)")
    return chosen, others, f"{why}; chosen for the highest served throughput (compute and file size do not differ)"


def recommend(rows: list[VariantRow], steps: list[dict], slo_p99_ms: float, max_accuracy_drop: float,
              min_agreement: float = 0.0) -> dict:
    """Which variant to ship: among variants within the accuracy budget (drop <= `max_accuracy_drop` points) and
    the agreement budget (top-1 agreement with fp32 >= `min_agreement`, 0..1), each at its highest-throughput step
    with p99 <= SLO, no failures and not generator-bound, the leader and those tied with it (`rank`).

    Returns {"model", "variant", "users", "throughput", "throughput_interval", "p99_ms", "p99_interval",
    "accuracy_drop_points", "agreement", "tied", "reason", "text"}; when nothing qualifies, "model" is None and
    "text" says which constraint binds. When the build refused a variant that runs faster in-process than the chosen
    one, the text names the next faster of them and why it was refused (`next_faster_refused`).
    """
    measured = {s["model"] for s in steps}
    refused = [r for r in rows if r.refused]
    rows = [r for r in rows if r.triton_model in measured]
    by_model = {r.triton_model: r for r in rows}
    accurate = within_budgets(rows, max_accuracy_drop, min_agreement)
    unranked = sorted({s["model"] for s in steps if s.get("generator_bound")})
    fast = eligible_steps(steps, slo_p99_ms)
    # every qualifying step generator-bound: rank on them rather than say nothing, and say what they are
    best, only_generator_bound = qualifying_steps(rows, steps, slo_p99_ms, max_accuracy_drop, min_agreement)
    nothing = {"model": None, "variant": None, "users": None, "throughput": None, "throughput_interval": None,
               "p99_ms": None, "p99_interval": None, "accuracy_drop_points": None, "agreement": None, "tied": [],
               "reason": None}
    budget = f"drop <= {max_accuracy_drop:g} points" + (f", agreement >= {min_agreement:.0%}" if min_agreement else "")
    if best:
        chosen, tied, reason = rank(rows, best)
        step, row = best[chosen], by_model[chosen]
        throughput, p99 = throughput_interval(step), p99_interval(step)
        measured_text = (f"windows {throughput.text()} examples/s, p99 {p99.text()} ms" if throughput.n >= MIN_WINDOWS
                         else f"measured once ({throughput.n} window(s)): no interval, ties cannot be told")
        agreement = f", top-1 agreement with fp32 {row.agreement:.1%}" if row.agreement is not None else ""
        text = (f"Ship `{chosen}`: {step['throughput']:.1f} examples/s at {step['users']} users with p99 "
                f"{step['p99_ms']:.1f} ms <= {slo_p99_ms:g} ms ({measured_text}), an accuracy drop of "
                f"{row.accuracy_drop_points:.2f} points <= {max_accuracy_drop:g}{agreement}; {reason}.")
        if only_generator_bound:
            text += (" Every step within the budgets was generator-bound: the load generator, not the server, set "
                     "these throughputs (lower bounds); rerun with more --workers or on a separate machine.")
        elif unranked:
            text += " Not ranked on their generator-bound steps: " + ", ".join(f"`{m}`" for m in unranked) + "."
        faster = next_faster_refused(refused, row)
        if faster is not None:  # what speed beyond the chosen one would have cost: the trade-off the user judges
            text += (f" The next faster variant was refused: `{faster.triton_model}` would run {1 / faster.compute:.1f}x "
                     f"fp32's in-process speed (`{chosen}`: {1 / row.compute:.1f}x), but {refusal_text(faster)}.")
        return nothing | {"model": chosen, "variant": row.variant, "users": step["users"],
                          "throughput": step["throughput"], "throughput_interval": dataclasses.asdict(throughput),
                          "p99_ms": step["p99_ms"], "p99_interval": dataclasses.asdict(p99) if p99 else None,
                          "accuracy_drop_points": row.accuracy_drop_points, "agreement": row.agreement,
                          "tied": tied, "reason": reason, "text": text}
    return nothing | {"text": binding_text(steps, accurate, fast, unranked, budget, slo_p99_ms)}


def binding_text(steps: list[dict], accurate, fast: list[dict], unranked: list[str], budget: str,
                 slo_p99_ms: float) -> str:
    """Why no variant qualifies: which constraint binds (accuracy, latency, or both)."""
    if not accurate:
        return f"No variant meets the accuracy budget ({budget}): the accuracy constraint binds."
    if not fast:
        served = [s for s in steps if s["p99_ms"] is not None and s["requests"] > 0]
        quickest = min(served, key=lambda s: s["p99_ms"]) if served else None
        return (f"No variant meets p99 <= {slo_p99_ms:g} ms at any load step"
                + (" that is not generator-bound" if unranked else "") + ": the latency constraint binds"
                + (f" (lowest p99: {quickest['p99_ms']:.1f} ms, `{quickest['model']}` at {quickest['users']} users)."
                   if quickest else "."))
    return (f"Variants meet the latency SLO ({', '.join(sorted({s['model'] for s in fast}))}) and others the "
            f"accuracy budget ({', '.join(sorted(accurate))}), but none meets both: both constraints bind.")


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (throughput, accuracy) that no other point beats on both."""
    return [i for i, (t, a) in enumerate(points)
            if not any(t2 >= t and a2 >= a and (t2, a2) != (t, a) for t2, a2 in points)]


def plan_lines(rows: list[VariantRow], steps: list[dict], results: RunResults, slo_p99_ms: float,
               max_accuracy_drop: float, min_agreement: float, target_qps: float, prices=(),
               headroom: float = capacity.DEFAULT_HEADROOM) -> list[capacity.PlanLine]:
    """The capacity plan (loadtests/rollout/plan.py) of every variant within the SLO and both budgets, from its best
    eligible step's throughput interval, its build record's serving config and its served footprint."""
    footprints = results.footprint
    batch_size = results.settings.get("batch_size", 1)
    best, generator_bound = qualifying_steps(rows, steps, slo_p99_ms, max_accuracy_drop, min_agreement)
    lines = []
    for model, step in sorted(best.items()):
        row = next(r for r in rows if r.triton_model == model)
        serving = row.entry.get("serving") or {}
        footprint = footprints.get(model) or row.entry.get("served_footprint") or {}
        # the config's count (as the server reported it); the stubs counted can include one still ending
        instances = footprint.get("configured_instances") or serving.get("instances") or 1
        threads = serving.get("intra_op_threads") or 1
        line = capacity.plan_variant(model, throughput_interval(step).low, batch_size, instances, threads,
                                     footprint.get("rss_bytes_per_instance"), target_qps, headroom=headroom,
                                     prices=prices, users=step["users"], server_rss=results.server_rss_bytes)
        lines.append(dataclasses.replace(line, variant=row.variant, accuracy_drop_points=row.accuracy_drop_points,
                                         agreement=row.agreement, p99_ms=step["p99_ms"], compute=row.compute,
                                         interval_windows=throughput_interval(step).n,
                                         generator_bound=generator_bound))
    return lines


def build_report(results: RunResults | dict, records: dict[str, dict], slo_p99_ms: float, max_accuracy_drop: float,
                 memory_budget: str | None = None, min_agreement: float = 0.0, target_qps: float | None = None,
                 prices=(), headroom: float = capacity.DEFAULT_HEADROOM, overload: dict | None = None) -> dict:
    """`overload`: what `python -m loadtests overload` wrote (overload.json), shown per source model.
    `memory_budget` (e.g. "16GB"): the footprint table says how many instances fit in it; default: the run's.
    `min_agreement` (0..1): top-1 agreement with fp32 a variant needs to be recommended. With `target_qps`
    (requests/s), a capacity plan per source model (`plans`), costed on `prices` (loadtests/rollout/plan.py)."""
    results = as_results(results)
    rows = variant_rows(results, records)
    source_of = {r.triton_model: r.source for r in rows}
    sources = sorted(set(source_of.values()))
    steps = merge_repeats(results.steps)  # one per (model, users): repeats joined
    steps_of = {src: [s for s in steps if source_of.get(s["model"]) == src] for src in sources}
    rows_of = {src: [r for r in rows if r.source == src] for src in sources}
    plans = {}
    if target_qps:
        for src in sources:
            lines = plan_lines(rows_of[src], steps_of[src], results, slo_p99_ms, max_accuracy_drop, min_agreement,
                               target_qps, prices, headroom)
            cheapest = capacity.cheapest(lines)
            plans[src] = capacity.Plan(tuple(lines), cheapest and cheapest.model)
    return {"results": results, "rows": rows, "sources": sources, "steps": steps,
            # every build-record entry of the models in the run (served or not): operator profiles, MACs by length
            "records": {m: e for m, e in records.items() if e.get("source") in sources},
            "slo_p99_ms": slo_p99_ms, "max_accuracy_drop": max_accuracy_drop, "min_agreement": min_agreement,
            "memory_budget": memory_budget or results.memory_budget or "16GB",
            "target_qps": target_qps, "headroom": headroom, "plans": plans, "priced": bool(prices),
            "overload": overload,
            # accuracy only compares within one model: one recommendation per source model
            "recommendations": {src: recommend(rows_of[src], steps_of[src], slo_p99_ms, max_accuracy_drop,
                                               min_agreement) for src in sources}}


# ---- plots ---------------------------------------------------------------------------------------------------

def plot_latency_throughput(report: dict, source: str, path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in (r for r in report["rows"] if r.source == source):
        steps = sorted((s for s in report["steps"] if s["model"] == row.triton_model and s["p99_ms"]),
                       key=lambda s: s["users"])
        if steps:
            ax.plot([s["throughput"] for s in steps], [s["p99_ms"] for s in steps], marker="o", label=row.variant)
            for s in steps:
                ax.annotate(f"{s['users']}u", (s["throughput"], s["p99_ms"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.axhline(report["slo_p99_ms"], color="grey", linestyle="--", linewidth=1, label=f"SLO {report['slo_p99_ms']:g} ms")
    ax.set(xlabel="throughput (examples/s)", ylabel="p99 latency (ms)", title=f"{source}: p99 vs throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy_speed_points(report: dict, source: str) -> list[dict]:
    """The accuracy-speed plot's points: every built variant of `source` with an accuracy and an in-process speed
    (build record): {"variant", "accuracy" (%), "speedup" (in-process vs fp32, 1 / compute), "throughput" (max
    served examples/s, None when not served), "refused" (the build's reason, "" when served)}."""
    return [{"variant": r.variant, "accuracy": r.accuracy * 100,
             "speedup": 1 / r.compute if r.compute else None,
             "throughput": r.best["throughput"] if r.best else None, "refused": refusal_text(r)}
            for r in report["rows"] if r.source == source and r.accuracy is not None]


def plot_accuracy_throughput(report: dict, source: str, path: pathlib.Path) -> None:
    """Left: accuracy vs max served throughput (served variants; red: the Pareto front). Right: accuracy vs
    in-process speedup over fp32 for every built variant, the refused ones in grey: the trade-off the gate judged."""
    import matplotlib.pyplot as plt

    points = accuracy_speed_points(report, source)
    fig, (served_ax, speed_ax) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    served = [p for p in points if p["throughput"] is not None]
    xy = [(p["throughput"], p["accuracy"]) for p in served]
    front = set(pareto(xy))
    for i, (p, (t, a)) in enumerate(zip(served, xy)):
        served_ax.scatter([t], [a], s=60 if i in front else 30, color="C3" if i in front else "C0", zorder=3)
        served_ax.annotate(p["variant"], (t, a), fontsize=8, xytext=(4, 4), textcoords="offset points")
    if front:
        line = sorted(xy[i] for i in front)
        served_ax.plot([x for x, _ in line], [y for _, y in line], color="C3", linewidth=1, label="Pareto front")
        served_ax.legend(fontsize=8)
    served_ax.set(xlabel="max served throughput (examples/s)", ylabel="accuracy (%)", title="served variants")
    for p in (p for p in points if p["speedup"] is not None):
        grey = bool(p["refused"])
        speed_ax.scatter([p["speedup"]], [p["accuracy"]], s=30, marker="x" if grey else "o",
                         color="grey" if grey else "C0", zorder=3)
        speed_ax.annotate(p["variant"] + (" (refused)" if grey else ""), (p["speedup"], p["accuracy"]), fontsize=8,
                          color="grey" if grey else "black", xytext=(4, 4), textcoords="offset points")
    speed_ax.set(xlabel="in-process speedup vs fp32 (batch 1 and 32, 1 thread)",
                 title="every built variant (grey: refused by the build)")
    for ax in (served_ax, speed_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{source}: accuracy vs speed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_server_time(report: dict, source: str, path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.source == source and r.best and r.best.get("server")]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = [r.variant for r in rows]
    bottom = [0.0] * len(rows)
    for time in (t for t in metrics.TIMES if t.in_time_plot):
        values = [r.best["server"].get(time.key, 0.0) for r in rows]
        ax.bar(names, values, bottom=bottom, label=time.label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(ylabel="ms per request (server side)", title=f"{source}: queue vs compute at max throughput")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def profiled_rows(report: dict, source: str, batch: str) -> list[tuple[str, dict]]:
    """(variant, operator profile at `batch`, e.g. "b32") of every served variant of `source` whose build record
    has one; the others (built before profiling existed) are left out."""
    out = []
    for row in (r for r in report["rows"] if r.source == source):
        profile = (report.get("records", {}).get(row.triton_model, {}).get("operator_profile") or {}).get(batch)
        if profile:
            out.append((row.variant, profile))
    return out


def plot_operator_profile(report: dict, source: str, path: pathlib.Path) -> None:
    import matplotlib.pyplot as plt

    panels = [(batch, profiled_rows(report, source, batch)) for batch in ("b1", "b32")]
    height = max(2.6, 1.2 + 0.32 * max(len(rows) for _, rows in panels))
    fig, axes = plt.subplots(1, 2, figsize=(11, height), sharey=True)
    for ax, (batch, rows) in zip(axes, panels):
        ax.set(xlim=(0, 125), xticks=range(0, 101, 20), xlabel="% of kernel time", title=f"batch {batch[1:]}")
        if not rows:
            ax.text(0.5, 0.5, "no operator profile in the build records", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
            continue
        names = [variant for variant, _ in rows]
        categories = list(rows[0][1]["by_category"])
        left = [0.0] * len(rows)
        for i, cat in enumerate(categories):
            values = [p["by_category"].get(cat, 0.0) for _, p in rows]
            ax.barh(names, values, left=left, color=f"C{i}", label=cat)
            left = [a + v for a, v in zip(left, values)]
        for y, (_, p) in enumerate(rows):
            ms = p["kernel_ms_per_run"]
            ax.text(101, y, f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.3g} ms", va="center", fontsize=7)
        ax.grid(axis="x", alpha=0.3)
    if any(rows for _, rows in panels):
        axes[0].invert_yaxis()  # first variant on top; the y axis is shared, so once
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes), key=lambda hl: len(hl[0]))
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=len(labels), frameon=False)
    fig.suptitle(f"{source}: ONNX Runtime kernel time by operator category (1 thread; ms: kernel time per run)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overload_runs(report: dict, source: str) -> list[dict]:
    """The open-loop overload runs (loadtests/overload.py) of `source`'s served variants, policy on before off."""
    runs = (report.get("overload") or {}).get("runs", [])
    return sorted((r for r in runs if source_of(r["model"]) == source),
                  key=lambda r: (r["model"], not r["queue_policy"]))


def plot_overload(report: dict, source: str, path: pathlib.Path) -> None:
    """Goodput and p99 of the accepted requests against the offered load, as multiples of each run's closed-loop
    maximum: one line per variant and queue policy (off: dashed)."""
    import matplotlib.pyplot as plt

    slo = report["overload"]["settings"]["slo_ms"]
    fig, (good, tail) = plt.subplots(1, 2, figsize=(9.6, 4.0))
    for run in overload_runs(report, source):
        steps = sorted(run["steps"], key=lambda s: s["multiple"])
        style = {"linestyle": "-" if run["queue_policy"] else "--", "marker": "o"}
        label = f"{run['model'].removeprefix(source + '_')}, policy {'on' if run['queue_policy'] else 'off'}"
        good.plot([s["multiple"] for s in steps], [s["goodput_per_s"] for s in steps], label=label, **style)
        accepted = [s for s in steps if s["p99_ms"] is not None]
        tail.plot([s["multiple"] for s in accepted], [s["p99_ms"] for s in accepted], label=label, **style)
    tail.axhline(slo, color="grey", linestyle=":", linewidth=1, label=f"SLO {slo:g} ms")
    tail.set_yscale("log")
    good.set(xlabel="offered load (x closed-loop maximum)", ylabel=f"goodput (answers within {slo:g} ms per s)",
             title=f"{source}: goodput past capacity")
    tail.set(xlabel="offered load (x closed-loop maximum)", ylabel="p99 of accepted requests (ms)",
             title="p99 of what was answered")
    for ax in (good, tail):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overload_table(report: dict, source: str) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "queue policy", "x max", "offered/s", "sent/s", "goodput/s", "p50 ms", "p99 ms", "rejected",
              "rejected p99 ms", "past deadline", "memory MB", "recovery s"]
    body = []
    for run in overload_runs(report, source):
        for s in sorted(run["steps"], key=lambda s: s["multiple"]):
            body.append([run["model"], "on" if run["queue_policy"] else "off", f"{s['multiple']:g}",
                         f"{s['offered_per_s']:.0f}", f"{s['sent_per_s']:.0f}", f"{s['goodput_per_s']:.0f}",
                         _num(s["p50_ms"]), _num(s["p99_ms"]), str(s["rejected"]), _num(s["rejected_p99_ms"]),
                         str(s["deadline"]), f"{s['memory_start_mb']:.0f} -> {s['memory_peak_mb']:.0f}",
                         _num(run["recovery_s"], 2)])
    return header, body


def overload_text(report: dict) -> str:
    settings, cpu = report["overload"]["settings"], report["overload"]["cpu"]
    return (f"Open-loop Poisson arrivals at multiples of each variant's closed-loop maximum "
            f"({settings['users']} users), {settings['seconds']:g} s per step, with the queue policy the build wrote "
            f"(on) and without it (off): goodput = answers within the SLO of {settings['slo_ms']:g} ms per second; "
            f"p50/p99 of the accepted requests, counted from their arrival; rejected = refused by the queue policy; "
            f"memory = tritonserver, stubs and front, at the step's start -> its peak; recovery = seconds until 5 "
            f"answers in a row are back within 2x the first step's p50 (`python -m loadtests overload`, "
            f"overload.json). CPU {cpu['model']}, {cpu['summary']}; the generator shares it with the server.")


PLOTS = (("latency", plot_latency_throughput, "p99 latency vs throughput, one curve per variant across load steps"),
         ("accuracy", plot_accuracy_throughput, "accuracy vs max served throughput (red: the Pareto front), and vs "
          "in-process speedup over fp32 for every built variant (grey: refused by the build, not served)"),
         ("server_time", plot_server_time, "where a request's time goes in the server, at each variant's max throughput"),
         ("operators", plot_operator_profile, "share of kernel time by operator category, batch 1 and 32, 1 thread: "
          "ONNX Runtime's profiler in-process at build time (build record: operator_profile; warm-up excluded), "
          "not the served model; variants without a profile are left out"))


# ---- text ----------------------------------------------------------------------------------------------------

def _num(value, digits: int = 1, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def _interval(interval: Interval | None, digits: int = 1) -> str:
    return "-" if interval is None or interval.n < 2 else interval.text(digits)


def fp32_on_same_examples(row: VariantRow) -> float | None:
    """fp32's accuracy (0..1) on exactly the examples `row` was measured on: the variant's accuracy plus its paired
    drop (builder/pipeline/build.py score_variant). A quick build scores variants on a subset but fp32 on every example, so
    fp32's own row is not what a variant's Δ compares with; this is."""
    if row.accuracy is None or row.accuracy_drop_points is None:
        return None
    return row.accuracy + row.accuracy_drop_points / 100


def summary_table(report: dict, source: str) -> tuple[list[str], list[list[str]]]:
    # Δ is paired: fp32 on exactly the examples the variant was measured on, which may be fewer than fp32's own
    # (quick builds); the column beside it shows that fp32 accuracy, so Δ = accuracy - it, row by row
    header = ["variant", "accuracy %", "agreement %", "on examples", "fp32 % on these examples",
              "Δ pts vs fp32 on these examples ± se", "size MB", "params M", "MMACs", "compute vs fp32",
              "% of peak b1 / b32", "p50 ms", "p99 ms", "p99 windows", "max examples/s", "windows",
              "at users", "batch", "failures", "verdict"]
    choice = report["recommendations"][source]
    body = []
    for r in (r for r in report["rows"] if r.source == source):
        best = r.best or {}
        server = best.get("server") or {}
        delta = _num(None if r.accuracy_drop_points is None else 0.0 - r.accuracy_drop_points, 2)
        if r.accuracy_drop_se_points:
            delta += f" ± {r.accuracy_drop_se_points:.2f}"
        verdict = ("refused: " + refusal_text(r) if r.refused else "chosen" if r.triton_model == choice["model"] else
                   "tied" if r.triton_model in choice.get("tied", []) else "")
        body.append([r.variant, _num(r.accuracy, 2, 100), _num(r.agreement, 1, 100), str(r.eval_examples or "-"),
                     _num(fp32_on_same_examples(r), 2, 100), delta, _num(r.onnx_bytes, 1, 1e-6),
                     _num(r.params, 2, 1e-6), _num(r.macs, 1, 1e-6), _num(r.compute, 2), peak_fraction_text(r.entry),
                     _num(best.get("p50_ms")), _num(best.get("p99_ms")),
                     _interval(p99_interval(best)) if best else "-", _num(best.get("throughput")),
                     _interval(throughput_interval(best)) if best else "-", str(best.get("users", "-")),
                     _num(server.get("realised_batch"), 2), str(r.failures), verdict])
    return header, body


SUMMARY_NOTE = ("accuracy, agreement and Δ are on the row's own examples (\"on examples\"; a quick build "
                "scores variants on a subset, fp32 on all): Δ = accuracy - \"fp32 % on these examples\", paired, "
                "so compare a variant's accuracy with that column, not with fp32's own row; "
                "agreement = top-1 agreement with fp32 on the same test examples (build record); compute vs fp32 "
                "= in-process ONNX Runtime latency relative to fp32 measured beside it, geometric mean of batch 1 "
                "and 32 at 1 thread (build record); % of peak = achieved FLOP/s (2 x MACs x batch / in-process p50, "
                "1 thread) over the build machine's measured GEMM peak, the int8 peak for quantized variants and "
                "the fp32 one otherwise, at batch 1 / 32 (build record `roofline`; - for builds made before it "
                "was recorded; MACs count only matrix products and convolutions, so it is a lower bound); p99 and "
                "max examples/s: the variant's highest-throughput step, "
                "Locust's figures over the whole step; windows = min..max over the step's equal windows after "
                "every user started (loadtests/intervals.py). Variants whose throughput windows overlap the "
                "leader's, or within 5 % of it (the spread between runs), are tied; ties go to lower compute, then "
                "the smaller file. A variant the build refused (verdict `refused`, with the gate it failed) was built "
                "and measured in-process but not served: it has no load figures.")


def peak_fraction_text(entry: dict) -> str:
    """"75.0 / 81.2": the record's fraction of the machine's peak at batch 1 and 32 (1 thread), in percent; "-"
    for a batch the record has no figure for (records built before builder/pipeline/roofline.py)."""
    by_latency = (entry.get("roofline") or {}).get("by_latency") or {}
    if not by_latency:
        return "-"
    return " / ".join(_num((by_latency.get(key) or {}).get("fraction_of_peak"), 1, 100) for key in ("b1_t1", "b32_t1"))


def isa_line(report: dict, source: str) -> str:
    """One line naming the CPU ISA (and peak GEMM at 1 thread) the `source` variants' % of peak was measured on,
    from the build records' `cpu_isa` and `roofline`; every distinct machine once, in the table's order."""
    seen = {}
    for row in (r for r in report["rows"] if r.source == source):
        isa = row.entry.get("cpu_isa") or {}
        if not isa:
            continue
        peaks = seen.setdefault((isa.get("summary", "unknown"), isa.get("model") or "unknown CPU"), {})
        roofline = row.entry.get("roofline") or {}
        if roofline.get("precision") and roofline.get("peak_gflops"):
            peaks.setdefault(roofline["precision"], roofline["peak_gflops"].get("1"))
    if not seen:
        return "CPU ISA of the builds: not recorded (built before builder/pipeline/roofline.py): % of peak is not known."
    machines = []
    for (summary, model), peaks in seen.items():
        peak = ", ".join(f"{precision} {gflops:,.0f} G{'FLOP' if precision == 'fp32' else 'OP'}/s"
                         for precision, gflops in sorted(peaks.items()) if gflops)
        machines.append(f"{summary} ({model}" + (f"; 1-thread GEMM peak {peak}" if peak else "") + ")")
    return "CPU ISA of the builds, where % of peak was measured: " + "; ".join(machines) + "."


def plan_table(report: dict, source: str) -> tuple[list[str], list[list[str]]] | None:
    plan = report.get("plans", {}).get(source)
    if not plan:
        return None
    header = ["variant", "at users", "req/s per replica (interval low)", "replicas", "HPA max", "cores/replica",
              "memory/replica MiB", "cheapest instance type", "nodes", "$/h", "$ per 1M requests"]
    body = []
    for line in plan.lines:
        cost = line.cheapest
        body.append([line.variant + (" (cheapest)" if line.model == plan.cheapest else ""),
                     str(line.users), _num(line.capacity_rps), str(line.replicas), str(line.max_replicas),
                     str(line.cores), str(line.memory_mib or "-"), cost.instance_type if cost else "-",
                     str(cost.nodes) if cost else "-", _num(cost and cost.usd_per_hour, 2),
                     _num(cost and cost.usd_per_million_requests, 3)])
    return header, body


def plan_text(report: dict, source: str) -> str:
    plan = report["plans"][source]
    head = (f"Capacity for {report['target_qps']:g} requests/s with p99 <= {report['slo_p99_ms']:g} ms: replicas "
            f"at {1 - report['headroom']:.0%} of the lower bound of each variant's measured throughput interval "
            f"(headroom {report['headroom']:.0%}); HPA max: replicas for twice the target; cores = instances x "
            "ONNX Runtime threads of the config; memory = instances x measured resident memory per instance "
            f"x {1 + capacity.DEFAULT_MEMORY_MARGIN:g}"
            + (f" + the server process's {report['results'].server_rss_bytes / 2**20:.0f} MiB (measured with "
               "every model of the run loaded)." if report["results"].server_rss_bytes else
               " (the server process itself was not measured in this run: add it).")
            )
    if not plan.lines:
        return head + " No variant meets the SLO and the budgets: nothing to plan."
    if any(line.generator_bound for line in plan.lines):
        head += (" Every qualifying step was generator-bound: these throughputs are the load generator's, lower "
                 "bounds of the server's, so the replicas are upper bounds (rerun with more --workers or from "
                 "another machine to size tighter).")
    if plan.cheapest:
        line = plan.line(plan.cheapest)
        head += (f" Cheapest variant meeting SLO and accuracy: `{line.model}`, {line.replicas} replica(s) on "
                 f"{line.cheapest.nodes} x {line.cheapest.instance_type}, ${line.cheapest.usd_per_hour:.2f}/h.")
    elif not report.get("priced"):
        head += " No costs: pass --prices (see loadtests/prices.example.yaml)."
    return head + " " + capacity.CAVEAT


def footprint_rows(footprints: dict[str, dict], memory_budget: str) -> tuple[list[str], list[list[str]]]:
    """Deployment footprint per served model (builder/serving/footprint.py): file size, load time, resident memory per
    instance and how many instances fit in `memory_budget`."""

    budget = parse_size(memory_budget)
    header = ["model", "file MB", "load s", "instances", "RSS/instance MB", "peak RSS MB", f"fit in {memory_budget}"]
    body = []
    for model, f in footprints.items():
        memory = f.get("rss_bytes_per_instance")
        body.append([model, _num(f.get("file_bytes"), 1, 1e-6), _num(f.get("load_seconds"), 2),
                     str(f.get("instances", "-")), _num(memory, 0, 1e-6), _num(f.get("peak_rss_bytes"), 0, 1e-6),
                     str(fits(budget, memory)) if memory else "-"])
    return header, body


def footprint_table(report: dict, source: str) -> tuple[list[str], list[list[str]]]:
    footprints = report["results"].footprint
    models = [r.triton_model for r in report["rows"] if r.source == source and r.triton_model in footprints]
    return footprint_rows({m: footprints[m] for m in models}, report["memory_budget"])


FOOTPRINT_NOTE = ("Deployment footprint: load s = Triton's load request to READY; RSS/instance = resident memory of "
                  "one instance's Python backend stub process after a first real request (embedded server; it "
                  "includes the stub's interpreter and onnxruntime, and shared libraries counted per instance, so "
                  "`fit` is conservative); peak = the stub's high-water mark.")


def steps_table(report: dict) -> tuple[list[str], list[list[str]]]:
    times = [t for t in metrics.TIMES if t.in_steps_table]
    header = ["model", "users", "requests", "failures", "req/s", "p50 ms", "p90 ms", "p99 ms", "examples/s windows",
              "p99 windows", *(f"{t.label} ms" for t in times), "batch", "CPU %", "ranked", "raw data"]
    body = []
    for s in report["results"].steps:
        server = s.get("server") or {}
        body.append([s["model"], str(s["users"]) + (f" (repeat {s['repeat']})" if s.get("repeat") else ""),
                     str(s["requests"]), str(s["failures"]), _num(s["requests_per_s"]),
                     _num(s["p50_ms"]), _num(s["p90_ms"]), _num(s["p99_ms"]), _interval(throughput_interval(s)),
                     _interval(p99_interval(s)), *(_num(server.get(t.key), 2) for t in times),
                     _num(server.get("realised_batch"), 2),
                     _num(s.get("cpu_utilization"), 0, 100), "no: generator-bound" if s.get("generator_bound") else "yes",
                     f"raw/{s['raw']['locust_stats']}"])
    return header, body


def cross_check_table(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["model", "concurrency", "tokens", "Locust examples/s", "perf_analyzer infer/s", "ratio",
              "Locust p99 ms", "perf_analyzer p99 ms", "batch Locust / PA", "note"]
    body = []
    for model, check in report["results"].perf_analyzer.items():
        if "skipped" in check:
            body.append([model] + ["-"] * 8 + [f"not run: {check['skipped']}"])
            continue
        locust, pa, ratio = check["locust"], check["perf_analyzer"], check["ratio"]
        batches = "/".join(_num((x.get("server") or {}).get("realised_batch"), 2) for x in (locust, pa))
        note = "" if ratio is None else ("within 15 %" if abs(ratio - 1) <= 0.15 else
                                         "Locust is more than 15 % slower: the load generator is a bottleneck "
                                         "(try --workers)" if ratio < 1 else "Locust is more than 15 % faster")
        body.append([model, str(check["concurrency"]), str(check["tokens"] or "-"), _num(locust["throughput"]),
                     _num(pa["throughput"]), _num(ratio, 2), _num(locust["p99_ms"]), _num(pa["p99_ms"]), batches,
                     note])
    return header, body


def macs_length_table(report: dict, source: str) -> tuple[list[str], list[list[str]], str] | None:
    """MACs per example by layer type at each sequence length, and the crossover sentence, from the build record
    of `source`'s fp32 variant (`macs_by_length`); None when it has none."""
    entry = next((e for e in report.get("records", {}).values()
                  if e.get("source") == source and e.get("variant") == "fp32" and e.get("macs_by_length")), None)
    if entry is None:
        return None
    macs = entry["macs_by_length"]
    header = [f"length ({'/'.join(macs['axes'])})", "linear MMACs", "attention MMACs", "other MMACs", "attention %"]
    body = [[str(r["length"]), _num(r["linear"], 1, 1e-6), _num(r["attention"], 1, 1e-6), _num(r["other"], 1, 1e-6),
             _num(r["attention_percent"], 1)] for r in macs["per_length"]]
    text = (f"From the build record of `{entry['triton_model']}` (macs_by_length): torch FlopCounterMode on one "
            "test example cut or padded to each length; linear = projections and feed-forward (mm/addmm), "
            f"attention = QK^T and AV (bmm/SDPA). {macs['crossover_text']}")
    if macs.get("failed_lengths"):
        text += " Not counted (the model refused them): " + "; ".join(
            f"length {n}: {why}" for n, why in macs["failed_lengths"].items()) + "."
    return header, body, text


def context_lines(report: dict) -> list[str]:
    results = report["results"]
    machine, settings = results.machine, results.settings
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['host']}), Python {machine['python']}.",
             f"Load: {settings['protocol']}, {settings['mode']} loop"
             + (f" at {settings['arrival_rate']:g} requests/s per user" if settings["mode"] == "open" else "")
             + f", users {', '.join(map(str, settings['users']))}, {settings['duration_s']:g} s per step, "
               f"{settings['batch_size']} example(s) per request from the `{settings['split']}` split.",
             f"Load generator: {results.load_generator}; it shares the CPU with the server, so served figures "
             "here are lower bounds for a dedicated server.",
             f"Budget: p99 <= {report['slo_p99_ms']:g} ms, accuracy drop <= {report['max_accuracy_drop']:g} points "
             "(vs fp32 on the same test examples, from the build record; ± its paired standard error: a drop "
             "within about two of those is not told apart from noise on that many examples)"
             + (f", top-1 agreement with fp32 >= {report['min_agreement']:.0%}" if report.get("min_agreement") else "")
             + ".",
             f"Run {results.started_at} to {results.finished_at or '?'}"
             + ("" if results.complete else " (interrupted: partial results)") + "."]
    return lines


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def source_section(report: dict, source: str, plots: pathlib.Path) -> tuple[list[str], list[str]]:
    """One source model's part of the report: (Markdown lines, HTML pieces); its plots are written to `plots`."""
    md, body = [], []
    advice = report["recommendations"][source]["text"]
    md += [f"## {source}", "", f"**{advice}**", "", markdown_table(*summary_table(report, source)), "",
           isa_line(report, source), "", f"*{SUMMARY_NOTE}*", ""]
    body += [f"<h2>{html.escape(source)}</h2><p class='advice'>{html.escape(advice)}</p>",
             html_table(*summary_table(report, source)), f"<p>{html.escape(isa_line(report, source))}</p>",
             f"<p><small>{html.escape(SUMMARY_NOTE)}</small></p>"]
    planned = plan_table(report, source)
    if planned:
        md += [f"### {source}: capacity plan", "", markdown_table(*planned), "", plan_text(report, source), ""]
        body += [f"<h3>{html.escape(source)}: capacity plan</h3>", html_table(*planned),
                 f"<p>{html.escape(plan_text(report, source))}</p>"]
    footprint = footprint_table(report, source)
    if footprint[1]:
        md += [markdown_table(*footprint), "", f"*{FOOTPRINT_NOTE}*", ""]
        body += [html_table(*footprint), f"<p><small>{html.escape(FOOTPRINT_NOTE)}</small></p>"]
    for name, plot, caption in PLOTS:
        path = plots / f"{source}_{name}.png"
        plot(report, source, path)
        md += [f"![{caption}](plots/{path.name})", f"*{caption}*", ""]
        body.append(figure(path, caption))
    if overload_runs(report, source):
        path, caption = plots / f"{source}_overload.png", "goodput and p99 past capacity, queue policy on and off"
        plot_overload(report, source, path)
        md += [f"### {source}: past capacity (open loop)", "", markdown_table(*overload_table(report, source)), "",
               overload_text(report), "", f"![{caption}](plots/{path.name})", f"*{caption}*", ""]
        body += [f"<h3>{html.escape(source)}: past capacity (open loop)</h3>",
                 html_table(*overload_table(report, source)), f"<p>{html.escape(overload_text(report))}</p>",
                 figure(path, caption)]
    by_length = macs_length_table(report, source)
    if by_length:
        header, rows, text = by_length
        md += [f"### {source}: MACs per example by layer type and sequence length", "", markdown_table(header, rows),
               "", text, ""]
        body += [f"<h3>{html.escape(source)}: MACs per example by layer type and sequence length</h3>",
                 html_table(header, rows), f"<p>{html.escape(text)}</p>"]
    return md, body


def figure(path: pathlib.Path, caption: str) -> str:
    """A plot embedded in the HTML page, so the page is one file."""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_report(report: dict, out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Write plots/*.png, report.md and report.html (plots embedded) into `out`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    md = ["# Which variant to ship", ""] + [f"- {line}" for line in context_lines(report)] + [""]
    body = [f"<h1>Which variant to ship</h1><ul>{''.join(f'<li>{html.escape(l)}</li>' for l in context_lines(report))}</ul>"]
    for source in report["sources"]:
        section_md, section_body = source_section(report, source, plots)
        md += section_md
        body += section_body
    md += ["## Cross-check with perf_analyzer", ""]
    body.append("<h2>Cross-check with perf_analyzer</h2>")
    if report["results"].perf_analyzer:
        md += [markdown_table(*cross_check_table(report)), ""]
        body.append(html_table(*cross_check_table(report)))
    else:
        md += ["Not run (`--perf-analyzer` was off).", ""]
        body.append("<p>Not run (<code>--perf-analyzer</code> was off).</p>")
    md += ["## Every load step", "", "Max throughput and its latencies above are the step with the highest "
           "throughput per variant. Raw Locust stats for each step are in the file named in the last column.", "",
           markdown_table(*steps_table(report)), ""]
    body += ["<h2>Every load step</h2>", html_table(*steps_table(report))]
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write(md_path, "\n".join(md))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             ".advice{font-weight:bold;background:#eef6ee;padding:.6em;border-left:4px solid #3a3}"
             "figure{display:inline-block;margin:.5em}figcaption{font-size:12px;color:#555}")
    atomic_write(html_path, f"<!doctype html><html><head><meta charset='utf-8'><title>Variant report</title>"
                            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return md_path, html_path
