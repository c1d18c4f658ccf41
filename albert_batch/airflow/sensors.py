"""The input sensor: wait, without holding a worker slot, until a corpus partition is ready."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSensorTimeout

from albert_batch.airflow.hooks import AwsS3Hook
from albert_batch.airflow.triggers import TIMEOUT, InputPartitionTrigger


class InputPartitionSensor(BaseSensorOperator):
    """Succeeds when ``input_uri`` holds data files (and the producer's ``marker`` file, if one is named).

    Deferrable by default: one check on a worker, then the waiting moves to `InputPartitionTrigger` in the
    triggerer. With ``deferrable=False`` it pokes in ``reschedule`` mode, which frees the slot between pokes.
    """

    template_fields = ("input_uri",)

    def __init__(self, *, input_uri: str, aws_conn_id: str | None = AwsS3Hook.default_conn_name,
                 marker: str | None = None, deferrable: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.input_uri = input_uri
        self.aws_conn_id = aws_conn_id
        self.marker = marker
        self.deferrable = deferrable

    def poke(self, context: Any) -> bool:
        from albert_batch import storage
        from albert_batch.pipeline.inputs import input_state
        from albert_batch.storage import Location

        with storage.s3_settings(AwsS3Hook(self.aws_conn_id).settings()):
            ready, why = input_state(Location.parse(self.input_uri, what="input"), marker=self.marker)
        self.log.info("input %s: %s", "ready" if ready else "not ready", why)
        return ready

    def execute(self, context: Any) -> None:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.timeout)).isoformat()
        self.defer(trigger=InputPartitionTrigger(input_uri=self.input_uri, aws_conn_id=self.aws_conn_id,
                                                 marker=self.marker, deadline=deadline,
                                                 poke_interval=self.poke_interval),
                   method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> None:
        if event["status"] == TIMEOUT:
            raise AirflowSensorTimeout(f"input {self.input_uri} never became ready: {event['message']}")
        self.log.info("input ready: %s", event["message"])
