"""Intervals over a step's windows, ties between variants and how they are broken, the recommendation's sentence,
the agreement budget: on hand-made results."""


from builder.core.record import BuildEntry
from loadtests.intervals import Interval, merge_repeats, percentile, split_windows, step_intervals
from loadtests.report import recommend, summary_table, build_report, variant_rows


def test_interval_overlap_and_text():
    a, b, c = Interval(100, 120, 3), Interval(118, 130, 3), Interval(121, 140, 3)
    assert a.overlaps(b) and b.overlaps(a) and b.overlaps(c)
    assert not a.overlaps(c) and not c.overlaps(a)
    assert Interval(5, 5, 1).overlaps(Interval(5, 9, 3))  # touching counts
    assert Interval.of([3.0, None, 1.0, 2.0]) == Interval(1.0, 3.0, 3) and Interval.of([]) is None
    assert Interval(1234.5, 1300, 3).text() == "1,234.5..1,300.0"


def test_percentile_follows_locusts_rule():
    histogram = {1.5: 50, 2.0: 40, 9.0: 9, 30.0: 1}
    assert (percentile(histogram, 0.5), percentile(histogram, 0.9), percentile(histogram, 0.99)) == (2.0, 9.0, 30.0)
    assert percentile({}, 0.99) is None


def slots(start_slot, per_slot, count, ms=2.0):
    return [[start_slot + i, ms, per_slot] for i in range(count)]


def test_windows_are_equal_whole_slots_and_count_every_request_once():
    # 0.05 s slots, 3 s of requests: 10 per slot in the first second, 20 after; one slow request in window 3
    recorded = {"slot_s": 0.05, "slots": slots(20000, 10, 20) + slots(20020, 20, 40) + [[20059, 40.0, 1]],
                "failures": [[20001, 2]]}
    windows = split_windows(recorded, start=1000.0, end=1003.0, count=3, batch_size=2)
    assert [w["seconds"] for w in windows] == [1.0, 1.0, 1.0]
    assert [w["start_s"] for w in windows] == [0.0, 1.0, 2.0]
    assert [w["requests"] for w in windows] == [200, 400, 401]
    assert windows[0]["failures"] == 2 and windows[0]["throughput"] == (200 - 2) * 2 / 1.0
    assert [w["p99_ms"] for w in windows] == [2.0, 2.0, 2.0]  # 1 slow request in 401 is under 1 %
    intervals = step_intervals(windows)
    assert intervals["throughput"] == {"low": 396.0, "high": 802.0, "n": 3}
    # a start inside a slot leaves that partial slot out; too few slots: no windows
    late = split_windows(recorded, 1000.01, 1003.0, 3)  # 59 whole slots: 20, 19, 20
    assert [w["seconds"] for w in late] == [1.0, 0.95, 1.0] and late[0]["requests"] == 19 * 10 + 20
    assert split_windows(recorded, 1000.0, 1000.1, 3) == [] and step_intervals([]) is None


def step(model, users, throughput, p99, low=None, high=None, failures=0, generator_bound=False):
    s = {"model": model, "users": users, "throughput": throughput, "p99_ms": p99, "failures": failures,
         "requests": 1000, "p50_ms": p99 / 2, "generator_bound": generator_bound}
    if low is not None:
        s["interval"] = {"throughput": {"low": low, "high": high, "n": 3},
                         "p99_ms": {"low": p99 * 0.9, "high": p99 * 1.1, "n": 3}}
    return s


def entry(variant, drop, speedup, onnx_bytes, top1=None, accuracy=0.9):
    e = {"source": "m", "variant": variant, "accuracy": {"test": accuracy - drop / 100},
         "accuracy_drop_points": drop, "accuracy_drop_se_points": 0.3, "onnx_bytes": onnx_bytes,
         "speedup_vs_fp32": {"b1_t1": speedup, "b1_t2": speedup, "b32_t1": speedup, "b32_t2": speedup}}
    if top1 is not None:
        e["agreement_with_fp32"] = {"top1": top1}
    return e


RECORDS = {"m_fp32": entry("fp32", 0.0, 1.0, 4_000_000), "m_pruned": entry("pruned", 0.2, 4.0, 1_000_000, 0.97),
           "m_int8": entry("int8", 0.1, 4.2, 1_000_000 // 4, 0.99), "m_svd": entry("svd", 0.5, 1.05, 3_900_000, 0.85)}


def rows_for(steps, records=RECORDS):
    return variant_rows({"models": sorted({s["model"] for s in steps}), "steps": steps}, records)


def relative_compute(entry: dict) -> float | None:
    return BuildEntry.of(None, entry).relative_compute


def test_relative_compute_is_the_geometric_mean_at_one_thread():
    assert relative_compute({"variant": "fp32"}) == 1.0
    assert relative_compute({"variant": "x", "speedup_vs_fp32": {"b1_t1": 2.0, "b32_t1": 8.0, "b1_t2": 100}}) == 0.25
    assert relative_compute({"variant": "x"}) is None


def test_tied_with_fp32_and_chosen_for_less_compute():
    steps = [step("m_fp32", 4, 1291, 3.0, 1100, 1350), step("m_pruned", 4, 1024, 3.5, 980, 1150)]
    choice = recommend(rows_for(steps), steps, slo_p99_ms=50, max_accuracy_drop=1.0)
    assert choice["model"] == "m_pruned" and choice["tied"] == ["m_fp32"]
    assert "tied with `m_fp32` on served throughput" in choice["text"]
    assert "chosen for 4.0x less in-process compute than `m_fp32`" in choice["text"]
    assert "windows 980.0..1,150.0 examples/s" in choice["text"] and "agreement with fp32 97.0%" in choice["text"]


def test_a_variant_ahead_beyond_the_intervals_wins_without_a_tie():
    steps = [step("m_fp32", 4, 1291, 3.0, 1250, 1350), step("m_pruned", 4, 1024, 3.5, 980, 1150)]
    choice = recommend(rows_for(steps), steps, 50, 1.0)
    assert choice["model"] == "m_fp32" and choice["tied"] == []
    assert "ahead of every other variant beyond the measured intervals and by more than 5%" in choice["text"]


def test_ties_are_with_the_leader_and_equal_compute_goes_to_the_smaller_file():
    # pruned and int8 are tied with the leader svd; their compute is within 10 %: int8's file is smaller.
    # fp32 overlaps pruned but not the leader: not tied.
    steps = [step("m_svd", 4, 1300, 3.0, 1200, 1400), step("m_pruned", 4, 1150, 3.0, 1050, 1210),
             step("m_int8", 4, 1250, 3.0, 1190, 1300), step("m_fp32", 4, 1000, 3.0, 900, 1100)]
    choice = recommend(rows_for(steps), steps, 50, 1.0)
    assert choice["model"] == "m_int8" and set(choice["tied"]) == {"m_svd", "m_pruned"}
    assert "chosen for the smaller file (0.2 MB vs 1.0 MB)" in choice["text"]
    assert "in-process compute within 10%" in choice["text"]


def test_tie_breaks_need_compute_beyond_the_build_noise():
    # svd leads; fp32 is tied; svd's compute is 1/1.05 of fp32's, within the 10 % noise: svd's smaller file decides
    steps = [step("m_svd", 4, 1300, 3.0, 1200, 1400), step("m_fp32", 4, 1250, 3.0, 1150, 1350)]
    choice = recommend(rows_for(steps), steps, 50, 1.0)
    assert choice["model"] == "m_svd" and "smaller file (3.9 MB vs 4.0 MB)" in choice["text"]


def test_generator_bound_steps_do_not_rank():
    steps = [step("m_fp32", 16, 5000, 3.0, 4900, 5100, generator_bound=True), step("m_fp32", 4, 1200, 3.0, 1150, 1250),
             step("m_svd", 4, 1300, 3.0, 1290, 1310, generator_bound=True)]
    choice = recommend(rows_for(steps), steps, 50, 1.0)
    assert (choice["model"], choice["users"]) == ("m_fp32", 4)
    assert "Not ranked on their generator-bound steps: `m_fp32`, `m_svd`" in choice["text"]


def test_agreement_budget():
    steps = [step("m_fp32", 4, 1000, 3.0, 950, 1050), step("m_svd", 4, 2000, 3.0, 1900, 2100),
             step("m_pruned", 4, 1500, 3.0, 1400, 1600)]
    rows = rows_for(steps)
    assert recommend(rows, steps, 50, 1.0)["model"] == "m_svd"
    assert recommend(rows, steps, 50, 1.0, min_agreement=0.9)["model"] == "m_pruned"  # svd agrees 85 %
    assert recommend(rows, steps, 50, 1.0, min_agreement=0.98)["model"] == "m_fp32"
    none = recommend(rows, [s for s in steps if s["model"] != "m_fp32"], 50, 1.0, min_agreement=0.999)
    assert none["model"] is None and "agreement >= 100%" in none["text"] and "accuracy constraint binds" in none["text"]


def test_a_step_without_windows_says_ties_cannot_be_told():
    steps = [step("m_fp32", 4, 1000, 3.0)]
    choice = recommend(rows_for(steps), steps, 50, 1.0)
    assert choice["model"] == "m_fp32" and "measured once (1 window(s)): no interval" in choice["text"]


def test_summary_shows_agreement_intervals_and_the_verdict():
    steps = [step("m_fp32", 4, 1291, 3.0, 1100, 1350), step("m_pruned", 4, 1024, 3.5, 980, 1150)]
    results = {"models": ["m_fp32", "m_pruned"], "steps": steps}
    report = build_report(results, RECORDS, 50, 1.0)
    header, body = summary_table(report, "m")
    rows = {row[0]: dict(zip(header, row)) for row in body}
    assert rows["pruned"]["agreement %"] == "97.0" and rows["fp32"]["agreement %"] == "100.0"
    assert rows["pruned"]["windows"] == "980.0..1,150.0" and rows["pruned"]["compute vs fp32"] == "0.25"
    assert rows["pruned"]["verdict"] == "chosen" and rows["fp32"]["verdict"] == "tied"


def test_repeats_join_into_one_step_whose_interval_spans_every_window():
    def repeat(throughput, p99, windows, bound=False):
        return {"model": "m_fp32", "users": 4, "requests": 100, "failures": 1, "throughput": throughput,
                "requests_per_s": throughput, "p50_ms": 1.0, "p90_ms": 2.0, "p95_ms": 2.5, "p99_ms": p99,
                "generator_bound": bound, "windows": [{"throughput": t, "p99_ms": p99} for t in windows]}

    other = {"model": "m_int8", "users": 4, "requests": 5, "failures": 0, "throughput": 9.0}
    merged = merge_repeats([repeat(1000, 3.0, [990, 1010, 1000]), other, repeat(800, 5.0, [780, 820, 800], True)])
    assert [m["model"] for m in merged] == ["m_fp32", "m_int8"] and merged[1] is other
    joined = merged[0]
    assert (joined["repeats"], joined["requests"], joined["failures"]) == (2, 200, 2)
    assert joined["throughput"] == 900.0 and joined["p99_ms"] == 5.0  # the mean rate; the worst repeat's p99
    assert joined["interval"]["throughput"] == {"low": 780, "high": 1010, "n": 6} and joined["generator_bound"]
    assert "2 repeats" in joined["interval"]["method"]


def test_when_every_step_is_generator_bound_the_recommendation_ranks_on_them_and_says_so():
    steps = [step("m_fp32", 4, 1200, 3.0, 1150, 1250, generator_bound=True),
             step("m_svd", 4, 1210, 3.0, 1160, 1260, generator_bound=True)]
    choice = recommend(rows_for(steps), steps, 50, 1.0)
    assert choice["model"] in ("m_fp32", "m_svd")
    assert "Every step within the budgets was generator-bound" in choice["text"]


def test_a_quick_builds_delta_is_shown_against_fp32_on_the_variants_own_examples():
    # the quick-mode case: fp32 scored on all 2,551 examples (84.33 %), int8 on a 300-example subset where it
    # scores 85.93 % and fp32 scores the same: Δ 0.00, and the row says fp32 was 85.93 % on those examples
    records = {"m_fp32": {**entry("fp32", 0.0, 1.0, 4_000_000, accuracy=0.8433), "eval_examples": {"test": 2551}},
               "m_int8": {**entry("int8", 0.0, 2.0, 1_000_000, 1.0, accuracy=0.8593),
                          "eval_examples": {"test": 300}, "accuracy_drop_se_points": 0.63},
               "m_pruned": {**entry("pruned", 1.25, 2.0, 1_000_000, 0.9, accuracy=0.8593),
                            "eval_examples": {"test": 300}}}
    steps = [step(m, 4, 1000, 3.0, 900, 1100) for m in records]
    header, body = summary_table(build_report({"models": list(records), "steps": steps}, records, 50, 2.0), "m")
    rows = {row[0]: dict(zip(header, row)) for row in body}
    assert "fp32 % on these examples" in header and "Δ pts vs fp32 on these examples ± se" in header
    assert rows["fp32"]["accuracy %"] == rows["fp32"]["fp32 % on these examples"] == "84.33"
    assert rows["int8"]["on examples"] == "300" and rows["int8"]["fp32 % on these examples"] == "85.93"
    assert rows["int8"]["Δ pts vs fp32 on these examples ± se"] == "0.00 ± 0.63"
    # accuracy - the fp32 column is the Δ, row by row
    assert rows["pruned"]["accuracy %"] == "84.68" and rows["pruned"]["fp32 % on these examples"] == "85.93"
    assert rows["pruned"]["Δ pts vs fp32 on these examples ± se"].startswith("-1.25")


def test_a_lead_smaller_than_the_spread_between_runs_is_a_tie_even_beyond_the_windows():
    # measured: two consecutive demos put pruned 1.1 % behind pruned+int8, then 3 % ahead, both beyond the windows
    steps = [step("m_pruned", 1, 1467.5, 1.0, 1460, 1475), step("m_int8", 1, 1483.6, 0.9, 1489, 1493.8),
             step("m_fp32", 1, 1178.2, 1.6, 1170, 1185)]
    choice = recommend(rows_for(steps), steps, 50, 1.0)
    assert choice["model"] == "m_int8" and choice["tied"] == ["m_pruned"]
    assert "within 5%: the spread between runs" in choice["text"]
    swapped = [step("m_pruned", 1, 1476.6, 0.9, 1470.6, 1496.8), step("m_int8", 1, 1433.4, 0.9, 1425, 1440),
               step("m_fp32", 1, 1251.6, 1.5, 1240, 1260)]
    again = recommend(rows_for(swapped), swapped, 50, 1.0)
    assert again["model"] == "m_int8" and again["tied"] == ["m_pruned"]  # the same choice from the other run
