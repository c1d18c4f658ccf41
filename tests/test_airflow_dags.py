"""The DAG files and their YAML configs, as Airflow's DAG processor sees them: every file imports, each
generated DAG has the expected tasks in order, and a bad config becomes a DAG that fails naming the file
and the mistake, without taking the other configs' DAGs down."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from albert_batch.airflow.dags import DagSpec, build_dag
from albert_batch.airflow.hooks import RayJob
from albert_batch.airflow.operators import META_FINGERPRINT, META_OUTPUT, META_PARTITION, choose_job, submission_id
from albert_batch.errors import ConfigError

DAGS = Path(__file__).resolve().parent.parent / "dags"
EXPECTED_FLOW = {"wait_for_input": ["run_batch_job"], "run_batch_job": ["validate_output"],
                 "validate_output": ["publish"], "publish": []}


def dagbag(monkeypatch: pytest.MonkeyPatch, config_dir: Path | None = None):
    from airflow.dag_processing.dagbag import DagBag

    if config_dir is not None:
        monkeypatch.setenv("ALBERT_BATCH_DAG_CONFIG_DIR", str(config_dir))
    return DagBag(dag_folder=str(DAGS))


def spec(**overrides) -> DagSpec:
    settings = {"dag_id": "d", "input": "s3://corpus/reviews/dt={{ ds }}/", "output": "s3://results/reviews",
                "start_date": dt.date(2026, 11, 1), "classifier_model": "s3://m/c", "ner_model": "s3://m/n"}
    return DagSpec(**{**settings, **overrides})


def test_every_dag_file_imports_and_the_example_dag_runs_its_four_tasks_in_order(monkeypatch):
    bag = dagbag(monkeypatch)
    assert bag.import_errors == {}
    dag = bag.dags["albert_batch_reviews"]
    assert {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} == EXPECTED_FLOW
    assert dag.schedule == "@daily"
    assert dag.start_date == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    outlets = {a.uri for a in dag.task_dict["publish"].outlets}
    assert outlets == {"s3://results/reviews/classifications", "s3://results/reviews/entities",
                       "s3://results/reviews/rejects"}
    assert dag.task_dict["wait_for_input"].input_uri == "s3://corpus/reviews/dt={{ ds }}/"


def test_a_dag_is_generated_for_each_config_file(monkeypatch, tmp_path):
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.yaml").write_text(
            f"dag_id: corpus_{name}\ninput: s3://in/{name}/dt={{{{ ds }}}}/\noutput: s3://out/{name}\n"
            "start_date: 2026-01-01\ntasks: [classify]\nclassifier_model: s3://m/c\n")
    bag = dagbag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["corpus_alpha", "corpus_beta"]
    assert {a.uri for a in bag.dags["corpus_alpha"].task_dict["publish"].outlets} == {
        "s3://out/alpha/classifications", "s3://out/alpha/rejects"}


GOOD = ("dag_id: corpus_good\ninput: s3://in/good/dt={{ ds }}/\noutput: s3://out/good\nstart_date: 2026-01-01\n"
        "tasks: [classify]\nclassifier_model: s3://m/c\n")


def invalid_config_failure(dag) -> str:
    """The message the invalid_config_dag's only task fails with."""
    from airflow.sdk.exceptions import AirflowFailException

    assert list(dag.task_dict) == ["invalid_config"]
    with pytest.raises(AirflowFailException) as failure:
        dag.task_dict["invalid_config"].execute(context={})
    return str(failure.value)


@pytest.mark.parametrize(("text", "message"), [
    ("dag_id: x\ninput: s3://i/\noutput: s3://o\nstart_date: 2026-01-01\nner_model: m\ntasks: [ner]\nshedule: '@daily'\n",
     "unknown setting(s) shedule"),
    ("dag_id: x\ninput: s3://i/\noutput: s3://o\nstart_date: 2026-01-01\ntasks: [ner]\n",
     "tasks include ner but no ner_model"),
    ("dag_id: x\ninput: s3://i/\noutput: s3://o\nstart_date: 2026-01-01T00:00:00\nner_model: m\ntasks: [ner]\n",
     "has no time zone"),
    ("dag_id: x\ninput: s3://i/\noutput: s3://o\nstart_date: 2026-01-01\nner_model: m\ntasks: [ner]\n"
     "run: {precision: fp8}\n", "precision 'fp8' is not one of"),
    ("dag_id: x\ninput: s3://i/\noutput: s3://o\nstart_date: 2026-01-01\nner_model: m\ntasks: [ner]\n"
     "job: {timeout_minutes: 5}\n", "unknown job setting(s) timeout_minutes"),
    ("dag_id: x\ninput: s3://i/\noutput: s3://o\nstart_date: 2026-01-01\nner_model: m\ntasks: [ner]\n"
     "schedule: '@dialy'\n", "@dialy"),
])
def test_a_bad_config_becomes_a_dag_that_fails_naming_the_file_and_the_mistake(monkeypatch, tmp_path, text, message):
    (tmp_path / "broken.yaml").write_text(text)
    (tmp_path / "good.yaml").write_text(GOOD)
    bag = dagbag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert {t.task_id: sorted(t.downstream_task_ids) for t in bag.dags["corpus_good"].tasks} == EXPECTED_FLOW
    broken = bag.dags["x"]  # keeps its dag_id, so a DAG that was running stays where the team looks
    assert "invalid-config" in broken.tags and message in broken.description
    failure = invalid_config_failure(broken)
    assert str(tmp_path / "broken.yaml") in failure and message in failure
    assert broken.task_dict["invalid_config"].retries == 0


def test_an_invalid_config_keeps_its_schedule_so_its_runs_fail_until_it_is_mended(monkeypatch, tmp_path):
    (tmp_path / "broken.yaml").write_text("dag_id: x\ninput: s3://i/\noutput: s3://o\nstart_date: 2026-01-01\n"
                                          "schedule: '@hourly'\ntasks: [ner]\n")
    dag = dagbag(monkeypatch, tmp_path).dags["x"]
    assert dag.schedule == "@hourly" and dag.start_date == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert not dag.catchup


@pytest.mark.parametrize(("text", "message"), [
    ("dag_id: [unclosed\n", "is not valid YAML"),
    ("dag_id: x\ninput: s3://i/\noutput: s3://o\nstart_date: 2026-11-31\n", "is not valid YAML: day is out of range"),
    ("input: s3://i/\noutput: s3://o\nstart_date: 2026-01-01\n", "missing required setting(s) dag_id"),
    ("- a list\n", "must hold a mapping"),
])
def test_a_config_without_a_usable_dag_id_is_named_after_its_file_and_runs_by_hand_only(
        monkeypatch, tmp_path, text, message):
    (tmp_path / "broken file.yaml").write_text(text)
    (tmp_path / "good.yaml").write_text(GOOD)
    bag = dagbag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["corpus_good", "invalid_config.broken_file"]
    dag = bag.dags["invalid_config.broken_file"]
    assert dag.schedule is None
    assert message in invalid_config_failure(dag)


def test_two_configs_with_one_dag_id_keep_the_first_and_the_second_fails(monkeypatch, tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text("dag_id: same\ninput: s3://i/\noutput: s3://o\n"
                                               "start_date: 2026-01-01\nner_model: m\ntasks: [ner]\n")
    bag = dagbag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    assert list(bag.dags["same"].task_dict) == list(EXPECTED_FLOW)
    failure = invalid_config_failure(bag.dags["invalid_config.b"])
    assert str(tmp_path / "b.yaml") in failure and "dag_id 'same' is already used" in failure


def test_a_missing_config_folder_is_an_import_error(monkeypatch, tmp_path):
    [error] = dagbag(monkeypatch, tmp_path / "nowhere").import_errors.values()
    assert f"DAG config folder {tmp_path / 'nowhere'} does not exist" in error


def test_the_job_gets_the_run_settings_with_templates_left_for_airflow():
    settings = spec(run={"precision": "bf16", "model_actors": 2, "batch_size": 1024},
                    partition={"dt": "{{ ds }}", "hour": "00"}).run_settings()
    assert settings["input"] == "s3://corpus/reviews/dt={{ ds }}/"
    assert settings["partition"] == {"dt": "{{ ds }}", "hour": "00"}
    assert settings["precision"] == "bf16" and settings["resources"] == {"model_actors": 2, "batch_size": 1024}
    task = build_dag(spec(run={"precision": "bf16"})).task_dict["run_batch_job"]
    assert task.run_settings["input"] == "s3://corpus/reviews/dt={{ ds }}/"
    assert task.entrypoint_resources == {"entrypoint_num_cpus": 0}


def test_local_outputs_become_file_assets(tmp_path):
    uris = spec(output=str(tmp_path / "out"), tasks=["ner"]).table_uris()
    assert uris == {"entities": f"file://{tmp_path}/out/entities", "rejects": f"file://{tmp_path}/out/rejects"}


def test_an_iceberg_output_is_written_as_a_uri_or_with_output_format_and_its_tables_are_iceberg_assets():
    by_uri = spec(output="iceberg://lake/nlp", tasks=["classify"])
    by_format = spec(output="lake/nlp", output_format="iceberg", tasks=["classify"])
    assert by_uri.output == by_format.output == "iceberg://lake/nlp"
    assert by_format.run_settings()["output"] == "iceberg://lake/nlp"
    assert by_format.table_uris() == {"classifications": "iceberg://lake/nlp/classifications",
                                      "rejects": "iceberg://lake/nlp/rejects"}
    for output, output_format, message in (("s3://results/reviews", "iceberg", "output_format is iceberg but output"),
                                           ("iceberg://lake/nlp", "hive", "output_format is hive but output"),
                                           ("s3://results/reviews", "delta", "must be hive or iceberg")):
        with pytest.raises(ConfigError, match=message):
            spec(output=output, output_format=output_format)


def job(sid: str, status: str, *, partition: str = "dt=2026-11-27", fingerprint: str = "fp", start: int = 0) -> RayJob:
    return RayJob(submission_id=sid, status=status, start_time_ms=start,
                  metadata={META_OUTPUT: "s3://o", META_PARTITION: partition, META_FINGERPRINT: fingerprint})


def test_a_job_still_running_for_the_partition_is_attached_to_never_duplicated():
    jobs = [job("old", "SUCCEEDED", start=1), job("live", "RUNNING", fingerprint="other", start=2)]
    assert choose_job(jobs, "s3://o", "dt=2026-11-27", "fp", force=False) == ("attach", jobs[1])
    assert choose_job(jobs, "s3://o", "dt=2026-11-27", "fp", force=True) == ("attach", jobs[1])


def test_a_succeeded_job_on_the_same_input_is_reused_unless_forced():
    jobs = [job("failed", "FAILED", start=3), job("done", "SUCCEEDED", start=2), job("elsewhere", "SUCCEEDED",
                                                                                      partition="dt=2026-11-26")]
    assert choose_job(jobs, "s3://o", "dt=2026-11-27", "fp", force=False) == ("reuse", jobs[1])
    assert choose_job(jobs, "s3://o", "dt=2026-11-27", "fp", force=True) == ("submit", None)
    assert choose_job(jobs, "s3://o", "dt=2026-11-27", "changed-input", force=False) == ("submit", None)


def test_an_older_job_whose_output_was_published_over_is_not_reused():
    jobs = [job("first", "SUCCEEDED", start=1), job("new-model", "SUCCEEDED", fingerprint="other", start=2)]
    assert choose_job(jobs, "s3://o", "dt=2026-11-27", "fp", force=False) == ("submit", None)
    assert choose_job(jobs, "s3://o", "dt=2026-11-27", "other", force=False) == ("reuse", jobs[1])


def test_submission_ids_name_the_dag_partition_and_try_and_never_collide():
    assert submission_id("reviews", "dt=2026-11-27", 1, set()) == "albert-batch.reviews.dt_2026-11-27.try1"
    taken = {"albert-batch.reviews.dt_2026-11-27.try1", "albert-batch.reviews.dt_2026-11-27.try1.2"}
    assert submission_id("reviews", "dt=2026-11-27", 1, taken) == "albert-batch.reviews.dt_2026-11-27.try1.3"
    assert submission_id("my dag", "dt=2026-11-27/hour=00", 2, set()) == "albert-batch.my_dag.dt_2026-11-27.hour_00.try2"


def test_config_errors_are_config_errors():
    with pytest.raises(ConfigError, match="dag_id"):
        spec(dag_id="bad id!")
