"""The processes of one build: which one this is, and what they agree on.

Alone (no launcher, no WORLD_SIZE) a build is rank 0 of 1 and nothing here communicates. Under DeepSpeed's launcher
(`deepspeed --num_gpus N --module builder build ...`) or torchrun, every process runs the same build command:

- every process trains (builder/pipeline/train.py shards the data by rank, and all-reduces the gradients and the stop
  decisions, so all of them end at the same step with the same weights);
- whatever depends on files (a cached teacher, a reusable export, the fp32 baseline's presence) is decided by rank 0
  and told to the others (`decide`), so machines that do not share a disk still take the same path;
- only rank 0 evaluates, exports, writes the repository and the build record; the others return once the
  training is done (`is_main`).

A build applies these rules at its stages' boundaries, never inside them: `stage(rule, work)` runs one stage under
one of the four rules below (EVERY, DECIDED, MAIN_FIRST, MAIN), so builder/pipeline/build.py and teacher.py read as
a list of stages, each with the rule it runs under, and the work of a stage is written as if it ran alone.

The process group is DeepSpeed's (`deepspeed.init_distributed`: gloo on the CPU accelerator, NCCL on GPUs), set up
once from the launcher's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from ..core.errors import BuilderError

# A test-only hook (tests/e2e/test_distributed_training.py): `RANK:SECONDS` adds SECONDS to that rank's training
# clock, so that one rank reaches the time cap first, as a slower or earlier-started rank would.
CLOCK_OFFSET_ENV = "BUILDER_TEST_RANK_CLOCK_OFFSET"


def world_size() -> int:
    """How many processes train together (the launcher's WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the process that evaluates, exports and writes."""
    return rank() == 0


def several() -> bool:
    return world_size() > 1


def init() -> None:
    """Join the launcher's process group (once; nothing to do alone or when it exists already). Threads: unless
    OMP_NUM_THREADS says otherwise, the processes of one machine split its cores, so that two ranks on two cores
    do not run four threads."""
    if not several():
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed(verbose=False)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def decide(choose: Callable[[], Any]) -> Any:
    """`choose()` run on rank 0 only, its result (any picklable value) returned on every rank. Alone: `choose()`.
    When `choose()` raises on rank 0, it raises there and every other rank raises a BuilderError that says so,
    rather than waiting for an answer that never comes."""
    if not several():
        return choose()
    import torch.distributed as dist

    init()
    if is_main():
        try:
            value = choose()
        except BaseException as e:
            dist.broadcast_object_list([(False, f"{type(e).__name__}: {e}", getattr(e, "hint", None))], src=0)
            raise
        dist.broadcast_object_list([(True, value, None)], src=0)
        return value
    box = [None]
    dist.broadcast_object_list(box, src=0)
    ok, value, hint = box[0]
    if not ok:
        raise BuilderError(f"rank 0 failed: {value}", hint=hint)
    return value


def main_first(work: Callable[[], Any]) -> Any:
    """`work()` on every rank, rank 0's run first and the others' after it ended: rank 0 fills a cache (the data
    splits, a factory's files) that the others then read instead of writing it at the same time. Raises on every
    rank when rank 0's run raised."""
    if not several():
        return work()
    if is_main():
        result = []
        decide(lambda: result.append(work()))  # the others wait in it until rank 0's run ended (or failed)
        return result[0]
    decide(lambda: None)  # not called here: the answer is rank 0's
    return work()


EVERY = "every rank"  # each runs it on its own share: training
DECIDED = "rank 0 decides"  # rank 0 runs it (it reads rank 0's disk), every rank gets its answer
MAIN_FIRST = "rank 0 first"  # every rank runs it, rank 0 before the others: it fills a cache that they then read
MAIN = "rank 0 only"  # rank 0 runs it (evaluates, exports, writes); the others get `otherwise`
RULES = (EVERY, DECIDED, MAIN_FIRST, MAIN)


def stage(rule: str, work: Callable[[], Any], otherwise: Any = None) -> Any:
    """Run one stage of a build under `rule` (one of RULES) and return what it returns on this rank: `otherwise`
    on the ranks a MAIN stage skips. Alone, every rule runs `work()` once."""
    if rule == EVERY:
        return work()
    if rule == DECIDED:
        return decide(work)
    if rule == MAIN_FIRST:
        return main_first(work)
    if rule == MAIN:
        return work() if is_main() else otherwise
    raise ValueError(f"unknown rank rule {rule!r}: one of {', '.join(RULES)}")


def main_only(report: Callable[..., None]) -> Callable[..., None]:
    """`report` on rank 0 and a no-op on the others: one progress line per build, not one per rank."""
    return report if is_main() else (lambda *args, **kwargs: None)


def gather(value: Any) -> list:
    """`value` of every rank, in rank order (on every rank). Alone: [value]."""
    if not several():
        return [value]
    import torch.distributed as dist

    init()
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def any_rank(flags: list[bool]) -> list[bool]:
    """Each flag true on every rank when it is true on any (a MAX all-reduce): what every rank then does the same."""
    if not several():
        return list(flags)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(f) for f in flags])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def barrier() -> None:
    if several():
        import torch.distributed as dist

        init()
        dist.barrier()


def finish() -> None:
    """The end of a command, on every rank: wait until rank 0 has written everything, then leave the process group.
    A rank that exits while the group is open can abort in its communication threads ("terminate called without an
    active exception", exit -6) while rank 0 is still exporting. Under the launcher a rank 0 that dies takes the
    others with it, so the wait cannot outlive it."""
    if not several():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def clock_offset() -> float:
    """Seconds the test hook (CLOCK_OFFSET_ENV) adds to this rank's training clock; 0 without it."""
    value = os.environ.get(CLOCK_OFFSET_ENV)
    if not value:
        return 0.0
    target, seconds = value.split(":")
    return float(seconds) if int(target) == rank() else 0.0
