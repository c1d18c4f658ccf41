"""Settings are validated up front; YAML files and flags build the same RunConfig, flags winning."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest

from albert_batch import ConfigError, Precision, RunConfig, Task
from albert_batch.cli import build_parser, config_from_args
from albert_batch.config import ActorRange
from albert_batch.storage import Location

BASE = {"input": "/data/in", "output": "/data/out", "classifier_model": "m/c", "ner_model": "m/n"}


def test_defaults_suit_the_embedded_case():
    config = RunConfig(**BASE)
    assert config.tasks == (Task.CLASSIFY, Task.NER)
    assert config.partition == (("dt", dt.datetime.now(dt.UTC).date().isoformat()),)
    assert config.precision is Precision.AUTO and config.ray_address is None
    assert config.text_column == "text" and config.id_column == "id"
    assert config.run_id and config.run_id != RunConfig(**BASE).run_id


@pytest.mark.parametrize(
    ("partition", "message"),
    [
        (["dt=a/b"], "must not contain"),
        (["dt=.."], "must not contain"),
        (["dt=a=b"], "must not contain"),
        (["dt=x\ty"], "must not contain"),
        (["dt="], "empty value"),
        (["dt"], "KEY=VALUE"),
        (["1dt=x"], "letters, digits and underscores"),
        (["dt=x", "dt=y"], "given twice"),
        (["label=x"], "output column name"),
    ],
)
def test_partition_values_are_validated(partition, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**BASE, partition=partition)


def test_each_task_needs_its_model():
    with pytest.raises(ConfigError, match="no ner_model"):
        RunConfig(input="/a", output="/b", classifier_model="m")
    assert RunConfig(input="/a", output="/b", tasks="classify", classifier_model="m").tasks == (Task.CLASSIFY,)
    with pytest.raises(ConfigError, match="unknown task 'sentiment'"):
        RunConfig(**BASE, tasks="classify,sentiment")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"precision": "int4"}, "precision 'int4' is not one of"),
        ({"precision": "int8", "resources": {"num_gpus_per_actor": 0.5}}, "int8 runs on CPUs only"),
        ({"precision": "fp16"}, "fp16 needs GPU actors"),
        ({"run_id": "bad id!"}, "run_id must be"),
        ({"input": "gs://bucket/x"}, "unsupported scheme 'gs'"),
        ({"output": "s3://AKIA:secret@bucket/x"}, "credentials embedded"),
        ({"text_column": "id"}, "must be different"),
        ({"resources": {"model_actors": 0}}, "model_actors must be a number N or a range"),
        ({"resources": {"batch_size": "many"}}, "batch_size must be a number"),
        ({"resources": {"tokenizer_actors": -1}}, "tokenizer_actors must be 0"),
        ({"resources": {"gpus": 1}}, "unknown resources setting"),
    ],
)
def test_bad_settings_name_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        RunConfig.from_sources(None, **{**BASE, **overrides})
    assert "secret" not in str(raised.value).replace("credentials embedded", "")


def test_yaml_holds_everything_and_flags_override_it(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "input: s3://corpus/reviews/\n"
        "output: s3://results/reviews/\n"
        "tasks: [classify]\n"
        "classifier-model: models/sentiment\n"
        "partition: {dt: 2026-11-27}\n"
        "precision: bf16\n"
        "resources: {model_actors: 1..3, num_gpus_per_actor: 0.25}\n"
    )
    args = build_parser().parse_args(["run", "--config", str(path), "--partition", "dt=2026-11-28",
                                      "--partition", "hour=05", "--precision", "fp32"])
    config = config_from_args(args)
    assert config.input_location == Location("s3", "corpus/reviews")
    assert config.partition == (("dt", "2026-11-28"), ("hour", "05"))
    assert config.partition_path == "dt=2026-11-28/hour=05"
    assert config.precision is Precision.FP32 and config.tasks == (Task.CLASSIFY,)
    assert (config.resources.model_actors, config.resources.num_gpus_per_actor) == (ActorRange(1, 3), 0.25)

    from_yaml_only = config_from_args(build_parser().parse_args(["run", "--config", str(path)]))
    assert from_yaml_only.partition == (("dt", "2026-11-27"),) and from_yaml_only.precision is Precision.BF16


def test_the_command_line_a_config_gives_rebuilds_it_every_resource_setting_included():
    from albert_batch.cli import run_argv

    resources = {"model_actors": "2..4", "num_gpus_per_actor": 0.25, "num_cpus_per_actor": 1.5, "tokenizer_actors": 3,
                 "batch_size": 1024, "max_tokens_per_forward": 4096, "ner_window_overlap": 64}
    config = RunConfig(input="s3://corpus/reviews/", output="s3://results/reviews", tasks=["classify"],
                       classifier_model="s3://m/c", run_id="r1", precision="bf16", resources=resources)
    argv = run_argv(config)
    assert "--batch-size" in argv and argv[argv.index("--num-cpus-per-actor") + 1] == "1.5"
    rebuilt = config_from_args(build_parser().parse_args(argv[1:]))
    assert rebuilt == config
    assert "--batch-size" not in run_argv(RunConfig(input="/a", output="/b", tasks=["classify"],
                                                    classifier_model="m", run_id="r"))  # defaults stay implicit


def test_resource_flags_add_to_the_config_file_s_resources(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: /a\noutput: /b\ntasks: [classify]\nclassifier_model: m\n"
                    "resources: {model_actors: 3, batch_size: 2048}\n")
    config = config_from_args(build_parser().parse_args(["run", "--config", str(path), "--batch-size", "512"]))
    assert (config.resources.model_actors, config.resources.batch_size) == (ActorRange(3, 3), 512)


def test_a_config_file_may_spell_its_keys_with_dashes_in_the_resources_block_too(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: /a\noutput: /b\ntasks: [classify]\nclassifier-model: m\n"
                    "resources: {model-actors: 3, num_cpus_per_actor: 0.5}\n")
    config = RunConfig.from_sources(path)
    assert (config.classifier_model, str(config.resources.model_actors), config.resources.num_cpus_per_actor) == (
        "m", "3", 0.5)


def test_a_config_file_that_is_not_utf8_or_holds_an_impossible_date_is_a_config_error(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes("input: /caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"job.yaml is not UTF-8 text"):
        RunConfig.from_sources(path)
    path.write_text("input: /a\npartition: {dt: 2026-02-30}\n")
    with pytest.raises(ConfigError, match=r"job.yaml is not valid YAML: day is out of range"):
        RunConfig.from_sources(path)


def test_unknown_yaml_keys_and_missing_required_settings_are_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inputs: /a\noutput: /b\n")
    with pytest.raises(ConfigError, match=r"unknown config setting.*inputs"):
        RunConfig.from_sources(path)
    path.write_text("output: /b\n")
    with pytest.raises(ConfigError, match=r"missing required config setting.*input"):
        RunConfig.from_sources(path)


def test_locations_and_configs_pickle_for_ray_workers():
    config = RunConfig(**{**BASE, "output": "s3://bucket/prefix"})
    assert pickle.loads(pickle.dumps(config)) == config
    assert Location.parse("s3://bucket/a/b/").child("x") == Location("s3", "bucket/a/b/x")
    assert Location.parse("file:///tmp/x").uri == "/tmp/x"


def test_importing_the_package_does_not_import_ray_or_torch():
    import subprocess
    import sys

    code = "import sys, albert_batch; print(sorted(m for m in ('ray', 'torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("value", "actors"), [(3, (3, 3)), ("3", (3, 3)), ("1..4", (1, 4)), ([2, 5], (2, 5)),
                                               ({"min": 1, "max": 2}, (1, 2))])
def test_model_actors_are_a_number_or_a_range_and_the_command_line_writes_them_back(value, actors):
    from albert_batch.cli import run_argv

    config = RunConfig(input="/a", output="/b", tasks=["classify"], classifier_model="m", run_id="r",
                       resources={"model_actors": value})
    assert (config.resources.model_actors.min, config.resources.model_actors.max) == actors
    argv = run_argv(config)
    assert argv[argv.index("--model-actors") + 1] == (f"{actors[0]}..{actors[1]}" if actors[0] != actors[1] else str(actors[0]))
    assert config_from_args(build_parser().parse_args(argv[1:])) == config


@pytest.mark.parametrize("value", [0, "0..2", "3..1", "two", "1..", True, [1, 2, 3]])
def test_model_actors_that_are_not_a_count_or_a_range_are_refused_naming_the_setting(value):
    with pytest.raises(ConfigError, match=r"resources\.model_actors"):
        RunConfig(input="/a", output="/b", tasks=["classify"], classifier_model="m", resources={"model_actors": value})
