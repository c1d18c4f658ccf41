"""The input sensor and its trigger: wait for a partition without holding a worker slot, on local disk
and on a real S3 endpoint reached through the ``aws_default`` connection alone."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout, TaskDeferred

from albert_batch.airflow.sensors import InputPartitionSensor
from albert_batch.airflow.triggers import TIMEOUT, InputPartitionTrigger
from support import FAKE_KEY_ID, FAKE_SECRET, write_corpus


def deadline(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


async def first_event(trigger):
    async for event in trigger.run():
        return event.payload
    raise AssertionError("no event")


def test_the_trigger_fires_once_the_data_and_the_producers_marker_are_there(tmp_path):
    folder = tmp_path / "dt=2026-11-27"

    def producer() -> None:
        folder.mkdir()
        write_corpus(folder / "part-0.parquet", [1], ["hello"])
        (folder / "_SUCCESS").touch()

    threading.Timer(1.0, producer).start()
    trigger = InputPartitionTrigger(input_uri=str(folder), aws_conn_id=None, marker="_SUCCESS", deadline=deadline(30),
                                    poke_interval=0.2)
    event = asyncio.run(first_event(trigger))
    assert event == {"status": "ready", "message": f"{folder} holds 1 data file(s)"}


def test_the_trigger_gives_up_at_its_deadline_saying_what_is_missing(tmp_path):
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in" / "part-0.parquet", [1], ["hello"])
    trigger = InputPartitionTrigger(input_uri=str(tmp_path / "in"), aws_conn_id=None, marker="_SUCCESS",
                                    deadline=deadline(0.5), poke_interval=0.2)
    event = asyncio.run(first_event(trigger))
    assert event["status"] == TIMEOUT and f"{tmp_path / 'in'} has no _SUCCESS yet" in event["message"]
    sensor = InputPartitionSensor(task_id="wait_for_input", input_uri=str(tmp_path / "in"), aws_conn_id=None)
    with pytest.raises(AirflowSensorTimeout, match="never became ready"):
        sensor.execute_complete({}, event)


def test_the_sensor_checks_once_then_defers_and_passes_at_once_when_ready(tmp_path):
    sensor = InputPartitionSensor(task_id="wait_for_input", input_uri=str(tmp_path / "later"), aws_conn_id=None,
                                  poke_interval=60, timeout=3600)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, InputPartitionTrigger) and trigger.input_uri == str(tmp_path / "later")
    assert trigger.poke_interval == 60
    (tmp_path / "later").mkdir()
    write_corpus(tmp_path / "later" / "part-0.parquet", [1], ["hello"])
    assert sensor.execute({}) is None


def test_s3_is_reached_with_the_aws_connection_alone(s3, s3_client, monkeypatch):
    s3_client.create_dir("corpus")
    write_corpus("corpus/reviews/dt=2026-11-27/part-0.parquet", [1], ["hello"], filesystem=s3_client)
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(
        {"conn_type": "aws", "login": FAKE_KEY_ID, "password": FAKE_SECRET,
         "extra": {"endpoint_url": s3, "region_name": "us-east-1"}}))
    sensor = InputPartitionSensor(task_id="wait_for_input", input_uri="s3://corpus/reviews/dt=2026-11-27/")
    assert sensor.poke({}) is True
    trigger = InputPartitionTrigger(input_uri="s3://corpus/reviews/dt=2026-11-28/", aws_conn_id="aws_default",
                                    marker=None, deadline=deadline(0.3), poke_interval=0.1)
    event = asyncio.run(first_event(trigger))
    assert event["status"] == TIMEOUT and "s3://corpus/reviews/dt=2026-11-28" in event["message"]
    assert FAKE_SECRET not in json.dumps(event)
