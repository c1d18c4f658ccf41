"""The Airflow side against real servers: a Ray head started here with `ray start --head` on loopback
with token authentication (jobs go through its Job Submission API), a moto S3 endpoint, and Airflow's own
`dag.test()` on SQLite. Results are read back with DuckDB, as a warehouse would."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from albert_batch.dev.local_ray import LocalRayHead, free_port, start_head
from albert_batch.dev.s3_proxy import FaultyProxy
from support import FAKE_KEY_ID, FAKE_SECRET, TRICKY_TEXTS, write_corpus

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
DAY = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ray_head(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A local Ray head (`albert_batch.dev.local_ray`) on free ports, with the moto credentials in its environment."""
    head = start_head(token=secrets.token_hex(16), log=tmp_path_factory.mktemp("ray") / "ray-start.log",
                      extra_args=["--num-cpus=2"])
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch, ray_head: LocalRayHead, s3: str) -> None:
    """`ray_default` and `aws_default` as a deployment defines them: environment variables."""
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DEFAULT", json.dumps(
        {"conn_type": "ray", "host": ray_head.address, "password": ray_head.token}))
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(
        {"conn_type": "aws", "login": FAKE_KEY_ID, "password": FAKE_SECRET,
         "extra": {"endpoint_url": s3, "region_name": "us-east-1"}}))


@pytest.fixture(scope="module")
def airflow_db() -> None:
    subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], check=True, capture_output=True, timeout=300)


def partition_jobs(head: LocalRayHead, partition: str, output: str = "s3://results/reviews") -> list[dict[str, Any]]:
    """The cluster's jobs for one output partition (other tests' jobs share the head)."""
    return [j for j in head.jobs() if (j.get("metadata") or {}).get("albert_batch.partition") == partition
            and j["metadata"].get("albert_batch.output") == output]


def run_operator(operator: Any, logical_date: dt.datetime = DAY, try_number: int = 1) -> Any:
    """What Airflow does with a deferrable operator: execute, run the trigger it defers to, resume."""
    from airflow.sdk.exceptions import TaskDeferred

    ti = SimpleNamespace(dag_id="ops", run_id=f"manual__{logical_date.isoformat()}", task_id=operator.task_id,
                         try_number=try_number)
    context = {"ti": ti, "logical_date": logical_date}
    try:
        return operator.execute(context)
    except TaskDeferred as deferred:
        event = asyncio.run(_first_event(deferred.trigger))
        return getattr(operator, deferred.method_name)(context, event.payload)


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event
    raise AssertionError("the trigger ended without an event")


def test_a_failing_job_fails_the_task_with_the_jobs_error_and_is_not_retried(connections, tmp_path, capsys):
    from airflow.sdk.exceptions import AirflowFailException

    from albert_batch.airflow.operators import RayBatchJobOperator

    operator = RayBatchJobOperator(
        task_id="run_batch_job", poll_interval=1.0,
        run_settings={"input": str(tmp_path / "missing"), "output": str(tmp_path / "out"), "tasks": ["classify"],
                      "classifier_model": str(tmp_path / "model"), "partition": {"dt": "2026-11-27"}})
    with pytest.raises(AirflowFailException) as failure:
        run_operator(operator)
    message = str(failure.value)
    assert "ended FAILED" in message and "exit code 2" in message
    assert f"input {tmp_path / 'missing'} does not exist" in message  # the CLI's own error, from the job's log
    task_log = capsys.readouterr().out  # Airflow's task logging writes here outside a real worker
    assert "[ray job albert-batch.ops.dt_2026-11-27.try1] albert-batch: error: input" in task_log
    assert FAKE_SECRET not in message + task_log


def upload_corpus(s3: str, day: str, texts: list[str | None]) -> None:
    fs = pafs.S3FileSystem(endpoint_override=s3.removeprefix("http://"), scheme="http", region="us-east-1",
                           allow_bucket_creation=True, access_key=FAKE_KEY_ID, secret_key=FAKE_SECRET)
    fs.create_dir("corpus")
    fs.create_dir("results")
    write_corpus(f"corpus/reviews/dt={day}/part-0.parquet", list(range(len(texts))), texts, filesystem=fs)


def published(s3: str, table: str) -> duckdb.DuckDBPyRelation:
    """The warehouse's view: DuckDB over the Hive-partitioned table, only partitions with _SUCCESS."""
    fs = pafs.S3FileSystem(endpoint_override=s3.removeprefix("http://"), scheme="http", region="us-east-1",
                           access_key=FAKE_KEY_ID, secret_key=FAKE_SECRET)
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(f"results/reviews/{table}", recursive=True))
             if f.type == pafs.FileType.File]
    complete = {p.rsplit("/", 1)[0] for p in files if p.endswith("/_SUCCESS")}
    data = [p for p in files if p.endswith(".parquet") and p.rsplit("/", 1)[0] in complete]
    dataset = ds.dataset(data, filesystem=fs, format="parquet", partitioning="hive",
                         partition_base_dir=f"results/reviews/{table}")
    return duckdb.arrow(dataset)


def dag_configs(folder: Path, dag_id: str, models: dict[str, str], settings: str) -> Path:
    """A folder with one DAG config: the corpus's daily partition of ``s3://corpus/reviews`` in, the given
    ``settings`` (output, tasks, ...) on top of fast polling, fp32 and no retries."""
    folder.mkdir()
    (folder / f"{dag_id}.yaml").write_text(f"""
dag_id: {dag_id}
input: s3://corpus/reviews/dt={{{{ ds }}}}/
start_date: 2026-11-01
classifier_model: {models["classifier"]}
ner_model: {models["ner"]}
run: {{precision: fp32}}
job: {{poll_seconds: 1}}
wait_for_input: {{poke_seconds: 1, timeout_hours: 0.1}}
retries: 0
{settings}
""")
    return folder


def test_scheduled_runs_retries_backfills_and_reruns_leave_one_complete_partition_per_date(
        connections, ray_head, airflow_db, s3, tiny_models, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import DagRunState

    days = ["2026-11-26", "2026-11-27"]
    for day in days:
        upload_corpus(s3, day, [*TRICKY_TEXTS, None, "  "])
    configs = dag_configs(tmp_path / "dag-configs", "reviews_e2e", tiny_models,
                          "output: s3://results/reviews\nquality: {max_reject_rate: 0.05}")  # on_breach: warn
    monkeypatch.setenv("ALBERT_BATCH_DAG_CONFIG_DIR", str(configs))
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}
    dag = bag.dags["reviews_e2e"]

    def run_date(day: str, **conf: Any) -> Any:
        when = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
        dag_run = dag.test(logical_date=when, run_conf=conf or None)
        assert dag_run.state == DagRunState.SUCCESS, f"the run for {day} failed"
        return {ti.task_id: ti for ti in dag_run.get_task_instances()}

    # A backfill of two dates: one job and one complete partition each.
    for day in days:
        tis = run_date(day)
        assert [j["status"] for j in partition_jobs(ray_head, f"dt={day}")] == ["SUCCEEDED"]
        summary = tis["publish"].xcom_pull(task_ids="publish")
        assert summary["partition"] == f"dt={day}" and summary["input_rows"] == len(TRICKY_TEXTS) + 2
        assert summary["rejected_rows"] == 2 and summary["rejects_by_reason"] == {"null_text": 1, "blank_text": 1}
        assert summary["tables"]["entities"]["rows"] == len(TRICKY_TEXTS)
        assert sum(summary["label_counts"].values()) == len(TRICKY_TEXTS)
        assert FAKE_SECRET not in json.dumps(summary) and ray_head.token not in json.dumps(summary)
    events = _asset_events("s3://results/reviews/classifications")
    assert [(e["partition"], e["rows"]) for e in events] == [(f"dt={d}", len(TRICKY_TEXTS)) for d in days]
    rows = published(s3, "classifications").aggregate("dt, count(*) AS n, count(DISTINCT run_id) AS runs",
                                                      "dt").order("dt").fetchall()
    assert [(str(d), n, runs) for d, n, runs in rows] == [(d, len(TRICKY_TEXTS), 1) for d in days]
    rejects = published(s3, "rejects").aggregate("reason, count(*)", "reason").order("reason").fetchall()
    assert rejects == [("blank_text", 2), ("null_text", 2)]

    # The second date's corpus is the first's: its quality figures show no drift. Both dates breach the
    # gate's max_reject_rate, which only warns: the runs succeeded, and the breach is in XCom.
    checked = tis["validate_output"].xcom_pull(task_ids="validate_output")
    assert checked["drift"]["against"] == f"dt={days[0]}" and not checked["drift"]["shifted"]
    assert checked["quality_breaches"] == [reject_rate_breach(2)]
    assert checked["report"] == f"s3://results/reviews/classifications/dt={days[1]}/_report.html"

    # Running a date again (a cleared task, a retry after the job finished): the job is reused, not repeated.
    first_run_id = _published_run_ids(s3, days[1])
    run_date(days[1])
    assert len(partition_jobs(ray_head, f"dt={days[1]}")) == 1
    assert _published_run_ids(s3, days[1]) == first_run_id

    # Forcing a re-run replaces the partition: still one complete partition, now from the new run.
    run_date(days[1], force_rerun=True)
    assert len(partition_jobs(ray_head, f"dt={days[1]}")) == 2
    [new_run_id] = _published_run_ids(s3, days[1])
    assert [new_run_id] != first_run_id
    counts = published(s3, "entities").aggregate("dt, count(*)", "dt").order("dt").fetchall()
    assert [(str(d), n) for d, n in counts] == [(d, len(TRICKY_TEXTS)) for d in days]


def test_a_quality_gate_set_to_fail_fails_the_dag_run_on_a_breach(connections, ray_head, airflow_db, s3, tiny_models,
                                                                   tmp_path, monkeypatch, capsys):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import DagRunState

    day = "2026-11-25"
    upload_corpus(s3, day, [*TRICKY_TEXTS, None, "  "])  # two rows are rejected
    configs = dag_configs(tmp_path / "configs", "reviews_gated", tiny_models,  # its own output, so its own Assets
                          "output: s3://results/gated\nquality: {max_reject_rate: 0.05, on_breach: fail}")
    monkeypatch.setenv("ALBERT_BATCH_DAG_CONFIG_DIR", str(configs))
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}
    capsys.readouterr()
    dag_run = bag.dags["reviews_gated"].test(logical_date=dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC))
    captured = capsys.readouterr()
    task_log = captured.out + captured.err  # Airflow's task logging writes here outside a real worker

    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    assert dag_run.state == DagRunState.FAILED
    assert tis["run_batch_job"].state == "success" and tis["validate_output"].state == "failed"
    assert tis["publish"].state == "upstream_failed"  # no Asset event for a partition that breaches its gate
    assert f"breaches its quality gate: {reject_rate_breach(2)}" in task_log
    assert f"quality report of dt={day}: s3://results/gated/classifications/dt={day}/_report.html" in task_log


def reject_rate_breach(rejected: int) -> str:
    return f"reject rate {rejected / (len(TRICKY_TEXTS) + rejected):.4f} > max_reject_rate 0.05"


def _asset_events(uri: str) -> list[dict[str, Any]]:
    """The Asset events Airflow recorded for ``uri`` (what schedules downstream DAGs), oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(
            AssetModel.uri == uri).order_by(AssetEvent.timestamp)
        return list(session.scalars(query))


def _published_run_ids(s3: str, day: str) -> list[str]:
    rows = published(s3, "classifications").filter(f"dt = '{day}'").aggregate("run_id", "run_id").fetchall()
    return sorted(r[0] for r in rows)


def sleeping_job(head: LocalRayHead, partition: str, seconds: int = 300) -> str:
    """A long job on the cluster that claims ``partition`` of ``s3://results/reviews``."""
    from albert_batch.airflow.hooks import RayJobHook
    from albert_batch.airflow.operators import META_OUTPUT, META_PARTITION

    sid = f"sleeper-{secrets.token_hex(4)}"
    RayJobHook().submit(entrypoint=f"python -c 'import time; time.sleep({seconds})'", submission_id=sid,
                        metadata={META_OUTPUT: "s3://results/reviews", META_PARTITION: partition},
                        runtime_env=None, entrypoint_resources={"entrypoint_num_cpus": 0})
    return sid


def job_status(head: LocalRayHead, sid: str) -> str:
    return next(j["status"] for j in head.jobs() if j["submission_id"] == sid)


def test_a_task_for_a_partition_whose_job_is_running_attaches_to_it(connections, ray_head):
    from airflow.sdk.exceptions import TaskDeferred

    from albert_batch.airflow.hooks import RayJobHook
    from albert_batch.airflow.operators import RayBatchJobOperator

    sid = sleeping_job(ray_head, "dt=2026-11-20")
    operator = RayBatchJobOperator(task_id="run_batch_job", run_settings={
        "input": "s3://corpus/reviews/dt=2026-11-20/", "output": "s3://results/reviews", "tasks": ["ner"],
        "ner_model": "s3://models/ner", "partition": {"dt": "2026-11-20"}})
    before = len(ray_head.jobs())
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="t", try_number=2)})
    assert deferred.value.trigger.submission_id == sid
    assert len(ray_head.jobs()) == before  # nothing new was submitted
    RayJobHook().stop(sid)


def test_a_job_past_its_deadline_is_stopped_and_reported(connections, ray_head):
    from albert_batch.airflow.triggers import TIMEOUT, RayJobTrigger

    sid = sleeping_job(ray_head, "dt=2026-11-21")
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)).isoformat()
    event = asyncio.run(_first_event(RayJobTrigger(submission_id=sid, ray_conn_id="ray_default", deadline=deadline,
                                                   poll_interval=0.5)))
    assert event.payload["status"] == TIMEOUT
    _wait_for_status(ray_head, sid, "STOPPED")


def test_killing_a_deferred_task_stops_its_job(connections, ray_head):
    from albert_batch.airflow.triggers import RayJobTrigger

    sid = sleeping_job(ray_head, "dt=2026-11-22")
    trigger = RayJobTrigger(submission_id=sid, ray_conn_id="ray_default",
                            deadline=(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat())
    asyncio.run(trigger.on_kill())
    _wait_for_status(ray_head, sid, "STOPPED")


def copied_lines(sid: str, task_log: str) -> list[str]:
    """The job's lines in the task log, as the triggerer writes them."""
    return re.findall(rf"\[ray job {re.escape(sid)}\] ([^\n]*?)(?:\s*\[|\s*$)", task_log, flags=re.MULTILINE)


def test_the_trigger_copies_a_running_job_s_log_line_by_line_once(connections, ray_head, capsys):
    from albert_batch.airflow.hooks import RayJobHook
    from albert_batch.airflow.triggers import LOG_TAIL_LINES, RayJobTrigger

    sid = f"talker-{secrets.token_hex(4)}"
    script = "import time\nfor i in range(60):\n    print(f'line {i}', flush=True)\n    time.sleep(0.05)\n"
    RayJobHook().submit(entrypoint=f"python -c {shlex.quote(script)}", submission_id=sid, metadata={},
                        runtime_env=None, entrypoint_resources={"entrypoint_num_cpus": 0})
    trigger = RayJobTrigger(submission_id=sid, ray_conn_id="ray_default", poll_interval=0.5,
                            deadline=(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat())
    event = asyncio.run(_first_event(trigger))
    assert event.payload["status"] == "SUCCEEDED"
    task_log = capsys.readouterr().out
    assert "cannot follow the log" not in task_log  # streamed, not fetched at the end
    job_lines = [line for line in copied_lines(sid, task_log) if line.startswith("line ")]
    assert job_lines == [f"line {i}" for i in range(60)]  # every line, in order, once
    assert event.payload["log_tail"].splitlines()[-3:] == ["line 57", "line 58", "line 59"]
    assert len(event.payload["log_tail"].splitlines()) <= LOG_TAIL_LINES


def test_without_a_log_stream_the_log_is_copied_once_when_the_job_ends(connections, ray_head, capsys):
    from albert_batch.airflow.hooks import RayJobHook
    from albert_batch.airflow.triggers import RayJobTrigger

    class NoWebSockets(RayJobHook):  # a proxy in front of the dashboard that refuses WebSocket upgrades
        async def afollow_logs(self, submission_id):
            raise ConnectionError("WebSocket upgrade refused")
            yield

    sid = f"talker-{secrets.token_hex(4)}"
    RayJobHook().submit(entrypoint="python -c \"print('first'); print('last')\"", submission_id=sid, metadata={},
                        runtime_env=None, entrypoint_resources={"entrypoint_num_cpus": 0})
    trigger = RayJobTrigger(submission_id=sid, ray_conn_id="ray_default", poll_interval=0.5,
                            deadline=(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat())
    with mock.patch("albert_batch.airflow.triggers.RayJobHook", NoWebSockets):
        event = asyncio.run(_first_event(trigger))
    assert event.payload["status"] == "SUCCEEDED"
    lines = copied_lines(sid, capsys.readouterr().out)  # Ray's own lines ("Runtime env is setting up") first
    assert lines[-2:] == ["first", "last"] and lines.count("first") == 1


async def _watch_through_a_flaky_proxy(head: LocalRayHead, trigger: Any, failures: float) -> Any:
    """Run ``trigger`` against a proxy in front of the head's dashboard (connection ``ray_flaky``) that
    answers the first ``failures`` job-status requests with 502 Bad Gateway, as a proxy does while the
    head restarts, and forwards everything else (it refuses the log stream)."""
    from aiohttp import ClientSession, web

    refused = 0

    async def forward(request: web.Request) -> web.Response:
        nonlocal refused
        if request.path.endswith("/logs/tail"):
            return web.Response(status=404)
        if request.path.count("/") == 3 and refused < failures:  # /api/jobs/<id>
            refused += 1
            return web.Response(status=502, text="Bad Gateway")
        async with ClientSession(headers={"Authorization": request.headers.get("Authorization", "")}) as session:
            async with session.request(request.method, head.address + request.path_qs) as answer:
                return web.Response(status=answer.status, body=await answer.read(), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    os.environ["AIRFLOW_CONN_RAY_FLAKY"] = json.dumps(
        {"conn_type": "ray", "host": f"http://127.0.0.1:{port}", "password": head.token})
    try:
        return await _first_event(trigger)
    finally:
        del os.environ["AIRFLOW_CONN_RAY_FLAKY"]
        await runner.cleanup()


def test_a_dashboard_that_does_not_answer_for_a_while_is_asked_again_then_given_up_on(
        connections, ray_head, capsys, monkeypatch):
    from albert_batch.airflow import triggers
    from albert_batch.airflow.hooks import RayJobHook
    from albert_batch.errors import RayUnavailable

    sid = f"talker-{secrets.token_hex(4)}"
    RayJobHook().submit(entrypoint="python -c \"print('done')\"", submission_id=sid, metadata={},
                        runtime_env=None, entrypoint_resources={"entrypoint_num_cpus": 0})

    def trigger() -> Any:
        return triggers.RayJobTrigger(submission_id=sid, ray_conn_id="ray_flaky", poll_interval=0.2,
                                      deadline=(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat())

    event = asyncio.run(_watch_through_a_flaky_proxy(ray_head, trigger(), failures=3))
    assert event.payload["status"] == "SUCCEEDED"
    assert capsys.readouterr().out.count(f"no answer about Ray job {sid}") == 3

    monkeypatch.setattr(triggers, "DASHBOARD_OUTAGE_S", 1.0)
    with pytest.raises(RayUnavailable, match=r"GET http://127\.0\.0\.1:\d+/api/jobs/\S+ answered 502: Bad Gateway"):
        asyncio.run(_watch_through_a_flaky_proxy(ray_head, trigger(), failures=float("inf")))


def test_the_job_log_is_cut_into_whole_lines_whatever_the_chunks():
    from albert_batch.airflow.triggers import JobLog

    shown: list[str] = []
    log = JobLog("j", mock.Mock(info=lambda fmt, sid, line: shown.append(line)))
    for chunk in ("alpha\nbe", "ta\r\n", "", "gam", "ma"):
        log.add(chunk)
    assert shown == ["alpha", "beta"]
    log.add_rest("alpha\nbeta\r\ngamma\ndelta")  # the whole log, fetched once: only what is new is shown
    log.close()
    assert shown == ["alpha", "beta", "gamma", "delta"] and list(log.tail) == shown


def _wait_for_status(head: LocalRayHead, sid: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while job_status(head, sid) != status:
        assert time.monotonic() < deadline, f"job {sid} is {job_status(head, sid)}, not {status}"
        time.sleep(0.5)


def test_a_second_local_head_takes_jobs_and_a_submission_it_refuses_for_now_is_asked_again(
        ray_head, tmp_path, monkeypatch):
    """Two local heads at once (each on free ports) both take jobs. A submission the head refuses for a reason
    it calls temporary ("No available agent", while its agent starts) is asked again with backoff, for a
    bounded time, then fails as RayUnavailable."""
    from albert_batch.airflow import hooks
    from albert_batch.airflow.hooks import RayJobHook
    from albert_batch.errors import RayUnavailable

    second = start_head(token=secrets.token_hex(16), log=tmp_path / "second-head.log", extra_args=["--num-cpus=1"])
    try:
        with FaultyProxy(second.address) as proxy:
            refusals: list[str] = []

            def refuse(request: Any) -> tuple[int, str] | None:
                if request.command == "POST" and request.path.rstrip("/") == "/api/jobs" and len(refusals) < limit:
                    refusals.append(request.path)
                    return 500, "No available agent to submit job, please try again later."
                return None

            proxy.refuse = refuse
            monkeypatch.setenv("AIRFLOW_CONN_RAY_SECOND", json.dumps(
                {"conn_type": "ray", "host": proxy.endpoint, "password": second.token}))
            limit = 2
            monkeypatch.setattr(hooks, "SUBMIT_RETRY_S", 120.0)  # a head lost for good fails in minutes, not ten
            try:
                sid = RayJobHook("ray_second").submit(
                    entrypoint="python -c \"print('on the second head')\"", submission_id=f"second-{secrets.token_hex(4)}",
                    metadata={}, runtime_env=None, entrypoint_resources={"entrypoint_num_cpus": 0})
            except RayUnavailable as err:
                raise AssertionError(f"{err}\n{_what_became_of(second)}") from err
            assert len(refusals) == 2
            deadline = time.monotonic() + 120
            while second.get(f"/api/jobs/{sid}")["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
                assert time.monotonic() < deadline
                time.sleep(1)
            assert second.get(f"/api/jobs/{sid}")["status"] == "SUCCEEDED"
            assert ray_head.jobs() is not None, "the first head still answers"

            limit, refusals[:] = 10**6, []
            monkeypatch.setattr(hooks, "SUBMIT_RETRY_S", 3.0)
            with pytest.raises(RayUnavailable, match="No available agent to submit job"):
                RayJobHook("ray_second").submit(entrypoint="true", submission_id=f"never-{secrets.token_hex(4)}",
                                                metadata={}, runtime_env=None, entrypoint_resources={})
            assert len(refusals) >= 2
    finally:
        second.stop()


def _what_became_of(head: LocalRayHead) -> str:
    """Whether a head that stopped answering through the proxy still runs and answers directly, and the end of
    its logs: what a failure needs to say to be understood after the fact."""
    try:
        direct = f"answers directly ({len(head.jobs())} jobs)"
    except Exception as err:  # reported, not handled
        direct = f"does not answer directly either: {err!r}"
    lines = [f"the head (pid {head.process.pid}, exit code {head.process.poll()}) {direct}",
             f"the end of {head.log}:", head.log.read_text(errors="replace")[-3000:]]
    for name in ("dashboard.log", "gcs_server.out", "raylet.out"):
        for log in sorted(head.temp_dir.glob(f"session_*/logs/{name}"))[-1:]:
            lines += [f"the end of {log}:", log.read_text(errors="replace")[-3000:]]
    return "\n".join(lines)


def test_a_dag_writing_iceberg_tables_validates_the_commit_and_announces_each_table(
        connections, ray_head, airflow_db, s3, tiny_models, tmp_path, monkeypatch):
    """``output_format: iceberg``: the job commits to the "local" catalog (configured in conftest, as the
    cluster's environment configures pyiceberg), validate_output checks the committed snapshots, publish
    announces iceberg://CATALOG/NAMESPACE/TABLE Assets, and a second run of the date reuses the job."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import DagRunState

    day = "2026-11-25"
    upload_corpus(s3, day, [*TRICKY_TEXTS, None])
    configs = dag_configs(tmp_path / "dag-configs", "reviews_iceberg", tiny_models,
                          "output_format: iceberg\noutput: local/airflow_reviews\ntasks: [classify]")
    monkeypatch.setenv("ALBERT_BATCH_DAG_CONFIG_DIR", str(configs))
    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags["reviews_iceberg"]
    when = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    for _ in range(2):
        dag_run = dag.test(logical_date=when)
        assert dag_run.state == DagRunState.SUCCESS
        summary = {ti.task_id: ti for ti in dag_run.get_task_instances()}["publish"].xcom_pull(task_ids="publish")
        assert summary["tables"]["classifications"] == {
            "uri": "iceberg://local/airflow_reviews/classifications", "rows": len(TRICKY_TEXTS), "files": 1}
        assert summary["input_rows"] == len(TRICKY_TEXTS) + 1 and summary["rejected_rows"] == 1
    jobs = partition_jobs(ray_head, f"dt={day}", output="iceberg://local/airflow_reviews")
    assert [j["status"] for j in jobs] == ["SUCCEEDED"], "the second run reused the job"
    events = _asset_events("iceberg://local/airflow_reviews/classifications")
    assert [(e["partition"], e["rows"], e["run_id"]) for e in events] == [
        (f"dt={day}", len(TRICKY_TEXTS), jobs[0]["submission_id"])] * 2


def test_openlineage_events_name_the_input_and_the_three_output_tables(
        connections, ray_head, airflow_db, s3, tiny_models, tmp_path):
    """With apache-airflow-providers-openlineage and its file transport configured (in a process of its own,
    as a deployment would configure it), the batch job's COMPLETE event names the input corpus and the
    three output tables, with their row counts and the albert-batch run id."""
    day = "2026-11-24"
    upload_corpus(s3, day, [*TRICKY_TEXTS, None])
    output = tmp_path / "results"
    configs = dag_configs(tmp_path / "dag-configs", "reviews_lineage", tiny_models, f"output: {output}")
    events = tmp_path / "lineage.jsonl"
    env = {**os.environ, "ALBERT_BATCH_DAG_CONFIG_DIR": str(configs),
           "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events),
                                                          "append": True})}
    code = ("import datetime as dt, os\n"
            "from airflow.dag_processing.dagbag import DagBag\n"
            "dag = DagBag(dag_folder=os.environ['AIRFLOW__CORE__DAGS_FOLDER']).dags['reviews_lineage']\n"
            f"print('state', dag.test(logical_date=dt.datetime.fromisoformat('{day}').replace(tzinfo=dt.UTC)).state)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert "state success" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]

    emitted = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    [complete] = [e for e in emitted if e["eventType"] == "COMPLETE" and e["job"]["name"].endswith(".run_batch_job")]
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [("s3://corpus", f"reviews/dt={day}")]
    outputs = {d["name"]: d for d in complete["outputs"]}
    assert set(outputs) == {str(output / t) for t in ("classifications", "entities", "rejects")}
    assert {d["namespace"] for d in complete["outputs"]} == {"file"}
    rows = {name.rsplit("/", 1)[1]: d["outputFacets"]["outputStatistics"]["rowCount"] for name, d in outputs.items()}
    assert rows == {"classifications": len(TRICKY_TEXTS), "entities": len(TRICKY_TEXTS), "rejects": 1}
    [job] = partition_jobs(ray_head, f"dt={day}", output=str(output))
    assert complete["run"]["facets"]["externalQuery"]["externalQueryId"] == job["submission_id"]
    assert FAKE_SECRET not in events.read_text() and ray_head.token not in events.read_text()
