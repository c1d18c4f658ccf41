"""Specification of the demo corpus generator: deterministic, labelled, varied, and written as Parquet parts."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from albert_batch.dev import corpus, vocabulary
from albert_batch.dev.corpus import ENTITY_TYPES, NER_LABELS, SENTIMENTS, Document, generate, to_table, write_corpus


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return generate(2000, seed=7)


def _words(doc: Document) -> int:
    return len(doc.text.split())


# --- determinism and ids ----------------------------------------------------------------------------------


def test_same_arguments_give_identical_documents():
    assert generate(300, seed=3) == generate(300, seed=3)
    assert generate(300, seed=3, split="eval") == generate(300, seed=3, split="eval")


def test_a_shorter_run_is_a_prefix_of_a_longer_one():
    assert generate(50, seed=3) == generate(300, seed=3)[:50]


def test_different_seeds_and_splits_give_different_documents():
    train = [d.text for d in generate(200, seed=3, split="train")]
    assert train != [d.text for d in generate(200, seed=4, split="train")]
    for split in ("eval", "inference"):
        assert train != [d.text for d in generate(200, seed=3, split=split)]


@pytest.mark.parametrize(("split", "base"), [("train", 0), ("eval", 1_000_000), ("inference", 2_000_000)])
def test_ids_count_up_from_a_per_split_base(split, base):
    assert [d.id for d in generate(25, seed=0, split=split)] == list(range(base, base + 25))


def test_bad_arguments_are_refused():
    assert generate(0, seed=0) == []
    with pytest.raises(ValueError, match="split"):
        generate(1, seed=0, split="test")
    with pytest.raises(ValueError, match="seed"):
        generate(1, seed=-1)
    with pytest.raises(ValueError, match="n must"):
        generate(-1, seed=0)


# --- labels and spans -------------------------------------------------------------------------------------


def test_label_vocabularies():
    assert SENTIMENTS == ("negative", "positive")
    assert ENTITY_TYPES == ("PER", "LOC", "ORG")
    assert NER_LABELS == ("O", *(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")))


def test_entity_spans_are_exact_sorted_and_non_overlapping(docs):
    people = (
        {f"{first} {last}" for first in vocabulary.FIRST_NAMES for last in vocabulary.LAST_NAMES}
        | {f"{last} {first}" for first in vocabulary.FIRST_NAMES for last in vocabulary.LAST_NAMES}
        | set(vocabulary.LAST_NAMES)
    )
    surfaces = {"PER": people, "LOC": set(vocabulary.LOCATIONS), "ORG": set(vocabulary.ORGANISATIONS)}
    for doc in docs:
        assert doc.sentiment in SENTIMENTS
        previous_end = 0
        for start, end, label in doc.entities:
            surface = doc.text[start:end]
            assert label in ENTITY_TYPES
            assert previous_end <= start < end <= len(doc.text), doc
            assert surface == surface.strip(), (surface, doc)
            assert surface in surfaces[label], (surface, label, doc)
            # An entity is a whole word sequence, never glued to neighbouring letters (noise stays outside).
            assert start == 0 or not doc.text[start - 1].isalnum(), (surface, doc)
            assert end == len(doc.text) or not doc.text[end].isalnum(), (surface, doc)
            previous_end = end


def test_every_entity_type_appears_with_multilingual_and_multi_word_surfaces(docs):
    surfaces = {label: set() for label in ENTITY_TYPES}
    for doc in docs:
        for start, end, label in doc.entities:
            surfaces[label].add(doc.text[start:end])
    assert all(len(s) >= 20 for s in surfaces.values()), {k: len(v) for k, v in surfaces.items()}
    assert any(not s.isascii() for s in surfaces["PER"])
    assert any(" " in s for s in surfaces["LOC"])
    assert any(" " in s for s in surfaces["ORG"])


def test_vocabulary_is_large_enough_to_vary():
    assert len(vocabulary.FIRST_NAMES) >= 40 and len(vocabulary.LAST_NAMES) >= 40
    assert len(vocabulary.LOCATIONS) >= 40 and len(vocabulary.ORGANISATIONS) >= 30
    for genre in ("review", "news"):
        _, bearing = corpus.TEMPLATES[genre]
        assert len(bearing["positive"]) >= 25 and len(bearing["negative"]) >= 25


# --- shape of the corpus ----------------------------------------------------------------------------------


def test_classes_are_roughly_balanced(docs):
    positive = sum(d.sentiment == "positive" for d in docs) / len(docs)
    assert 0.4 <= positive <= 0.6


def test_most_documents_are_short_but_some_exceed_600_words():
    sample = generate(1000, seed=11)
    words = [_words(d) for d in sample]
    assert 8 <= statistics.median(words) <= 60
    assert sum(w <= 100 for w in words) >= 0.9 * len(words)
    long_docs = [d for d in sample if _words(d) > 600]
    assert long_docs, "expected about 2% long documents"
    assert len(long_docs) <= 0.05 * len(sample)
    for doc in long_docs:
        assert _words(doc) <= 1200
        # Entities run throughout, up to the last sentence.
        assert doc.entities[-1][1] >= len(doc.text) - 200
        assert doc.entities[0][0] <= len(doc.text) // 4


def test_noise_is_present(docs):
    texts = [d.text for d in docs]
    assert any(any(e in t for e in ("😀", "👍", "😡", "🙄", "✨")) for t in texts)
    assert any("\t" in t or "\n" in t for t in texts)
    assert any("  " in t for t in texts)
    # A whole sentence in capitals: a run of four or more upper-case words.
    assert any(any(all(w.isupper() for w in t.split()[i : i + 4]) for i in range(len(t.split()) - 3)) for t in texts)


# --- Arrow and Parquet ------------------------------------------------------------------------------------

EXPECTED_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("text", pa.string()),
        ("sentiment", pa.string()),
        ("entities", pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string())]))),
    ]
)


def test_to_table_schema_and_rows(docs):
    table = to_table(docs)
    assert table.schema == EXPECTED_SCHEMA
    assert table.num_rows == len(docs)
    first = table.slice(0, 1).to_pylist()[0]
    assert first["id"] == docs[0].id and first["text"] == docs[0].text
    assert [(e["start"], e["end"], e["label"]) for e in first["entities"]] == list(docs[0].entities)
    assert to_table([]).schema == EXPECTED_SCHEMA


def test_write_corpus_round_trip(tmp_path, docs):
    folder = tmp_path / "nested" / "corpus"
    paths = write_corpus(folder, docs, rows_per_file=700)
    assert [p.name for p in paths] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in paths] == [700, 700, 600]
    back = pa.concat_tables(pq.read_table(p) for p in paths)
    assert back.equals(to_table(docs))


def test_write_corpus_replaces_an_earlier_write(tmp_path, docs):
    write_corpus(tmp_path, docs[:30], rows_per_file=10)
    paths = write_corpus(tmp_path, docs[:15], rows_per_file=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert sum(pq.read_metadata(p).num_rows for p in paths) == 15


def test_write_corpus_without_documents_keeps_the_schema(tmp_path):
    paths = write_corpus(tmp_path, [])
    assert len(paths) == 1 and pq.read_table(paths[0]).schema == EXPECTED_SCHEMA
    with pytest.raises(ValueError, match="rows_per_file"):
        write_corpus(tmp_path, [], rows_per_file=0)


def test_module_loads_no_heavy_frameworks():
    # Loaded from its file, apart from the albert_batch package __init__, whose own imports are not this module's.
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('corpus_alone', {corpus.__file__!r}); "
        "module = sys.modules['corpus_alone'] = importlib.util.module_from_spec(spec); "
        "spec.loader.exec_module(module); "
        "print(sorted({'torch', 'ray', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
