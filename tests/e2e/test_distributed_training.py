"""Training on several processes, as a user runs it: `deepspeed --num_gpus 2 --module builder build ...` on the CPU
accelerator (gloo). Two ranks train the tiny block model's fine-tuned teacher and its distilled student together;
rank 0 alone writes; both end with the same weights; one rank reaching the time cap first stops both at the same
step; and two processes with batch B train what one process trains with batch 2B."""

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.conftest import FIXTURES, ROOT

pytestmark = pytest.mark.e2e

SPEC = FIXTURES / "tiny_blocks" / "tiny_blocks.yaml"
DEEPSPEED = pathlib.Path(sys.executable).parent / "deepspeed"
# not anchored at a line's start: the ranks share the launcher's stdout, and rank 0's `print` (unbuffered, under
# `python -u`) writes a line's text and its newline apart, so rank 1's line can land between them
RANK1_LINE = re.compile(r"\[rank 1/2\] (?P<what>[a-z -]+): (?P<steps>\d+)/(?P<planned>\d+) steps [^\n]*; "
                        r"weights (?P<hash>[0-9a-f]{32})\n")


def free_port() -> int:
    # the launcher's rendezvous needs a port; one picked here can in principle be taken before the ranks bind it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec_copy(folder: pathlib.Path, variants: dict | None = None) -> pathlib.Path:
    raw = yaml.safe_load(SPEC.read_text())
    if variants is not None:
        raw["variants"] = {**raw["variants"], **variants}
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SPEC.parent / "tiny_blocks_model.py", folder)
    (folder / "tiny_blocks.yaml").write_text(yaml.safe_dump(raw))
    return folder / "tiny_blocks.yaml"


def launch(spec: pathlib.Path, variants: str, artifacts: pathlib.Path, repository: pathlib.Path, env=None):
    """`deepspeed --num_gpus 2 --module builder build ...`: the launcher's own CPU path (two ranks, gloo)."""
    command = [str(DEEPSPEED), "--num_gpus", "2", "--master_port", str(free_port()), "--module", "builder", "build",
               "--config", str(spec), "--variant", variants, "--artifacts", str(artifacts),
               "--repository", str(repository), "--force"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=environment)


def processes_naming(text: str) -> list[str]:
    """Command lines of the processes of this machine that mention `text` (a test's own folder)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(entry.name) != os.getpid() and text in cmdline:
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """fp32 (a teacher fine-tuned by both ranks) and distilled, built once by two ranks."""
    folder = tmp_path_factory.mktemp("two_ranks")
    artifacts, repository = folder / "artifacts", folder / "repo"
    result = launch(spec_copy(folder / "spec"), "fp32,distilled", artifacts, repository)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((artifacts / "tinyblocks" / "record.json").read_text())
    return {"folder": folder, "artifacts": artifacts, "repository": repository, "result": result, "record": record}


def test_two_ranks_build_one_model_within_the_gate_and_leave_no_process(two_ranks):
    record, repository = two_ranks["record"], two_ranks["repository"]
    assert set(record["variants"]) == {"fp32", "distilled"}  # one entry each, written by rank 0 alone
    distilled = record["variants"]["distilled"]
    # the accuracy gate (the tiny model's speed gate, at 0.01 ms, is noise: --force writes past it)
    assert distilled["accuracy_drop_points"] <= 1.0 and not any("accuracy" in g for g in distilled["gates_failed"])
    assert sorted(p.name for p in repository.iterdir()) == ["tinyblocks_distilled", "tinyblocks_fp32"]
    assert sorted(p.name for p in (repository / "tinyblocks_distilled").iterdir()) == ["1", "config.pbtxt"]
    assert processes_naming(str(two_ranks["folder"])) == []  # the launcher, both ranks: all ended
    stdout = two_ranks["result"].stdout
    assert stdout.count("exporting to ONNX") == 2 and stdout.count("[rank 1/2]") == 2  # rank 1: one line per run


def test_both_ranks_trained_together_and_ended_with_the_same_weights(two_ranks):
    record, stdout = two_ranks["record"], two_ranks["result"].stdout
    runs = {"teacher fine-tune": record["variants"]["fp32"]["training"]["teacher fine-tune"],
            "distillation": record["variants"]["distilled"]["training"]["distillation"]}
    assert runs["distillation"]["processes"] == 2 and runs["distillation"]["effective_batch_size"] == 2 * 16
    assert runs["teacher fine-tune"]["effective_batch_size"] == 2 * 32
    rank1 = {m["what"]: m for m in RANK1_LINE.finditer(stdout)}
    assert set(rank1) == set(runs)  # rank 1 trained both, and says where it stopped
    for what, run in runs.items():
        assert run["steps"] == run["planned_steps"] == int(rank1[what]["steps"]) == 60
        # the gradients were all-reduced: each rank saw its own shard, both hold the same weights
        assert rank1[what]["hash"] == run["weights_hash"]
    assert "distillation: 2 process(es) x batch 16 = effective batch 32, 60 steps" in stdout


def test_one_rank_at_the_time_cap_first_stops_every_rank_at_the_same_step(two_ranks, tmp_path):
    """Rank 1's clock runs 59.5 s ahead (the test hook): it reaches the 60 s cap at once, rank 0 would only after a
    minute. Both stop at the same step, after far less than a minute of rank 0's own time, and the run ends cleanly."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(two_ranks["artifacts"], artifacts)  # fp32 and the cached teacher: rank 0 reads, sends it over
    spec = spec_copy(tmp_path / "spec", {"distilled": {"train_steps": 1000000, "train_seconds": 60}})
    result = launch(spec, "distilled", artifacts, tmp_path / "repo", env={"BUILDER_TEST_RANK_CLOCK_OFFSET": "1:59.5"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    entry = json.loads((artifacts / "tinyblocks" / "record.json").read_text())["variants"]["distilled"]
    run = entry["training"]["distillation"]
    assert entry["training_cut_by_time_cap"] == ["distillation"] and run["stopped_by_time_cap"]
    assert 0 < run["steps"] < run["planned_steps"] and run["seconds"] < 60  # rank 0 stopped because rank 1 did
    rank1 = {m["what"]: m for m in RANK1_LINE.finditer(result.stdout)}
    assert int(rank1["distillation"]["steps"]) == run["steps"] and rank1["distillation"]["hash"] == run["weights_hash"]
    assert "CUT `distillation` SHORT" in result.stdout
    assert processes_naming(str(tmp_path)) == []


WORKER = """
import os, sys, numpy as np, torch, torch.distributed as dist
rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                  MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
torch.set_num_threads(1)
if world > 1:  # a file rendezvous: no port to pick
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
from builder.core.data import Split
from builder.core.spec import parse_spec
from builder.pipeline.train import TrainConfig, cross_entropy_loss, run_training
spec = parse_spec({"name": "p", "factory": "a:b", "data": "a:b",
                   "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}],
                   "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
                   "metric": {"output": "y"}}, where="test")
x = np.random.default_rng(0).normal(size=(96, 4)).astype(np.float32)
split = Split({"input": x}, (x[:, 0] > 0).astype(np.int64))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
model, facts = run_training(model, cross_entropy_loss(), split, spec,
                            TrainConfig(epochs=3, batch_size=int(sys.argv[5]), lr=0.05), progress=lambda _: None)
if rank == 0:
    np.savez(out, facts=np.array([facts["steps"], facts["effective_batch_size"]]),
             **{k: v.numpy() for k, v in model.state_dict().items()})
"""


def test_two_processes_with_batch_b_train_what_one_process_trains_with_batch_2b(tmp_path):
    """The same examples at every step (the shards of one batch of 2B) and averaged gradients: the same weights,
    up to float rounding. Without the gradient all-reduce, or with shards that overlap, they would differ."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    store = tmp_path / "store"
    runs = [[str(r), "2", str(store), str(tmp_path / "two.npz"), "8"] for r in (0, 1)]  # the two ranks
    runs += [["0", "1", str(store), str(tmp_path / "one.npz"), "16"],  # one process, twice the batch
             ["0", "1", str(store), str(tmp_path / "small.npz"), "8"]]  # what each rank would train alone
    started = [subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for args in runs]  # all at once: less waiting
    outputs = [p.communicate(timeout=240)[0] for p in started]
    assert [p.returncode for p in started] == [0] * 4, "\n".join(o[-2000:] for o in outputs)
    with np.load(tmp_path / "two.npz") as two, np.load(tmp_path / "one.npz") as one, \
            np.load(tmp_path / "small.npz") as small:
        assert two["facts"].tolist() == one["facts"].tolist() == [18, 16]  # 3 epochs of 96 in batches of 16
        weights = [k for k in one.files if k != "facts"]
        assert all(np.allclose(two[k], one[k], atol=1e-5) for k in weights)
        assert not all(np.allclose(two[k], small[k], atol=1e-3) for k in weights)  # the comparison can tell
