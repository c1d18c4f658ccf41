"""How a run's cost grows with the number of input files and with rows: the same rows of short texts laid
out as few large files and as many small ones, each layout run end to end; and the planning of a very
large number of input files, alone (its time and the driver's memory).

    python -m benchmarks.files                              # 100,000 rows as 100, 1,000 and 10,000 files
    python -m benchmarks.files --layouts 100,10000 --rows 20000
    python -m benchmarks.files --plan-files 100000 --layouts '' --publish-files 0   # planning only

Each run is ``albert-batch run`` in a process of its own with default settings (a tiny classification
model, fp32). For each layout it prints the run's seconds, its units of work and the files it published
per table; the rows published are checked against the input's. Planning lists and reads the footer of
every file of a local folder of ``--plan-files`` one-row-group files, cuts them into units and computes
the partition's work key, in this process, with its peak memory above what it held before (tracemalloc)
and its whole peak RSS. Publishing stages ``--publish-files`` files of 5 classification rows on a moto S3
server (a process of its own, on loopback) and replaces a partition of as many old files with them: the
merge into files of the default size, then the publication (deletes, moves, manifest), through a proxy
(`albert_batch.dev.s3_proxy`) that counts the requests; moto answers one request at a time (~100-150 a
second here), so it also runs ``--latency-files`` files with ``--latency-s`` added to each request, as a
distant store's latency, 16 and 1 at a time. Prints JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from albert_batch.dev import corpus
from albert_batch.dev.s3_proxy import FaultyProxy
from benchmarks import workload
from benchmarks.machine import cpu_model

ROOT = Path(__file__).resolve().parent.parent
PARTITION = "dt=2026-12-05"


def short_texts(rows: int) -> pa.Table:
    """``rows`` short texts (the first sentence of each demo document, 40-120 characters) with unique ids."""
    texts = [doc.text.split(". ")[0].split("\n")[0] for doc in corpus.generate(min(rows, 20_000), seed=3,
                                                                               split="inference")]
    ids = pa.array(range(rows), pa.int64())
    return pa.table({"id": ids, "text": pa.array([texts[i % len(texts)] for i in range(rows)], pa.string())})


def lay_out(table: pa.Table, folder: Path, files: int) -> None:
    """``table`` as ``files`` Parquet files of equal rows in ``folder``."""
    folder.mkdir(parents=True)
    per_file = -(-table.num_rows // files)
    for number, start in enumerate(range(0, table.num_rows, per_file)):
        pq.write_table(table.slice(start, per_file), folder / f"part-{number:06d}.parquet")


def run(corpus_folder: Path, output: Path, models: workload.Models) -> dict[str, Any]:
    summary = output.with_suffix(".json")
    argv = [sys.executable, "-m", "albert_batch.cli", "run", "-q", "--input", str(corpus_folder), "--output",
            str(output), "--classifier-model", models.classifier, "--tasks", "classify", "--partition", PARTITION,
            "--precision", "fp32", "--summary-json", str(summary)]
    started = time.monotonic()
    subprocess.run(argv, check=True, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    seconds = time.monotonic() - started
    result = json.loads(summary.read_text())
    published = {}
    for table in ("classifications", "rejects"):
        folder = output / table / PARTITION
        names = [p for p in folder.iterdir() if not p.name.startswith(("_", "."))]
        published[table] = {"files": len(names), "rows": pads.dataset(folder, format="parquet").count_rows()}
    return {"seconds": round(seconds, 1), "units": result["units"]["total"], "timings": result["timings"],
            "published": published}


def plan_many(folder: Path, files: int) -> dict[str, Any]:
    """Plan a folder of ``files`` one-row Parquet files (written once, then copied as bytes)."""
    from albert_batch.pipeline.inputs import plan_input
    from albert_batch.storage import Location

    folder.mkdir(parents=True)
    one = folder / "part-0000000.parquet"
    pq.write_table(pa.table({"id": [1], "text": ["a short text"]}), one)
    data = one.read_bytes()
    for number in range(1, files):
        (folder / f"part-{number:07d}.parquet").write_bytes(data)
    rss_before = _rss_mib()
    tracemalloc.start()
    started = time.monotonic()
    plan = plan_input(Location.parse(str(folder)), id_column="id", text_column="text")
    units = plan.units()
    key = plan.fingerprint(units)
    seconds = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"files": len(plan.files), "rows": plan.num_rows, "units": len(units), "seconds": round(seconds, 2),
            "peak_python_mib": round(peak / 2**20, 1), "key": key[:12], "rss_before_mib": rss_before,
            "max_rss_mib": _rss_mib()}


def _rss_mib() -> float:
    """This process's peak resident memory so far."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def classification_rows(ids: range) -> pa.Table:
    import datetime as dt

    from albert_batch.contract import CLASSIFICATIONS, schema

    rows = len(ids)
    return pa.table({
        "id": pa.array(ids, pa.int64()), "label": ["positive"] * rows, "score": [0.5] * rows,
        "scores": [[("positive", 0.5), ("negative", 0.5)]] * rows, "truncated": [False] * rows,
        "model": ["models/classifier"] * rows, "run_id": ["bench"] * rows,
        "processed_at": [dt.datetime(2026, 12, 5, tzinfo=dt.UTC)] * rows,
    }, schema=schema(CLASSIFICATIONS, pa.int64()))


def publish_many(files: int, *, concurrency: int, latency_s: float) -> dict[str, Any]:
    """Merge and publish ``files`` staged files over a partition of ``files`` old ones on a moto S3 server,
    at most ``concurrency`` storage operations at a time, each request held ``latency_s`` by a proxy."""
    import urllib.request

    import pyarrow.fs as pafs

    from albert_batch import storage
    from albert_batch.contract import CLASSIFICATIONS, Manifest
    from albert_batch.dev.local_ray import free_port
    from albert_batch.pipeline.destination import HiveFolders
    from albert_batch.storage import Location, S3Settings

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                          access_key="bench", secret_key="bench", allow_bucket_creation=True).create_dir("bench")
        direct = S3Settings(access_key_id="bench", secret_access_key="bench", endpoint_url=endpoint,
                            region="us-east-1")
        with storage.s3_settings(direct):
            output = Location.parse("s3://bench/out")
            destination = HiveFolders(output, PARTITION).prepare([CLASSIFICATIONS])

            def put(folder: Location, number: int, rows: int) -> tuple[str, int]:
                sink = pa.BufferOutputStream()
                pq.write_table(classification_rows(range(number * rows, (number + 1) * rows)), sink)
                name = f"part-bench-u{number:06d}.parquet"
                storage.write_bytes(folder.child(name), sink.getvalue().to_pybytes())
                return name, rows

            storage.concurrently(lambda n: put(output.child(CLASSIFICATIONS, PARTITION), n, 1), range(files), limit=32)
            staged = dict(storage.concurrently(lambda n: put(destination.table_dirs[CLASSIFICATIONS], n, 5),
                                               range(files), limit=32))
            saved, storage.CONCURRENCY = storage.CONCURRENCY, concurrency
            try:
                with (FaultyProxy(endpoint) as proxy,
                      storage.s3_settings(dataclasses.replace(direct, endpoint_url=proxy.endpoint))):
                    proxy.delay = lambda request: latency_s
                    started = time.monotonic()
                    compacted = destination.compact("bench", {CLASSIFICATIONS: staged})
                    merged_s = time.monotonic() - started
                    manifest = Manifest(table=CLASSIFICATIONS, run_id="bench", partition={"dt": "2026-12-05"},
                                        tasks=["classify"], rows=5 * files, files=compacted[CLASSIFICATIONS].files,
                                        input={}, counts={}, models={}, precision="fp32")
                    started = time.monotonic()
                    destination.publish("bench", {CLASSIFICATIONS: manifest}, {},
                                        merged={t: c.merged for t, c in compacted.items()})
                    published_s = time.monotonic() - started
                    requests = proxy.forwarded
            finally:
                storage.CONCURRENCY = saved
            published = [f for f in storage.list_files(output.child(CLASSIFICATIONS, PARTITION))
                         if not f.base_name.startswith("_")]
        return {"staged_files": files, "old_files": files, "concurrency": concurrency, "latency_s": latency_s,
                "requests": requests, "merge_s": round(merged_s, 2), "publish_s": round(published_s, 2),
                "published_files": len(published)}
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--layouts", default="100,1000,10000", help="input file counts, comma-separated")
    parser.add_argument("--plan-files", type=int, default=100_000, help="files for the planning test (0: none)")
    parser.add_argument("--publish-files", type=int, default=10_000, help="staged files to publish on S3 (0: none)")
    parser.add_argument("--latency-files", type=int, default=1_000,
                        help="staged files to publish on S3 behind --latency-s, 16 and 1 at a time (0: none)")
    parser.add_argument("--latency-s", type=float, default=0.02, help="the store's latency per request")
    parser.add_argument("--plan-here", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"rows": args.rows, "cpu": cpu_model()}
    with tempfile.TemporaryDirectory(prefix="files-", dir=work) as scratch:
        root = Path(scratch)
        if args.plan_here:
            print(json.dumps(plan_many(root / "plan", args.plan_files)))
            return 0
        layouts = [int(n) for n in args.layouts.split(",") if n]
        if layouts:
            models = workload.build_models(work, "tiny")
            table = short_texts(args.rows)
            for files in layouts:
                folder = root / f"input-{files}"
                lay_out(table, folder, files)
                result = run(folder, root / f"output-{files}", models)
                assert all(t["rows"] == args.rows for name, t in result["published"].items()
                           if name == "classifications"), result
                results[f"{files}_files"] = result
                print(json.dumps({f"{files}_files": result}), flush=True)
                shutil.rmtree(folder)
        for name, files, concurrency, latency_s in (
                ("publish", args.publish_files, 16, 0.0),
                ("publish_latency", args.latency_files, 16, args.latency_s),
                ("publish_latency_sequential", args.latency_files, 1, args.latency_s)):
            if files:
                results[name] = publish_many(files, concurrency=concurrency, latency_s=latency_s)
                print(json.dumps({name: results[name]}), flush=True)
        if args.plan_files:  # in a process of its own, so that its peak memory is the planning's
            child = subprocess.run([sys.executable, "-m", "benchmarks.files", "--plan-here", "--plan-files",
                                    str(args.plan_files), "--work", str(work)], check=True, capture_output=True,
                                   text=True)
            results["planning"] = json.loads(child.stdout.strip().splitlines()[-1])
            print(json.dumps({"planning": results["planning"]}), flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
