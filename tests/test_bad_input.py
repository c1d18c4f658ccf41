"""Unusable settings, corpora and models are refused before any work, with a message naming the
problem, exit code 2 and nothing published."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch.cli import main
from albert_batch.dev.local_ray import free_port
from support import write_corpus


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    write_corpus(folder / "part-0.parquet", [1, 2], ["hello there", "general Kenobi"])
    return folder


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["run", "-q", *args])
    return code, capsys.readouterr().err


def base_args(tmp_path: Path, models: dict[str, str], input_path: Path | str) -> list[str]:
    return ["--input", str(input_path), "--output", str(tmp_path / "output"),
            "--classifier-model", models["classifier"], "--ner-model", models["ner"]]


def test_a_missing_text_column_lists_the_available_columns(tmp_path, tiny_models, corpus, capsys):
    code, err = run_cli(capsys, *base_args(tmp_path, tiny_models, corpus), "--text-column", "body")
    assert code == 2
    assert "no text column 'body'" in err and "available columns: id, text, extra" in err
    assert not (tmp_path / "output").exists()


def test_a_missing_id_column_is_refused(tmp_path, tiny_models, corpus, capsys):
    code, err = run_cli(capsys, *base_args(tmp_path, tiny_models, corpus), "--id-column", "doc")
    assert code == 2 and "no id column 'doc'" in err and "available columns" in err


def test_a_text_column_that_is_not_text_is_refused(tmp_path, tiny_models, capsys):
    (tmp_path / "input").mkdir()
    pq.write_table(pa.table({"id": [1], "text": [42]}), tmp_path / "input/x.parquet")
    code, err = run_cli(capsys, *base_args(tmp_path, tiny_models, tmp_path / "input"))
    assert code == 2 and "text column 'text' (int64)" in err and "not a string column" in err


def test_an_unreadable_parquet_file_is_named_and_nothing_is_published(tmp_path, tiny_models, corpus, capsys):
    (corpus / "part-1.parquet").write_bytes(b"PAR1 this is not parquet at all")
    code, err = run_cli(capsys, *base_args(tmp_path, tiny_models, corpus))
    assert code == 2
    assert f"cannot read Parquet file {corpus / 'part-1.parquet'}" in err
    assert not (tmp_path / "output").exists()


def test_hidden_and_underscore_files_are_not_input(tmp_path, tiny_models, corpus, capsys):
    from albert_batch.pipeline.inputs import plan_input
    from albert_batch.storage import Location

    (corpus / "_SUCCESS").write_bytes(b"")
    (corpus / ".part-9.parquet.crc").write_bytes(b"junk")
    (corpus / "_staging").mkdir()
    (corpus / "_staging/junk.parquet").write_bytes(b"junk")
    plan = plan_input(Location.parse(str(corpus)), id_column="id", text_column="text")
    assert [Path(f.path).name for f in plan.files] == ["part-0.parquet"] and plan.num_rows == 2


@pytest.mark.parametrize("output", ["{input}", "{input}/results", "file://{input}/results/"])
def test_output_at_or_inside_the_input_is_refused(tmp_path, tiny_models, corpus, capsys, output):
    args = base_args(tmp_path, tiny_models, corpus)
    args[args.index("--output") + 1] = output.format(input=corpus)
    code, err = run_cli(capsys, *args)
    assert code == 2 and "is the input location or inside it" in err


def test_an_empty_or_missing_input_is_refused(tmp_path, tiny_models, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, *base_args(tmp_path, tiny_models, tmp_path / "empty"))
    assert code == 2 and "holds no Parquet files" in err
    code, err = run_cli(capsys, *base_args(tmp_path, tiny_models, tmp_path / "nope"))
    assert code == 2 and "does not exist" in err


def copy_model(source: str, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_a_model_folder_without_weights_says_what_is_missing(tmp_path, tiny_models, corpus, capsys):
    broken = copy_model(tiny_models["classifier"], tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    args = base_args(tmp_path, tiny_models, corpus)
    args[args.index("--classifier-model") + 1] = str(broken)
    code, err = run_cli(capsys, *args)
    assert code == 2 and f"model {broken} has no weights: expected model.safetensors" in err


def test_pickle_weights_are_refused_without_an_explicit_opt_in(tmp_path, tiny_models, corpus, capsys):
    pickled = copy_model(tiny_models["classifier"], tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    args = base_args(tmp_path, tiny_models, corpus)
    args[args.index("--classifier-model") + 1] = str(pickled)
    code, err = run_cli(capsys, *args)
    assert code == 2 and "only pickle weights (pytorch_model.bin)" in err


def test_a_model_of_another_architecture_or_head_is_refused(tmp_path, tiny_models, corpus, capsys):
    bert = copy_model(tiny_models["classifier"], tmp_path / "bert")
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    args = base_args(tmp_path, tiny_models, corpus)
    args[args.index("--classifier-model") + 1] = str(bert)
    code, err = run_cli(capsys, *args)
    assert code == 2 and "is of type 'bert'" in err

    args = base_args(tmp_path, tiny_models, corpus)
    args[args.index("--classifier-model") + 1] = tiny_models["ner"]  # a token-classification head
    code, err = run_cli(capsys, *args)
    assert code == 2 and "AlbertForTokenClassification; the classify task needs AlbertForSequenceClassification" in err


def test_a_missing_model_folder_is_named(tmp_path, tiny_models, corpus, capsys):
    args = base_args(tmp_path, tiny_models, corpus)
    args[args.index("--ner-model") + 1] = str(tmp_path / "no-such-model")
    code, err = run_cli(capsys, *args)
    assert code == 2 and f"model folder {tmp_path / 'no-such-model'} does not exist" in err


def test_a_ray_cluster_that_cannot_be_reached_is_named_in_one_line_with_a_retryable_exit_code(
        tmp_path, tiny_models, corpus):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "albert_batch.cli", "run", "-q",
                             *base_args(tmp_path, tiny_models, corpus), "--ray-address", address],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"cannot start or join the Ray cluster at {address}: ConnectionError: nothing answers at {address}" in result.stderr
    assert "Traceback" not in result.stderr


def test_model_actors_that_no_node_can_host_are_refused_before_any_work(tmp_path, tiny_models, corpus, ray_cluster,
                                                                         capsys):
    """On a cluster without an autoscaler, a model actor that no node can host would wait forever: the run
    is refused at once, naming what the actor needs and what the nodes offer."""
    code, err = run_cli(capsys, *base_args(tmp_path, tiny_models, corpus), "--model-actor-resources", "nosuch=1")
    assert code == 2, err
    assert "no node of the cluster can host a model actor, which needs {'nosuch': 1.0}, and no autoscaler" in err
    assert "'nosuch': 1.0}, and no autoscaler can add one (the largest node offers {'CPU': 2.0})" in err
    assert not (tmp_path / "output" / "classifications").exists()
