"""What a person sees of `albert-batch run`: its own lines and a progress line, the summary, nothing of Ray's
internals; `-q` prints the summary alone. The CLI runs as users run it: in a terminal (a pseudo-terminal)
and with its output piped."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from albert_batch.cli import format_summary
from albert_batch.console import RAY_JOB_ENV, RunConsole, TerminalLine
from albert_batch.errors import ConfigError
from albert_batch.pipeline import progress
from albert_batch.pipeline.progress import INTERVAL_ENV, Progress, interval_s, staged_by_unit
from albert_batch.pipeline.staging import Piece
from albert_batch.pipeline.summary import RunSummary
from albert_batch.training.progress import Step, StepMonitor, start_step_counter
from albert_batch.training.progress import line as training_line
from support import TRICKY_TEXTS, write_corpus

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# What Ray and its workers print, which the console must not show: Ray Data's operator tables and execution
# plans, the core worker's lines, the token-auth notice, transformers' weight-loading bars and tqdm's bars.
RAY_INTERNALS = ("Running Dataset", "Execution plan of Dataset", "logging_progress", "streaming_executor",
                 "core_worker", "Token authentication", "Loading weights", "it/s]")


def test_a_progress_line_counts_reused_rows_as_done_but_not_in_its_rate():
    line = Progress(total_rows=10_000, reused_rows=2_000, started=100.0).line
    assert line(2_000, 160.0) == "progress: 2,000 of 10,000 rows (20%, 2,000 reused), none done yet"
    assert line(5_000, 160.0) == "progress: 5,000 of 10,000 rows (50%, 2,000 reused), 50.0 rows/s, about 1m 40s left"
    assert line(10_000, 260.0) == "progress: 10,000 of 10,000 rows (100%, 2,000 reused), 50.0 rows/s"
    assert line(5_000, 160.0, staged_rows=3_000) == (
        "progress: 5,000 of 10,000 rows (50%, 2,000 reused, 3,000 staged), 50.0 rows/s, about 1m 40s left")
    assert line(5_000, 160.0, staged_rows=5_000) == line(5_000, 160.0), "all staged: nothing more to say"
    slow = Progress(total_rows=1_000_000, reused_rows=0, started=0.0)
    assert slow.line(1_000, 100.0) == "progress: 1,000 of 1,000,000 rows (0%), 10.0 rows/s, about 27h 45m left"


def test_a_training_progress_line_gives_steps_epoch_rate_time_left_and_loss():
    step = Step(step=120, steps=3_000, epoch=1, epochs=10, loss=6.72301)
    assert training_line(step, None) == "progress: step 120 of 3,000 (4%), epoch 1 of 10, loss 6.7230"
    assert training_line(step, 3.2) == ("progress: step 120 of 3,000 (4%), epoch 1 of 10, 3.2 steps/s, about 15m 00s "
                                        "left, loss 6.7230")
    done = Step(step=3_000, steps=3_000, epoch=10, epochs=10, loss=2.5)
    assert training_line(done, 3.2) == "progress: step 3,000 of 3,000 (100%), epoch 10 of 10, 3.2 steps/s, loss 2.5000"


def test_training_progress_counts_its_rate_from_the_first_step_it_saw_and_again_after_a_restart(caplog,
                                                                                                 ray_cluster):
    """A run resumed from a checkpoint does not count the steps before it in its rate; a worker group
    restarted from an earlier checkpoint reports lower steps, and the rate starts again from there."""
    counter = start_step_counter()
    monitor = StepMonitor(counter)
    with caplog.at_level(logging.DEBUG, logger=progress.log.name):
        monitor._log(logging.INFO, 5.0)  # nothing reported yet: no line
        for step, now in ((40, 10.0), (40, 12.0), (50, 15.0), (30, 20.0), (35, 22.0)):
            ray_cluster.get(counter.update.remote(Step(step=step, steps=100, epoch=1, epochs=1, loss=1.0)))
            monitor._log(logging.INFO, now)
    assert [r.getMessage() for r in caplog.records] == [
        "progress: step 40 of 100 (40%), epoch 1 of 1, loss 1.0000",  # 40 again: nothing new to say
        "progress: step 50 of 100 (50%), epoch 1 of 1, 2.0 steps/s, about 25s left, loss 1.0000",
        "progress: step 30 of 100 (30%), epoch 1 of 1, loss 1.0000",
        "progress: step 35 of 100 (35%), epoch 1 of 1, 2.5 steps/s, about 26s left, loss 1.0000",
    ]


def test_rows_staged_counts_each_row_of_the_run_s_units_once():
    """A retried write task's pieces repeat rows; pieces of units the run does not process are not its."""
    pieces = [Piece(unit=0, name="a", run_id="r", ranges=[[0, 40]]),
              Piece(unit=0, name="b", run_id="r", ranges=[[30, 60], [80, 90]]),  # a retry's, overlapping
              Piece(unit=1, name="c", run_id="r", ranges=[[0, 10]]),
              Piece(unit=7, name="d", run_id="r", ranges=[[0, 500]])]  # reused: not among the run's units
    assert staged_by_unit(pieces, {0: 100, 1: 10}) == {0: 60 + 10, 1: 10}


def test_the_stages_report_each_finished_batch_its_forward_passes_and_their_own_lives_to_the_run_s_ledger(
        tiny_models, ray_cluster, monkeypatch):
    import pyarrow as pa
    import torch

    from albert_batch.config import Precision
    from albert_batch.contract import Task
    from albert_batch.inference import models
    from albert_batch.pipeline.ledger import start_ledger
    from albert_batch.pipeline.stages import ModelStage, TokenizeStage

    ledger = start_ledger()
    uris = {Task.CLASSIFY: tiny_models["classifier"]}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the stage sets it for its process: undone after the test
    threads = torch.get_num_threads()
    tokens = 0
    try:
        model = ModelStage(model_uris=uris, weights_sha256={Task.CLASSIFY: models.inspect(uris[Task.CLASSIFY],
                                                                                          Task.CLASSIFY).weights_sha256},
                           precision=Precision.FP32, use_gpu=False, torch_threads=1, max_tokens_per_forward=512,
                           window_overlap=0, ledger=ledger)
        tokenize = TokenizeStage(model_uris=uris, ledger=ledger)
        for texts in (["Anna flew to Berlin.", "  "], ["Krakow.", "Lisbon.", "Nairobi."]):
            tokenized = tokenize(pa.table({"id": list(range(len(texts))), "text": texts}))
            tokens += sum(n for n in tokenized.column("tokens").to_pylist() if n is not None)
            model(tokenized)
    finally:
        torch.set_num_threads(threads)
    figures = ledger.snapshot()
    assert figures["rows"]["modelled"] == 5  # rejected rows too: they are done
    forward = figures["forward"]["classify"]
    assert forward["passes"] >= 2 and forward["seconds"] > 0 and figures["busy_s"] > 0
    assert forward["real_tokens"] == tokens + 2 * 4, "each accepted text and its two special tokens"
    assert forward["padding_tokens"] >= 0
    assert {stage: count for stage, (count, _) in figures["actors"].items()} == {"model": 1, "tokenize": 1}


def test_a_run_s_figures_sum_every_worker_s_reports_outlive_a_killed_worker_and_go_when_the_run_ends(ray_cluster):
    """Each worker process stores its own tallies under the run's prefix of the cluster's key-value store; the
    driver sums them. What a killed actor reported stays counted; when the run ends its keys are deleted,
    and an actor still beating stops and leaves none behind."""
    import ray

    from albert_batch.pipeline import ledger as ledger_module

    ledger = ledger_module.start_ledger()

    @ray.remote(num_cpus=0)
    def read(rows: int) -> None:
        ledger.read(rows, 0.25)

    @ray.remote(num_cpus=0, max_restarts=0)
    class ModelLike:
        def __init__(self) -> None:
            ledger_module.heartbeat(ledger, ledger_module.MODEL)

        def batch(self, rows: int) -> None:
            ledger.modelled(rows, {"classify": {"passes": 1, "real_tokens": 7}}, 0.5, span=(100.0, 101.0))

        def beating(self) -> bool:
            import threading

            return any(thread.name == "albert-batch-heartbeat" for thread in threading.enumerate())

    ray.get([read.remote(rows) for rows in (3, 4, 5)])
    actor = ModelLike.remote()
    ray.get(actor.batch.remote(6))
    ray.kill(actor)
    figures = ledger.snapshot()
    assert figures["rows"] == {"read": 12, "modelled": 6}
    assert figures["tasks"]["read"] == [3, 0.75] and figures["forward"]["classify"] == {"passes": 1, "real_tokens": 7}
    assert figures["actors"]["model"][0] == 1 and figures["first_batch_at"] == 101.0

    beating = ModelLike.remote()
    ray.get(beating.batch.remote(1))
    assert ray.get(beating.beating.remote())
    ledger.close()
    deadline = time.monotonic() + 120  # the next beat finds the run's keys gone: it deletes its own and stops
    while ray.get(beating.beating.remote()):
        assert time.monotonic() < deadline, "the heartbeat went on after the run ended"
        time.sleep(0.2)
    assert ledger.snapshot()["rows"] == {} and ledger_module.final_snapshot(ledger)["actors"] == {}
    ray.kill(beating)


def test_the_progress_interval_can_be_set_and_a_bad_one_is_refused(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert interval_s() == progress.INTERVAL_S
    monkeypatch.setenv(INTERVAL_ENV, "0.5")
    assert interval_s() == 0.5
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ConfigError, match=INTERVAL_ENV):
            interval_s()


def test_in_a_terminal_progress_rewrites_one_line_and_other_lines_print_above_it():
    stream = io.StringIO()
    handler = TerminalLine(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)

    handler.emit(record(progress.log.name, "progress: 1 of 9 rows"))
    handler.emit(record(progress.log.name, "progress: 3 of 9 rows"))
    handler.emit(record("albert_batch.pipeline.runner", "published"))
    handler.clear()
    assert stream.getvalue() == ("\r\x1b[Kprogress: 1 of 9 rows" "\r\x1b[Kprogress: 3 of 9 rows"
                                 "\r\x1b[KINFO published\nprogress: 3 of 9 rows" "\r\x1b[K")


def test_inside_a_ray_job_ray_data_keeps_its_progress_tables_to_its_own_log(monkeypatch):
    """Inside a Ray job the job's log is the console (Airflow shows it), and nothing is redirected. Ray
    Data's console handler then shows only its warnings and errors: its progress tables, every few seconds,
    stay in its log file in the Ray session's logs."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger: a session log file and the console)

    monkeypatch.setenv(RAY_JOB_ENV, "{}")

    handlers = {h.name: h for h in logging.getLogger("ray.data").handlers}
    assert handlers["console"].level == logging.INFO and handlers["file"].level < logging.INFO
    with RunConsole("in-a-job") as console:
        assert console.log_path is None
        assert handlers["console"].level == logging.WARNING and handlers["file"].level < logging.INFO
    assert handlers["console"].level == logging.INFO


@pytest.fixture
def job(tmp_path: Path, tiny_models: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command line of a small run, and its environment: progress lines every second."""
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in/part-0.parquet", list(range(24)), TRICKY_TEXTS * 2)
    argv = [sys.executable, "-m", "albert_batch.cli", "run", "--input", str(tmp_path / "in"),
            "--output", str(tmp_path / "out"), "--classifier-model", tiny_models["classifier"],
            "--ner-model", tiny_models["ner"], "--partition", "dt=2026-12-01", "--precision", "fp32"]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "ALBERT_BATCH_CACHE": str(tmp_path / "cache"),
           INTERVAL_ENV: "1"}
    return argv, env


def run_in_a_terminal(argv: list[str], env: dict[str, str], timeout_s: float = 300) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its stdin, stdout and stderr; its exit code and what it wrote."""
    master, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    written, deadline = bytearray(), time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(master)
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
    return process.wait(timeout=60), written.decode("utf-8", "replace")


@pytest.mark.slow
def test_a_run_in_a_terminal_shows_progress_and_the_summary_and_none_of_ray_s_internals(job, tmp_path):
    argv, env = job
    code, written = run_in_a_terminal([*argv, "--run-id", "console"], env)
    assert code == 0, written[-3000:]

    shown = ANSI.sub("", written).replace("\r", "\n")
    assert not [term for term in RAY_INTERNALS if term in shown], shown
    assert "progress: 24 of 24 rows (100%)" in shown, shown
    assert "run console: published 3 partitions" in shown
    assert "rows: 24 in, 24 processed, 0 rejected" in shown
    assert f"details of this run are logged to {tmp_path / 'cache/logs/run-console.log'}" in shown

    details = (tmp_path / "cache/logs/run-console.log").read_text()
    assert "Execution plan of Dataset" in details, "Ray's lines went to the details log"
    assert len(re.findall(r"INFO albert_batch\.pipeline\.progress: progress: ", details)) >= 2, details


@pytest.mark.slow
def test_quiet_prints_the_summary_and_nothing_else(job, tmp_path):
    argv, env = job
    summary_file = tmp_path / "summary.json"
    result = subprocess.run([*argv, "--run-id", "quiet", "-q", "--summary-json", str(summary_file)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    figures = json.loads(summary_file.read_text())
    summary = RunSummary(**{f.name: figures[f.name] for f in dataclasses.fields(RunSummary)})
    assert result.stdout == format_summary(summary) + "\n"
    assert result.stderr == ""
    assert "progress: 24 of 24 rows (100%)" in (tmp_path / "cache/logs/run-quiet.log").read_text()
