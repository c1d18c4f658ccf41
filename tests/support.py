"""What tests share besides fixtures: fake credentials, tricky texts, and helpers that write corpora and read
results back as a warehouse would."""

from __future__ import annotations

import glob
import json
import re
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

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
# Longer than the model: classification truncates it, NER covers it with overlapping windows.
LONG_TEXT = " ".join(f"Zhang Wei visited Nairobi with Acme Corp, day {i}." for i in range(120))


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


def published_dataset(fs: pafs.S3FileSystem, root: str, table: str) -> pa.Table:
    """What a warehouse client reads: the Hive-partitioned table, only partitions with _SUCCESS."""
    selector = pafs.FileSelector(f"{root}/{table}", recursive=True, allow_not_found=True)
    files = [f.path for f in fs.get_file_info(selector) if f.type == pafs.FileType.File]
    done = {p.rsplit("/", 1)[0] for p in files if p.endswith("/_SUCCESS")}
    data = [p for p in files if p.endswith(".parquet") and p.rsplit("/", 1)[0] in done]
    if not data:
        return pa.table({})
    partitioning = ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive")
    return ds.dataset(data, filesystem=fs, format="parquet", partitioning=partitioning,
                      partition_base_dir=f"{root}/{table}").to_table()


ROOT = Path(__file__).resolve().parent.parent
CPU_LOCK = ROOT / "requirements.lock"
GPU_LOCK = ROOT / "requirements-gpu.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def locked_versions(lock: Path) -> dict[str, str]:
    """The lock's pins, by canonical package name (`make lock` writes one `name==version \\` per package)."""
    return {canonicalize_name(m[1]): m[2] for line in lock.read_text(encoding="utf-8").splitlines()
            if (m := _PIN.match(line))}


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    """Every sample of the endpoint, by sample name (a counter's ``_total``, a histogram's ``_bucket``...)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def sample_sum(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of ``name`` whose labels include ``labels``."""
    return sum(value for found, value in samples.get(name, []) if labels.items() <= found.items())
