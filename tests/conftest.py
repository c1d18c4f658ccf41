"""Shared fixtures: a real moto S3 server and a real local Ray (both once per session), tiny ALBERT
models built on the fly, and helpers that write corpora and read results back as a warehouse would."""

from __future__ import annotations

import atexit
import glob
import json
import os
import shutil
import socket
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch.config import Task
from albert_batch.model_init import init_model

# Airflow reads its settings when first imported: give the test session its own home (SQLite database,
# logs) and no example DAGs, before any test module imports it.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="albert-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")

# Credentials the tests give moto; no output, log or error may ever contain the secret.
FAKE_KEY_ID = "AKIATESTINGKEYID0000"
FAKE_SECRET = "moto-secret-must-never-leak-7f3a9c"

INT64 = pa.int64()
# fp32 scores computed in differently shaped batches (padding, thread counts) differ by a few 1e-5: GEMM
# kernels sum in different orders. Labels and offsets must match exactly; scores within this.
SCORE_TOLERANCE = 1e-4
CLASSIFIER_LABELS = ("negative", "neutral", "positive")
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")

TRICKY_TEXTS = [
    "Anna Schmidt flew from Berlin to Paris with Acme Corp last Tuesday.",
    "Café crème at Zürich's naïve bistro — très bien, señor Muñoz!",
    "東京タワーは高い。北京 and 서울 are far from São Paulo.",
    "Great 👍😀 product!!! 🙄 would buy again ✨",
    "repeated    spaces   between     words",
    "tabs\tand\nnewlines\r\n mixed\t\tin",
    "   leading and trailing spaces   ",
    "Literal [SEP] and [CLS] markers, and <unk> too.",
    "ÀÉÎÕÜ ñ ß ø å Œuvre ﬁnance",
    "x",
    "Dr. O'Neil-Smith, Ph.D., visited St. Petersburg on 3/4/2025 at 10:30am.",
    "THE SERVICE WAS TERRIBLE AND THE FOOD COLD",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """One real local Ray for the session: 2 CPUs, loopback."""
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
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


def write_corpus(path: Path | str, ids: list[Any], texts: list[str | None], *, id_type: pa.DataType = INT64,
                 filesystem: Any = None) -> None:
    table = pa.table({"id": pa.array(ids, id_type), "text": pa.array(texts, pa.string()),
                      "extra": pa.array([0] * len(ids), pa.int8())})
    pq.write_table(table, str(path), filesystem=filesystem)


def published_partitions(root: Path | str, table: str) -> list[Path]:
    """Partition folders a consumer may read: those with _SUCCESS."""
    return sorted(Path(p).parent for p in glob.glob(f"{root}/{table}/**/_SUCCESS", recursive=True))


def read_published(root: Path | str, table: str) -> list[dict[str, Any]]:
    """Rows of every published partition, read by DuckDB with Hive partitioning, as a warehouse would."""
    files = [str(f) for d in published_partitions(root, table) for f in sorted(d.glob("*.parquet"))]
    if not files:
        return []
    con = duckdb.connect()
    result = con.execute("SELECT * FROM read_parquet(?, hive_partitioning = true, union_by_name = true)", [files])
    names = [c[0] for c in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def manifest(root: Path | str, table: str, partition: str) -> dict[str, Any]:
    return json.loads((Path(root) / table / partition / "_manifest.json").read_text())
