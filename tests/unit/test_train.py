import numpy as np
import pytest
import torch

from builder.core.data import Split
from builder.core.errors import ConfigError, VariantError
from builder.core.spec import parse_spec
from builder.pipeline.train import TrainConfig, cross_entropy_loss, train, train_config
from builder.pipeline.variants import svd

SPEC_RAW = {"name": "t", "factory": "a:b", "data": "a:b",
            "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 4]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
            "metric": {"output": "logits"}}
SPEC = parse_spec({**SPEC_RAW, "training": {"max_seconds": 30}}, where="test")
SPLIT = Split({"input": np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)},
              np.random.default_rng(1).integers(0, 2, 64))


def test_training_learns_with_the_deepspeed_engine():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    labels = (SPLIT.inputs["input"][:, 0] > 0).astype(np.int64)
    split = Split(SPLIT.inputs, labels)
    before = (model(torch.from_numpy(split.inputs["input"])).argmax(1).numpy() == labels).mean()
    trained = train(model, cross_entropy_loss(), split, SPEC, TrainConfig(epochs=20, batch_size=16, lr=0.05),
                    progress=lambda _: None)
    after = (trained(torch.from_numpy(split.inputs["input"])).argmax(1).numpy() == labels).mean()
    assert after > max(before, 0.9)


def test_a_nan_loss_stops_training_with_a_clear_error():
    def nan_loss(model, inputs, labels):
        return model(**inputs).sum() * float("nan")

    with pytest.raises(VariantError, match="training diverged") as info:
        train(torch.nn.Linear(4, 2), nan_loss, SPLIT, SPEC, TrainConfig(), progress=lambda _: None, what="fine-tune")
    assert "learning rate" in info.value.hint


def test_swa_averages_the_last_epochs():
    torch.manual_seed(0)
    plain = train(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC, TrainConfig(epochs=3, lr=0.05),
                  progress=lambda _: None)
    messages = []
    torch.manual_seed(0)
    averaged = train(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC,
                     TrainConfig(epochs=3, swa_epochs=2, lr=0.05), progress=messages.append)
    assert "weights averaged over 2 epochs" in messages[-1]
    # same seed, same steps: only the averaging of epochs 2 and 3 makes the weights differ
    assert not torch.allclose(plain.weight, averaged.weight)
    assert torch.isfinite(averaged.weight).all()


def test_training_options_are_checked():
    assert train_config(SPEC, {"lr": 0.5}).lr == 0.5 and train_config(SPEC).max_seconds == 30
    with pytest.raises(ConfigError):
        train_config(SPEC, {"lr": -1.0})
    with pytest.raises(ConfigError, match="did you mean|unknown"):
        train_config(SPEC, {"epoch": 2})


@pytest.mark.parametrize("variant, options", [("pruned", {"ratio": 1.5}), ("pruned", {"ratio": 0.0}),
                                              ("svd", {"rank_ratio": 1.2}), ("svd", {"energy": 0.0}),
                                              ("distilled", {"temperature": 0})])
def test_out_of_range_settings_are_rejected_when_the_config_is_made(variant, options):
    from builder.pipeline.variants import steps

    with pytest.raises(VariantError):
        steps(variant)[0].config({variant: options})


def test_svd_factorisation_keeps_the_best_rank_k_approximation():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 80)
    factored = svd.factor(linear, 16)
    assert factored[0].weight.shape == (16, 96) and factored[1].weight.shape == (80, 16)
    product = factored[1].weight @ factored[0].weight
    u, s, vh = torch.linalg.svd(linear.weight.data)
    best = (u[:, :16] * s[:16]) @ vh[:16]
    assert torch.allclose(product, best, atol=1e-5)
    assert svd.choose_rank(s, 80, 96, svd.Config(rank_ratio=0.5)) == int(0.5 * 80 * 96 / 176)


class CountingTeacher(torch.nn.Module):
    """A masked mean-pooling 'encoder': its output for an example does not depend on the batch's padding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(20, 3)
        self.rows = 0

    def forward(self, ids, mask):
        self.rows += len(ids)
        vectors = self.embedding(ids) * mask[..., None]
        return vectors.sum(1) / mask.sum(1, keepdim=True)


def test_the_teacher_runs_once_per_example_whatever_the_padding():
    from builder.pipeline.train import TeacherCache

    teacher = CountingTeacher().eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [4, 0, 0, 0]])
    mask = (ids > 0).long()
    cache = TeacherCache(teacher)
    first = cache({"ids": ids, "mask": mask})[0]
    assert teacher.rows == 3
    # the same examples again, reordered and with the padding of another batch: no new teacher work
    again = TeacherCache(teacher)({"ids": ids[[2, 0], :3], "mask": mask[[2, 0], :3]})[0]
    assert teacher.rows == 3
    assert torch.allclose(again, first[[2, 0]])
    # a new example runs alone; a teacher with other weights has its own cache
    TeacherCache(teacher)({"ids": torch.tensor([[3, 3, 0]]), "mask": torch.tensor([[1, 1, 0]])})
    assert teacher.rows == 4
    other = CountingTeacher().eval()
    with torch.no_grad():
        other.embedding.weight.add_(1.0)
    assert not torch.allclose(TeacherCache(other)({"ids": ids, "mask": mask})[0], first)
    assert other.rows == 3
    # what the cache gives is what the teacher computes
    with torch.no_grad():
        recomputed = teacher(ids=ids, mask=mask)
    assert torch.allclose(first, recomputed[0] if isinstance(recomputed, tuple) else recomputed)


def test_shift_images_moves_image_inputs_only():
    from builder.pipeline.train import shift_images

    image = np.zeros((2, 1, 5, 5), np.float32)
    image[:, 0, 2, 2] = 1.0
    ids = np.arange(6).reshape(2, 3)
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(40):
        out = shift_images(2)({"image": image, "ids": ids}, rng)
        assert out["image"].shape == image.shape and out["image"].sum() == 2.0  # a centred pixel never falls off
        assert out["ids"] is ids
        y, x = np.argwhere(out["image"][0, 0])[0]
        assert abs(y - 2) <= 2 and abs(x - 2) <= 2
        seen.add((y, x))
    assert len(seen) > 5


def test_per_example_shifts_move_each_image_on_its_own():
    from builder.pipeline.train import shift_images

    image = np.zeros((64, 1, 5, 5), np.float32)
    image[:, 0, 2, 2] = 1.0
    out = shift_images(2, per_example=True)({"image": image}, np.random.default_rng(0))["image"]
    assert out.shape == image.shape and out.sum() == 64.0
    places = {tuple(np.argwhere(one[0])[0]) for one in out}
    assert len(places) > 5 and all(abs(y - 2) <= 2 and abs(x - 2) <= 2 for y, x in places)


def test_cosine_schedule_trains_and_unknown_schedules_are_refused():
    torch.manual_seed(0)
    labels = (SPLIT.inputs["input"][:, 0] > 0).astype(np.int64)
    split = Split(SPLIT.inputs, labels)
    model = train(torch.nn.Linear(4, 2), cross_entropy_loss(), split, SPEC,
                  TrainConfig(epochs=20, batch_size=16, lr=0.1, schedule="cosine"), progress=lambda _: None)
    assert (model(torch.from_numpy(split.inputs["input"])).argmax(1).numpy() == labels).mean() > 0.9
    with pytest.raises(ConfigError, match="schedule"):
        train_config(SPEC, {"schedule": "linear"})


def test_a_budget_in_steps_runs_exactly_that_many_steps_across_epochs():
    from builder.pipeline.train import run_training

    # 64 examples in batches of 16: 4 steps per epoch, so 7 steps run into a second epoch
    _, facts = run_training(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC,
                            TrainConfig(steps=7, batch_size=16), progress=lambda _: None)
    assert (facts["steps"], facts["planned_steps"], facts["epochs"]) == (7, 7, 1.75)
    assert facts["stopped_by_time_cap"] is False
    _, facts = run_training(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC,
                            TrainConfig(epochs=3, batch_size=16), progress=lambda _: None)
    assert (facts["steps"], facts["planned_steps"]) == (12, 12)


def test_the_time_cap_stops_a_run_and_says_so():
    from builder.pipeline.train import run_training

    messages = []
    _, facts = run_training(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC,
                            TrainConfig(steps=50, batch_size=16, max_seconds=1e-6), progress=messages.append)
    assert facts["stopped_by_time_cap"] is True and facts["steps"] == 1 and facts["planned_steps"] == 50
    assert "CUT SHORT by the" in messages[-1]


class DropoutNet(torch.nn.Module):
    """Randomness inside training too (dropout draws from torch's generator)."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(4, 16)
        self.dropout = torch.nn.Dropout(0.3)
        self.out = torch.nn.Linear(16, 2)

    def forward(self, input):
        return self.out(self.dropout(torch.relu(self.hidden(input))))


def test_the_same_training_twice_gives_identical_weights_whatever_ran_before():
    def once(disturb: bool):
        torch.manual_seed(0)
        model = DropoutNet()
        if disturb:  # another variant trained earlier in the same process draws from the global generators
            torch.rand(100), np.random.rand(100)
        return train(model, cross_entropy_loss(), SPLIT, SPEC, TrainConfig(steps=10, batch_size=8, lr=0.05),
                     progress=lambda _: None).state_dict()

    first, second = once(False), once(True)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = train(DropoutNet(), cross_entropy_loss(), SPLIT, SPEC, TrainConfig(steps=10, batch_size=8, lr=0.05, seed=1),
                  progress=lambda _: None).state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed really decides


def test_length_grouped_batches_cover_every_example_once_with_little_padding():
    from builder.pipeline.train import epoch_batches

    lengths = np.random.default_rng(0).integers(1, 100, size=1000)
    batches = epoch_batches(np.random.default_rng(1), 1000, 1000, 10, lengths)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    grouped = np.mean([lengths[b].max() * len(b) / lengths[b].sum() for b in batches])
    plain = np.mean([lengths[b].max() * len(b) / lengths[b].sum()
                     for b in epoch_batches(np.random.default_rng(1), 1000, 1000, 10)])
    assert grouped < 1.2 < plain  # computed positions per real token
    # not simply sorted: consecutive batches come from anywhere in the length range
    assert np.corrcoef(np.arange(len(batches)), [lengths[b].mean() for b in batches])[0, 1] < 0.5


def test_training_overrides_replace_the_spec_budget_as_a_whole():
    from builder.pipeline.train import TrainingOverrides

    spec = parse_spec({**SPEC_RAW, "training": {"steps": 100, "lr": 0.01, "max_seconds": 30}}, where="test")
    assert train_config(spec).steps == 100
    by_epochs = train_config(spec, TrainingOverrides(train_epochs=2))
    assert (by_epochs.epochs, by_epochs.steps, by_epochs.lr) == (2, None, 0.01)
    capped = train_config(spec, TrainingOverrides(train_steps=5, train_lr=0.1, train_seconds=9))
    assert (capped.steps, capped.lr, capped.max_seconds) == (5, 0.1, 9)
    assert capped.schedule == "constant" and train_config(spec, TrainingOverrides(train_schedule="cosine")).schedule == "cosine"


def test_a_bad_schedule_is_refused_when_the_config_is_made():
    from builder.pipeline.variants import steps

    with pytest.raises(VariantError, match="train_schedule must be `constant` or `cosine`"):
        steps("reparam")[0].config({"reparam": {"train_schedule": "linear"}})


@pytest.mark.parametrize("options", [{"train_steps": 0}, {"train_epochs": 1.5}, {"train_lr": -1}, {"train_seconds": 0},
                                     {"train_threads": 0}])
def test_bad_budgets_are_refused_when_the_config_is_made(options):
    from builder.pipeline.variants import steps

    with pytest.raises(VariantError, match="must be a positive"):
        steps("pruned")[0].config({"pruned": options})


def test_a_misspelt_budget_suggests_the_right_one():
    from builder.pipeline.variants import steps

    with pytest.raises(VariantError) as info:
        steps("distilled")[0].config({"distilled": {"train_step": 5}})
    assert "did you mean `train_steps`" in info.value.hint


def test_shards_of_a_step_are_disjoint_and_together_the_batch_of_one_process_with_twice_the_batch():
    from builder.pipeline.train import epoch_batches

    for lengths in (None, np.random.default_rng(0).integers(1, 60, size=1000)):
        ranks = [epoch_batches(np.random.default_rng(3), 1000, 1000, 10, lengths, rank, 2) for rank in (0, 1)]
        alone = epoch_batches(np.random.default_rng(3), 1000, 1000, 20, lengths)
        assert len(ranks[0]) == len(ranks[1]) == len(alone) == 50  # every rank has a batch at every step
        for a, b, whole in zip(*ranks, alone):
            assert len(a) == len(b) == 10 and not set(a) & set(b)
            assert sorted(np.concatenate([a, b]).tolist()) == sorted(whole.tolist())
        assert sorted(np.concatenate(ranks[0] + ranks[1]).tolist()) == list(range(1000))  # the epoch, once
        again = epoch_batches(np.random.default_rng(3), 1000, 1000, 10, lengths, 1, 2)
        assert all(np.array_equal(x, y) for x, y in zip(again, ranks[1]))  # from the seed alone, no messages


def test_an_epoch_that_does_not_divide_among_the_ranks_repeats_its_first_examples():
    from builder.pipeline.train import epoch_batches

    ranks = [epoch_batches(np.random.default_rng(0), 7, 7, 2, None, rank, 3) for rank in range(3)]
    sizes = [[len(b) for b in r] for r in ranks]
    assert sizes[0] == sizes[1] == sizes[2] == [2, 1]  # 7 padded to 9: 6 and 3 per step, dealt out evenly
    seen = np.concatenate([b for r in ranks for b in r])
    assert set(seen.tolist()) == set(range(7)) and len(seen) == 9


def test_alone_the_agreement_helpers_are_plain_calls(monkeypatch):
    from builder.pipeline import processes

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert processes.world_size() == 1 and processes.is_main() and not processes.several()
    assert processes.decide(lambda: 42) == 42 and processes.gather("x") == ["x"]
    assert processes.any_rank([True, False]) == [True, False]
    assert processes.main_first(lambda: "done") == "done"
    monkeypatch.setenv(processes.CLOCK_OFFSET_ENV, "1:5.5")
    assert processes.clock_offset() == 0.0  # the hook names rank 1; this is rank 0
    monkeypatch.setenv("RANK", "1")
    assert processes.clock_offset() == 5.5


def test_the_steps_of_an_epoch_follow_the_processes():
    config = TrainConfig(epochs=2, batch_size=16)
    assert config.planned_steps(100) == 2 * 7 and config.planned_steps(100, world=2) == 2 * 4
    assert TrainConfig(steps=30, batch_size=16).planned_steps(100, world=4) == 30  # a budget in steps stays


def test_the_scaling_benchmark_spec_is_the_digits_model_with_its_student_budget_in_steps():
    from builder.core.spec import load_spec
    from tests.conftest import ROOT

    bench = load_spec(ROOT / "builder" / "pipeline" / "sources" / "digits_steps.yaml")
    digits = load_spec(ROOT / "builder" / "pipeline" / "sources" / "digits.yaml")
    assert (bench.factory, bench.data, bench.inputs, bench.outputs) == (digits.factory, digits.data, digits.inputs,
                                                                        digits.outputs)
    assert bench.variants["distilled"]["train_steps"] == 200  # steps, so 1 and N processes run the same count


def test_training_runs_at_the_configured_thread_count_and_restores_it():
    from builder.pipeline.train import TrainingOverrides, run_training

    seen, before = [], torch.get_num_threads()
    loss = cross_entropy_loss()

    def counting(model, inputs, labels):
        seen.append(torch.get_num_threads())
        return loss(model, inputs, labels)

    config = train_config(SPEC, TrainingOverrides(train_steps=3, train_threads=1))
    _, facts = run_training(torch.nn.Linear(4, 2), counting, SPLIT, SPEC, config, progress=lambda _: None)
    assert seen == [1, 1, 1] and facts["threads"] == 1 and torch.get_num_threads() == before
    _, facts = run_training(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC, TrainConfig(steps=1),
                            progress=lambda _: None)
    assert facts["threads"] == before  # torch's default, recorded
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        TrainConfig(threads=0).check()


def test_a_model_placed_on_a_gpu_is_refused_in_one_line(monkeypatch):
    """A CUDA build of torch would make DeepSpeed put the model on a GPU while batches stay on the CPU."""
    import deepspeed

    real = deepspeed.initialize

    def on_gpu(**kwargs):
        engine, *rest = real(**kwargs)
        engine.device = torch.device("cuda", 0)
        return (engine, *rest)

    monkeypatch.setattr(deepspeed, "initialize", on_gpu)
    with pytest.raises(VariantError, match="placed the model on cuda:0") as info:
        train(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC, TrainConfig(steps=1), progress=lambda _: None)
    assert "CPU build of torch" in info.value.hint


def test_checkpoint_selection_keeps_the_best_validation_step():
    from builder.pipeline.train import run_training

    # scripted validation scores: the best is the second checkpoint (step 4 of 10, every 2 steps)
    scripted = iter([0.50, 0.90, 0.70, 0.60, 0.80])
    weights_at = {}

    def validate(model):
        assert not model.training
        step = (len(weights_at) + 1) * 2
        weights_at[step] = model.weight.detach().clone()
        return next(scripted)

    messages = []
    model, facts = run_training(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC,
                                TrainConfig(steps=10, batch_size=16, lr=0.1, select_every=2),
                                progress=messages.append, validate=validate)
    assert facts["selected_step"] == 4 and list(facts["validation_by_step"]) == ["2", "4", "6", "8", "10"]
    assert torch.equal(model.weight, weights_at[4]) and not torch.equal(weights_at[4], weights_at[10])
    assert any("kept the checkpoint of step 4" in m for m in messages)
    assert not model.training


def test_checkpoint_selection_needs_a_validation_score_and_excludes_weight_averaging():
    from builder.pipeline.train import run_training

    with pytest.raises(VariantError, match="select_every needs a validation score"):
        run_training(torch.nn.Linear(4, 2), cross_entropy_loss(), SPLIT, SPEC,
                     TrainConfig(steps=2, batch_size=16, select_every=1), progress=lambda _: None)
    with pytest.raises(ConfigError, match="select_every"):
        train_config(SPEC, {"epochs": 2, "swa_epochs": 1, "select_every": 3})


def test_a_checkpoint_is_scored_by_accuracy_agreement_with_the_teacher_or_both():
    from types import SimpleNamespace

    from builder.pipeline.train import TrainingOverrides, checkpoint_score

    # the teacher answers class 0 everywhere; the labels are SPLIT's random ones
    teacher = torch.nn.Linear(4, 2)
    with torch.no_grad():
        teacher.weight.zero_()
        teacher.bias.copy_(torch.tensor([1.0, 0.0]))
    student = torch.nn.Linear(4, 2)
    context = SimpleNamespace(spec=SPEC, splits={SPEC.validation_split: SPLIT}, teacher=teacher)
    predictions = student(torch.from_numpy(SPLIT.inputs["input"])).argmax(1).numpy()
    accuracy = float((predictions == SPLIT.labels).mean())
    agreement = float((predictions == 0).mean())
    assert checkpoint_score(context, "accuracy")(student) == pytest.approx(accuracy)
    assert checkpoint_score(context, "agreement")(student) == pytest.approx(agreement)
    assert checkpoint_score(context, "both")(student) == pytest.approx((accuracy + agreement) / 2)
    assert checkpoint_score(context, "agreement")(teacher) == 1.0
    with pytest.raises(VariantError, match="needs a teacher"):
        checkpoint_score(SimpleNamespace(spec=SPEC, splits={SPEC.validation_split: SPLIT}, teacher=None), "both")
    assert train_config(SPEC, TrainingOverrides(train_select_by="both")).select_by == "both"
    with pytest.raises(ConfigError, match="select_by must be one of"):
        train_config(SPEC, {"select_by": "loss"})
