"""Length buckets (spec `length_buckets`, builder/core/artifacts.py) and the load generator's CPU figures (loadtests/run.py),
without a server."""

import json
import os

import numpy as np
import pytest

from builder.core.errors import ConfigError
from builder.pipeline.models import resolve_spec
from builder.core.spec import length_buckets, parse_spec
from builder.core.artifacts import bucket_for, fit_tokens, length_buckets as recorded_buckets, request_batches, text_inputs
from loadtests.run import GeneratorCpu, process_schedstat


def minilm_raw(**extra) -> dict:
    spec = resolve_spec("minilm")
    raw = {"name": "m", "factory": "a:b", "data": "a:c", "metric": {"name": "accuracy", "output": "logits"},
           "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.inputs],
           "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.outputs],
           "example_sizes": {"seq": 32}, "sequence_mask": "attention_mask"}
    return raw | extra


@pytest.mark.parametrize("maximum,expected", [(256, (16, 32, 64, 128, 256)), (512, (16, 32, 64, 128, 256, 512)),
                                              (100, (16, 32, 64, 100)), (8, (8,)), (16, (16,))])
def test_default_buckets_are_powers_of_two_from_16_up_to_the_maximum(maximum, expected):
    assert length_buckets(resolve_spec("minilm"), maximum) == expected


def test_buckets_from_the_spec_end_at_the_maximum():
    spec = parse_spec(minilm_raw(length_buckets=[24, 48, 96, 400]), where="t.yaml")
    assert spec.length_buckets == (24, 48, 96, 400)
    assert length_buckets(spec, 256) == (24, 48, 96, 256)


@pytest.mark.parametrize("bad", [[32, 16], [16, 16], [0, 16], ["16"], 16])
def test_bad_buckets_are_refused_with_the_field_named(bad):
    with pytest.raises(ConfigError, match="length_buckets must be increasing positive integers"):
        parse_spec(minilm_raw(length_buckets=bad), where="t.yaml")


def test_buckets_need_a_sequence_mask():
    raw = minilm_raw(length_buckets=[16])
    del raw["sequence_mask"]
    with pytest.raises(ConfigError, match="length_buckets needs a sequence_mask"):
        parse_spec(raw, where="t.yaml")


def test_bucket_for_and_fit_tokens():
    assert [bucket_for(n, (16, 32, 256)) for n in (1, 16, 17, 200, 300)] == [16, 16, 32, 256, 300]
    assert bucket_for(7, ()) == 7
    ids = np.array([[5, 6, 7]], dtype=np.int64)
    assert fit_tokens(ids, 5).tolist() == [[5, 6, 7, 0, 0]] and fit_tokens(ids, 2).tolist() == [[5, 6]]
    assert fit_tokens(ids, 5).flags["C_CONTIGUOUS"] and fit_tokens(np.zeros((2, 9), np.int64)[:, ::2], 3).flags[
        "C_CONTIGUOUS"]


@pytest.fixture
def text_folder(tmp_path):
    """A model folder as the builder writes it: a length-sorted test split padded to its longest text, a record."""
    rng = np.random.default_rng(0)
    lengths = np.sort(rng.integers(1, 60, size=200))
    mask = (np.arange(60)[None, :] < lengths[:, None]).astype(np.int64)
    ids = (rng.integers(5, 100, size=mask.shape) * mask).astype(np.int64)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "test.npz", **{"input.input_ids": ids, "input.attention_mask": mask},
             labels=np.zeros(200, np.int64))
    (tmp_path / "record.json").write_text(json.dumps({"variants": {"fp32": {"length_buckets": [16, 32, 64]}}}))
    return tmp_path


def test_requests_are_padded_to_the_recorded_buckets_and_mix_lengths(text_folder):
    assert recorded_buckets(text_folder) == (16, 32, 64)
    padded = request_batches(text_folder, count=50)
    widths = [r["input_ids"].shape[1] for r in padded]
    assert set(widths) == {16, 32, 64}  # spread over the whole (length-sorted) split, not its 50 shortest texts
    assert widths != sorted(widths)  # and mixed in time
    for request in padded:
        real = int(request["attention_mask"].sum())
        assert bucket_for(real, (16, 32, 64)) == request["input_ids"].shape[1]
        assert not request["input_ids"][0, real:].any() and request["attention_mask"][0, :real].all()
    unpadded = request_batches(text_folder, count=50, buckets=())
    assert [int(r["attention_mask"].sum()) for r in unpadded] == [r["input_ids"].shape[1] for r in unpadded]
    assert all(r["input_ids"].shape[1] == 20 for r in request_batches(text_folder, tokens=20))  # --tokens: exact


def test_a_record_without_buckets_sends_texts_unpadded(text_folder):
    (text_folder / "record.json").write_text(json.dumps({"variants": {"fp32": {}}}))
    assert recorded_buckets(text_folder) == ()
    assert all(int(r["attention_mask"].sum()) == r["input_ids"].shape[1] for r in request_batches(text_folder))


def test_text_inputs_pad_to_the_bucket(tmp_path):
    from builder.pipeline.sources.minilm import tokenizer

    tokenizer().save(str(tmp_path / "tokenizer.json"))
    inputs = text_inputs(tmp_path, "a gripping film", buckets=(16, 32))
    assert inputs["input_ids"].shape == (1, 16) and int(inputs["attention_mask"].sum()) == 5
    assert text_inputs(tmp_path, "a gripping film", buckets=())["input_ids"].shape == (1, 5)


def test_generator_cpu_is_taken_over_locusts_window_only():
    cpu = GeneratorCpu()
    # two processes: one busy (0.95 core used), one idle; a start-up burst before the window must not count
    cpu.samples = [(t, [(5.0 + (0.95 * (t - 10) if t >= 10 else 0.0), 0.5), (1.0, 0.0)]) for t in
                   np.arange(8.0, 20.0, 0.25)]
    cpu.samples[0] = (8.0, [(0.0, 0.0), (0.0, 0.0)])
    figures = cpu.figures(10.0, 19.0)
    assert figures["processes"] == 2 and figures["max_process_cpu"] == pytest.approx(0.95, abs=1e-3)
    assert figures["cpu_cores"] == pytest.approx(0.95, abs=1e-3) and figures["window_s"] == 9.0
    assert cpu.figures(30.0, 40.0) == {}  # nothing sampled in that window


def test_schedstat_of_a_live_process_and_of_none():
    run, wait = process_schedstat(os.getpid())
    assert run > 0 and wait >= 0
    assert process_schedstat(2 ** 22 + 12345) is None


def test_each_bucket_has_its_own_priority_level():
    from builder.serving.tritonconfig import ServingConfig, build_config, parse_text, to_text
    from builder.core.artifacts import bucket_priority

    spec = resolve_spec("minilm")
    config = parse_text(to_text(build_config("minilm_fp32", spec, ServingConfig(), length_buckets=5)), where="t")
    assert config.dynamic_batching.priority_levels == 5 and config.dynamic_batching.default_priority_level == 5
    plain = parse_text(to_text(build_config("digits_fp32", resolve_spec("digits"), ServingConfig())), where="t")
    assert plain.dynamic_batching.priority_levels == 0
    buckets = (16, 32, 64)
    mask = np.ones((1, 32), np.int64)
    assert bucket_priority({"attention_mask": mask}, buckets) == 2
    assert bucket_priority({"attention_mask": mask[:, :20]}, buckets) == 0  # not a bucket: the default level
    assert bucket_priority({"image": np.zeros((1, 28))}, buckets) == 0
