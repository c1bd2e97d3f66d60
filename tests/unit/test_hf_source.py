"""The pieces of `builder build --hf-model DIR --data FILE` that need no model: reading and checking data files,
the split of one file, the flags, and the spec's factory_args/data_args."""

import dataclasses

import numpy as np
import pytest

from builder.cli import main
from builder.commands.options import data_files
from builder.core.errors import ConfigError, DataError
from builder.core.spec import call_source, load_spec
from builder.pipeline.sources.files import read_rows
from builder.pipeline.sources.files import default_name
from builder.pipeline.sources.hf import read_examples
from tests.conftest import FIXTURES, TINY_SPEC

CLASSES = ["negative", "positive"]


def write(path, text):
    path.write_text(text)
    return path


def test_one_file_is_split_70_10_20_with_a_fixed_seed(tmp_path):
    rows = "".join(f"text {i},{CLASSES[i % 2]}\n" for i in range(50))
    path = write(tmp_path / "all.csv", "text,label\n" + rows)
    first = read_examples(str(path), "text", "label", CLASSES)
    assert {k: len(v[0]) for k, v in first.items()} == {"train": 35, "validation": 5, "test": 10}
    assert sorted(t for split in first.values() for t in split[0]) == sorted(f"text {i}" for i in range(50))
    again = read_examples(str(path), "text", "label", CLASSES)
    assert first["test"][0] == again["test"][0]  # the same split every time


def test_labels_are_class_names_or_indices_and_jsonl_reads(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"t": "a", "y": 1}\n\n{"t": "b", "y": "negative"}\n{"t": "c", "y": "1"}\n')
    files = {"train": str(path), "validation": str(path), "test": str(path)}
    texts, labels = read_examples(files, "t", "y", CLASSES)["test"]
    assert texts == ["a", "b", "c"] and labels.tolist() == [1, 0, 1] and labels.dtype == np.int64


def test_a_class_index_out_of_range_is_refused_with_its_line(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\na,1\nb,2\n")
    with pytest.raises(DataError, match=r"d\.csv, line 3: label `2` in column `label` is not one of the classes"):
        read_examples({"train": str(path), "validation": str(path), "test": str(path)}, "text", "label", CLASSES)


def test_too_few_rows_to_split(tmp_path):
    path = write(tmp_path / "d.csv", "text,label\na,1\nb,0\n")
    with pytest.raises(DataError, match="2 examples are too few"):
        read_examples(str(path), "text", "label", CLASSES)


@pytest.mark.parametrize("name, message", [("d.xlsx", "unknown data format `.xlsx`"),
                                           ("missing.csv", "no such file"), ("missing.parquet", "no such file")])
def test_unreadable_files(tmp_path, name, message):
    with pytest.raises(DataError, match=message):
        read_rows(tmp_path / name, "text", "label")


def test_a_file_without_examples(tmp_path):
    with pytest.raises(DataError, match="no examples"):
        read_rows(write(tmp_path / "d.csv", "text,label\n"), "text", "label")


def test_bad_data_fixtures_each_fail_on_their_line():
    for fixture in (FIXTURES / "bad_data").iterdir():
        with pytest.raises(DataError, match=rf"^{fixture}(, line \d+)?: "):
            read_examples({"train": str(fixture), "validation": str(fixture), "test": str(fixture)},
                          "text", "label", CLASSES)


def test_data_flags():
    assert data_files(["all.csv"]) == "all.csv"
    assert data_files(["train=a.csv", "validation=b.csv", "test=c.csv"]) == {
        "train": "a.csv", "validation": "b.csv", "test": "c.csv"}
    with pytest.raises(ConfigError):
        data_files(["a.csv", "b.csv"])
    with pytest.raises(ConfigError):
        read_examples({"train": "a.csv"}, "text", "label", CLASSES)


def test_hf_flags_are_never_silently_ignored(capsys):
    assert main(["build", "--model", "digits", "--data", "x.csv"]) == 2
    assert "error: --data apply only with --hf-model, --onnx-model or --torch-program" in capsys.readouterr().err
    assert main(["build", "--hf-model", "dir", "--config", "x.yaml"]) == 2
    assert "name one model: --model, --config, --hf-model, --onnx-model or --torch-program" in capsys.readouterr().err


def test_a_directory_without_config_json_is_refused(tmp_path, capsys):
    assert main(["build", "--hf-model", str(tmp_path), "--data", "x.csv", "--artifacts", str(tmp_path / "a")]) == 2
    assert "not a Hugging Face Transformers directory (no config.json)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_default_name_is_a_served_name():
    assert default_name("/models/My BERT (v2)") == "my_bert_v2"
    assert default_name("/models/cnn.v2.onnx") == "cnn.v2"


def test_source_args_are_checked_against_the_function(tmp_path):
    spec = dataclasses.replace(load_spec(TINY_SPEC), data_args={"colour": "red"})
    with pytest.raises(ConfigError, match=r"tiny\.yaml: data_args do not fit `tiny_model:load_data`"):
        call_source(spec, "data", tmp_path)


def test_source_args_must_be_a_mapping(tmp_path):
    text = (FIXTURES / "tiny" / "tiny.yaml").read_text() + "\nfactory_args: [1, 2]\n"
    with pytest.raises(ConfigError, match="factory_args must map argument names to values"):
        load_spec(write(tmp_path / "tiny.yaml", text))


def write_parquet(path, columns: dict):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_reads_as_csv_does_and_a_bad_row_is_named_by_its_row(tmp_path):
    texts = [f"text {i}" for i in range(20)]
    labels = [CLASSES[i % 2] for i in range(20)]
    parquet = write_parquet(tmp_path / "d.parquet", {"review": texts, "y": labels, "unused": list(range(20))})
    csv_file = write(tmp_path / "d.csv", "review,y\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels)))
    from_parquet = read_examples(str(parquet), "review", "y", CLASSES)
    from_csv = read_examples(str(csv_file), "review", "y", CLASSES)
    for split in from_csv:
        assert from_parquet[split][0] == from_csv[split][0]
        assert from_parquet[split][1].tolist() == from_csv[split][1].tolist()
    broken = write_parquet(tmp_path / "b.parquet", {"review": ["a", "b", ""], "y": ["negative", "positive", "negative"]})
    with pytest.raises(DataError, match=r"b\.parquet, row 3: empty text in column `review`"):
        read_rows(broken, "review", "y")
    wrong = write_parquet(tmp_path / "w.parquet", {"review": ["a", "b"], "y": ["negative", "neutral"]})
    with pytest.raises(DataError, match=r"w\.parquet, row 2: label `neutral` in column `y` is not one of"):
        read_examples({"train": str(wrong), "validation": str(wrong), "test": str(wrong)}, "review", "y", CLASSES)
    with pytest.raises(DataError, match=r"d\.parquet: no column `text` \(columns: review, y, unused\)"):
        read_rows(parquet, "text", "y")
    with pytest.raises(DataError, match=r"junk\.parquet: not readable as Parquet"):
        read_rows(write(tmp_path / "junk.parquet", "not parquet"), "review", "y")
