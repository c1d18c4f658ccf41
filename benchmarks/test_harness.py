"""The harness's own logic, without models or Ray: ``pytest benchmarks`` (seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from benchmarks import machine, report, workload
from benchmarks.gpu import busy_between, parse_sample
from benchmarks.memory import TreeSampler, TreeUsage, machine_memory_in_use, sample_tree


def test_corpus_lengths_follow_the_issue_s_distribution():
    lengths = workload.token_lengths(384, seed=7)
    assert 43 <= lengths.mean() <= 45 and 300 <= lengths.max() <= workload.MAX_TOKENS
    assert lengths.sum() == pytest.approx(16_800, rel=0.03)
    assert np.array_equal(lengths, workload.token_lengths(384, seed=7)), "seeded: the same corpus every run"
    assert workload.token_lengths(2000, seed=7).max() <= workload.MAX_TOKENS, "nothing is truncated or windowed"


def test_steady_rate_counts_the_work_after_the_first_batch():
    batches = [[100.0, 10, 1000], [102.0, 10, 2000], [104.0, 10, 2000]]
    assert report.steady_rate(batches) == 1000.0
    assert report.steady_rate(batches, of="rows") == 5.0
    assert report.steady_rate(batches[:2]) == 1000.0
    assert report.steady_rate(batches[:1]) is None, "one batch has no pace"


def test_steady_rate_waits_for_every_actor_s_first_batch():
    """Two actors start together: their first batches finish together, and counting the second of them
    against the time since the first would overstate the pace."""
    batches = [[100.0, 10, 1000], [100.5, 10, 1000], [102.0, 10, 1000], [102.5, 10, 1000], [104.0, 10, 1000],
               [104.5, 10, 1000]]
    assert report.steady_rate(batches, actors=2) == 1000.0
    assert report.steady_rate(batches) > 1100.0
    assert report.steady_rate(batches[:2], actors=2) is None


def measurement(contender, tokens_per_s, **details):
    return {"docs": 2000, "task": "classify", "contender": contender, "tokens_per_s": tokens_per_s, "details": details}


def test_ratios_compare_with_each_baseline_and_the_best_hand_loop():
    batches = [[0.0, 1, 100], [1.0, 1, 1900], [2.0, 1, 1900]]
    rows = report.ratios([measurement("hf_default", 600.0), measurement("hf_batch32", 150.0),
                          measurement("ray_docs", 400.0), measurement("hand_loop", 1500.0),
                          measurement("hand_loop_tuned", 2000.0), measurement("albert_batch", 1800.0, batches=batches)])
    [row] = rows
    assert (row["vs_hf_default"], row["vs_hf_batch32"], row["vs_ray_docs"]) == (3.0, 12.0, 4.5)
    assert row["hand_loop_tokens_per_s"] == 2000.0 and row["steady_vs_hand_loop"] == 0.95
    assert row["targets"] == {"vs_hf_default": True, "vs_hf_batch32": True, "steady_vs_hand_loop": True}


def test_nvidia_smi_samples_and_busy_windows():
    assert parse_sample("87, 40321\n") == (87.0, 40321.0)
    assert parse_sample("[N/A], [N/A]") is None and parse_sample("") is None
    samples = [(10.0, 20.0, 1.0), (11.0, 90.0, 1.0), (12.0, 100.0, 1.0), (13.0, 0.0, 1.0)]
    assert busy_between(samples, 11.0, 12.0) == 95.0
    assert busy_between(samples, 20.0, 30.0) is None


def test_the_sampler_sees_the_whole_process_tree():
    """Memory of a child and its grandchild both count, and their CPU time survives their exit."""
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'x = bytearray(200 << 20); import time; time.sleep(1.5)']); "
            "x = bytearray(100 << 20); p.wait()")
    child = subprocess.Popen([sys.executable, "-c", code])
    with TreeSampler(child.pid, interval_s=0.1) as sampler:
        child.wait()
    assert sampler.usage.processes == 2
    assert sampler.usage.rss > 300 << 20
    assert sampler.usage.pss > 280 << 20
    assert sampler.usage.cpu_s > 0


def test_a_process_s_cpu_time_counts_once_when_the_machine_s_clock_is_adjusted(monkeypatch):
    """The kernel's boot time in epoch seconds moves when the clock is set: a process is still one process."""
    from psutil import _pslinux

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        usage = TreeUsage()
        sample_tree(psutil.Process(child.pid), usage, 0.0, pss=False)
        boot = _pslinux.boot_time()
        monkeypatch.setattr(_pslinux, "boot_time", lambda: boot + 1.0)
        sample_tree(psutil.Process(child.pid), usage, 1.0, pss=False)
        assert len(usage.cpu_by_process) == 1
    finally:
        child.kill()
        child.wait()


def test_the_sampler_reads_pss_at_new_highs_and_every_pss_interval_not_at_every_sample():
    """PSS costs the kernel a walk of every page table: a tree whose memory holds still gets its RSS and CPU
    time at every sample, and its PSS once per ``pss_interval_s``; memory that grows gets its PSS read."""
    # The child holds still until told to grow, then until told to exit: no step depends on the machine's pace.
    code = ("import sys; print(flush=True); sys.stdin.readline(); x = bytearray(300 << 20); print(flush=True); "
            "sys.stdin.readline()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child.stdout.readline()  # started
    with TreeSampler(child.pid, interval_s=0.05, pss_interval_s=60) as sampler:
        _wait_for(lambda: sampler.usage.rss > 0)
        time.sleep(0.5)  # samples of a tree whose memory holds still
        still = len(sampler.usage.samples)
        child.stdin.write("\n")
        child.stdin.flush()
        child.stdout.readline()  # grown
        _wait_for(lambda: sampler.usage.pss > 280 << 20)
        child.communicate("\n")
    assert still == 1, sampler.usage.samples
    assert sampler.usage.pss > 280 << 20, "the growth was read"


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the sampler did not get there"
        time.sleep(0.02)


def test_the_machine_wide_figure_is_memory_in_use_above_the_start(monkeypatch):
    """It sees what no process maps (object-store pages of an exited actor) and everything else running: the
    highest of the machine's memory in use (total - available) above the start. Read from fixed figures, not
    from this machine, where other processes allocate and free memory at any moment; the tree's own share
    is tested through PSS above."""
    readings = iter([5 << 30, 4 << 30])
    usage = TreeUsage()
    for elapsed in (0.0, 1.0):
        sample_tree(psutil.Process(), usage, elapsed, machine_baseline=3 << 30, memory_in_use=lambda: next(readings))
    assert usage.machine_used == 2 << 30

    memory = SimpleNamespace(total=16 << 30, available=10 << 30)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory)
    assert machine_memory_in_use() == 6 << 30


def test_the_ceiling_counts_albert_base_s_matrix_work_per_token(tmp_path):
    """ALBERT-base: 12 layers of 4·768² + 2·768·3072 multiply-adds per token, plus attention over the
    sequence and the embedding projection: about 175 MFLOP per token at the corpus' mean length."""
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 768, "intermediate_size": 3072,
                                                       "num_hidden_layers": 12, "embedding_size": 128}))
    flops = machine.flops_per_token(str(tmp_path), mean_tokens=44)
    assert flops == 2 * (12 * (4 * 768**2 + 2 * 768 * 3072 + 2 * 44 * 768) + 128 * 768)
    assert 170e6 < flops < 175e6
    ceilings = {"tokens_per_s": {"fp32": 800.0, "bf16": 4000.0}}
    fp32_auto = "auto (fp32: this CPU lacks AMX and AVX-512-BF16)"  # the reason names bf16: the dtype decides
    assert machine.share(600.0, machine.compute_dtype({"precision": fp32_auto}), ceilings) == 0.75
    assert machine.compute_dtype({"precision": "auto (fp32: no bf16 instructions)"}) == "fp32"
    assert machine.compute_dtype({"precision": "auto (bf16: this CPU has AMX)"}) == "bf16"
    assert machine.compute_dtype({"precision": "auto (bf16: this CPU has AVX-512-BF16)"}) == "bf16"
    assert machine.compute_dtype({"dtype": "bfloat16"}) == "bf16"
    assert machine.compute_dtype({"precision": "int8"}) == "fp32", "int8 is held against fp32's ceiling"
    assert machine.share(600.0, "fp32", None) is None


def test_a_matrix_product_s_rate_is_measured_in_gflops_for_each_kernel():
    rates = machine.product_gflops("fp32", seconds=0.05)
    assert rates["mm"] > 1.0 and set(rates) <= {"mm", "onednn_packed"} and min(rates.values()) > 1.0
    assert machine.cpu_class() in ("AMX", "AVX-512-BF16", "AVX-512", "AVX2", "older than AVX2")


def test_a_run_is_held_against_the_mean_of_the_ceilings_measured_at_its_start_and_end():
    def measured(fp32: float) -> dict:
        return {"matmul_shape": [256, 768, 3072], "threads": 2, "mflops_per_token": 172.4,
                "gflops": {"fp32": fp32 * 0.1724, "bf16": 0.8}, "tokens_per_s": {"fp32": fp32, "bf16": 4.6},
                "gflops_per_kernel": {"fp32": {"mm": fp32 * 0.1724}, "bf16": {"mm": 0.8}}}

    start, end = measured(1000.0), measured(800.0)
    ceilings = machine.averaged([start, end])
    assert ceilings["tokens_per_s"]["fp32"] == 900.0 and ceilings["gflops_per_kernel"]["fp32"]["mm"] == 155.2
    assert ceilings["measured_tokens_per_s"]["fp32"] == [1000.0, 800.0]
    assert machine.share(720.0, "fp32", ceilings) == 0.8
    assert machine.averaged([start]) is start, "one measurement is its own mean"
    text = report.markdown({"started_at": "now", "machine": {"cpu": "AMD EPYC", "cpu_class": "AVX2", "cpus": 2,
                                                             "memory_gib": 23.5, "features": {"avx2": True}},
                            "load_average_at_start": [0.5], "load_average_at_end": [0.7], "models": {"size": "base"},
                            "ceilings": ceilings})
    assert "| fp32 | 155.2 | mm 155.2 | 900 |" in text
    assert "measured at the start and at the end of the runs (tokens/s: fp32 1,000 and 800; bf16 5 and 5)" in text


def test_each_albert_batch_precision_gets_its_own_ratios_and_share_of_the_ceiling():
    batches = [[0.0, 1, 100], [1.0, 1, 400], [2.0, 1, 400]]
    rows = report.ratios([measurement("hf_default", 300.0),
                          measurement("albert_batch", 600.0, batches=batches, precision="auto (fp32: this CPU lacks AMX and AVX-512-BF16)"),
                          measurement("albert_batch[int8]", 900.0, precision="int8")],
                         {"tokens_per_s": {"fp32": 800.0, "bf16": 4.0}})
    assert [(r["contender"], r["vs_hf_default"]) for r in rows] == [("albert_batch", 2.0), ("albert_batch[int8]", 3.0)]
    assert rows[0]["steady_share_of_ceiling"] == 0.5 and rows[1]["steady_share_of_ceiling"] is None
    text = report.markdown({"started_at": "now", "machine": {"cpu": "AMD EPYC", "cpu_class": "AVX2", "cpus": 2,
                                                             "memory_gib": 23.5, "features": {"avx2": True, "amx_bf16": False}},
                            "load_average_at_start": [0.5], "load_average_at_end": [0.7], "models": {"size": "base"},
                            "ceilings": {"matmul_shape": [256, 768, 3072], "threads": 2, "mflops_per_token": 172.4,
                                         "gflops": {"fp32": 150.0, "bf16": 0.8},
                                         "gflops_per_kernel": {"fp32": {"mm": 130.0, "onednn_packed": 150.0}},
                                         "tokens_per_s": {"fp32": 870.0, "bf16": 4.6}},
                            "measurements": [], "ratios": rows, "agreement": []})
    assert "AVX2 class" in text and "| fp32 | 150.0 | mm 130.0, onednn_packed 150.0 | 870 |" in text
    assert "| bf16 | 0.8 | – | 5 |" in text and "| albert_batch[int8] | 3.00" in text


def test_start_up_processes_are_named_by_what_they_run():
    from benchmarks.startup import process_name

    assert process_name(["/v/bin/python", "-m", "albert_batch.cli", "run"]) == "albert_batch.cli"
    assert process_name(["/v/bin/python3.11", "-u", "/v/ray/dashboard/agent.py", "--node-id=x"]) == "agent.py"
    assert process_name(["ray::MapWorker(MapBatches(ModelStage))", "", ""]) == "ray::MapWorker(MapBatches(ModelStage))"
    assert process_name(["/v/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=s"]) == "raylet"


def test_start_up_cpu_is_counted_up_to_the_first_forward_pass():
    from benchmarks.startup import Sampled, TreeTimeline

    timeline = TreeTimeline(launched=100.0)
    timeline.processes = {
        (1, 100.0): Sampled({"albert_batch.cli"}, 0.0, [(1.0, 0.9), (5.0, 2.0), (9.0, 2.5)]),
        (2, 106.0): Sampled({"ray::IDLE", "ray::MapWorker(Ma", "ray::MapWorker(MapBatches(ModelStage))"}, 6.0,
                            [(7.0, 0.5), (8.0, 1.4), (12.0, 5.0)]),
        (3, 109.5): Sampled({"ray::_StatsActor"}, 9.5, [(10.0, 0.4)]),
    }
    timeline.machine = [(1.0, 10.0, 20.0), (8.0, 17.0, 34.0), (12.0, 25.0, 42.0)]
    found = timeline.by(8.0)
    assert found["processes"] == [{"name": "albert_batch.cli", "seen": 0.0, "cpu_s": 2.0},
                                  {"name": "ray::MapWorker(MapBatches(ModelStage))", "seen": 6.0, "cpu_s": 1.4}]
    assert found["cores_busy"] == 0.5, "7 busy CPU-seconds of 14 between the first sample and the moment"
