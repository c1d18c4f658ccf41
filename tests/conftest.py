"""Shared fixtures: a real moto S3 server and a real local Ray (both once per session), tiny ALBERT models
built on the fly, and one run's published output that several tests read. Helpers that tests import are in
`support`."""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from albert_batch.contract import Task
from albert_batch.dev.local_ray import free_port
from albert_batch.training.model_init import init_model
from support import CLASSIFIER_LABELS, FAKE_KEY_ID, FAKE_SECRET, LONG_TEXT, NER_LABELS, TRICKY_TEXTS, write_corpus

# Airflow reads its settings when first imported: give the test session its own home (SQLite database,
# logs) and no example DAGs, before any test module imports it.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="albert-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")

# Two Iceberg SQL catalogs on SQLite, configured as pyiceberg users do (environment variables), before anything
# imports pyiceberg: "local" keeps its warehouse on disk, "lake" in the moto S3 bucket "lake" (which a test
# creates; the endpoint comes from AWS_ENDPOINT_URL). No user's .pyiceberg.yaml is read.
ICEBERG_HOME = tempfile.mkdtemp(prefix="albert-iceberg-")
atexit.register(shutil.rmtree, ICEBERG_HOME, ignore_errors=True)
os.environ["PYICEBERG_HOME"] = ICEBERG_HOME
for name, warehouse in (("LOCAL", f"file://{ICEBERG_HOME}/warehouse"), ("LAKE", "s3://lake/warehouse")):
    os.environ[f"PYICEBERG_CATALOG__{name}__TYPE"] = "sql"
    os.environ[f"PYICEBERG_CATALOG__{name}__URI"] = f"sqlite:///{ICEBERG_HOME}/{name.lower()}.db"
    os.environ[f"PYICEBERG_CATALOG__{name}__WAREHOUSE"] = warehouse
os.makedirs(f"{ICEBERG_HOME}/warehouse")

# Tests that use none of these (nor the slow, gpu or docker markers) are the fast lane, `make unit`: they need
# no Ray, no models (building them trains a tokenizer) and no S3 bucket.
HEAVY_FIXTURES = frozenset({"ray_cluster", "tiny_models", "s3"})


# Each test file's seconds in a full `make test` (`pytest --record-durations` rewrites them). `make test` hands
# whole files to its two workers (`--dist loadfile`, so a file's module fixtures start once), in the order
# collected: the longest first, so that the last to finish are quick ones. A file not listed counts as longest.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-durations", action="store_true",
                     help=f"write each test file's seconds in this session to {DURATIONS.name} (files not run keep theirs)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs_more = any(item.get_closest_marker(name) for name in ("slow", "gpu", "docker"))
        if not needs_more and not HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.unit)
    seconds = json.loads(DURATIONS.read_text())
    items.sort(key=lambda item: -seconds.get(_file(item.nodeid), math.inf))  # stable: a file's tests keep their order


def _file(nodeid: str) -> str:
    return nodeid.split("::")[0]


_recorded: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _recorded[_file(report.nodeid)] = _recorded.get(_file(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.getoption("record_durations") and not hasattr(session.config, "workerinput"):
        seconds = {**json.loads(DURATIONS.read_text()), **{name: round(s, 1) for name, s in _recorded.items()}}
        DURATIONS.write_text(json.dumps(dict(sorted(seconds.items(), key=lambda kv: -kv[1])), indent=0) + "\n")


@pytest.fixture(scope="session", autouse=True)
def s3_endpoint() -> Any:
    """A real S3 endpoint (moto's threaded server) on loopback. Its address and fake credentials go into
    the environment before Ray starts, so Ray workers find them through the standard AWS chain."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env["PYICEBERG_CATALOG__LAKE__S3__ENDPOINT"] = endpoint  # pyiceberg's FileIO takes its endpoint from the catalog
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3(s3_endpoint: str) -> str:
    """A freshly reset S3 server; returns its endpoint."""
    request = urllib.request.Request(f"{s3_endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    return s3_endpoint


@pytest.fixture
def s3_client(s3: str) -> Any:
    """A plain client of the freshly reset S3 server, as producers and consumers outside the pipeline use it."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=s3.removeprefix("http://"), scheme="http", region="us-east-1",
                             allow_bucket_creation=True)


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint: str) -> Any:
    """One real local Ray for the session: 2 CPUs, free ports, as an embedded run starts it."""
    import ray

    from albert_batch.pipeline.cluster import start_embedded_ray

    start_embedded_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A classifier and an NER model with random weights over one SentencePiece tokenizer trained here.

    A wide initializer range makes the random logits decisive, so labels and entities vary."""
    root = tmp_path_factory.mktemp("models")
    texts = TRICKY_TEXTS * 3 + [f"Document number {i} mentions Lisbon, Nairobi and Kraków." for i in range(50)]
    classifier = init_model(root / "classifier", Task.CLASSIFY, CLASSIFIER_LABELS, texts=texts, vocab_size=400,
                            initializer_range=0.4, seed=1)
    ner = root / "ner"
    ner.mkdir()
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json"):
        (ner / name).write_bytes((classifier / name).read_bytes())
    init_model(ner, Task.NER, NER_LABELS, vocab_size=400, initializer_range=0.4, seed=2)
    return {"classifier": str(classifier), "ner": str(ner)}


@pytest.fixture(scope="session")
def tricky_run(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, str], ray_cluster: Any) -> Path:
    """The output folder of one fp32 run of both tiny models over `TRICKY_TEXTS` then `LONG_TEXT` (ids by
    position, partition dt=2026-11-01). Tests that compare what a run publishes with other predictors read
    it; none writes to it, so one run serves them all."""
    from albert_batch import RunConfig, run

    root = tmp_path_factory.mktemp("tricky-run")
    (root / "input").mkdir()
    texts = [*TRICKY_TEXTS, LONG_TEXT]
    write_corpus(root / "input/part.parquet", list(range(len(texts))), texts)
    run(RunConfig(input=str(root / "input"), output=str(root / "output"), precision="fp32",
                  classifier_model=tiny_models["classifier"], ner_model=tiny_models["ner"], partition=["dt=2026-11-01"]))
    return root / "output"
