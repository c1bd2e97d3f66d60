"""The accuracy-aware search of `int8`: quantize everything, and when the validation drop exceeds the budget, return
the nodes that hurt most to float until it fits (Intel Neural Compressor's `tolerable_loss` with per-op fallback,
NNCF's `quantize_with_accuracy_control`).

Ranking, by default leave-one-out on the validation split: for each quantized node, the model quantized with all
but that node, scored by the accuracy it recovers and then by how much closer its metric output comes to the float
model's (mean squared error), so nodes that flip no prediction on their own are still ordered by the error they
carry. One quantization per node: cheap for CNNs and small MLPs, minutes for a transformer (the ranking only runs
when full int8 breaks the budget). For static QDQ graphs with many nodes, one pass of ONNX Runtime's
qdq_loss_debug instead: the signal-to-quantization-noise ratio of every quantized activation, each node scored by
the worst one it touches (`rank_by_sqnr`). Then the worst `group`, 2 x `group`, 4 x `group`, ... nodes return to
float until the drop fits, and bisection finds the smallest such count, within `max_trials` trials. Each trial's b1 latency is measured, so the record shows what each revert cost.

The search is a function of three callables (quantize, evaluate, speed) so its logic is tested without ONNX.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Score:
    accuracy: float  # on the search split, 0..1
    error: float  # mean squared error of the metric output against the float model's


@dataclass(frozen=True)
class Trial:
    number: int
    reverted: tuple  # node names returned to float in this trial (the cumulative set)
    accuracy: float
    drop_points: float  # against fp32 on the search split
    b1_ms: float


def rank_nodes(candidates: list[str], quantize: Callable[[list[str]], pathlib.Path],
               evaluate: Callable[[pathlib.Path], Score], progress=print) -> list[tuple[str, dict]]:
    """Leave-one-out: each candidate with the model quantized except it; worst (most recovered) first."""
    scored = []
    for i, node in enumerate(candidates, 1):
        score = evaluate(quantize([node]))
        scored.append((node, score))
        progress(f"int8 search: ranking {i}/{len(candidates)} {node}: accuracy {score.accuracy:.4f} "
                 f"error {score.error:.3g} without it")
    scored.sort(key=lambda item: (-item[1].accuracy, item[1].error))
    return [(node, {"accuracy_without": s.accuracy, "error_without": s.error}) for node, s in scored]


def rank_by_sqnr(node_tensors: dict[str, list[str]], sqnr_db: dict[str, float]) -> list[tuple[str, dict]]:
    """One pass instead of one quantization per node (static QDQ): each node scored by the lowest signal-to-
    quantization-noise ratio (dB, from ONNX Runtime's qdq_loss_debug) among the quantized activations it reads or
    writes; lowest first. Nodes none of whose tensors were measured come last."""
    scored = [(node, min((sqnr_db[t] for t in tensors if t in sqnr_db), default=float("inf")))
              for node, tensors in node_tensors.items()]
    scored.sort(key=lambda item: item[1])
    return [(node, {"sqnr_db": round(db, 2) if db != float("inf") else None}) for node, db in scored]


def search(candidates: list[str], quantize: Callable[[list[str]], pathlib.Path],
           evaluate: Callable[[pathlib.Path], Score], speed: Callable[[pathlib.Path], float],
           reference_accuracy: float, max_drop_points: float, max_trials: int = 10, group: int = 1,
           progress=print, rank: Callable[[pathlib.Path], list[tuple[str, dict]]] | None = None,
           ) -> tuple[pathlib.Path, list[Trial], list[tuple[str, dict]]]:
    """Quantize all `candidates`; while the drop against `reference_accuracy` exceeds `max_drop_points`, revert the
    worst-ranked ones, doubling from `group` until it fits, then bisecting to the fewest that fit, at most
    `max_trials` trials after the full one.

    `quantize(reverted)` writes a model with those nodes in float and returns its path (a new path per call);
    `evaluate(path)` scores it; `speed(path)` is its latency in ms; `rank(full_int8_path)` orders the candidates,
    worst first (default: leave-one-out, `rank_nodes`). Returns the chosen model (the one within budget with the fewest
    float nodes, else the last tried), every trial (trial 0: nothing reverted), and the ranking ([] when not needed).
    """
    def trial(number: int, reverted: list[str]) -> tuple[pathlib.Path, Trial]:
        path = quantize(reverted)
        score = evaluate(path)
        drop = round((reference_accuracy - score.accuracy) * 100, 2)
        result = Trial(number, tuple(reverted), score.accuracy, drop, speed(path))
        progress(f"int8 search: trial {number}: {len(reverted)} node(s) in float, accuracy {score.accuracy:.4f}, "
                 f"drop {drop:.2f} points (budget {max_drop_points}), b1 {result.b1_ms:.3f} ms")
        return path, result

    path, first = trial(0, [])
    trials = [first]
    if first.drop_points <= max_drop_points or not candidates:
        return path, trials, []
    ranking = rank(path) if rank else rank_nodes(candidates, quantize, evaluate, progress)
    order = [node for node, _ in ranking if node in candidates]
    # the worst `count` nodes in float: `group`, 2 x `group`, 4 x ... until the drop fits (a transformer's 200
    # static nodes in 6 trials from 8), then bisection between the last count that failed and the first that fit
    failing, fitting, best = 0, None, None
    count = min(group, len(order))
    for number in range(1, max_trials + 1):
        candidate_path, result = trial(number, order[:count])
        trials.append(result)
        if result.drop_points <= max_drop_points:
            fitting, best = count, candidate_path
        else:
            failing, path = count, candidate_path
        if fitting is None:
            if count == len(order):
                break
            count = min(count * 2, len(order))
        else:
            if fitting - failing <= 1:
                break
            count = (failing + fitting) // 2
    if best is not None:
        return best, trials, ranking
    return path, trials, ranking


def tuning_table(trials: list[Trial], float_nodes_total: int) -> list[str]:
    """INC-style lines: trial, nodes reverted (and the newest ones), accuracy, drop, speed."""
    lines = [f"{'trial':>5} {'float':>5}/{float_nodes_total:<5} {'accuracy':>8} {'drop':>6} {'b1 ms':>8}  reverted"]
    previous: tuple = ()
    for t in trials:
        new = [n for n in t.reverted if n not in previous]
        back = len([n for n in previous if n not in t.reverted])  # bisection: these are quantized again
        change = ("+ " + ", ".join(new)) if new else (f"{back} quantized again" if back else "-")
        lines.append(f"{t.number:5} {len(t.reverted):5}/{float_nodes_total:<5} {t.accuracy:8.4f} {t.drop_points:6.2f} "
                     f"{t.b1_ms:8.3f}  " + change)
        previous = t.reverted
    return lines


def output_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean((outputs.astype(np.float64) - reference.astype(np.float64)) ** 2))


def chosen_trial(trials: list[Trial], max_drop_points: float) -> Trial:
    """The trial `search` chose: within budget with the fewest float nodes, else the last."""
    fitting = [t for t in trials if t.drop_points <= max_drop_points]
    return min(fitting, key=lambda t: len(t.reverted)) if fitting else trials[-1]
